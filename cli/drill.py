"""``canidae drill failover|node|zone|partition|soak``: real faults, measured recovery, exit 1 on breach.

By default a drill starts a throwaway local cluster, runs, and removes it; ``--data-dir`` targets
a cluster started by ``cluster up`` instead (drills need its agents' pids to signal them).
``partition`` and ``soak`` start the throwaway cluster in network namespaces of their own when
they can (root, iproute2, nsenter), so that a partition is a link taken down; otherwise the
partition drill pauses the leader (SIGSTOP) and the soak skips its partition fault, and both
say so.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.ops import drill as drills
from canidae.agent.ops import localcluster
from canidae.cli.output import (
    JsonOption,
    TimeoutOption,
    console,
    emit,
    err_console,
    sigterm_as_interrupt,
    wants_json,
)
from canidae.cli.plans import YesOption, confirm
from canidae.core.errors import OperationFailed

FAULT_NAMES = ("kill", "pause", "crash-all", "kill-client", "partition")  # canidae.agent.ops.soak.FAULTS

app = typer.Typer(help="Inject real faults (SIGKILL, SIGSTOP) and measure the recovery.", no_args_is_help=True,
                  add_completion=False)

PacksOpt = Annotated[int, typer.Option("--packs", min=0, help="Virtual packs running during the drill.")]
RoundsOpt = Annotated[int, typer.Option("--rounds", min=1, help="Faults to inject, one after another.")]
ExpectOpt = Annotated[float | None, typer.Option(
    "--expect-failover", metavar="SECONDS", min=0,
    help="Exit 1 when any round takes longer than this to recover (new leader, next write, packs moved).")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", metavar="DIR", help="A cluster started by 'cluster up' (default: a throwaway local cluster).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the random choices.")]
ClientsOpt = Annotated[int, typer.Option("--clients", min=0, help="Client agents of the throwaway cluster.")]


def _open(data_dir: Path | None, clients: int, zones: int, yes: bool, servers: int = 3, namespaces: bool = False,
          env: dict[str, str] | None = None) -> localcluster.LocalCluster:
    if data_dir is None:
        where = "in network namespaces" if namespaces else "on loopback"
        err_console.print(f"starting a throwaway cluster {where}: {servers} servers, {clients} client(s), "
                          f"{zones} zone(s)")
        layout = localcluster.ClusterLayout(servers=servers, clients=clients, base_port=None, zones=zones)
        return localcluster.LocalCluster.start(layout, namespaces=namespaces, env=env)
    confirm(f"Inject real faults into the cluster in {data_dir}?", yes)
    return localcluster.LocalCluster.open(str(data_dir))


def _namespaces_usable(data_dir: Path | None) -> tuple[bool, str]:
    """(throwaway cluster in namespaces?, why not when not)."""
    if data_dir is not None:
        return False, f"the cluster in {data_dir} runs on loopback"
    from canidae.agent.ops import netns
    reason = netns.unavailable_reason()
    return reason is None, reason or ""


def _report(kind: str, rounds: list[drills.DrillRound], expect: float | None, json: bool,
            method: str | None = None) -> None:
    worst = max(r.recovery_s for r in rounds)
    breaches = []
    if expect is not None:
        breaches += [f"round {r.round}: recovered in {r.recovery_s:.3f} s > {expect:g} s" for r in rounds
                     if r.recovery_s > expect]
    breaches += [f"round {r.round}: {r.lost} pack(s) lost" for r in rounds if r.lost]
    breaches += [f"round {r.round}: {r.duplicated} pack(s) running twice" for r in rounds if r.duplicated]
    vals = sorted(r.recovery_s for r in rounds)
    doc: dict[str, Any] = {"drill": kind, "rounds": [r.to_dict() for r in rounds],
                           "recovery_s": {"min": vals[0], "median": vals[len(vals) // 2], "max": worst},
                           "expect_failover_s": expect, "breaches": breaches, "ok": not breaches}
    if method is not None:
        doc["method"] = method

    def human() -> None:
        if method is not None:
            console.print(f"partition by {method}")
        t = Table("round", "fault", "victims", "packs hit", "leader (s)", "write (s)", "packs moved (s)", "lost",
                  "twice")
        for r in rounds:
            t.add_row(str(r.round), r.fault, ",".join(r.victims), str(r.affected_packs), _f(r.leader_s),
                      _f(r.write_s), _f(r.packs_s), str(r.lost), str(r.duplicated))
        console.print(t)
        for r in rounds:
            console.print(f"round {r.round} timeline: " + "; ".join(f"+{t_:.3f}s {e}" for t_, e in r.timeline))
        console.print(f"recovery min/median/max: {vals[0]:.3f} / {vals[len(vals) // 2]:.3f} / {worst:.3f} s")
    emit(doc, json, human)
    if breaches:
        if not wants_json(json):
            err_console.print("breached: " + "; ".join(breaches))
        raise OperationFailed(f"drill expectation breached ({len(breaches)})")


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _run(kind: str, kill: str, packs: int, rounds: int, expect: float | None, data_dir: Path | None, seed: int,
         clients: int, zones: int, timeout: float, json: bool, yes: bool, zone: str | None = None,
         sig: int = signal.SIGKILL, cut: bool = False, method: str | None = None) -> None:
    cluster = _open(data_dir, clients, zones, yes, namespaces=cut)
    try:
        with sigterm_as_interrupt():
            done = drills.run_drill(cluster, kill, packs, rounds, seed, zone=zone, sig=sig, timeout=timeout,
                                    cut=cut, progress=lambda r: err_console.print(
                                        f"round {r.round}: {r.fault} {','.join(r.victims)} -> recovered in "
                                        f"{r.recovery_s:.3f} s"))
    finally:
        cluster.close()
    _report(kind, done, expect, json, method)


@app.command("failover")
def drill_failover(
    kill: Annotated[str, typer.Option("--kill", help="What to SIGKILL: leader, node or random.")] = "leader",
    packs: PacksOpt = 100, rounds: RoundsOpt = 1, expect: ExpectOpt = None, data_dir: DataDirOpt = None,
    seed: SeedOpt = 0, clients: ClientsOpt = 2, timeout: TimeoutOption = 30.0, yes: YesOption = False,
    json: JsonOption = False,
) -> None:
    """SIGKILL the leader (or a node), time the new leader, the next write and the packs' recovery."""
    _run("failover", kill, packs, rounds, expect, data_dir, seed, clients, 1, timeout, json, yes)


