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
import math
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from xml.sax.saxutils import escape

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from canidae.cli.output import JsonOption, console, emit, err_console, stdout_is_terminal, wants_json
from canidae.cli.plans import YesOption, confirm
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


def histogram(counts: dict[str, int], bins: int = 30) -> dict[str, Any]:
    """Nodes per range of pack counts (equal-width bins from the minimum to the maximum)."""
    values = list(counts.values())
    if not values:
        return {"nodes": 0, "min": 0, "max": 0, "mean": 0.0, "bins": []}
    lo, hi = min(values), max(values)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    n = math.ceil((hi - lo + 1) / width)
    nodes = [0] * n
    for v in values:
        nodes[(v - lo) // width] += 1
    return {
        "nodes": len(values),
        "min": lo,
        "max": hi,
        "mean": sum(values) / len(values),
        "bins": [
            {"from": lo + i * width, "to": lo + (i + 1) * width - 1, "nodes": c} for i, c in enumerate(nodes)
        ],
    }


# ------------------------------------------------------------------ SVG

W, H = 960, 760
COLORS = {"p50": "#2b8cbe", "p90": "#f0a030", "p99": "#d7301f", "max": "#999999"}


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt_tick(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.3g}"


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(
        self,
        x: float,
        y: float,
        s: str,
        size: int = 12,
        anchor: str = "start",
        weight: str = "normal",
        fill: str = "#222",
        rotate: float | None = None,
    ) -> None:
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}"{tr}>{escape(s)}</text>'
        )

    def line(
        self,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        stroke: str = "#ccc",
        width: float = 1,
        dash: str | None = None,
    ) -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
            f'stroke-width="{width}"{d}/>'
        )


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**k
            if lo <= t <= hi:
                ticks.append(t)
    return ticks


