"""``canidae scale-test run|report``: scale tests, simulated or live, and their pictures.

``run --mode sim`` drives the deterministic simulator (``canidae.core.sim``) over a scenario
built from the parameters and the seed (``canidae.core.scaleplan``): no socket, a virtual clock,
the invariants checked after every step. ``run --mode live`` drives real agents on loopback
(``canidae.agent.ops.scaletest``). Both print the seed's "Expected Performance at Scale" table with
a row of what was measured; ``--json`` prints the whole run, ``--out`` saves it, and
``report`` summarises a saved run and draws it as SVG (latency percentiles over time, packs per
node). The SVG is written here, by hand: no plotting library is a dependency, and PNG is
refused with a clear error because no image library is installed.
"""

from __future__ import annotations

import json as jsonlib
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from canidae.cli.output import JsonOption, console, emit, err_console, stdout_is_terminal, wants_json
from canidae.cli.plans import YesOption, confirm
from canidae.cli.scaletest_svg import histogram, render_svg
from canidae.core import scaleplan
from canidae.core.errors import InvalidInput, NotFound, OperationFailed

app = typer.Typer(
    help="Run scale tests (simulated or live) and report their figures.",
    no_args_is_help=True,
    add_completion=False,
)


class Mode(StrEnum):
    SIM = "sim"
    LIVE = "live"


class PlanName(StrEnum):
    P1K = "1k"
    P10K = "10k"
    P100K = "100k"


# ------------------------------------------------------------------ run


def _progress() -> tuple[Progress, Any]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not stdout_is_terminal(),
    )
    task = bar.add_task("scale test", total=1)

    def update(phase: str, done: float, total: float) -> None:
        bar.update(task, description=phase, completed=done, total=max(total, 1))

    return bar, update