@app.command("node")
def drill_node(
    packs: PacksOpt = 1000, rounds: RoundsOpt = 1, expect: ExpectOpt = None, data_dir: DataDirOpt = None,
    seed: SeedOpt = 0, clients: ClientsOpt = 2, timeout: TimeoutOption = 30.0, yes: YesOption = False,
    json: JsonOption = False,
) -> None:
    """SIGKILL a node (a client agent when there is one) and time until all its packs run elsewhere."""
    _run("node", "node", packs, rounds, expect, data_dir, seed, clients, 1, timeout, json, yes)


@app.command("zone")
def drill_zone(
    zone: Annotated[str, typer.Argument(metavar="ZONE", help="Zone whose agents are all killed.")] = "z3",
    packs: PacksOpt = 300, expect: ExpectOpt = None, data_dir: DataDirOpt = None, seed: SeedOpt = 0,
    clients: ClientsOpt = 3, timeout: TimeoutOption = 60.0, yes: YesOption = False, json: JsonOption = False,
) -> None:
    """SIGKILL every agent of a zone (refused when it holds a majority of the servers)."""
    _run("zone", "zone", packs, 1, expect, data_dir, seed, clients, 3, timeout, json, yes, zone=zone)


@app.command("partition")
def drill_partition(
    packs: PacksOpt = 100, rounds: RoundsOpt = 1, expect: ExpectOpt = None, data_dir: DataDirOpt = None,
    seed: SeedOpt = 0, clients: ClientsOpt = 0, timeout: TimeoutOption = 30.0, yes: YesOption = False,
    json: JsonOption = False,
) -> None:
    """Cut the leader off: a new leader must take over, the old one must stop acting; then it comes
    back and must rejoin without losing or duplicating anything.

    A throwaway cluster runs in network namespaces where it can (root): the leader's link goes
    down, then up. Otherwise (or with --data-dir) the leader is paused (SIGSTOP, then SIGCONT).
    The report says which ("method")."""
    cut, why = _namespaces_usable(data_dir)
    if not cut:
        err_console.print(f"no network namespaces ({why}): pausing the leader instead (SIGSTOP)")
    _run("partition", "leader", packs, rounds, expect, data_dir, seed, clients, 1, timeout, json, yes,
         sig=signal.SIGSTOP, cut=cut,
         method="network namespaces (link down)" if cut else f"SIGSTOP ({why})")


SOAK_AGENT_ENV = {"CANIDAE_EXEC_GRACE_S": "2", "CANIDAE_EXEC_BACKOFF_S": "0.05"}