def _axes(
    svg: _Svg,
    box: tuple[float, float, float, float],
    xs: tuple[float, float],
    ys: tuple[float, float],
    xlabel: str,
    ylabel: str,
    log: bool = False,
) -> tuple[Any, Any]:
    """Draw axes with ticks in ``box`` (x, y, width, height); return the value -> pixel functions."""
    x0, y0, w, h = box
    (xlo, xhi), (ylo, yhi) = xs, ys
    xhi = xhi if xhi > xlo else xlo + 1
    yhi = yhi if yhi > ylo else ylo + 1

    def sx(v: float) -> float:
        return x0 + (v - xlo) / (xhi - xlo) * w

    def sy(v: float) -> float:
        if log:
            v = max(v, ylo)
            return y0 + h - (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * h
        return y0 + h - (v - ylo) / (yhi - ylo) * h

    for t in _log_ticks(ylo, yhi) if log else _nice_ticks(ylo, yhi):
        svg.line(x0, sy(t), x0 + w, sy(t), "#e5e5e5")
        svg.text(x0 - 6, sy(t) + 4, _fmt_tick(t), 11, "end", fill="#555")
    for t in _nice_ticks(xlo, xhi, 8):
        svg.line(sx(t), y0 + h, sx(t), y0 + h + 4, "#888")
        svg.text(sx(t), y0 + h + 17, _fmt_tick(t), 11, "middle", fill="#555")
    svg.line(x0, y0 + h, x0 + w, y0 + h, "#888")
    svg.line(x0, y0, x0, y0 + h, "#888")
    svg.text(x0 + w / 2, y0 + h + 34, xlabel, 12, "middle")
    svg.text(x0 - 48, y0 + h / 2, ylabel + (" (log scale)" if log else ""), 12, "middle", rotate=-90)
    return sx, sy


DASHES = ("", "7,3", "2,3", "9,3,2,3", "4,6")


def render_svg(doc: dict[str, Any]) -> str:
    """The run as one SVG document: a title, latency percentiles over time, packs per node."""
    svg = _Svg()
    p, s = doc["params"], doc["summary"]
    height = H + AUTOSCALE_PANEL_H if doc.get("autoscale") else H
    svg.add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" '
        'font-family="DejaVu Sans, Arial, sans-serif">'
    )
    svg.add(f'<rect width="{W}" height="{height}" fill="white"/>')
    flags = ", ".join(x for x, on in (("chaos", p["chaos"]), ("ramp", p["ramp"])) if on)
    svg.text(
        24,
        30,
        f"canidae scale test ({doc['mode']}): {p['packs']:,} packs"
        + (f", {flags}" if flags else "")
        + f", seed {p['seed']}",
        18,
        weight="bold",
    )
    m = doc["table"]["measured"]["cells"]
    svg.text(
        24,
        52,
        f"nodes {m['nodes']} · memory/pack {m['memory_per_pack']} · CPU/pack {m['cpu_per_pack']} · "
        f"yips/s {m['yips_per_s']} · p99 {m['p99_latency']} · "
        + ("ok" if doc["ok"] else f"{len(doc['problems'])} problem(s)"),
        12,
        fill="#444",
    )

    # Latency percentiles over time.
    lat = doc["series"]["latency"]
    wins = lat["windows"]
    box = (90, 112, W - 130, 258)  # legends in the band above the plot
    svg.text(24, 80, f"Latency percentiles over time: {lat['what']}", 14, weight="bold")
    if wins:
        xs = (min(w["t"] for w in wins), max(w["t"] for w in wins))
        ymax = max(w["p99"] for w in wins)
        positive = [w[k] for w in wins for k in ("p50", "p99") if w[k] > 0]
        # Spawn requests take hundreds of ms, a read one: a log scale shows both.
        log = bool(positive) and max(positive) / min(positive) > 30
        if log:
            ys = (10.0 ** math.floor(math.log10(min(positive))), 10.0 ** math.ceil(math.log10(max(positive))))
        else:
            ys = (0.0, ymax * 1.1 if ymax > 0 else 1.0)
        sx, sy = _axes(svg, box, xs, ys, lat["x"], "ms", log=log)
        phases = list(dict.fromkeys(w.get("phase", "") for w in wins))
        for i, phase in enumerate(phases):
            pts = [w for w in wins if w.get("phase", "") == phase]
            dash = DASHES[i % len(DASHES)]
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            for key in ("p50", "p90", "p99"):
                path = " ".join(f"{sx(w['t']):.1f},{sy(w[key]):.1f}" for w in pts)
                svg.add(
                    f'<polyline points="{path}" fill="none" stroke="{COLORS[key]}" '
                    f'stroke-width="2"{dash_attr}/>'
                )
                for w in pts:
                    svg.add(
                        f'<circle cx="{sx(w["t"]):.1f}" cy="{sy(w[key]):.1f}" r="2.5" fill="{COLORS[key]}"/>'
                    )
        lx = box[0] + box[2] - 240
        for i, key in enumerate(("p50", "p90", "p99")):
            svg.line(lx + i * 70, box[1] - 10, lx + i * 70 + 22, box[1] - 10, COLORS[key], 3)
            svg.text(lx + i * 70 + 26, box[1] - 6, key, 11)
        if len(phases) > 1 or phases[0]:
            px = box[0] + 8
            for i, phase in enumerate(phases):
                svg.line(px, box[1] - 10, px + 26, box[1] - 10, "#555", 2, DASHES[i % len(DASHES)] or None)
                svg.text(px + 30, box[1] - 6, phase, 11, fill="#555")
                px += 40 + 7 * len(phase)
    else:
        svg.text(box[0], box[1] + 40, "no latency samples in this run", 12, fill="#888")

    # Packs per node histogram.
    h = histogram(doc["series"]["packs_per_node"])
    box2 = (90, 450, W - 130, 240)
    svg.text(
        24,
        440,
        f"Packs per node at the end: {h['nodes']:,} nodes, min {h['min']}, mean {h['mean']:.1f}, "
        f"max {h['max']}",
        14,
        weight="bold",
    )
    if h["bins"]:
        bins = h["bins"]
        top = max(b["nodes"] for b in bins)
        sx, sy = _axes(
            svg, box2, (bins[0]["from"], bins[-1]["to"] + 1), (0.0, top * 1.1), "packs on a node", "nodes"
        )
        for b in bins:
            x1, x2 = sx(b["from"]), sx(b["to"] + 1)
            y = sy(b["nodes"])
            svg.add(
                f'<rect x="{x1 + 0.5:.1f}" y="{y:.1f}" width="{max(1.0, x2 - x1 - 1):.1f}" '
                f'height="{box2[1] + box2[3] - y:.1f}" fill="#74a9cf"><title>{b["from"]}-{b["to"]} packs: '
                f"{b['nodes']} nodes</title></rect>"
            )
        mx = sx(h["mean"])
        svg.line(mx, box2[1], mx, box2[1] + box2[3], "#d7301f", 1.5, "4,3")
        svg.text(mx + 4, box2[1] + 12, "mean", 11, fill="#d7301f")
    if doc.get("autoscale"):
        _autoscale_panel(svg, doc["autoscale"], top=H - 30)
    svg.text(24, height - 16, f"{doc['mode']} run · {s.get('wall_s', 0):.1f} s wall", 11, fill="#888")
    svg.add("</svg>")
    return "\n".join(svg.parts) + "\n"


