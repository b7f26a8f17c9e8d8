"""``canidae pack create|place|spawn|list|show|stop|history|migrate|kill|logs``."""

from __future__ import annotations

import json as jsonlib
import sys
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.client.execcalls import pack_kill as pack_kill_call
from canidae.agent.client.execcalls import pack_logs as pack_logs_call
from canidae.cli.connect import client
from canidae.cli.output import (
    JsonOption, StaleOption, TimeoutOption, WaitOption, console, emit, err_console, wants_json,
)
from canidae.cli.params import (
    CommandArg, CpuOpt, DriverOpt, EnvOpt, GroupOpt, KillSignal, MemOpt, MembersOpt, Network, NetworkOpt, NewPackArg,
    NodeOpt, PackArg, PinCellOpt, PinNodeOpt, PinRegionOpt, PinZoneOpt, RestartOpt, SecretOpt, SpecFileOpt, SpreadOpt,
    ZoneOpt,
)
from canidae.core.errors import InvalidInput, Timeout
from canidae.core.types import Driver, RestartPolicy, validate_env_name

app = typer.Typer(help="Create, place, run, move and stop packs.", no_args_is_help=True, add_completion=False)

SpawnDriverOpt = Annotated[Driver | None, typer.Option(
    "--driver", help="How members run: real processes or state only (default: exec with a COMMAND, else virtual).")]
CountOpt = Annotated[int, typer.Option("--count", "-n", min=0, max=100_000,
                                       help="Spawn NAME-0 .. NAME-(N-1) in one bulk request.")]


