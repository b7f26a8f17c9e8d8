"""``canidae pack create|place|spawn|list|show|stop|delete|history|migrate|kill|logs``."""

from __future__ import annotations

import json as jsonlib
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.client.execcalls import pack_kill as pack_kill_call
from canidae.agent.client.execcalls import pack_logs as pack_logs_call
from canidae.agent.client.execcalls import pack_processes
from canidae.cli.connect import client
from canidae.cli.output import (
    JsonOption, NdjsonOption, StaleOption, TimeoutOption, WaitOption, console, emit, err_console, full_values, wants_json,
)
from canidae.cli.params import (
    CommandArg, CpuOpt, DriverOpt, EnvOpt, GroupOpt, KillSignal, MemOpt, MembersOpt, Network, NetworkOpt, NewPackArg,
    NodeOpt, PackArg, PinCellOpt, PinNodeOpt, PinRegionOpt, PinZoneOpt, RestartOpt, SecretOpt, SpecFileOpt, SpreadOpt,
    ZoneOpt,
)
from canidae.cli.output import PACK_METAVAR
from canidae.cli.packlist import DEFAULT_LIMIT, list_packs
from canidae.cli.spec import merge_spec, read_spec_file
from canidae.core.errors import CanidaeError, InvalidInput, NoCapacity, NotFound, OperationFailed, Timeout
from canidae.core.types import Driver, RestartPolicy

app = typer.Typer(help="Create, place, run, move and stop packs.", no_args_is_help=True, add_completion=False)

CountOpt = Annotated[int, typer.Option("--count", "-n", min=0, max=100_000,
                                       help="Spawn NAME-0 .. NAME-(N-1) in one bulk request.")]
KeepPendingOpt = Annotated[bool, typer.Option(
    "--keep-pending", help="When a pack fits on no node, keep it pending (placed when room appears) instead of "
                           "creating nothing; when its command cannot start, keep the failed pack.")]
CheckOpt = Annotated[float, typer.Option(
    "--check", metavar="SECONDS", min=0,
    help="After an exec pack runs, watch its members this long: a member failing in that time makes this exit 1 "
         "(a crash loop). 0: do not watch.")]
HOLDS_A_NODE = ("placed", "running", "stopping")
ENDED = ("stopped", "failed")


def build_spec(name: str, command: list[str] | None, file: Path | None, driver: Driver | None, cpu: int | None,
               mem: int | None, members: int | None, zone: str | None, region: str | None, cell: str | None,
               node_name: str | None, spread: Any, group: str | None, restart: RestartPolicy | None,
               env: list[str] | None, secrets: list[str] | None = None,
               network: Network | None = None) -> dict[str, Any]:
    """The spec file (if any), overridden by the options that were given; checked (exit 2)."""
    return merge_spec(
        name, read_spec_file(file) if file is not None else {},
        {"driver": driver.value if driver else None, "cpu": cpu, "mem": mem, "members": members,
         "restart": restart.value if restart else None, "network": network.value if network else None},
        command,
        {"zone": zone, "region": region, "cell": cell, "node": node_name,
         "spread": spread.value if spread else None, "group": group},
        env, secrets)


def _placements_table(placements: list[dict[str, Any]]) -> Table:
    t = Table("pack", "node", "generation / reason")
    for p in placements[:200]:
        t.add_row(p["name"], p["node"] or "[yellow]pending[/]", str(p.get("generation") or p.get("pending", "")))
    return t


@app.command("create")
def pack_create(
    name: NewPackArg, command: CommandArg = None, file: SpecFileOpt = None, driver: DriverOpt = None,
    cpu: CpuOpt = None, mem: MemOpt = None, members: MembersOpt = None, zone: PinZoneOpt = None,
    region: PinRegionOpt = None, cell: PinCellOpt = None, node_name: PinNodeOpt = None, spread: SpreadOpt = None,
    group: GroupOpt = None, restart: RestartOpt = None, env: EnvOpt = None,
    secret: SecretOpt = None, network: NetworkOpt = None, count: CountOpt = 0, json: JsonOption = False,
) -> None:
    """Record a pack in the cluster without running it ('pack place' runs it)."""
    spec = build_spec(name, command, file, driver, cpu, mem, members, zone, region, cell, node_name, spread, group,
                      restart, env, secret, network)
    with client() as c:
        result = c.create_packs([spec], count=count, place=False)
    emit(result, json, lambda: console.print(f"created {len(result['created'])} pack(s)"))


