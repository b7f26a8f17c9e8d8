"""Benchmark of the event store (canidae.agent.server.eventstore) on this machine's disk.

Events are realistic: produced by ``canidae.core.state.ClusterState`` applying a mix of commands
like a live cluster's (nodes joining, single and bulk spawns, coalesced agent reports, stops,
failures and restarts, migrations, a node down and back now and then), with random request ids as
causes, as the API stamps them.

Figures:

* append: events/s through ``append`` (batches sized like Raft log entries) as fast as the
  producer can go, until ``flush`` returns, with the writer's grouped fdatasync on (the store's
  default), sealing included; then paced at 50,000 events/s offered, with the time from
  ``append`` to durable;
* pack history: latency of ``pack_history`` for random packs in a store of N events, warm, then
  after a reopen (index loaded from the .idx files plus a scan of the active segment; block cache
  cold, page cache warm);
* compression: raw bytes of the sealed segments over their .zst files (and with their .idx).

    python bench/events.py [--events N] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from canidae.agent.server.eventstore import EventStore
from canidae.core.commands import (
    CreatePacks,
    MigratePacks,
    PackReport,
    PlacePacks,
    RegisterNode,
    ReportPacks,
    ReportState,
    SetNodeState,
    StopPacks,
)
from canidae.core.state import ClusterState
from canidae.core.types import Location, Node, NodeState, PackSpec, PackState, Resources

T0 = 1_760_000_000_000


class _Bag:
    """A set with O(1) add, remove and random choice."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, x: str) -> None:
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: str) -> None:
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if last != x:
            self.items[i] = last
            self.pos[last] = i

    def pick(self, rng: random.Random) -> str:
        return self.items[rng.randrange(len(self.items))]

    def __len__(self) -> int:
        return len(self.items)


def realistic_events(n: int, seed: int = 1, nodes: int = 60) -> list[dict[str, Any]]:
    """``n`` events from a ClusterState driven like a busy cluster."""
    rng = random.Random(seed)
    st = ClusterState()
    out: list[dict[str, Any]] = []
    at = T0
    placed: dict[str, dict[str, None]] = {}  # node -> packs placed there, not reported running yet
    where: dict[str, str] = {}               # pack -> its node in ``placed``
    running = _Bag()

    def rid() -> str:
        return uuid.UUID(int=rng.getrandbits(128)).hex

    def run(cmd: Any) -> dict[str, Any]:
        res = st.apply(cmd)
        out.extend(st.drain_events())
        return res

    def track(moves: list[dict[str, Any]]) -> None:
        for m in moves:
            running.discard(m["name"])
            old = where.pop(m["name"], None)
            if old is not None:
                placed.get(old, {}).pop(m["name"], None)
            if m.get("node") and m.get("moved", True):
                placed.setdefault(m["node"], {})[m["name"]] = None
                where[m["name"]] = m["node"]

    def node(i: int) -> Node:
        return Node(id=f"node-{i:03d}", location=Location(f"z{i % 3}", f"z{i % 3}-r{i % 6}", f"c{i % 12}"),
                    capacity=Resources(256_000, 1_048_576, 100_000),
                    address=f"10.0.{i // 200}.{i % 200}:7100")

    for i in range(nodes):
        at += rng.randrange(1, 40)
        run(RegisterNode(id=f"reg-node-{i:03d}-{rid()[:8]}", at=at, node=node(i)))
    k = 0
    while len(out) < n:
        at += rng.randrange(1, 25)
        r = rng.random()
        # Spawns outnumber stops until about 20,000 packs run, then the population holds steady.
        if r < (0.3 if len(running) < 20_000 else 0.13) or (len(running) < 50 and not placed):
            if rng.random() < 0.1:  # a bulk spawn: one command, many packs
                spec = PackSpec(name=f"batch{k}", resources=Resources(100, 64, 1))
                res = run(CreatePacks(id=rid(), at=at, by="api", count=rng.randrange(5, 40), specs=(spec,)))
            else:
                spec = PackSpec(name=f"{rng.choice(['web', 'api', 'worker', 'cron', 'cache'])}-{k}",
                                resources=Resources(rng.choice([100, 250, 500, 1000]),
                                                    rng.choice([64, 128, 256, 512]), 1))
                res = run(CreatePacks(id=rid(), at=at, by="api", specs=(spec,)))
            k += 1
            track(res.get("placements", []))
        elif r < 0.55 and placed:
            # An agent reports what it started since its last report (coalesced, like the reconciler).
            nid = rng.choice(sorted(placed))
            names = placed.pop(nid)
            for nm in names:
                where.pop(nm, None)
            reps = tuple(PackReport(nm, st.packs[nm].generation, ReportState.RUNNING, "") for nm in names
                         if st.packs[nm].node == nid and st.packs[nm].state is PackState.PLACED)
            if reps:
                at += rng.randrange(5, 60)
                run(ReportPacks(id=f"rep-{rid()}", at=at, by=f"agent:{nid}", node_id=nid, reports=reps))
                for rp in reps:
                    running.add(rp.name)
        elif r < 0.68 and running:
            name = running.pick(rng)
            running.discard(name)
            rec = st.packs[name]
            run(StopPacks(id=rid(), at=at, by="api", names=(name,)))
            at += rng.randrange(5, 80)
            run(ReportPacks(id=f"rep-{rid()}", at=at, by=f"agent:{rec.node}", node_id=rec.node,
                            reports=(PackReport(name, rec.generation, ReportState.STOPPED,
                                                "stopped on request"),)))
        elif r < 0.82 and running:
            name = running.pick(rng)
            running.discard(name)
            rec = st.packs[name]
            run(ReportPacks(id=f"rep-{rid()}", at=at, by=f"agent:{rec.node}", node_id=rec.node,
                            reports=(PackReport(name, rec.generation, ReportState.FAILED,
                                                rng.choice(["exit status 1", "killed by signal 9",
                                                            "out of memory"])),)))
            at += rng.randrange(100, 2000)
            track(run(PlacePacks(id=rid(), at=at, by="api", names=(name,))).get("placements", []))
        elif r < 0.9995 and running:
            name = running.pick(rng)
            track(run(MigratePacks(id=rid(), at=at, by="api", moves=((name, None),),
                                   reason="migrate")).get("migrations", []))
        else:
            nid = f"node-{rng.randrange(nodes):03d}"
            if st.nodes[nid].state is NodeState.READY:
                res = run(SetNodeState(id=f"down-{nid}-{rid()[:12]}", at=at, by="leader:s1", node_id=nid,
                                       state=NodeState.DOWN, reason="no heartbeat for 1.52 s"))
                for nm in placed.pop(nid, {}):
                    where.pop(nm, None)
                track(res.get("moved", []))
                at += rng.randrange(1000, 5000)
                run(RegisterNode(id=f"reg-{nid}-{rid()[:8]}", at=at, node=node(int(nid[5:]))))
    return out[:n]


