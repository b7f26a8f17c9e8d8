"""Benchmark of the scheduler (canidae.core.scheduler): bulk placement of 100,000 packs on
1,000 and 2,000 nodes (3 zones x 4 regions x 10 cells), in batches of 1,000 specs per call and
in one call of 100,000; re-placing a failed node's and a failed zone's packs; rebalancing onto
20 newcomers. One thread. Prints a table, or one JSON document with ``--json``.

"setup" is building the scheduler: adding the nodes and the first read of every ring and its
bucket index (both are built lazily, on the first ``place``), timed apart from placement. Timings
are the best of ``--repeat`` runs (the machine may be shared) with the median alongside.
``--profile`` prints the top of a cProfile of one bulk placement instead.

    python bench/scheduler.py [--json] [--repeat N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from canidae.core.scheduler import Scheduler
from canidae.core.topology import build_nodes
from canidae.core.types import Node, NodeState, PackSpec, Resources

PACKS = 100_000
BATCH = 1_000
# Room for a whole zone to fail at 1,000 nodes: 2/3 of 1,000 x 250 slots hold 100,000 packs.
CAPACITY = Resources(32_000, 65_536, 250)
SHAPE = (3, 4, 10)  # zones, regions per zone, cells per region


def fresh(nodes: list[Node]) -> Scheduler:
    sched = Scheduler(load_factor=1.25, vnodes=160)
    for n in nodes:
        sched.add_node(n)
    sched.place([], seed=0)  # lays out every ring
    return sched


def place_all(sched: Scheduler, specs: list[PackSpec], batch: int) -> dict[str, str]:
    where: dict[str, str] = {}
    for i in range(0, len(specs), batch):
        plan = sched.place(specs[i : i + batch], seed=i)
        if plan.unplaced:
            raise SystemExit(f"unexpected unplaced pack: {plan.unplaced[0]}")
        where.update((p.pack, p.node) for p in plan.placements)
    return where


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(best, median) wall seconds of ``fn()`` over ``repeat`` runs, and its last result."""
    times = []
    result = None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), result


def down(node: Node) -> Node:
    return Node(node.id, node.location, node.capacity, node.weight, NodeState.DOWN, node.role, node.address)


def fail(sched: Scheduler, nodes: list[Node], where: dict[str, str], by_name: dict[str, PackSpec]) -> int:
    """Mark ``nodes`` down, release their packs and place them again; returns packs re-placed."""
    ids = {n.id for n in nodes}
    for n in nodes:
        sched.update_node(down(n))
    orphans = [by_name[k] for k, v in where.items() if v in ids]
    for s in orphans:
        sched.release(where[s.name], s.resources, s)
    plan = sched.place(orphans, seed=1, exclude=frozenset(ids))
    if plan.unplaced:
        raise SystemExit(f"unexpected unplaced pack: {plan.unplaced[0]}")
    return len(orphans)


