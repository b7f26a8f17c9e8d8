"""``canidae events tail``: the cluster's event stream, filtered, optionally followed.

Events come from the contacted server's event store (every server holds the same events under the
same sequence numbers, so following survives a failover to another server). ``--json`` prints
NDJSON: one event object per line, flushed as it arrives, so ``events tail -f --json | jq`` works.
"""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Annotated, Any

import typer

from canidae.cli.connect import client
from canidae.cli.history import describe, fmt_time, warn_gaps
from canidae.cli.output import NODE_METAVAR, PACK_METAVAR, NdjsonOption, console, wants_json

app = typer.Typer(help="Follow the cluster's event stream.", no_args_is_help=True, add_completion=False)

POLL_WAIT_S = 10.0


def check_types(kinds: str) -> None:
    """An unknown event type is invalid input (exit 2), with the closest known one."""
    import difflib

    from canidae.core.errors import InvalidInput
    from canidae.core.state import EVENT_TYPES

    for kind in kinds.split(","):
        if kind not in EVENT_TYPES:
            near = difflib.get_close_matches(kind, EVENT_TYPES, n=1)
            hint = f" (did you mean {near[0]}?)" if near else f" (types: {', '.join(EVENT_TYPES)})"
            raise InvalidInput(f"--type: no event type {kind!r}{hint}")
PAGE = 1000


def _print(ev: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(jsonlib.dumps(ev, sort_keys=True, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        return
    subject = ev.get("pack") or ""
    node = ev.get("node") or "-"
    console.print(f"{fmt_time(ev['at'])}  #{ev['seq']:<7} {ev['type']:<16} {subject:<20} {node:<12} "
                  f"{describe(ev)}", markup=False, highlight=False, soft_wrap=True)


@app.command("tail")
def events_tail(
    pack_name: Annotated[
        str | None, typer.Option("--pack", metavar=PACK_METAVAR, help="Only events of this pack.")
    ] = None,
    node_name: Annotated[
        str | None, typer.Option("--node", metavar=NODE_METAVAR,
                                 help="Only events on this node (moves away from it included).")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--type", metavar="TYPE[,TYPE...]",
                                 help="Only these event types (PackStarted, PackFailed, NodeDown, ...).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new events until interrupted.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", metavar="N", min=0, max=10_000,
                                       help="Start with the last N matching events.")] = 20,
    after: Annotated[int | None, typer.Option("--after", metavar="SEQ", min=0,
                                              help="Start after this sequence number instead (every event "
                                                   "since).")] = None,
    count: Annotated[int | None, typer.Option("--count", metavar="N", min=1,
                                              help="Stop after printing N events.")] = None,
    json: NdjsonOption = False,
) -> None:
    """Print the cluster's events, oldest first; with --follow, as they happen.

    One line per event: time (UTC), sequence number, type, pack, node, detail.
    With --json: NDJSON, one event object per line.
    """
    as_json = wants_json(json)
    if kind is not None:
        check_types(kind)
    printed = 0
    seen_gaps: set[tuple[int, int]] = set()

    def show(resp: dict[str, Any]) -> bool:
        """Print a page; False once --count is reached."""
        nonlocal printed
        warn_gaps(resp.get("gaps", []), seen_gaps)
        for ev in resp["events"]:
            _print(ev, as_json)
            printed += 1
            if count is not None and printed >= count:
                return False
        return True

    with client(timeout=POLL_WAIT_S + 10.0) as c:
        filters = {"pack": pack_name, "node": node_name, "type": kind}
        if after is None:
            if lines:
                resp = c.events(last=lines, **filters)
                if not show(resp):
                    return
                cursor = resp["next"]
            else:
                cursor = c.events(last=1)["last_seq"]
        else:
            cursor = after
            while True:  # everything since --after, page by page
                resp = c.events(after=cursor, limit=PAGE, **filters)
                if not show(resp):
                    return
                cursor = resp["next"]
                if len(resp["events"]) < PAGE:
                    break
        while follow:
            resp = c.events(after=cursor, limit=PAGE, wait=POLL_WAIT_S, **filters)
            if not show(resp):
                return
            cursor = max(cursor, resp["next"])