def _write(doc: dict[str, Any], out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(jsonlib.dumps(doc, indent=1) + "\n")
        os.replace(tmp, out)
    except OSError as e:
        raise InvalidInput(f"cannot write {str(out)!r}: {e.strerror or e}") from None


@app.command("run")
def run(
    mode: Annotated[
        Mode, typer.Option("--mode", help="sim: the simulator, no sockets; live: real agents.")
    ] = Mode.SIM,
    plan: Annotated[
        PlanName | None,
        typer.Option(
            "--plan",
            help="The reference scale-testing plan: 1k; 10k (with chaos); 100k (with a ramp, sim only). "
            "Other options override its values.",
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="The reference plan's full duration (24 h, 72 h, 1 week) instead of one scaled to this machine.",
        ),
    ] = False,
    packs: Annotated[
        int | None, typer.Option("--packs", metavar="K", help="Packs to run (default: the plan's, 1,000).")
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            "--nodes",
            metavar="N",
            help="sim: simulated nodes (default: the plan's, from the target table). "
            "live: client agents, the --servers come on top (default: the plan's).",
        ),
    ] = None,
    zones: Annotated[int, typer.Option("--zones", metavar="Z", help="Zones the nodes are dealt over.")] = 3,
    chaos: Annotated[
        bool | None,
        typer.Option(
            "--chaos/--no-chaos",
            help="sim: node and zone failures, joins, cordons. live: SIGKILL --kill client "
            "agents (default: the plan's).",
        ),
    ] = None,
    ramp: Annotated[
        bool | None,
        typer.Option(
            "--ramp/--no-ramp",
            help="Grow to K packs gradually over the run instead of all at first (default: the plan's).",
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            metavar="SECONDS",
            help="sim: virtual time covered. live: wall time of the spawn ramp, steady and load phases "
            "(default: the plan's, scaled down unless --full).",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of every random choice (the sim repeats exactly).")
    ] = 0,
    rounds: Annotated[
        int | None, typer.Option("--rounds", metavar="R", help="sim: rounds of ramp and chaos (default 20).")
    ] = None,
    node_packs: Annotated[
        int | None,
        typer.Option(
            "--node-packs",
            metavar="P",
            help=f"Packs one node can hold "
            f"(sim default {scaleplan.DEFAULT_NODE_PACKS}; live default 50,000).",
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            metavar="B",
            help="Packs per placement call (sim, default 1,000) or bulk request (live, default 100).",
        ),
    ] = None,
    servers: Annotated[
        int | None,
        typer.Option("--servers", metavar="S", help="live: server agents, Raft voters (default 3)."),
    ] = None,
    kill: Annotated[
        int | None,
        typer.Option(
            "--kill",
            metavar="M",
            help="live: client agents to SIGKILL with --chaos (default 5, or 1 with few).",
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            metavar="PACKS/S",
            help="live: spawn pace (default: spread over half the duration with --ramp, else unpaced).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            metavar="DIR",
            help="live: test the cluster started by 'cluster up' in DIR "
            "(default: a throwaway local cluster).",
        ),
    ] = None,
    base_port: Annotated[
        int | None,
        typer.Option(
            "--base-port",
            metavar="PORT",
            help="live: first port of a throwaway cluster (default: a free range).",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            min=0,
            help="live: give up each wait (start, settle, recovery) after this.",
        ),
    ] = 120.0,
    autoscale: Annotated[
        bool,
        typer.Option(
            "--autoscale",
            help="sim: also drive the autoscaler's decisions over a simulated day of diurnal load on "
            "thousands of nodes (figures, and a timeline 'report' draws).",
        ),
    ] = False,
    yes: YesOption = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", metavar="RUN.json", help="Save the run to this file.")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Run a scale test and print the target table (Expected Performance at Scale) with what was measured.

    Exits 1 when the run found a problem (an invariant violation, a pack not running, a recovery that
    timed out), after printing and saving it.
    """
    preset = scaleplan.from_preset(plan.value if plan else "1k")
    k = packs if packs is not None else preset.packs
    use_chaos = preset.chaos if chaos is None else chaos
    use_ramp = preset.ramp if ramp is None else ramp
    dur = duration if duration is not None else float(preset.full_duration_s if full else preset.duration_s)
    only = {
        Mode.LIVE: {
            "--servers": servers,
            "--kill": kill,
            "--rate": rate,
            "--data-dir": data_dir,
            "--base-port": base_port,
        },
        Mode.SIM: {"--rounds": rounds, "--autoscale": autoscale or None},
    }
    for other, options in only.items():
        given = [name for name, value in options.items() if value is not None]
        if other is not mode and given:
            raise InvalidInput(f"{given[0]} is an option of --mode {other.value}, not --mode {mode.value}")
    if mode is Mode.SIM:
        doc = _run_sim(
            preset,
            k,
            nodes,
            zones,
            use_chaos,
            use_ramp,
            dur,
            seed,
            20 if rounds is None else rounds,
            node_packs,
            batch,
        )
    else:
        if nodes is None and preset.live_clients is None:
            raise InvalidInput(
                f"plan {preset.name} needs {preset.sim_nodes:,} nodes: too many agents for one machine. "
                "Run it with --mode sim, or give --nodes (client agents) for a smaller live run"
            )
        clients = nodes if nodes is not None else preset.live_clients
        assert clients is not None
        from canidae.agent.ops import scaletest

        live = scaletest.LivePlan(
            packs=k,
            clients=clients,
            servers=servers if servers is not None else 3,
            zones=zones,
            chaos=use_chaos,
            kill=kill if kill is not None else min(5, max(1, clients // 10)),
            ramp=use_ramp,
            duration_s=dur,
            seed=seed,
            batch=batch if batch is not None else 100,
            rate=rate or 0.0,
            node_packs=node_packs if node_packs is not None else 50_000,
            data_dir=str(data_dir) if data_dir else None,
            base_port=base_port,
            timeout_s=timeout,
        ).check()
        if data_dir is not None and use_chaos:
            confirm(f"SIGKILL {live.kill} client agent(s) of the cluster in {data_dir}?", yes)
        bar, update = _progress()
        with bar:
            doc = scaletest.run_live(live, update)
    if autoscale:
        from canidae.agent.ops.scaletest.autoscale_day import autoscale_day

        doc["autoscale"] = autoscale_day(seed)
    doc["plan"] = preset.name if plan else None
    doc["full"] = full
    if out is not None:
        _write(doc, out)
    emit(doc, json, lambda: _render(doc, out))
    if not doc["ok"]:
        problems = doc["problems"]
        if not wants_json(json):
            for p in problems[:10]:
                err_console.print(f"problem: {p}")
        raise OperationFailed(f"the scale test found {len(problems)} problem(s): {problems[0]}")


def _run_sim(
    preset: scaleplan.Preset,
    packs: int,
    nodes: int | None,
    zones: int,
    chaos: bool,
    ramp: bool,
    duration: float,
    seed: int,
    rounds: int,
    node_packs: int | None,
    batch: int | None,
) -> dict[str, Any]:
    from canidae.agent.ops import scaletest

    if duration != int(duration):
        raise InvalidInput(f"--duration must be whole seconds in sim mode, got {duration:g}")
    sim = scaleplan.SimPlan(
        packs=packs,
        nodes=nodes if nodes is not None else preset.sim_nodes,
        zones=zones,
        chaos=chaos,
        ramp=ramp,
        duration_s=int(duration),
        rounds=rounds,
        seed=seed,
        node_packs=node_packs if node_packs is not None else scaleplan.DEFAULT_NODE_PACKS,
        batch=batch if batch is not None else 1_000,
    ).check()
    bar, update = _progress()
    with bar:
        return scaletest.run_sim(sim, update)


# ------------------------------------------------------------------ rendering


def _render(doc: dict[str, Any], saved: Path | None = None) -> None:
    p, s = doc["params"], doc["summary"]
    if doc["mode"] == "sim":
        what = (
            f"{p['packs']:,} packs on {p['nodes']:,} simulated nodes in {p['zones']} zones, "
            f"{p['rounds']} rounds over {p['duration_s']:,} virtual s"
        )
    else:
        what = (
            f"{p['packs']:,} packs on {s['servers']} servers + {s['clients']} client agents (loopback), "
            f"duration {p['duration_s']:g} s"
        )
    flags = [x for x, on in (("chaos", p["chaos"]), ("ramp", p["ramp"])) if on]
    plan = f"plan {doc['plan']}{' (full)' if doc.get('full') else ''}, " if doc.get("plan") else ""
    flags.append(f"seed {p['seed']}")
    console.print(f"[bold]scale test ({doc['mode']})[/]: {what}; {plan}{', '.join(flags)}")
    console.print(_summary_line(doc))
    console.print(seed_table(doc))
    for key, note in doc["table"]["measured"]["notes"].items():
        console.print(f"  [dim]{key.replace('_', ' ')}:[/] {note}")
    for n in doc.get("notes", []):
        console.print(f"[yellow]note:[/] {n}")
    if doc["mode"] == "live":
        for e in doc["live"]["timeline"]:
            console.print(f"  [dim]+{e['t_s']:.2f}s[/] {e['event']}")
    if doc.get("autoscale"):
        console.print(_autoscale_line(doc["autoscale"]))
    if saved is not None:
        console.print(f"saved to {saved}")
    console.print("[green]ok[/]" if doc["ok"] else f"[red]{len(doc['problems'])} problem(s)[/]")


def _summary_line(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    if doc["mode"] == "sim":
        return (
            f"placed {s['placed']:,}/{s['packs']:,} (unplaced {s['unplaced']:,}), "
            f"{s['node_failures']} node failures, {s['zone_failures']} zone failure(s), "
            f"{s['joined_nodes']} nodes joined, {s['moves']:,} moves, balance {s['balance']:.3f}, "
            f"{s['steps']} steps, {s['violations']} invariant violations, {s['wall_s']:.1f} s wall, "
            f"digest {s['digest'][:12]}"
        )
    if s.get("yips_per_s") is not None:
        yips = (
            f"yips {_n(s['yips_per_s'])}/s p50/p99 {_ms(s['yip_p50_ms'])}/{_ms(s['yip_p99_ms'])} "
            f"(one at a time p99 {_ms(s['yip_one_at_a_time_p99_ms'])})"
        )
    else:
        yips = f"yips: {s['yips']}"
    line = (
        f"running {s['running']:,}/{s['packs']:,}; spawn p50/p99 {_ms(s['spawn_p50_ms'])}/"
        f"{_ms(s['spawn_p99_ms'])}; {yips}; reads {_n(s['reads_per_s'])}/s p99 {_ms(s['read_p99_ms'])}"
    )
    if s["killed"]:
        took = "-" if s["recovery_s"] is None else f"{s['recovery_s']:.2f} s"
        line += (
            f"; SIGKILL {s['killed']} client agents: {s['packs_moved']:,} packs running elsewhere after "
            f"{took}, {s['duplicated']} running twice"
        )
    return line + f"; {s['wall_s']:.1f} s wall"


def _autoscale_line(a: dict[str, Any]) -> str:
    f = a["figures"]
    return (
        f"autoscale ({a['what']}): {f['adds']} adds + {f['removes']} removes ({f['decisions_per_day']:.0f} "
        f"decisions/day), {f['node_hours']:,.0f} node-hours vs the oracle's {f['oracle_node_hours']:,.0f} "
        f"({f['node_hours_ratio']:.3f}x), under-provisioned {f['under_provisioned']:.1%} of the day, "
        f"peak {f['peak_nodes']:,} nodes (oracle {f['peak_oracle']:,})"
    )


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} ms"


def _n(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def seed_table(doc: dict[str, Any]) -> Table:
    """The seed's "Expected Performance at Scale" rows and the measured row below them."""
    t = doc["table"]
    table = Table(
        "",
        *t["headers"],
        title="Expected Performance at Scale (seed) and measured",
        caption="* the target row nearest in packs",
    )
    for i, row in enumerate(t["expected"]):
        tag = "seed*" if i == t["nearest"] else "seed"
        table.add_row(
            tag, *(str(row[c]) if c not in ("packs", "nodes") else f"{row[c]:,}" for c in t["columns"])
        )
    m = t["measured"]["cells"]
    table.add_row(f"[bold]{doc['mode']}[/]", *(f"[bold]{m[c]}[/]" for c in t["columns"]))
    return table


# ------------------------------------------------------------------ report


def load_run(path: Path) -> dict[str, Any]:
    try:
        doc = jsonlib.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"no file {str(path)!r}") from None
    except OSError as e:
        raise InvalidInput(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except ValueError as e:
        raise InvalidInput(f"{str(path)!r} is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "canidae-scale-test":
        raise InvalidInput(f"{str(path)!r} is not a run saved by 'scale-test run --out'")
    if doc.get("version") != 1:
        raise InvalidInput(
            f"{str(path)!r} is a run of format version {doc.get('version')!r}; this canidae reads 1"
        )
    return doc


@app.command("report")
def report(
    results: Annotated[
        Path, typer.Argument(metavar="RUN.json", help="A run saved by 'scale-test run --out'.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE.svg",
            help="Draw latency percentiles over time and the packs-per-node histogram to this SVG file.",
        ),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Summarise a saved scale test run; with --out, draw it."""
    doc = load_run(results)
    if out is not None:
        suffix = out.suffix.lower()
        if suffix == ".png":
            raise InvalidInput("PNG is not available: no image library is installed here; write .svg instead")
        if suffix != ".svg":
            raise InvalidInput(f"--out must name an .svg file, got {str(out)!r}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render_svg(doc))
        except OSError as e:
            raise InvalidInput(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    summary = {
        "run": str(results),
        "mode": doc["mode"],
        "plan": doc.get("plan"),
        "ok": doc["ok"],
        "problems": doc["problems"],
        "params": doc["params"],
        "summary": doc["summary"],
        "measured": doc["table"]["measured"],
        "histogram": histogram(doc["series"]["packs_per_node"]),
        "picture": str(out) if out else None,
    }

    def human() -> None:
        _render(doc)
        h = summary["histogram"]
        console.print(
            f"packs per node: min {h['min']}, mean {h['mean']:.1f}, max {h['max']} over {h['nodes']:,} nodes"
        )
        if out is not None:
            console.print(f"drawn to {out}")

    emit(summary, json, human)


__all__ = ["app", "load_run", "seed_table"]