@app.command("soak")
def drill_soak(
    duration: Annotated[float, typer.Option("--duration", metavar="SECONDS", min=1,
                                            help="How long clients and nemesis run.")] = 60.0,
    clients: Annotated[int, typer.Option("--clients", min=1, help="Concurrent client workers.")] = 6,
    servers: Annotated[int, typer.Option("--servers", help="Servers of the throwaway cluster (3 or 5).")] = 3,
    client_agents: Annotated[int, typer.Option("--client-agents", min=0,
                                               help="Client agents of the throwaway cluster.")] = 2,
    seed: SeedOpt = 0,
    faults: Annotated[str, typer.Option(
        "--faults", metavar="LIST",
        help="Comma-separated faults: kill, pause, crash-all, kill-client, partition ('none': no fault).")
    ] = ",".join(FAULT_NAMES),
    data_dir: DataDirOpt = None,
    history: Annotated[Path | None, typer.Option(
        "--history", metavar="FILE", help="Write the history, faults and final observations (NDJSON).")] = None,
    yes: YesOption = False, json: JsonOption = False,
) -> None:
    """A Jepsen-style soak: concurrent clients spawn, stop and read packs (linearizable and stale,
    writes retried with their request ids) while a nemesis SIGKILLs and pauses the leader, crashes
    every server, kills client agents and cuts the leader off the network; then everything is
    healed, the cluster settles, and a checker judges the history and the final state: lost
    acknowledged writes, acknowledged packs not running, packs running twice, stale reads,
    linearizability per pack, replicas converged, agents' running sets (and exec packs' processes)
    equal to the state. Exit 1 when any check fails."""
    from canidae.agent.ops import soak as soaks

    names = () if faults.strip() == "none" else tuple(f.strip() for f in faults.split(",") if f.strip())
    opts = soaks.SoakOptions(duration_s=duration, clients=clients, seed=seed, faults=names)
    opts.validate()
    cut, why = _namespaces_usable(data_dir)
    if "partition" in names and not cut:
        err_console.print(f"no network namespaces ({why}): the partition fault is skipped")
    cluster = _open(data_dir, client_agents, 1, yes, servers=servers, namespaces=cut and "partition" in names,
                    env=SOAK_AGENT_ENV)
    result = None
    try:
        with sigterm_as_interrupt():
            result = soaks.Soak(cluster, opts, log=lambda line: err_console.print(line, markup=False)).run()
    finally:
        # A failed soak keeps the agents' logs and journals for the post-mortem.
        keep = cluster.temporary and result is not None and not result.ok
        cluster.close(keep_dir=keep)
        if keep:
            err_console.print(f"the cluster's data dir (agents' logs, Raft journals) is kept in {cluster.data_dir}")
    if history is not None:
        soaks.write_history(str(history), result)
    _soak_report(result, json)


def _soak_report(result: Any, json: bool) -> None:
    doc = result.to_dict()

    def human() -> None:
        t = Table("t (s)", "fault", "victims", "how", "took (s)", "then a leader (s)", title="faults")
        for f in result.faults:
            t.add_row(f"{f.t_s:.3f}", f.fault, ",".join(f.victims), f.detail, _f(f.took_s), _f(f.leader_s))
        console.print(t)
        for fault, why in sorted(result.skipped.items()):
            console.print(f"skipped {fault}: {why}")
        o = Table("op", "ok", "fail", "info", title=f"operations ({len(result.ops)} on {result.report.keys} packs)")
        for kind, counts in result.op_counts().items():
            o.add_row(kind, str(counts["ok"]), str(counts["fail"]), str(counts["info"]))
        console.print(o)
        gap = result.write_gap()
        if gap is not None:
            console.print(f"longest time without an acknowledged write: {gap['s']:.3f} s (from +{gap['from_s']:.3f} s)")
        c = Table("check", "count", "verdict", "example", title="checks")
        for title, count, verdict, example in result.rows():
            style = "green" if verdict == "pass" else "red" if verdict == "fail" else "yellow"
            c.add_row(title, str(count), f"[{style}]{verdict}[/]", example)
        console.print(c)
        settle = result.settle
        console.print(f"settled: {'yes' if settle['settled'] else 'no'} after {settle['settle_s']:.3f} s; "
                      f"cluster: {result.cluster['servers']} servers, {result.cluster['client_agents']} client "
                      f"agent(s) on {result.cluster['network']}; exec packs: "
                      f"{'yes' if result.cluster['exec']['enabled'] else 'no'}")
        for note in result.notes:
            console.print(f"note: {note}")
        for node, alert in sorted(result.log_alerts.items()):
            console.print(f"{node} logged {alert['count']} error(s); first: {alert['first'][0]}", markup=False)
        if result.postmortem:
            console.print(f"post-mortem of {len(result.postmortem)} pack(s) in --json and --history")
        console.print("all checks pass" if result.ok else "[red]some checks fail[/]")
    emit(doc, json, human)
    if not result.ok:
        failed = [c.id for c in result.checks() if c.verdict.value != "pass"]
        raise OperationFailed(f"soak: {len(failed)} check(s) did not pass: {', '.join(failed)}")