AUTOSCALE_PANEL_H = 330
NODE_COLORS = {"billed": "#2b8cbe", "ready": "#74c476", "oracle": "#999999"}


def _autoscale_panel(svg: _Svg, a: dict[str, Any], top: float) -> None:
    """Nodes (billed, ready, the oracle's) and offered packs over the simulated day, with a tick
    for every add (up) and remove (down)."""
    f = a["figures"]
    svg.text(24, top + 10, f"Autoscaling over a simulated day: {f['adds']} adds, {f['removes']} removes, "
             f"node-hours {f['node_hours_ratio']:.3f}x the oracle's, under-provisioned "
             f"{f['under_provisioned']:.1%}", 14, weight="bold")
    pts = a["series"]
    if not pts:
        return
    box = (90, top + 40, W - 180, 230)
    top_nodes = max(max(p["billed"], p["oracle"]) for p in pts)
    sx, sy = _axes(svg, box, (0.0, 24.0), (0.0, top_nodes * 1.1), "hour of the day", "nodes")
    for key, color in NODE_COLORS.items():
        path = " ".join(f"{sx(p['t_h']):.1f},{sy(p[key]):.1f}" for p in pts)
        dash = ' stroke-dasharray="5,3"' if key == "oracle" else ""
        svg.add(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
    # Offered packs on their own scale, at the right.
    top_packs = max(p["packs"] for p in pts)
    x_right = box[0] + box[2]

    def py(v: float) -> float:
        return box[1] + box[3] - v / (top_packs * 1.1) * box[3]
    path = " ".join(f"{sx(p['t_h']):.1f},{py(p['packs']):.1f}" for p in pts)
    svg.add(f'<polyline points="{path}" fill="none" stroke="#f0a030" stroke-width="1.5"/>')
    for t in _nice_ticks(0, top_packs * 1.1):
        svg.text(x_right + 6, py(t) + 4, _fmt_tick(t), 11, fill="#b07010")
    svg.text(x_right + 60, box[1] + box[3] / 2, "offered packs", 12, "middle", fill="#b07010", rotate=90)
    for d in a["decisions"]:
        x = sx(d["t_h"])
        up = d["action"] == "add"
        y = box[1] + box[3]
        svg.add(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y - 10 if up else y + 10:.1f}" '
                f'stroke="{"#238b45" if up else "#d7301f"}" stroke-width="2"><title>{escape(d["reason"])}</title></line>')
    lx = box[0] + 8
    for key, color in (*NODE_COLORS.items(), ("offered packs", "#f0a030")):
        svg.line(lx, box[1] - 10, lx + 22, box[1] - 10, color, 3)
        svg.text(lx + 26, box[1] - 6, f"{key} nodes" if key in NODE_COLORS else key, 11)
        lx += 40 + 7 * (len(key) + 6)


__all__ = ["app", "histogram", "load_run", "render_svg", "seed_table"]
