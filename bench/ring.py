"""Benchmark of the consistent-hash ring (canidae.core.ring): lookups against uhashring, bulk
placement with bounded loads, build time and memory, incremental add/remove, balance and
movement. One thread. Prints a table, or one JSON document with ``--json``.

Two placements are measured. ``place_bounded``/``rebalance`` (canidae.core.ringbounded) are the
textbook bounded-loads algorithm over one flat ring, in bulk: the baseline. The last section is
what the cluster runs: the same packs through the scheduler, as ``canidae ring simulate`` drives
it (one ``place`` call; join + ``rebalance_plan``; nodes declared down one by one).

Timings are the best of several runs (the machine may be shared; the best run is the one least
disturbed), with the median alongside. Lookup rates are over a list of precomputed key strings:
"single" calls ``lookup(key)`` once per key in a Python loop, "bulk" calls ``lookup_many(keys)``
once for the whole list; both include hashing the keys.

    python bench/ring.py [--json] [--repeat N]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

from canidae.core.ring import HashRing
from canidae.core.ringbounded import place_bounded, rebalance
from canidae.core.ringstats import balance, load_counts, movement

from canidae.cli.ring import run_simulation

try:
    import uhashring
except ImportError:  # the bench extra is not installed: report ours only
    uhashring = None

LOAD_FACTOR = 1.25
VNODES = 160
PACKS = 100_000


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


def node_ids(n: int, prefix: str = "n") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def make_ring(n: int, vnodes: int = VNODES) -> HashRing:
    ring = HashRing(vnodes)
    for node in node_ids(n):
        ring.add_node(node)
    ring.build_index()
    return ring


def pack_names(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"pack-{x:012x}" for x in rng.sample(range(1 << 48), count)]


# -- sections ---------------------------------------------------------------------------------


def bench_lookups(repeat: int) -> list[dict[str, Any]]:
    keys = pack_names(200_000, seed=1)
    rows = []
    for n in (10, 100, 1000):
        ring = make_ring(n)
        lookup = ring.lookup

        def single(lookup: Callable[[str], str] = lookup) -> None:
            for k in keys:
                lookup(k)

        s_best, s_med, _ = timed(single, repeat)
        b_best, b_med, got = timed(partial(ring.lookup_many, keys), repeat)
        assert got[:1000] == [lookup(k) for k in keys[:1000]]
        row: dict[str, Any] = {
            "nodes": n, "keys": len(keys),
            "single_per_s": len(keys) / s_best, "single_per_s_median": len(keys) / s_med,
            "bulk_per_s": len(keys) / b_best, "bulk_per_s_median": len(keys) / b_med,
        }
        if uhashring is not None:
            theirs = uhashring.HashRing(nodes=node_ids(n))
            u_keys = keys[:50_000]  # uhashring is slower: fewer keys, same rate

            def their_single(get: Callable[[str], Any] = theirs.get_node, u_keys: list[str] = u_keys) -> None:
                for k in u_keys:
                    get(k)

            u_best, u_med, _ = timed(their_single, repeat)
            row["uhashring_per_s"] = len(u_keys) / u_best
            row["uhashring_per_s_median"] = len(u_keys) / u_med
            row["ratio_bulk"] = row["bulk_per_s"] / row["uhashring_per_s"]
            row["ratio_single"] = row["single_per_s"] / row["uhashring_per_s"]
        rows.append(row)
    return rows


def bench_placement(repeat: int) -> list[dict[str, Any]]:
    names = pack_names(PACKS)
    rows = []
    for n in (100, 1000):
        ring = make_ring(n)
        best, med, placed = timed(partial(place_bounded, ring, names, LOAD_FACTOR), repeat)
        l_best, _, _ = timed(partial(ring.lookup_many, names), repeat)

        # A membership change patches the bucket index; the next bulk call pays nothing more.
        def cold(ring: HashRing = ring) -> None:
            ring.add_node("extra")
            ring.remove_node("extra")
            place_bounded(ring, names, LOAD_FACTOR)

        c_best, _, _ = timed(cold, max(1, repeat // 2))
        loads = load_counts(placed, ring.nodes())
        rows.append({"nodes": n, "packs": PACKS, "place_ms": best * 1e3, "place_ms_median": med * 1e3,
                     "lookup_many_ms": l_best * 1e3, "place_after_change_ms": c_best * 1e3,
                     "max_load": max(loads.values()), "cap": -(-PACKS * 5 // (4 * n))})
    return rows


def bench_build(repeat: int) -> dict[str, Any]:
    n, v = 2000, VNODES
    ids = node_ids(n)

    def build() -> HashRing:
        ring = HashRing(v)
        for node in ids:
            ring.add_node(node)
        ring.lookup("x")  # merges: the ring is ready for lookups
        return ring

    b_best, b_med, ring = timed(build, repeat)

    def index() -> None:
        ring._table = None  # drop the index so that it is built again
        ring.build_index()

    i_best, i_med, _ = timed(index, repeat)
    del ring
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ring = build()
    merged = tracemalloc.get_traced_memory()[0] - before
    ring.build_index()
    indexed = tracemalloc.get_traced_memory()[0] - before
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()

    # One node in and out, incrementally, timed up to the first lookup that sees the change.
    def add_one() -> None:
        ring.add_node("extra")
        ring.lookup("x")

    def remove_one() -> None:
        ring.remove_node("extra")
        ring.lookup("x")

    adds, removes = [], []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        add_one()
        adds.append(time.perf_counter() - t)
        t = time.perf_counter()
        remove_one()
        removes.append(time.perf_counter() - t)
    return {
        "nodes": n, "vnodes": v, "points": ring.point_count(),
        "build_ms": b_best * 1e3, "build_ms_median": b_med * 1e3,
        "index_ms": i_best * 1e3, "index_ms_median": i_med * 1e3,
        "memory_mb": merged / 2**20, "memory_with_index_mb": indexed / 2**20, "peak_mb": peak / 2**20,
        "add_one_ms": min(adds) * 1e3, "add_one_ms_median": statistics.median(adds) * 1e3,
        "remove_one_ms": min(removes) * 1e3, "remove_one_ms_median": statistics.median(removes) * 1e3,
    }


def bench_balance() -> list[dict[str, Any]]:
    names = pack_names(PACKS)
    rows = []
    for n in (10, 100, 1000):
        ring = make_ring(n)
        placed = place_bounded(ring, names, LOAD_FACTOR)
        rows.append({"nodes": n, "packs": PACKS, "load_factor": LOAD_FACTOR,
                     **balance(load_counts(placed, ring.nodes())).to_dict()})
    return rows


def bench_movement() -> list[dict[str, Any]]:
    names = pack_names(PACKS)
    rows = []
    for n in (100, 1000):
        for change in (1, 10):
            ring = make_ring(n)
            placed = place_bounded(ring, names, LOAD_FACTOR)
            original = set(ring.nodes())
            joining = node_ids(change, prefix="new")
            for node in joining:
                ring.add_node(node)
            t = time.perf_counter()
            moves = rebalance(ring, placed, LOAD_FACTOR)
            took = time.perf_counter() - t
            after = dict(placed)
            for m in moves:
                after[m.pack] = m.target
            add = movement(placed, after, original, PACKS * change / (n + change))
            rows.append({"nodes": n, "op": f"add {change}", **add.to_dict(), "rebalance_ms": took * 1e3})
            for node in joining:
                ring.remove_node(node)
            leaving = sorted(random.Random(n + change).sample(sorted(original), change))
            for node in leaving:
                ring.remove_node(node)
            t = time.perf_counter()
            moves = rebalance(ring, placed, LOAD_FACTOR)
            took = time.perf_counter() - t
            after = dict(placed)
            for m in moves:
                after[m.pack] = m.target
            optimum = sum(1 for node in placed.values() if node in leaving)
            rem = movement(placed, after, original - set(leaving), float(optimum))
            rows.append({"nodes": n, "op": f"remove {change}", **rem.to_dict(), "rebalance_ms": took * 1e3})
    return rows


def bench_cluster_placement() -> list[dict[str, Any]]:
    """The scheduler over a flat fleet (one zone, region and cell), as ``ring simulate`` runs it."""
    rows = []
    for n in (100, 1000):
        for change in (1, 10):
            gc.collect()
            doc, _ = run_simulation(n, PACKS, VNODES, LOAD_FACTOR, add=change, remove=change, seed=0)
            t = doc["timings_ms"]
            rows.append({"nodes": n, "change": change, "place_ms": t["place"], "build_ms": t["build"],
                         **{k: doc["balance"][k] for k in ("max_over_mean", "min_over_mean")},
                         "add": {k: doc["add"][k] for k in ("moved", "optimum", "ratio", "between_survivors")},
                         "add_ms": t["rebalance_add"],
                         "remove": {k: doc["remove"][k] for k in ("moved", "optimum", "ratio",
                                                                  "between_survivors")},
                         "remove_ms": t["rebalance_remove"]})
    return rows


# -- output -----------------------------------------------------------------------------------


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    out = [title, line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def render(doc: dict[str, Any]) -> str:
    def rate(x: float | None) -> str:
        return "-" if x is None else f"{x / 1e6:.2f}M"

    parts = [(f"canidae ring benchmark (python {sys.version.split()[0]}, one thread, best of "
              f"{doc['repeat']} runs; median in parentheses)")]
    parts.append(_table(
        "lookups/s over precomputed key strings (single: lookup() per key; bulk: lookup_many)",
        ["nodes", "ours single", "ours bulk", "uhashring", "bulk/uh", "single/uh"],
        [[str(r["nodes"]), f"{rate(r['single_per_s'])} ({rate(r['single_per_s_median'])})",
          f"{rate(r['bulk_per_s'])} ({rate(r['bulk_per_s_median'])})",
          rate(r.get("uhashring_per_s")), f"{r.get('ratio_bulk', 0):.1f}x",
          f"{r.get('ratio_single', 0):.1f}x"] for r in doc["lookups"]]))
    parts.append(_table(
        f"place_bounded of {PACKS:,} keys, c={LOAD_FACTOR} (ring step, bucket index built)",
        ["nodes", "place ms", "lookup_many ms", "node in+out, place ms", "max load", "cap"],
        [[str(r["nodes"]), f"{r['place_ms']:.1f} ({r['place_ms_median']:.1f})", f"{r['lookup_many_ms']:.1f}",
          f"{r['place_after_change_ms']:.1f}", str(r["max_load"]), str(r["cap"])] for r in doc["placement"]]))
    b = doc["build"]
    parts.append(_table(
        f"build at N={b['nodes']}, V={b['vnodes']} ({b['points']:,} points); memory by tracemalloc",
        ["build ms", "index ms", "memory MB", "+index MB", "peak MB", "add one ms", "remove one ms"],
        [[f"{b['build_ms']:.0f} ({b['build_ms_median']:.0f})", f"{b['index_ms']:.0f} ({b['index_ms_median']:.0f})",
          f"{b['memory_mb']:.1f}", f"{b['memory_with_index_mb']:.1f}", f"{b['peak_mb']:.1f}",
          f"{b['add_one_ms']:.1f} ({b['add_one_ms_median']:.1f})",
          f"{b['remove_one_ms']:.1f} ({b['remove_one_ms_median']:.1f})"]]))
    parts.append(_table(
        f"balance of {PACKS:,} packs, c={LOAD_FACTOR}",
        ["nodes", "max/mean", "min/mean", "stddev/mean"],
        [[str(r["nodes"]), f"{r['max_over_mean']:.3f}", f"{r['min_over_mean']:.3f}",
          f"{r['stddev_over_mean']:.3f}"] for r in doc["balance"]]))
    parts.append(_table(
        f"movement of {PACKS:,} packs (optimum: K*A/(N+A) on add, the leaving nodes' packs on remove)",
        ["nodes", "op", "moved", "optimum", "ratio", "between survivors", "rebalance ms"],
        [[str(r["nodes"]), r["op"], str(r["moved"]), f"{r['optimum']:.1f}",
          "-" if r["ratio"] is None else f"{r['ratio']:.3f}", str(r["between_survivors"]),
          f"{r['rebalance_ms']:.0f}"] for r in doc["movement"]]))

    def ratio(m: dict[str, Any]) -> str:
        return "-" if m["ratio"] is None else f"{m['ratio']:.3f}"

    parts.append(_table(
        f"what the cluster runs: the scheduler on {PACKS:,} packs (as ring simulate; one run, "
        "+A nodes and a rebalance, or A nodes declared down one by one)",
        ["nodes", "A", "place ms", "max/mean", "min/mean", "add moved", "ratio", "between", "add ms",
         "remove moved", "ratio", "between", "remove ms"],
        [[str(r["nodes"]), str(r["change"]), f"{r['place_ms']:.0f}", f"{r['max_over_mean']:.3f}",
          f"{r['min_over_mean']:.3f}", str(r["add"]["moved"]), ratio(r["add"]),
          str(r["add"]["between_survivors"]), f"{r['add_ms']:.0f}", str(r["remove"]["moved"]),
          ratio(r["remove"]), str(r["remove"]["between_survivors"]), f"{r['remove_ms']:.0f}"]
         for r in doc["cluster"]]))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing (best and median reported)")
    args = parser.parse_args(argv)
    repeat = max(1, args.repeat)
    doc = {
        "python": sys.version.split()[0], "repeat": repeat,
        "lookups": bench_lookups(repeat),
        "placement": bench_placement(repeat),
        "build": bench_build(repeat),
        "balance": bench_balance(),
        "movement": bench_movement(),
        "cluster": bench_cluster_placement(),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
