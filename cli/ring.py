"""``canidae ring``: inspect and simulate the consistent-hash ring.

``simulate`` runs entirely in memory, through the cluster's own scheduler
(``canidae.core.ringsim``): made-up nodes, made-up packs placed with bounded loads, then nodes
joining (and a rebalance) or leaving (and their packs placed again), exactly as the replicated
state machine would; it measures balance and how many packs move. It is the one place that times
placement work for users (core never reads a clock). ``show``, ``lookup`` and ``rebalance`` ask a
running cluster.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

import typer
from canidae.cli.connect import client
from canidae.cli.output import PACK_METAVAR, JsonOption, StaleOption, console, emit
from canidae.cli.plans import PlanOption, YesOption, confirm, moves_table, predict_seconds
from canidae.core.errors import InvalidInput
from canidae.core.ring import DEFAULT_LOAD_FACTOR, DEFAULT_VNODES
from canidae.core.ringsim import RingSim
from canidae.core.ringstats import balance, load_counts, movement
from rich.table import Table

app = typer.Typer(help="Inspect and simulate the consistent-hash ring", no_args_is_help=True,
                  add_completion=False)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _check(nodes: int, packs: int, vnodes: int, load_factor: float, zones: int, add: int,
           remove: int) -> None:
    if nodes <= 0:
        raise InvalidInput(f"--nodes must be at least 1, got {nodes}")
    if packs <= 0:
        raise InvalidInput(f"--packs must be at least 1, got {packs}")
    if vnodes < 1:
        raise InvalidInput(f"--vnodes must be at least 1, got {vnodes}")
    if not 1 < load_factor < math.inf:  # also rejects nan
        raise InvalidInput(f"--load-factor must be a finite number greater than 1, got {load_factor}")
    if zones < 1:
        raise InvalidInput(f"--zones must be at least 1, got {zones}")
    if add < 0:
        raise InvalidInput(f"--add must not be negative, got {add}")
    if remove < 0:
        raise InvalidInput(f"--remove must not be negative, got {remove}")
    if remove >= nodes:
        raise InvalidInput(f"--remove must be less than --nodes ({nodes}), got {remove}")


def simulate_ring(nodes: int, packs: int, vnodes: int = DEFAULT_VNODES,
                  load_factor: float = DEFAULT_LOAD_FACTOR, zones: int = 1, add: int = 0,
                  remove: int = 0, seed: int = 0) -> dict[str, Any]:
    """Run the simulation and return its report (the ``--json`` document)."""
    report, _ = run_simulation(nodes, packs, vnodes, load_factor, zones, add, remove, seed)
    return report


def run_simulation(nodes: int, packs: int, vnodes: int = DEFAULT_VNODES,
                   load_factor: float = DEFAULT_LOAD_FACTOR, zones: int = 1, add: int = 0,
                   remove: int = 0, seed: int = 0) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """The report, and where every pack was after each step (``placed``, ``after_add``,
    ``after_remove``: pack name -> node id)."""
    _check(nodes, packs, vnodes, load_factor, zones, add, remove)
    sim = RingSim.build(nodes, packs, vnodes, load_factor, zones, add, remove, seed)
    original = [n.id for n in sim.nodes]
    leaving = list(sim.leaving)

    t0 = time.perf_counter()
    sched = sim.scheduler()
    t1 = time.perf_counter()
    placed = sim.place(sched)
    t2 = time.perf_counter()

    # Nodes join, then a rebalance.
    t3 = time.perf_counter()
    add_moves = sim.join(sched, placed)
    t4 = time.perf_counter()
    after_add = dict(placed)
    for m in add_moves:
        after_add[m.pack] = m.target
    add_balance = balance(load_counts(after_add, original + [n.id for n in sim.joining]))

    # Nodes leave, separately: from the original placement, on a scheduler of its own (the
    # one above has rebalanced onto the newcomers). Laying it out and placing again is untimed.
    sched = sim.scheduler()
    sim.place(sched)
    t5 = time.perf_counter()
    after_remove = sim.leave(sched, placed)
    t6 = time.perf_counter()
    gone = set(leaving)
    remove_balance = balance(load_counts(after_remove, set(original) - gone))

    add_move = movement(placed, after_add, set(original), packs * add / (nodes + add))
    remove_move = movement(placed, after_remove, set(original) - gone,
                           float(sum(1 for n in placed.values() if n in gone)))
    loads = load_counts(placed, original)
    zone_of = {n.id: n.location.zone for n in sim.nodes}
    zone_packs: dict[str, int] = {}
    zone_nodes: dict[str, int] = {}
    for n in original:
        z = zone_of[n]
        zone_packs[z] = zone_packs.get(z, 0) + loads[n]
        zone_nodes[z] = zone_nodes.get(z, 0) + 1
    report = {
        "nodes": nodes, "packs": packs, "vnodes": vnodes, "load_factor": load_factor,
        "zones": zones, "seed": seed,
        "balance": balance(loads).to_dict(),
        "max_load": max(loads.values()), "min_load": min(loads.values()),
        "per_zone": [{"zone": z, "nodes": zone_nodes[z], "packs": zone_packs[z]}
                     for z in sorted(zone_nodes, key=lambda z: int(z[1:]))],
        "add": {"nodes": add, **add_move.to_dict(), "balance": add_balance.to_dict()},
        "remove": {"nodes": remove, "removed": leaving, **remove_move.to_dict(),
                   "balance": remove_balance.to_dict()},
        "timings_ms": {"build": _ms(t1 - t0), "place": _ms(t2 - t1),
                       "rebalance": _ms((t4 - t3) + (t6 - t5)),
                       "rebalance_add": _ms(t4 - t3), "rebalance_remove": _ms(t6 - t5)},
    }
    return report, {"placed": placed, "after_add": after_add, "after_remove": after_remove}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _render(report: dict[str, Any]) -> None:
    head = Table(title=(f"ring simulate: {report['nodes']} nodes, {report['packs']} packs, "
                        f"{report['vnodes']} vnodes, c={report['load_factor']}, "
                        f"{report['zones']} zone(s), seed {report['seed']}"))
    for col in ("", "max/mean", "min/mean", "stddev/mean"):
        head.add_column(col, justify="right" if col else "left")
    for label, b in (("placed", report["balance"]), (f"after +{report['add']['nodes']} nodes",
                                                     report["add"]["balance"]),
                     (f"after -{report['remove']['nodes']} nodes", report["remove"]["balance"])):
        head.add_row(label, f"{b['max_over_mean']:.3f}", f"{b['min_over_mean']:.3f}",
                     f"{b['stddev_over_mean']:.3f}")
    console.print(head)

    moves = Table(title="movement")
    for col in ("", "nodes", "moved", "optimum", "ratio", "between survivors"):
        moves.add_column(col, justify="right" if col else "left")
    for label in ("add", "remove"):
        m = report[label]
        moves.add_row(label, str(m["nodes"]), str(m["moved"]), f"{m['optimum']:.1f}", _ratio(m["ratio"]),
                      str(m["between_survivors"]))
    console.print(moves)

    t = report["timings_ms"]
    times = Table(title="timings (ms)")
    for col in ("build", "place", "rebalance (add)", "rebalance (remove)"):
        times.add_column(col, justify="right")
    times.add_row(f"{t['build']:.1f}", f"{t['place']:.1f}", f"{t['rebalance_add']:.1f}",
                  f"{t['rebalance_remove']:.1f}")
    console.print(times)
    if report["zones"] > 1:
        zt = Table(title="packs per zone")
        for col in ("zone", "nodes", "packs"):
            zt.add_column(col, justify="right")
        for z in report["per_zone"]:
            zt.add_row(z["zone"], str(z["nodes"]), str(z["packs"]))
        console.print(zt)


@app.command("simulate")
def simulate(
    nodes: Annotated[int, typer.Option("--nodes", metavar="N", help="Nodes on the ring (ids n0000...).")],
    packs: Annotated[int, typer.Option("--packs", metavar="K", help="Packs to place (names drawn from the seed).")],
    vnodes: Annotated[int, typer.Option("--vnodes", metavar="V", help="Virtual nodes per node.")] = DEFAULT_VNODES,
    load_factor: Annotated[
        float, typer.Option("--load-factor", metavar="C", help="Bounded loads: no node above C times its fair share.")
    ] = DEFAULT_LOAD_FACTOR,
    zones: Annotated[int, typer.Option("--zones", metavar="Z", help="Zones (z0...), nodes dealt round-robin.")] = 1,
    add: Annotated[int, typer.Option("--add", metavar="A", help="Nodes joining after placement.")] = 0,
    remove: Annotated[
        int, typer.Option("--remove", metavar="R", help="Nodes leaving (chosen from the seed), separately from --add.")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Seed for pack names and leaving nodes.")] = 0,
    json: JsonOption = False,
) -> None:
    """Place packs with the cluster's scheduler on an in-memory fleet, then report balance, movement
    when nodes join (and a rebalance runs) or leave (and their packs are placed again), and timings."""
    report = simulate_ring(nodes, packs, vnodes, load_factor, zones, add, remove, seed)
    emit(report, json, lambda: _render(report))


@app.command("show")
def show(stale: StaleOption = False, json: JsonOption = False) -> None:
    """Show the cluster's ring: per node its weight, virtual nodes, share of the hash space, and
    its pack count against the bounded-load cap."""
    with client() as c:
        view = c.ring(stale=stale)

    def human() -> None:
        t = Table("node", "zone/region/cell", "state", "weight", "vnodes", "share", "packs", "cap", "load/cap")
        for n in view["nodes"]:
            cap = n.get("cap")
            t.add_row(n["id"], f"{n['zone']}/{n['region']}/{n['cell']}", n["state"], f"{n['weight']:g}",
                      str(n.get("vnodes", "-")), f"{n.get('share', 0) * 100:.1f}%", str(n["packs"]),
                      "-" if cap is None else str(cap), "-" if not cap else f"{n['packs'] / cap:.2f}")
        console.print(t)
        console.print(f"{view['packs']} pack(s) held, load factor {view['load_factor']}, "
                      f"{view['vnodes_per_weight']} virtual nodes per unit of weight")
    emit(view, json, human)


@app.command("rebalance")
def rebalance_cmd(plan: PlanOption = False, yes: YesOption = False, json: JsonOption = False) -> None:
    """Move the minimal set of packs onto nodes that joined (sticky bounded-load rebalance).

    Nothing moves on its own when nodes join: this command is how packs reach the newcomers.
    """
    with client() as c:
        preview = c.rebalance(plan=True)["migrations"]
        predicted = predict_seconds(preview)
        if plan:
            emit({"migrations": preview, "predicted_s": predicted}, json, lambda: (
                console.print(moves_table(preview)),
                console.print(f"rebalance: {len(preview)} move(s), predicted {predicted:.2f} s")))
            return
        if not preview:
            emit({"migrations": []}, json, lambda: console.print("nothing to move"))
            return
        confirm(f"Rebalance: move {len(preview)} pack(s)?", yes)
        done = c.rebalance()["migrations"]
        gens = {m["name"]: m["generation"] for m in done}
        if done:
            c.wait_running(list(gens), 60, gens)
    emit({"migrations": done}, json, lambda: console.print(f"moved {len(done)} pack(s)"))


@app.command("lookup")
def lookup(
    name: Annotated[str, typer.Argument(metavar=PACK_METAVAR, help="Pack name to look up.")],
    json: JsonOption = False,
) -> None:
    """Show where the scheduler's rings send NAME (its first choice among ready nodes, loads and
    capacity aside), the order its placement walk tries nodes in, and where the pack runs now."""
    with client() as c:
        res = c.ring_lookup(name)
    emit(res, json, lambda: console.print(
        f"{name}: ring first choice {res['ring_node']}; preference {', '.join(res['preference'][:5])}"
        + (f"; placed on {res['placed_on']}" if res["placed_on"] else "; not placed")))
