"""The ``canidae`` console-script entry: answers ``--version`` without loading the command tree
(typer, rich and every noun), so scripts that ask for the version pay only for Python itself;
``--json pack list`` through :mod:`canidae.cli.fastpath` (the client and core only); everything
else goes to :func:`canidae.cli.main.run`."""

from __future__ import annotations

import sys
from typing import NoReturn


def run() -> NoReturn:
    if sys.argv[1:] == ["--version"]:
        from canidae import __version__
        sys.stdout.write(f"canidae {__version__}\n")
        sys.exit(0)
    from canidae.cli.fastpath import answer
    code = answer(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from canidae.cli.main import run as run_command_line
    run_command_line()