def batches(events: list[dict[str, Any]], seed: int = 2) -> list[list[dict[str, Any]]]:
    """Cut the stream like Raft entries: group commit puts 1..~200 commands' events in one entry."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(events):
        size = min(len(events) - i, int(rng.expovariate(1 / 40)) + 1)
        out.append(events[i:i + size])
        i += size
    return out


def paced(parts: list[list[dict[str, Any]]], rate: float, where: str) -> dict[str, Any]:
    """Append entries at ``rate`` events/s, as a busy Raft log would; time each append until durable."""
    durable: list[tuple[float, int]] = []
    store = EventStore(where, on_durable=lambda seq: durable.append((time.perf_counter(), seq)))
    marks: list[tuple[float, int]] = []
    sent = 0
    t0 = time.perf_counter()
    for part in parts:
        due = t0 + sent / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)  # pacing the producer is the scenario, not a wait for a result
        store.append(part)
        marks.append((time.perf_counter(), part[-1]["seq"]))
        sent += len(part)
    store.flush()
    elapsed = time.perf_counter() - t0
    commits = store.commits
    store.close()
    lat, j = [], 0
    for at, seq in marks:
        while durable[j][1] < seq:
            j += 1
        lat.append((durable[j][0] - at) * 1000)
    return {"offered_per_s": rate, "achieved_per_s": round(sent / elapsed), "group_commits": commits,
            "events_per_commit": round(sent / max(1, commits), 1),
            "durable_p50_ms": round(statistics.median(lat), 2), "durable_p99_ms": round(pct(lat, 0.99), 2)}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def lookups(store: EventStore, names: list[str]) -> dict[str, float]:
    times, cpu, sizes = [], [], []
    for name in names:
        t, c = time.perf_counter(), time.thread_time()
        h = store.pack_history(name)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
        sizes.append(len(h))
    # CPU time beside wall time: on a shared machine a wall-time outlier with little CPU is a wait
    # for a core, not work the lookup did.
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(pct(times, 0.99), 3),
            "max_ms": round(max(times), 3), "cpu_p99_ms": round(pct(cpu, 0.99), 3),
            "events_per_pack_mean": round(statistics.mean(sizes), 1),
            "events_per_pack_max": max(sizes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None, help="where to put the store (default: a temporary directory)")
    ap.add_argument("--lookups", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    t = time.perf_counter()
    events = realistic_events(args.events)
    gen_s = time.perf_counter() - t
    print(f"generated {len(events):,} events in {gen_s:.1f} s", file=sys.stderr)
    parts = batches(events)
    # Run as an agent process does (canidae.agent.daemon.run_agent): its GC thresholds and GIL switch
    # interval. The generated input is frozen out of the collector: it is not part of the store.
    gc.set_threshold(50_000, 20, 50)
    sys.setswitchinterval(0.0005)
    gc.collect()
    gc.freeze()

    base = tempfile.mkdtemp(prefix="canidae-bench-events-", dir=args.dir)
    try:
        paced_parts = batches(events[:min(len(events), 300_000)])
        pacing = paced(paced_parts, 50_000.0, os.path.join(base, "paced"))
        shutil.rmtree(os.path.join(base, "paced"))
        store = EventStore(base)
        t = time.perf_counter()
        for part in parts:
            store.append(part)
        store.flush()
        append_s = time.perf_counter() - t
        store.settle()
        st = store.stats()
        rng = random.Random(3)
        with_history = sorted({e["pack"] for e in events if "pack" in e})
        names = rng.sample(with_history, min(args.lookups, len(with_history)))
        warm = lookups(store, names)
        store.close()

        t = time.perf_counter()
        store = EventStore(base)
        open_s = time.perf_counter() - t
        cold = lookups(store, rng.sample(with_history, min(args.lookups, len(with_history))))
        sealed = [s for s in st["segment_list"] if s["sealed"]]
        raw = sum(s["raw_bytes"] for s in sealed)
        zst = sum(os.path.getsize(os.path.join(base, f"seg-{s['no']:08d}.zst")) for s in sealed)
        idx = sum(os.path.getsize(os.path.join(base, f"seg-{s['no']:08d}.idx")) for s in sealed)
        store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    result = {
        "load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "events": len(events), "packs": len(with_history), "generate_s": round(gen_s, 1),
        "json_bytes_per_event": round(st["raw_bytes"] / len(events), 1),
        "append": {"events_per_s": round(len(events) / append_s), "seconds": round(append_s, 2),
                   "group_commits": st["commits"], "entries": len(parts),
                   "events_per_commit": round(len(events) / max(1, st["commits"]), 1)},
        "paced": pacing, "pack_history_warm": warm, "pack_history_after_reopen": cold,
        "reopen_s": round(open_s, 2),
        "sealed": {"segments": len(sealed), "raw_bytes": raw, "zst_bytes": zst, "idx_bytes": idx,
                   "ratio": round(raw / zst, 2) if zst else None,
                   "ratio_with_index": round(raw / (zst + idx), 2) if zst else None},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    a, s = result["append"], result["sealed"]
    print(f"machine: {result['cpus']} CPUs, load average {result['load_average_1m']} at the end (other work "
          "on the machine stretches wall times)")
    print(f"events: {len(events):,} realistic events over {len(with_history):,} packs "
          f"({result['json_bytes_per_event']} B each as a record)")
    print(f"append with grouped fdatasync: {a['events_per_s']:,} events/s ({len(events):,} in "
          f"{a['seconds']} s; {a['group_commits']:,} group commits for {a['entries']:,} appends, "
          f"{a['events_per_commit']} events per commit)   target >= 50,000/s")
    pc = result["paced"]
    print(f"paced at {pc['offered_per_s']:,.0f} events/s offered: {pc['achieved_per_s']:,} events/s durable, "
          f"{pc['group_commits']:,} group commits ({pc['events_per_commit']} events each), append to durable "
          f"p50 {pc['durable_p50_ms']} ms, p99 {pc['durable_p99_ms']} ms")
    for label, r in (("warm", warm), (f"after reopen ({open_s:.2f} s to open)", cold)):
        print(f"one pack's history among {len(events):,} events, {label}: p50 {r['p50_ms']} ms, "
              f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms, CPU p99 {r['cpu_p99_ms']} ms "
              f"({len(names)} random packs, {r['events_per_pack_mean']} events each on average, "
              f"up to {r['events_per_pack_max']})   target <= 10 ms")
    print(f"sealed segments: {s['segments']} x 16 MiB, {s['raw_bytes'] / 1e6:.1f} MB raw -> "
          f"{s['zst_bytes'] / 1e6:.1f} MB zstd: {s['ratio']}x ({s['ratio_with_index']}x counting their "
          ".idx)   target >= 4x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
