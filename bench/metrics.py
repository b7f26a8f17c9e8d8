"""Benchmark of hierarchical metrics (canidae.core.metrics): how many bytes a node's summary
takes on the wire, and how long the leader takes to decode and merge a fleet's summaries into a
cluster tree. One thread. Prints a table, or one JSON document with ``--json``.

A node's summary here holds ``--sketches`` latency sketches of ``--samples`` values each
(log-normal, median 5 ms), a dozen counters and gauges, and its packs sampled at the seed's rate
for its pack count, with ``--error-share`` of its packs in error (always kept). Sizes are of
compact JSON (no spaces) and of that JSON compressed with zstd level 3. Timings are the best of
``--repeat`` runs, with the median alongside.

    python bench/metrics.py [--json] [--repeat N] [--nodes N]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import zstandard
from canidae.core.metrics import NodeSummary, aggregate
from canidae.core.sampling import PackReading, sample_packs, sample_rate
from canidae.core.sketch import Sketch
from canidae.core.types import Location

SKETCH_NAMES = ("spawn_ms", "start_ms", "yip_ms", "heartbeat_ms", "api_ms", "reconcile_ms", "log_ms")


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


def make_summary(rng: random.Random, node: str, loc: Location, packs: int, rate: float, sketches: int,
                 samples: int, error_share: float) -> NodeSummary:
    sk = {}
    for name in SKETCH_NAMES[:sketches]:
        s = Sketch()
        for _ in range(samples):
            s.add(rng.lognormvariate(1.6, 1.0))
        sk[name] = s
    readings = (PackReading(f"{node}-pack-{i}", cpu_m=rng.uniform(1, 500), mem_mib=rng.uniform(16, 1024),
                            restarts=0, yips=rng.randint(0, 10_000), error=rng.random() < error_share)
                for i in range(packs))
    return NodeSummary(
        node=node, location=loc, at_ms=1_700_000_000_000, pack_count=packs, sample_rate=rate,
        counters={"spawns": rng.randint(0, 10**6), "stops": rng.randint(0, 10**6),
                  "restarts": rng.randint(0, 10**4), "yips_in": rng.randint(0, 10**9),
                  "yips_out": rng.randint(0, 10**9), "heartbeats": rng.randint(0, 10**7)},
        gauges={"cpu_used_m": rng.uniform(0, 64_000), "cpu_reserved_m": 48_000.0, "cpu_capacity_m": 64_000.0,
                "mem_used_mib": rng.uniform(0, 262_144), "mem_reserved_mib": 200_000.0,
                "mem_capacity_mib": 262_144.0, "load1": rng.uniform(0, 64)},
        sketches=sk, packs=tuple(sample_packs(readings, rate)),
    )


def wire_sizes(summary: NodeSummary) -> dict[str, Any]:
    raw = json.dumps(summary.to_wire(), separators=(",", ":")).encode()
    sketch_bytes = sum(len(json.dumps(s.to_wire(), separators=(",", ":"))) for s in summary.sketches.values())
    return {
        "packs": summary.pack_count, "rate": summary.sample_rate, "samples": len(summary.packs),
        "json_bytes": len(raw), "zstd_bytes": len(zstandard.ZstdCompressor(level=3).compress(raw)),
        "sketch_json_bytes": sketch_bytes,
        "buckets_per_sketch": round(statistics.mean(s.buckets for s in summary.sketches.values()), 1),
    }


def fleet(rng: random.Random, nodes: int, packs_per_node: int, sketches: int, samples: int,
          error_share: float) -> list[dict[str, Any]]:
    """Wire summaries of ``nodes`` nodes in 4 zones x 5 regions x 4 cells, at the cluster's rate."""
    rate = sample_rate(nodes * packs_per_node)
    out = []
    for i in range(nodes):
        cell = i % 80
        loc = Location(f"z{cell // 20}", f"r{cell // 4 % 5}", f"c{cell % 4}")
        out.append(make_summary(rng, f"node-{i:05d}", loc, packs_per_node, rate, sketches, samples,
                                error_share).to_wire())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--repeat", type=int, default=5, help="runs per timing (best and median kept)")
    ap.add_argument("--nodes", type=int, default=2_000, help="node summaries merged into one tree")
    ap.add_argument("--packs-per-node", type=int, default=50, help="packs on each node of the fleet")
    ap.add_argument("--sketches", type=int, default=5, help="latency sketches per node")
    ap.add_argument("--samples", type=int, default=1_000, help="values added to each sketch")
    ap.add_argument("--error-share", type=float, default=0.01, help="share of packs in error (always kept)")
    args = ap.parse_args(argv)
    rng = random.Random(42)
    loc = Location("z0", "r0", "c0")

    sizes = [wire_sizes(make_summary(rng, "node-0", loc, n, sample_rate(n), args.sketches, args.samples,
                                     args.error_share))
             for n in (100, 10_000)]

    wires = fleet(rng, args.nodes, args.packs_per_node, args.sketches, args.samples, args.error_share)
    fleet_json = sum(len(json.dumps(w, separators=(",", ":"))) for w in wires)
    decode_best, decode_med, summaries = timed(lambda: [NodeSummary.from_wire(w) for w in wires], args.repeat)
    merges = {}
    for by in ("cluster", "cell", "node"):
        best, med, _ = timed(partial(aggregate, summaries, by=by), args.repeat)
        merges[by] = {"best_ms": round(best * 1e3, 1), "median_ms": round(med * 1e3, 1)}
    root = aggregate(summaries, by="cluster").sketches["spawn_ms"]
    result: dict[str, Any] = {
        "summary_sizes": sizes,
        "fleet": {"nodes": args.nodes, "packs": args.nodes * args.packs_per_node,
                  "rate": sample_rate(args.nodes * args.packs_per_node), "json_bytes": fleet_json,
                  "root_buckets": root.buckets, "root_count": root.count},
        "decode_ms": {"best_ms": round(decode_best * 1e3, 1), "median_ms": round(decode_med * 1e3, 1)},
        "aggregate_ms": merges,
        "python": sys.version.split()[0],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"node summary on the wire ({args.sketches} sketches of {args.samples} values, "
          f"{args.error_share:.0%} of packs in error):")
    print(f"  {'packs':>7} {'rate':>6} {'samples':>7} {'json B':>8} {'zstd B':>7} {'sketch B':>9} {'buckets':>7}")
    for s in sizes:
        print(f"  {s['packs']:>7} {s['rate']:>6.1%} {s['samples']:>7} {s['json_bytes']:>8} {s['zstd_bytes']:>7} "
              f"{s['sketch_json_bytes']:>9} {s['buckets_per_sketch']:>7}")
    f = result["fleet"]
    print(f"fleet: {f['nodes']} nodes, {f['packs']} packs, rate {f['rate']:.1%}, "
          f"{f['json_bytes'] / 1e6:.1f} MB of summaries")
    print(f"  decode {f['nodes']} summaries: best {result['decode_ms']['best_ms']} ms, "
          f"median {result['decode_ms']['median_ms']} ms")
    for by, m in merges.items():
        print(f"  aggregate by {by:<7}: best {m['best_ms']} ms, median {m['median_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
