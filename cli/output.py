"""How every command prints: one JSON document with ``--json``, rich tables for people.

Commands build a plain JSON-able ``dict`` and a function that renders it for people, and hand
both to :func:`emit`. Diagnostics go to stderr (``err_console``) so ``--json`` output stays one
parseable document on stdout.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


# Shown unexpanded in help and the man page; expanded where it is read or written.
DEFAULT_CONFIG_PATH = "~/.config/canidae/config.toml"


class _Globals:
    """Options given before the noun (``canidae --json pack list``) apply to every command."""

    json: bool = False
    # Agent API addresses (host:port) from --addr / CANIDAE_ADDR; empty means "use the config file".
    addr: tuple[str, ...] = ()
    token: str | None = None
    config_path: Path = Path(DEFAULT_CONFIG_PATH).expanduser()


GLOBALS = _Globals()

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document to stdout (diagnostics go to stderr).")
]


# For commands that follow a stream (events tail, pack logs --follow): the contract is NDJSON.
NdjsonOption = Annotated[
    bool, typer.Option("--json", help="Print NDJSON: one JSON object per line, flushed as each arrives "
                                      "(diagnostics go to stderr).")
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


# Wide enough that no table cell is ever cut when stdout is a pipe or a file.
PIPE_WIDTH = 100_000


def fit_to_stdout() -> None:
    """Tables fit the terminal; piped or redirected, they print every value whole (rich would
    otherwise assume 80 columns and cut cells to ``heartbe…``)."""
    console.width = None if stdout_is_terminal() else PIPE_WIDTH  # type: ignore[assignment]


def full_values() -> bool:
    """Whether to print values whole (stdout is not a terminal)."""
    return not stdout_is_terminal()


# Parameters shared by commands. An argument or option naming a pack, a node or a zone uses the
# matching metavar: the generated shell completions (scripts/gen_docs.py) complete live names for
# exactly these metavars.
PACK_METAVAR = "PACK"
NODE_METAVAR = "NODE"
ZONE_METAVAR = "ZONE"

StaleOption = Annotated[
    bool,
    typer.Option("--stale", help="Read the contacted agent's local copy of the state: cheap, may lag the leader."),
]
WaitOption = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Wait until the work is done, or return once it is accepted.")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", metavar="SECONDS", min=0, help="Give up waiting after this many seconds.")
]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a long command runs (a drill, the autoscaler), SIGTERM unwinds like Ctrl-C, so what
    it started is stopped and cleaned up by its ``finally`` blocks."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