@app.command("place")
def pack_place(pack_name: PackArg, wait: WaitOption = True, timeout: TimeoutOption = 30.0,
               keep_pending: KeepPendingOpt = False, json: JsonOption = False) -> None:
    """Place a created (or stopped) pack on a node and start it.

    A pack that fits on no node exits 6 and stays as it was (with --keep-pending it waits, pending).
    """
    with client() as c:
        result = c.pack_action(pack_name, "place", keep_pending=keep_pending)
        if wait and result["placements"] and result["placements"][0]["node"]:
            c.wait_running([pack_name], timeout)
    emit(result, json, lambda: console.print(_placements_table(result["placements"])))


SPAWN_HELP = (
    "Create, place and start packs; print where they run and how long it took.\n\n"
    # One line per paragraph: help keeps the text's line breaks, so wrapping is left to the terminal.
    "Waits (unless --no-wait) until every member of every pack runs: for the exec driver, until the node has "
    "started every member process, then watches the members for --check seconds. A pack that fits on no node "
    "exits 6 (an unknown zone, region, cell or node: 5), and nothing is created. A pack whose command cannot "
    "start exits 1 with the reason and is removed; one whose members keep failing (a crash loop) exits 1 with "
    "the member's exit and last output, and stays for 'pack logs' ('pack delete' removes it). --keep-pending "
    "keeps what a failed spawn created.\n\n"
    "Members get these environment variables: CANIDAE_PACK (the pack's name), CANIDAE_MEMBER (this member's "
    "index, 0..N-1), CANIDAE_MEMBERS (N), CANIDAE_NODE, CANIDAE_GENERATION (the placement's generation), "
    "CANIDAE_ADDR (the node's agent API), CANIDAE_MAILBOX (the pack's mailbox URL), CANIDAE_TOKEN and "
    "CANIDAE_PACK_TOKEN (the pack's token), CANIDAE_CONFIG; and PATH, HOME (the working directory), LANG and "
    "the --env and --secret ones (a secret is sealed at rest and shown nowhere but to the members).\n\n"
    "With --count N, NAME-0 .. NAME-(N-1) go in one bulk request (one log entry)."
)


@app.command("spawn", help=SPAWN_HELP)
def pack_spawn(
    name: NewPackArg, command: CommandArg = None, file: SpecFileOpt = None, driver: DriverOpt = None,
    cpu: CpuOpt = None, mem: MemOpt = None, members: MembersOpt = None, zone: PinZoneOpt = None,
    region: PinRegionOpt = None, cell: PinCellOpt = None, node_name: PinNodeOpt = None, spread: SpreadOpt = None,
    group: GroupOpt = None, restart: RestartOpt = None, env: EnvOpt = None,
    secret: SecretOpt = None, network: NetworkOpt = None, count: CountOpt = 0, wait: WaitOption = True,
    timeout: TimeoutOption = 30.0, keep_pending: KeepPendingOpt = False, check: CheckOpt = 1.0,
    json: JsonOption = False,
) -> None:
    spec = build_spec(name, command, file, driver, cpu, mem, members, zone, region, cell, node_name, spread, group,
                      restart, env, secret, network)
    t0 = time.perf_counter()
    ended: dict[str, dict[str, Any]] = {}
    with client() as c:
        result = c.create_packs([spec], count=count, place=True, keep_pending=keep_pending)
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
        if not failed and len(ended) == 1 and spec["driver"] == Driver.EXEC.value and check > 0:
            only = next(iter(ended.values()))
            if only["state"] == "running":
                ended_early = _check_members(c, only, check)
                failed = [ended_early] if ended_early is not None else []
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            if not keep_pending:
                # It never ran for good: nothing of it is left (the cluster keeps its history).
                c.delete_packs([p["name"] for p in failed])
            raise OperationFailed(f"pack {failed[0]['name']} failed on node {failed[0]['node']}: "
                                  f"{failed[0]['reason']}{more}" + ("" if keep_pending else "; it was removed"))
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
    if placements and not placed:  # only with --keep-pending: without, the cluster refused it whole
        raise NoCapacity(f"no node can take {name}: {pending[0]['pending']} (kept pending: it starts once "
                         "a node has room)")
    emit(out, json, human)


