"""``canidae history verify``, and the time helpers the history commands share.

Every server agent keeps its own copy of the cluster's event log (``canidae.agent.server.eventstore``).
``history verify`` asks each server to rebuild its projections (every pack's state and node,
every node's state) from its log and to compare them with its live replicated state; any
difference fails the command (exit 1) after the report is printed.

Times: events carry ``at``, milliseconds since the epoch stamped by the agent that proposed the
command. They are shown in UTC; ``--since`` takes a duration back from now (``90s``, ``15m``,
``2h``, ``7d``), a UTC date and time (``2025-06-01T12:00:00``; an explicit offset is honoured),
or milliseconds since the epoch.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.client import Client
from canidae.cli.connect import client
from canidae.cli.output import PACK_METAVAR, JsonOption, console, emit, err_console
from canidae.core.errors import InvalidInput, OperationFailed, Unavailable

app = typer.Typer(help="Check the recorded event history against the live cluster state.",
                  no_args_is_help=True, add_completion=False)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_since(text: str, now_ms: int | None = None) -> int:
    """``--since`` as milliseconds since the epoch (see the module docstring for the forms)."""
    value = text.strip()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    m = _DURATION.match(value)
    if m:
        return now - int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--since {text!r}: expected a duration (90s, 15m, 2h, 7d), a UTC date and time "
                           "(2025-06-01T12:00:00) or milliseconds since the epoch") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def fmt_time(ms: int, prev_ms: int | None = None) -> str:
    """UTC time with milliseconds; only the time of day when ``prev_ms`` fell on the same day."""
    when = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    if prev_ms is not None and datetime.fromtimestamp(prev_ms / 1000, tz=timezone.utc).date() == when.date():
        return when.strftime("%H:%M:%S.%f")[:-3]
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def fmt_delta(ms: int | None) -> str:
    """A duration for people: 12 ms, 1.25 s, 3m05s, 2h04m, 3d02h."""
    if ms is None:
        return "-"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}{ms} ms"
    if ms < 60_000:
        return f"{sign}{ms / 1000:.2f} s"
    s = ms // 1000
    if s < 3600:
        return f"{sign}{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{sign}{s // 86_400}d{s % 86_400 // 3600:02d}h"


def describe(ev: dict[str, Any]) -> str:
    """The detail of an event in a few words (reason, source node, generation, principal)."""
    d = ev.get("detail") or {}
    parts = []
    if d.get("source"):
        parts.append(f"from {d['source']}")
    if d.get("reason"):
        parts.append(str(d["reason"]))
    if d.get("state") and ev.get("type") == "NodeStateChanged":
        parts.append(f"now {d['state']}")
    if ev.get("type") == "PackDeleted":
        parts.append(f"deleted while {d.get('state', '?')}" + (" (forced)" if d.get("force") else ""))
    if "generation" in d:
        parts.append(f"gen {d['generation']}")
    if ev.get("by"):
        parts.append(f"by {ev['by']}")
    return ", ".join(parts)


def warn_gaps(gaps: list[list[int]], seen: set[tuple[int, int]] | None = None) -> None:
    """Say on stderr which events this server never received (a Raft snapshot was installed)."""
    for a, b in gaps:
        if seen is not None:
            if (a, b) in seen:
                continue
            seen.add((a, b))
        err_console.print(f"note: events {a}..{b} never reached this server's history (it was restored "
                          "from a Raft snapshot)")


def _servers(c: Client) -> list[tuple[str, str]]:
    """(id, api) of every server, from the cluster status."""
    st = c.status()
    return [(p["id"], p["api"]) for p in st.get("peers", [])]


@app.command("verify")
def history_verify(
    pack_name: Annotated[
        str | None,
        typer.Argument(metavar=PACK_METAVAR, help="Only this pack (default: every pack and node).",
                       show_default=False),
    ] = None,
    full: Annotated[bool, typer.Option(
        "--full", help="Replay from the first event instead of the newest snapshot (slower; needs nothing "
                       "removed by retention).")] = False,
    json: JsonOption = False,
) -> None:
    """Rebuild the projections from each server's event log and compare them with the live state.

    Checks each record's checksum and order and the per-pack index, then replays the events.
    Lists every pack or node whose history ends in another state than the cluster holds.
    Exits 1 when any server differs.
    """
    with client(timeout=120.0) as c:
        servers = _servers(c)
        target = c.target
    reports: list[dict[str, Any]] = []
    unreachable: list[str] = []
    for ident, api in servers:
        try:
            with Client(target._replace(addrs=(api,)), timeout=120.0) as one:
                reports.append({"server": ident, **one.history_verify(full=full, pack=pack_name)})
        except Unavailable as e:
            unreachable.append(ident)
            err_console.print(f"note: server {ident} not verified: {e.message}")
    if not reports:
        raise Unavailable("no server could be verified")
    bad = [r for r in reports if not r["ok"]]
    out = {"ok": not bad, "servers": reports, "unreachable": unreachable}

    def human() -> None:
        t = Table("server", "seq", "records", "replayed from", "events replayed", "gaps", "result")
        for r in reports:
            result = "[green]ok[/]" if r["ok"] else f"[red]{r['difference_count']} differ[/]"
            t.add_row(r["server"], str(r["seq"]), str(r["records_checked"]), r["base"], str(r["replayed"]),
                      str(len(r["gaps"])), result)
        console.print(t)
        for r in reports:
            for line in r["notes"]:
                err_console.print(f"{r['server']}: note: {line}")
            for line in r["differences"][:20]:
                console.print(f"{r['server']}: {line}")
            if r["difference_count"] > 20:
                console.print(f"{r['server']}: ... and {r['difference_count'] - 20} more (--json for all)")
        if not bad:
            console.print(f"{len(reports)} server(s): the history agrees with the live state")
    emit(out, json, human)
    if bad:
        worst = bad[0]
        raise OperationFailed(
            f"the history of {', '.join(r['server'] for r in bad)} differs from the live state "
            f"({worst['difference_count']} difference(s) on {worst['server']})")