def run_size(n_nodes: int, repeat: int) -> dict[str, Any]:
    nodes = build_nodes(*SHAPE, n_nodes, CAPACITY)
    specs = [PackSpec(f"pack-{i:06d}", resources=Resources(100, 64, 1)) for i in range(PACKS)]
    by_name = {s.name: s for s in specs}
    out: dict[str, Any] = {"nodes": n_nodes, "packs": PACKS}

    best, med, _ = timed(lambda: fresh(nodes), repeat)
    out["setup_s"] = {"best": round(best, 4), "median": round(med, 4)}

    for label, batch in (("batches_of_1000", BATCH), ("one_call", PACKS)):
        runs = []
        where: dict[str, str] = {}
        for _ in range(repeat):
            sched = fresh(nodes)
            gc.collect()
            t = time.perf_counter()
            where = place_all(sched, specs, batch)
            runs.append(time.perf_counter() - t)
        counts = Counter(where.values())
        mean = PACKS / n_nodes
        out[label] = {
            "best_s": round(min(runs), 4),
            "median_s": round(statistics.median(runs), 4),
            "us_per_pack": round(min(runs) / PACKS * 1e6, 2),
            "max_over_mean": round(max(counts.values()) / mean, 4),
            "min_over_mean": round(min(counts.get(n.id, 0) for n in nodes) / mean, 4),
        }

    # Failures and joins, each from a freshly filled fleet.
    def one_node() -> tuple[int, float]:
        sched = fresh(nodes)
        w = place_all(sched, specs, BATCH)
        t = time.perf_counter()
        moved = fail(sched, [nodes[0]], w, by_name)
        return moved, time.perf_counter() - t

    def one_zone() -> tuple[int, float]:
        sched = fresh(nodes)
        w = place_all(sched, specs, BATCH)
        t = time.perf_counter()
        moved = fail(sched, [n for n in nodes if n.location.zone == "z1"], w, by_name)
        return moved, time.perf_counter() - t

    def join() -> tuple[int, float]:
        sched = fresh(nodes)
        w = place_all(sched, specs, BATCH)
        newcomers = build_nodes(*SHAPE, 20, CAPACITY, prefix="new")
        t = time.perf_counter()
        for n in newcomers:
            sched.add_node(n)
        moves = sched.rebalance_plan(w, by_name, newcomers=[n.id for n in newcomers])
        return len(moves), time.perf_counter() - t

    steps: tuple[tuple[str, Callable[[], tuple[int, float]]], ...] = (
        ("node_failure", one_node),
        ("zone_failure", one_zone),
        ("join_20_rebalance", join),
    )
    for label, fn in steps:
        results = [fn() for _ in range(repeat)]
        times = [r[1] for r in results]
        out[label] = {
            "packs_moved": results[-1][0],
            "best_s": round(min(times), 4),
            "median_s": round(statistics.median(times), 4),
        }
    return out


def profile(n_nodes: int) -> None:
    nodes = build_nodes(*SHAPE, n_nodes, CAPACITY)
    specs = [PackSpec(f"pack-{i:06d}", resources=Resources(100, 64, 1)) for i in range(PACKS)]
    sched = fresh(nodes)
    prof = cProfile.Profile()
    prof.enable()
    place_all(sched, specs, BATCH)
    prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is reported)")
    parser.add_argument("--profile", action="store_true", help="profile one bulk placement on 2,000 nodes")
    args = parser.parse_args()
    if args.profile:
        profile(2000)
        return
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "load_factor": 1.25,
        "vnodes": 160,
        "batch": BATCH,
        "sizes": [run_size(n, args.repeat) for n in (1000, 2000)],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"scheduler bench: {PACKS:,} packs of 100m/64MiB, load factor 1.25, 160 vnodes, "
        f"best (median) of {args.repeat}, Python {report['python']}"
    )
    for r in report["sizes"]:
        print(f"\n{r['nodes']:,} nodes (3 zones x 4 regions x 10 cells)")
        print(
            f"  setup (add nodes, lay out rings)   {r['setup_s']['best']:.3f} s ({r['setup_s']['median']:.3f})"
        )
        for label, name in (
            ("batches_of_1000", "place, 100 calls of 1,000"),
            ("one_call", "place, 1 call of 100,000"),
        ):
            x = r[label]
            print(
                f"  {name:<34} {x['best_s']:.3f} s ({x['median_s']:.3f})  {x['us_per_pack']:.1f} us/pack  "
                f"max/mean {x['max_over_mean']:.3f}  min/mean {x['min_over_mean']:.3f}"
            )
        for label, name in (
            ("node_failure", "re-place 1 failed node's packs"),
            ("zone_failure", "re-place a failed zone's packs"),
            ("join_20_rebalance", "join 20 nodes + rebalance_plan"),
        ):
            x = r[label]
            print(f"  {name:<34} {x['best_s']:.3f} s ({x['median_s']:.3f})  {x['packs_moved']:,} packs moved")


if __name__ == "__main__":
    main()