def _check_members(c: Any, pack: dict[str, Any], seconds: float) -> dict[str, Any] | None:
    """Watch a freshly started exec pack for ``seconds``: a member that exits with a failure in that
    time is a crash loop, reported as an error with the member's last output. A pack that failed for
    good in that time (its restart policy gave up) is returned, for the caller to treat as a failed
    start."""
    name = pack["name"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            status = pack_processes(c, name)
        except NotFound:
            status = {"members": []}
        bad = [m for m in status.get("members", []) if m.get("last_exit") and m["last_exit"] != "exited 0"]
        if bad and pack.get("restart") == "never":
            bad = []  # nothing restarts it: the pack fails for good (below) rather than loops
        if bad:
            p = c.pack(name, stale=True)
            if p["state"] == "failed":
                return p  # type: ignore[no-any-return]
            m = bad[0]
            last = _last_output(c, name, m["index"])
            raise OperationFailed(
                f"pack {name} is crash-looping on node {pack['node']}: member {m['index']} {m['last_exit']} "
                f"within {seconds:g} s of starting and is being restarted"
                + (f"; its last output: {last!r}" if last else "")
                + f" (see 'canidae pack logs {name} --member {m['index']}'; 'canidae pack delete {name}' removes it)")
        p = c.pack(name, stale=True)
        if p["state"] == "failed":
            return p  # type: ignore[no-any-return]
        time.sleep(0.05)
    return None


def _last_output(c: Any, name: str, member: int) -> str:
    try:
        got = pack_logs_call(c, name, member=member, tail=1)
    except CanidaeError:
        return ""
    return "".join(m["text"] for m in got["members"]).strip()[-200:]


def _wait_started(c: Any, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until every pack runs, failed or already ended (blocking reads: the startup time printed
    is the pack's, not a poll interval's)."""
    return c.wait_packs(names, lambda p: p["state"] in ("running", "failed", "stopped"),  # type: ignore[no-any-return]
                        timeout)


def _wait_bulk(c: Any, prefix: str, n: int, timeout: float) -> None:
    """Wait until no pack is placed and not yet running (blocking reads of the pack list)."""
    got = c.watch(lambda index, wait: c.packs(state="placed", limit=1, index=index, wait=wait),
                  lambda page: not page["packs"], time.monotonic() + timeout)
    if got is None:
        raise Timeout(f"packs of {prefix} still not running after {timeout:g} s")


class StateFilter(str, Enum):
    """What ``pack list --state`` takes: a pack state, or ``crashlooping`` (running packs whose
    members keep failing)."""

    CREATED = "created"
    PENDING = "pending"
    PLACED = "placed"
    RUNNING = "running"
    CRASHLOOPING = "crashlooping"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


def shown_state(p: dict[str, Any]) -> str:
    """The state people see: a running pack in a crash loop is ``crashlooping``."""
    return "crashlooping" if p.get("crashlooping") else str(p["state"])


@app.command("list")
def pack_list(
    node_name: NodeOpt = None, zone: ZoneOpt = None,
    state: Annotated[StateFilter | None, typer.Option("--state", help="Only packs in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many packs.")] = DEFAULT_LIMIT,
    after: Annotated[str | None, typer.Option("--after", metavar=PACK_METAVAR,
                                              help="Start after this name (paging).")] = None,
    stale: StaleOption = False, json: JsonOption = False,
) -> None:
    """List packs sorted by name, with state and node (paged: --limit, --after).

    With --json, "total" counts every pack matching the filters (not only the ones printed).
    An unknown --node or --zone exits 5.
    """
    with client() as c:
        listed = list_packs(c, node=node_name, zone=zone, state=state.value if state else None, limit=limit,
                            after=after, stale=stale)
    packs, cursor = listed["packs"], listed["next"]
    whole = full_values()

    def human() -> None:
        t = Table("pack", "state", "node", "cpu", "mem", "gen", "reason")
        for p in packs:
            reason = p["reason"] if whole else p["reason"][:60]
            t.add_row(p["name"], shown_state(p), p["node"] or "-", str(p["cpu"]), str(p["mem"]),
                      str(p["generation"]), reason)
        console.print(t)
        if cursor:
            err_console.print(f"more packs after {cursor} (use --after {cursor})")
    emit(listed, json, human)


WAITING = {
    "created": "created, not asked to run: 'canidae pack place {name}' runs it",
    "stopped": "stopped: 'canidae pack place {name}' runs it again",
    "failed": "failed: 'canidae pack place {name}' runs it again",
}


def _where(p: dict[str, Any]) -> str:
    """The node row of ``pack show``: the node, or why the pack has none."""
    if p["node"]:
        return str(p["node"])
    if p["state"] == "pending":
        return f"none: waiting for room ({p['reason']})" if p["reason"] else "none: waiting for room"
    return "none: " + WAITING.get(p["state"], p["state"]).format(name=p["name"])


def _ago(ms: int) -> str:
    if not ms:
        return "-"
    s = max(0.0, time.time() - ms / 1000)
    return f"{s:.1f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def _member_rows(status: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for m in status.get("members", []):
        alive = m.get("running")
        out.append({"member": m["index"], "pid": m.get("pid") or None,
                    "state": "running" if alive else "exited" if status.get("state") != "running" else "restarting",
                    "restarts": m.get("restarts", 0), "last_exit": m.get("last_exit") or None,
                    "last_exit_at": m.get("last_exit_at") or None})
    return out


@app.command("show")
def pack_show(pack_name: PackArg, stale: StaleOption = False, json: JsonOption = False) -> None:
    """Show a pack: spec, state, node (or why it has none) and its members.

    For exec packs, each member with its pid, state, restarts, and how and when it last exited.
    A running pack whose members keep failing shows as crashlooping, with the last reason."""
    members: list[dict[str, Any]] | None = None
    with client() as c:
        p = c.pack(pack_name, stale=stale)
        if p["driver"] == Driver.EXEC.value and p["node"]:
            try:
                members = _member_rows(pack_processes(c, pack_name))
            except CanidaeError as e:  # its node may be down: the pack itself is still shown
                err_console.print(f"members unknown: {e.message}")

    def human() -> None:
        t = Table(show_header=False)
        for k, v in p.items():
            if k == "crashlooping":
                continue
            shown = shown_state(p) if k == "state" else _where(p) if k == "node" else v
            t.add_row(k, str(shown))
        console.print(t)
        if members is not None:
            mt = Table("member", "pid", "state", "restarts", "last exit", "when")
            for m in members:
                mt.add_row(str(m["member"]), str(m["pid"] or "-"), m["state"], str(m["restarts"]),
                           m["last_exit"] or "-", _ago(m["last_exit_at"] or 0))
            console.print(mt)
    emit({"pack": p, **({"members": members} if members is not None else {})}, json, human)


def _wait_ended(c: Any, names: list[str], timeout: float) -> None:
    c.wait_packs(names, lambda p: p["state"] in ENDED, timeout, what="not stopped")


@app.command("stop")
def pack_stop(pack_name: PackArg, wait: WaitOption = True, timeout: TimeoutOption = 30.0,
              json: JsonOption = False) -> None:
    """Stop a pack (desired state: stopped); with --wait, until its node reports it stopped."""
    with client() as c:
        result = c.pack_action(pack_name, "stop")
        if wait:
            _wait_ended(c, [pack_name], timeout)
    emit(result, json, lambda: console.print(f"pack {pack_name} stopped" if wait else f"pack {pack_name} stopping"))


@app.command("delete")
def pack_delete(
    pack_names: Annotated[list[str] | None, typer.Argument(metavar=PACK_METAVAR, help="Packs to delete.",
                                                          show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Delete packs that still run at once, without waiting "
                                                        "for their node to stop them (it stops them after).")]
    = False,
    all_stopped: Annotated[bool, typer.Option("--all-stopped", help="Delete every stopped or failed pack.")] = False,
    timeout: TimeoutOption = 30.0, json: JsonOption = False,
) -> None:
    """Delete packs, stopping them first if they run; their history stays.

    Removes them from the cluster and their files (work directory, logs) from their node.
    'pack history NAME' still answers, ending with PackDeleted. An unknown pack exits 5 and
    nothing is deleted."""
    names = list(dict.fromkeys(pack_names or []))
    if bool(names) == all_stopped:
        raise InvalidInput("give pack names or --all-stopped (not both)")
    with client() as c:
        if all_stopped:
            names = [p["name"] for s in ENDED for p in c.iter_packs(state=s)]
            packs = {}
        else:
            packs = {n: c.pack(n) for n in names}  # every name checked before anything changes
        running = [n for n, p in packs.items() if p["state"] in HOLDS_A_NODE]
        if running and not force:
            for n in running:
                if packs[n]["state"] != "stopping":
                    c.pack_action(n, "stop")
            _wait_ended(c, running, timeout)
        deleted: list[dict[str, Any]] = []
        for i in range(0, len(names), 10_000):
            deleted.extend(c.delete_packs(names[i:i + 10_000], force=force)["deleted"])

    def human() -> None:
        if not deleted:
            console.print("no pack to delete")
        for d in deleted[:200]:
            was = f" (was {d['state']}" + (f" on {d['node']})" if d["node"] else ")")
            console.print(f"deleted pack {d['name']}{was}")
        if len(deleted) > 200:
            console.print(f"... {len(deleted)} pack(s) deleted")
    emit({"deleted": deleted}, json, human)


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
    "[I]. With --json, one JSON document; with --follow and --json, NDJSON: one JSON object per line, one line "
    "per chunk of output as it arrives."))
def pack_logs(
    pack_name: PackArg,
    member: Annotated[int | None, typer.Option("--member", "-m", metavar="I", min=0,
                                               help="Only member I (0, 1, ...).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output until the pack ends "
                                                               "or you interrupt.")] = False,
    tail: TailOpt = None,
    json: NdjsonOption = False,
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
