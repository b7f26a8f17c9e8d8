"""``python -m canidae`` runs the command-line tool."""

from canidae.cli.main import run

run()
