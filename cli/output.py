"""How every command prints: one JSON document with ``--json``, rich tables for people.

Commands build a plain JSON-able ``dict`` and a function that renders it for people, and hand
both to :func:`emit`. Diagnostics go to stderr (``err_console``) so ``--json`` output stays one
parseable document on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Callable

import typer
from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class _Globals:
    """Options given before the noun (``canidae --json pack list``) apply to every command."""

    json: bool = False


GLOBALS = _Globals()

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document to stdout (diagnostics go to stderr).")
]


def wants_json(flag: bool) -> bool:
    return flag or GLOBALS.json


def emit(data: Any, json_flag: bool, human: Callable[[], None] | None = None) -> None:
    """Print ``data`` as one JSON document when asked, else call ``human`` (or pretty-print)."""
    if wants_json(json_flag) or human is None:
        sys.stdout.write(json.dumps(data, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()
        return
    human()


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
