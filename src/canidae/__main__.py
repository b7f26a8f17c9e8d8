"""``python -m canidae`` runs the command-line tool."""

from canidae.cli.entry import run

run()
