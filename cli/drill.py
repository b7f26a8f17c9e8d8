"""``canidae drill failover|node|zone|partition``: real faults, measured recovery, exit 1 on breach.

By default a drill starts a throwaway local cluster, runs, and removes it; ``--data-dir`` targets
a cluster started by ``cluster up`` instead (drills need its agents' pids to signal them).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.ops import drill as drills
from canidae.agent.ops import localcluster
from canidae.cli.output import JsonOption, TimeoutOption, console, emit, err_console, wants_json
from canidae.cli.plans import YesOption, confirm
from canidae.core.errors import OperationFailed

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


def _open(data_dir: Path | None, clients: int, zones: int, yes: bool) -> drills.DrillCluster:
    if data_dir is None:
        err_console.print(f"starting a throwaway cluster: 3 servers, {clients} client(s), {zones} zone(s)")
        return drills.DrillCluster.throwaway_up(3, clients, zones, localcluster.find_base_port(3, clients))
    confirm(f"Inject real faults into the cluster in {data_dir}?", yes)
    return drills.DrillCluster.open(str(data_dir))


def _report(kind: str, rounds: list[drills.DrillRound], expect: float | None, json: bool) -> None:
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

    def human() -> None:
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
         sig: int = signal.SIGKILL) -> None:
    cluster = _open(data_dir, clients, zones, yes)
    try:
        done = drills.run_drill(cluster, kill, packs, rounds, seed, zone=zone, sig=sig, timeout=timeout,
                                progress=lambda r: err_console.print(
                                    f"round {r.round}: {r.fault} {','.join(r.victims)} -> recovered in "
                                    f"{r.recovery_s:.3f} s"))
    finally:
        cluster.close()
    _report(kind, done, expect, json)


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
    seed: SeedOpt = 0, timeout: TimeoutOption = 30.0, yes: YesOption = False, json: JsonOption = False,
) -> None:
    """Cut the leader off by pausing it (SIGSTOP): a new leader must take over, the old one must stop
    acting; then it resumes (SIGCONT) and must rejoin without losing or duplicating anything."""
    _run("partition", "leader", packs, rounds, expect, data_dir, seed, 0, 1, timeout, json, yes,
         sig=signal.SIGSTOP)