def build_spec(name: str, command: list[str] | None, file: Path | None, driver: Driver, cpu: int, mem: int,
               members: int, zone: str | None, region: str | None, cell: str | None, node_name: str | None,
               spread: Any, group: str | None, restart: RestartPolicy, env: list[str] | None,
               secrets: list[str] | None = None, network: Network | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if file is not None:
        try:
            with open(file, "rb") as f:
                spec.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidInput(f"cannot read pack spec {file}: {e}") from None
    spec.update(name=name, driver=driver.value, cpu=cpu, mem=mem, members=members, restart=restart.value)
    if command:
        spec["command"] = list(command)
    constraints = {k: v for k, v in (("zone", zone), ("region", region), ("cell", cell), ("node", node_name),
                                     ("spread", spread.value if spread else None), ("group", group)) if v}
    if constraints:
        spec["constraints"] = constraints
    if env:
        spec["env"] = {**(spec.get("env") or {}), **_pairs("--env", env)}
    if secrets:
        spec["secrets"] = {**(spec.get("secrets") or {}), **_pairs("--secret", secrets)}
    if network is not None and (network is not Network.HOST or "network" not in spec):
        spec["network"] = network.value
    # Refused here, before anything is sent (the API refuses them too).
    for table, what in (("env", "env variable"), ("secrets", "secret")):
        if not isinstance(spec.get(table, {}), dict):
            raise InvalidInput(f"{table} in a pack spec must be a table of KEY = \"VALUE\"")
        for key in spec.get(table, {}):
            validate_env_name(what, key)
    return spec


def _pairs(flag: str, items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{flag} {item!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


def _placements_table(placements: list[dict[str, Any]]) -> Table:
    t = Table("pack", "node", "generation / reason")
    for p in placements[:200]:
        t.add_row(p["name"], p["node"] or "[yellow]pending[/]", str(p.get("generation") or p.get("pending", "")))
    return t


@app.command("create")
def pack_create(
    name: NewPackArg, command: CommandArg = None, file: SpecFileOpt = None, driver: DriverOpt = Driver.VIRTUAL,
    cpu: CpuOpt = 100, mem: MemOpt = 64, members: MembersOpt = 1, zone: PinZoneOpt = None,
    region: PinRegionOpt = None, cell: PinCellOpt = None, node_name: PinNodeOpt = None, spread: SpreadOpt = None,
    group: GroupOpt = None, restart: RestartOpt = RestartPolicy.ON_FAILURE, env: EnvOpt = None,
    secret: SecretOpt = None, network: NetworkOpt = Network.HOST, count: CountOpt = 0, json: JsonOption = False,
) -> None:
    """Record a pack in the cluster without running it ('pack place' runs it)."""
    spec = build_spec(name, command, file, driver, cpu, mem, members, zone, region, cell, node_name, spread, group,
                      restart, env, secret, network)
    with client() as c:
        result = c.create_packs([spec], count=count, place=False)
    emit(result, json, lambda: console.print(f"created {len(result['created'])} pack(s)"))


@app.command("place")
def pack_place(pack_name: PackArg, wait: WaitOption = True, timeout: TimeoutOption = 30.0,
               json: JsonOption = False) -> None:
    """Place a created (or stopped) pack on a node and start it."""
    with client() as c:
        result = c.pack_action(pack_name, "place")
        if wait and result["placements"] and result["placements"][0]["node"]:
            c.wait_running([pack_name], timeout)
    emit(result, json, lambda: console.print(_placements_table(result["placements"])))


SPAWN_HELP = (
    "Create, place and start packs; print where they run and how long it took.\n\n"
    # One line per paragraph: help keeps the text's line breaks, so wrapping is left to the terminal.
    "Waits (unless --no-wait) until every member of every pack runs: for the exec driver, until the node has "
    "started every member process. A pack that cannot start (a command that is missing, say) makes this exit 1 "
    "with the reason; a pack that fits on no node, exit 6.\n\n"
    "With --count N, NAME-0 .. NAME-(N-1) go in one bulk request (one log entry)."
)


@app.command("spawn", help=SPAWN_HELP)
def pack_spawn(
    name: NewPackArg, command: CommandArg = None, file: SpecFileOpt = None, driver: SpawnDriverOpt = None,
    cpu: CpuOpt = 100, mem: MemOpt = 64, members: MembersOpt = 1, zone: PinZoneOpt = None,
    region: PinRegionOpt = None, cell: PinCellOpt = None, node_name: PinNodeOpt = None, spread: SpreadOpt = None,
    group: GroupOpt = None, restart: RestartOpt = RestartPolicy.ON_FAILURE, env: EnvOpt = None,
    secret: SecretOpt = None, network: NetworkOpt = Network.HOST, count: CountOpt = 0, wait: WaitOption = True,
    timeout: TimeoutOption = 30.0, json: JsonOption = False,
) -> None:
    if driver is None:
        driver = Driver.EXEC if command else Driver.VIRTUAL
    spec = build_spec(name, command, file, driver, cpu, mem, members, zone, region, cell, node_name, spread, group,
                      restart, env, secret, network)
    t0 = time.perf_counter()
    ended: dict[str, dict[str, Any]] = {}
    with client() as c:
        result = c.create_packs([spec], count=count, place=True)
        placed_s = time.perf_counter() - t0
        placements = result["placements"]
        placed = [p["name"] for p in placements if p["node"]]
        pending = [p for p in placements if not p["node"]]
        running_s = None
        if wait and placed:
            if len(placed) <= 50:
                ended = _wait_started(c, placed, timeout)
            else:
                _wait_bulk(c, name, len(placed), timeout)
            running_s = time.perf_counter() - t0
    failed = [p for p in ended.values() if p["state"] == "failed"]
    if failed:
        from canidae.core.errors import OperationFailed
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise OperationFailed(f"pack {failed[0]['name']} failed on node {failed[0]['node']}: "
                              f"{failed[0]['reason']}{more}")
    out = {"packs": len(placements), "placed": len(placed), "pending": len(pending),
           "placements": placements if len(placements) <= 1000 else placements[:1000],
           "placed_ms": round(placed_s * 1000, 3),
           "running_ms": None if running_s is None else round(running_s * 1000, 3)}
    if len(ended) == 1:
        only = next(iter(ended.values()))
        out["state"] = only["state"]
        # Cluster time from the spawn's commit to the node's report that every member runs.
        out["started_ms"] = only["updated_at"] - only["created_at"]

    def human() -> None:
        if len(placements) == 1:
            p = placements[0]
            if p["node"]:
                took = f"running in {running_s * 1000:.1f} ms" if running_s else f"placed in {placed_s * 1000:.1f} ms"
                if out.get("state") == "stopped":
                    took = f"ran and {ended[p['name']]['reason']} within {running_s * 1000:.1f} ms"  # type: ignore[operator]
                console.print(f"pack [bold]{p['name']}[/] on node [bold]{p['node']}[/]: {took}")
            else:
                err_console.print(f"pack {p['name']} is pending: {p['pending']}")
        else:
            nodes = sorted({p["node"] for p in placements if p["node"]})
            took = f"running in {running_s:.2f} s" if running_s else f"placed in {placed_s:.2f} s"
            console.print(f"{len(placed)} pack(s) on {len(nodes)} node(s), {len(pending)} pending: {took}")
    emit(out, json, human)
    if placements and not placed:
        from canidae.core.errors import NoCapacity
        raise NoCapacity(f"no node can take {name}: {pending[0]['pending']}")


def _wait_started(c: Any, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until every pack runs, failed or already ended; a short interval first, so that the
    startup time printed is the pack's, not the poll's."""
    t0 = time.monotonic()
    left = set(names)
    seen: dict[str, dict[str, Any]] = {}
    while left:
        for n in sorted(left):
            p = c.pack(n, stale=True)
            if p["state"] in ("running", "failed", "stopped"):
                seen[n] = p
                left.discard(n)
        if not left:
            break
        waited = time.monotonic() - t0
        if waited >= timeout:
            raise Timeout(f"{len(left)} pack(s) not running after {timeout:g} s (e.g. {sorted(left)[0]})")
        time.sleep(0.002 if waited < 0.5 else 0.02)
    return seen


def _wait_bulk(c: Any, prefix: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        page = c.packs(state="placed", limit=1, stale=True)
        if not page["packs"]:
            return
        if time.monotonic() > deadline:
            raise Timeout(f"packs of {prefix} still not running after {timeout:g} s")
        time.sleep(0.05)


@app.command("list")
def pack_list(
    node_name: NodeOpt = None, zone: ZoneOpt = None,
    state: Annotated[str | None, typer.Option("--state", help="Only packs in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many packs.")] = 1000,
    after: Annotated[str | None, typer.Option("--after", metavar="PACK", help="Start after this name (paging).")]
    = None,
    stale: StaleOption = False, json: JsonOption = False,
) -> None:
    """List packs sorted by name, with state and node (paged: --limit, --after)."""
    with client() as c:
        packs: list[dict[str, Any]] = []
        cursor = after
        total = 0
        while len(packs) < limit:
            page = c.packs(node=node_name, state=state, after=cursor, limit=min(10_000, limit - len(packs)),
                           stale=stale)
            total = page["total"]
            packs.extend(page["packs"])
            cursor = page["next"]
            if not cursor:
                break
    if zone:
        with client() as c:
            in_zone = {n["id"] for n in c.nodes(stale=True) if n["zone"] == zone}
        packs = [p for p in packs if p["node"] in in_zone]

    def human() -> None:
        t = Table("pack", "state", "node", "cpu", "mem", "gen", "reason")
        for p in packs:
            t.add_row(p["name"], p["state"], p["node"] or "-", str(p["cpu"]), str(p["mem"]), str(p["generation"]),
                      p["reason"][:60])
        console.print(t)
        if cursor:
            err_console.print(f"more packs after {cursor} (use --after {cursor})")
    emit({"packs": packs, "next": cursor, "total": total}, json, human)


@app.command("show")
def pack_show(pack_name: PackArg, stale: StaleOption = False, json: JsonOption = False) -> None:
    """Show a pack: spec, state, node and placement generation."""
    with client() as c:
        p = c.pack(pack_name, stale=stale)

    def human() -> None:
        t = Table(show_header=False)
        for k, v in p.items():
            t.add_row(k, str(v))
        console.print(t)
    emit({"pack": p}, json, human)


@app.command("stop")
def pack_stop(pack_name: PackArg, wait: WaitOption = True, timeout: TimeoutOption = 30.0,
              json: JsonOption = False) -> None:
    """Stop a pack (desired state: stopped); with --wait, until its node reports it stopped."""
    with client() as c:
        result = c.pack_action(pack_name, "stop")
        if wait:
            c.wait_running([pack_name], timeout)  # returns on running, stopped or failed
            deadline = time.monotonic() + timeout
            while c.pack(pack_name, stale=True)["state"] not in ("stopped", "failed"):
                if time.monotonic() > deadline:
                    raise Timeout(f"pack {pack_name} not stopped after {timeout:g} s")
                time.sleep(0.02)
    emit(result, json, lambda: console.print(f"pack {pack_name} stopped" if wait else f"pack {pack_name} stopping"))


@app.command("history")
def pack_history(
    pack_name: PackArg,
    since: Annotated[str | None, typer.Option("--since", metavar="T",
                                              help="Only events from T on: a duration back from now (90s, 15m, "
                                                   "2h, 7d), a UTC time (2025-06-01T12:00:00) or epoch ms.")]
    = None,
    limit: Annotated[int | None, typer.Option("--limit", metavar="N", min=1, help="Only the last N events.")] = None,
    json: JsonOption = False,
) -> None:
    """Print a pack's timeline, oldest first, with the time each step took.

    Each change of the pack is an event (created, placed, started, failed, migrating, stopped).
    Times are those the commands were proposed at. An unknown pack exits 5.
    """
    from canidae.cli.history import describe, fmt_delta, fmt_time, parse_since, warn_gaps

    since_ms = parse_since(since) if since is not None else None
    with client() as c:
        data = c.pack_events(pack_name, since_ms)
    events = data["events"][-limit:] if limit else data["events"]
    prev = None
    for e in events:
        e["step_ms"] = None if prev is None else e["at"] - prev
        prev = e["at"]
    first = events[0]["at"] if events else None
    removed = bool(events) and data.get("retained_from", 1) > 1 and events[0]["type"] != "PackCreated" \
        and since_ms is None and not limit

    def human() -> None:
        t = Table("seq", "time (UTC)", "step", "elapsed", "event", "node", "detail",
                  title=f"pack {pack_name}" + (f", {fmt_time(events[0]['at'])[:10]}" if events else ""))
        for column in t.columns[:6]:
            column.no_wrap = True
        day = events[0]["at"] if events else None
        for e in events:
            t.add_row(str(e["seq"]), fmt_time(e["at"], day), fmt_delta(e["step_ms"]) if e["step_ms"] is not None
                      else "", fmt_delta(e["at"] - first) if first is not None else "", e["type"],
                      e.get("node") or "", describe(e))
            day = e["at"]
        console.print(t)
        if events:
            console.print(f"{len(events)} event(s) over {fmt_delta(events[-1]['at'] - events[0]['at'])}; "
                          f"last: {events[-1]['type']}")
        else:
            console.print(f"no events of pack {pack_name}" + (" since then" if since_ms is not None else ""))
        if removed:
            err_console.print(f"note: events before seq {data['retained_from']} were removed by retention")
        warn_gaps([g for g in data.get("gaps", []) if not events or g[1] >= events[0]["seq"]])
    emit({"pack": pack_name, "events": events, "retained_from": data.get("retained_from", 1),
          "gaps": data.get("gaps", [])}, json, human)


@app.command("migrate")
def pack_migrate(
    pack_name: PackArg,
    to: Annotated[str | None, typer.Option("--to", metavar="NODE",
                                           help="Target node (default: the scheduler chooses).")] = None,
    wait: WaitOption = True, timeout: TimeoutOption = 30.0, json: JsonOption = False,
) -> None:
    """Move a running pack to another node: its new placement starts there, the old one stops."""
    t0 = time.perf_counter()
    with client() as c:
        result = c.migrate(pack_name, to)
        m = result["migrations"][0]
        if not m["moved"]:
            from canidae.core.errors import NoCapacity
            raise NoCapacity(f"pack {pack_name} cannot move: {m['reason']}")
        if wait:
            c.wait_running([pack_name], timeout, {pack_name: m["generation"]})
    took = time.perf_counter() - t0
    emit({**m, "seconds": round(took, 3)}, json,
         lambda: console.print(f"pack {pack_name} moved {m['source']} -> {m['node']} in {took * 1000:.1f} ms"))


@app.command("kill", help=(
    "Send a signal to every member of a pack (exec driver), on whichever node it runs.\n\n"
    "Members that exit then go through the pack's restart policy (so 'kill -s hup' can ask for a reload, and a "
    "killed member of an 'always' pack comes back); 'pack stop' stops a pack."))
def pack_kill(pack_name: PackArg,
              signal: Annotated[KillSignal, typer.Option("--signal", "-s", help="Signal sent to the members.")] = (
                  KillSignal.KILL), json: JsonOption = False) -> None:
    with client() as c:
        result = pack_kill_call(c, pack_name, signal.value.upper())
    emit(result, json, lambda: console.print(
        f"sent {result['signal']} to {len(result['members'])} member(s) of pack {pack_name} on node {result['node']}"))


TailOpt = Annotated[int | None, typer.Option("--tail", "-n", metavar="N", min=0,
                                             help="Only the last N lines of each member.")]


@app.command("logs", help=(
    "Print the output (stdout and stderr, interleaved) of a pack's members (exec driver).\n\n"
    "Works through any agent: the request goes to the pack's node. With several members, each line starts with "
    "[I]. With --json, one JSON document (one per chunk with --follow)."))
def pack_logs(
    pack_name: PackArg,
    member: Annotated[int | None, typer.Option("--member", "-m", metavar="I", min=0,
                                               help="Only member I (0, 1, ...).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output until the pack ends "
                                                               "or you interrupt.")] = False,
    tail: TailOpt = None,
    json: JsonOption = False,
) -> None:
    as_json = wants_json(json)
    with client() as c:
        got = pack_logs_call(c, pack_name, member=member, tail=tail)
        _print_logs(got, as_json)
        if not follow:
            return
        cursors = {m["member"]: m["cursor"] for m in got["members"]}
        while True:
            got = pack_logs_call(c, pack_name, member=member, cursors=cursors, wait=5)
            if any(m["text"] for m in got["members"]):
                _print_logs(got, as_json)
            cursors.update({m["member"]: m["cursor"] for m in got["members"]})
            if not any(m["text"] for m in got["members"]) and \
                    c.pack(pack_name, stale=True)["state"] in ("stopped", "failed"):
                return


def _print_logs(got: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(jsonlib.dumps(got) + "\n")
        sys.stdout.flush()
        return
    several = len(got["members"]) > 1
    for m in got["members"]:
        if m["lost"]:
            err_console.print(f"[{m['member']}] ({m['lost']} bytes rotated away before this point)")
        text = m["text"]
        if several and text:
            lines = text.splitlines(keepends=True)
            text = "".join(f"[{m['member']}] {line}" for line in lines)
        sys.stdout.write(text)
    sys.stdout.flush()
