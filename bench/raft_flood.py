"""Write latency of a 3-member Raft group with and without a flood of its Raft ports.

The flood is the reported reproduction: to each member, 3 connections that announce a frame of
0x7fffffff bytes and then send 32 MiB, without knowing the cluster password. It runs in its own
process. The group runs in this one (one tick thread per member), fsync on, on loopback.

    python bench/raft_flood.py                 # the reproduction: each connection floods once
    python bench/raft_flood.py --repeat        # flooders reconnect and flood again, all along

Prints p50 / p99 of sequential acknowledged writes through the leader, normal and under the
flood, their ratio, what the flooders managed to send, and the growth of this process's RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "agent"))

FLOOD_BYTES = 32 * 1024 * 1024
CONNECTIONS = 3


# ------------------------------------------------------------------ the flooder (its own process)

def flood_worker(addrs: list[str], repeat: bool) -> None:
    stop = threading.Event()
    stats = {"connections": 0, "closed_by_server": 0, "bytes_sent": 0, "refused": 0}
    lock = threading.Lock()
    chunk = os.urandom(1024 * 1024)
    header = struct.pack("<i", 0x7FFFFFFF)
    ready = threading.Barrier(len(addrs) * CONNECTIONS + 1)

    def one(addr: str, first: list[bool]) -> None:
        host, _, port = addr.rpartition(":")
        while not stop.is_set():
            try:
                s = socket.create_connection((host, int(port)), timeout=5)
            except OSError:
                with lock:
                    stats["refused"] += 1
                time.sleep(0.01)
                continue
            with lock:
                stats["connections"] += 1
            if first[0]:
                first[0] = False
                ready.wait()
            sent = 0
            try:
                s.sendall(header)
                while sent < FLOOD_BYTES and not stop.is_set():
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                with lock:
                    stats["closed_by_server"] += 1
            with lock:
                stats["bytes_sent"] += sent
            if not repeat:
                stop.wait()  # hold the connection open, as the reproduction did
                s.close()
                return
            s.close()

    threads = [threading.Thread(target=one, args=(a, [True]), daemon=True)
               for a in addrs for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    ready.wait()
    print("flooding", flush=True)
    sys.stdin.read()  # the parent closes our stdin to stop us
    stop.set()
    for t in threads:
        t.join(timeout=5)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    with lock, contextlib.suppress(BrokenPipeError):
        print(json.dumps(stats), flush=True)


# ------------------------------------------------------------------ the measurement

def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(writes: int, repeat: bool, phase_timeout_s: float) -> dict[str, object]:
    from canidae.core.commands import CreatePacks
    from canidae.core.types import PackSpec
    from pysyncobj import SyncObjException
    from raft_group import Group

    failures = {"n": 0, "f": 0, "warm": 0}

    def any_leader(g: Group) -> object:
        return next((r for r in g.live() if r.is_leader()), None)

    def run(g: Group, lead: object, tag: str, n: int) -> list[float]:
        """Acknowledged latency as a client sees it: a failed attempt (timeout, leader change) is
        retried through whichever member is leader, with the same request id, and counted. The
        phase ends early, with fewer writes, once ``phase_timeout_s`` has passed."""
        lat: list[float] = []
        end = time.perf_counter() + phase_timeout_s
        for k in range(n):
            cmd = CreatePacks(id=f"{tag}{k}", at=k, specs=(PackSpec(f"{tag}{k}"),), place=False)
            t = time.perf_counter()
            via = lead
            while time.perf_counter() < end:
                try:
                    [res] = g.propose(via, [cmd], timeout=10)
                    break
                except SyncObjException:
                    failures[tag] += 1
                    via = any_leader(g) or via
            else:
                print(f"phase {tag!r}: {k} of {n} writes acknowledged within {phase_timeout_s:g} s", flush=True)
                return lat
            lat.append(time.perf_counter() - t)
            assert res.get("ok") or res.get("duplicate"), res
        return lat

    with tempfile.TemporaryDirectory(prefix="canidae-flood-") as tmp, Group(tmp) as g:
        lead = g.leader()
        term = lead.current_term()
        run(g, lead, "warm", 50)
        c0 = os.times()
        normal = run(g, lead, "n", writes)
        c1 = os.times()
        normal_cpu_s = round(c1.user + c1.system - c0.user - c0.system, 2)
        rss0 = _rss_mib()
        worker = subprocess.Popen([sys.executable, __file__, "--flood-worker", *g.addrs]
                                  + (["--repeat"] if repeat else []),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline().strip() == "flooding"
        t0, cpu0 = time.perf_counter(), os.times()
        flooded = run(g, lead, "f", writes)
        flood_s, cpu1 = time.perf_counter() - t0, os.times()
        group_cpu_s = round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 2)
        rss1 = _rss_mib()
        worker.stdin.close()
        stats = json.loads(worker.stdout.readline())
        worker.wait(timeout=30)
        same_leader = any_leader(g) is lead and lead.current_term() == term
    return {"normal": normal, "flooded": flooded, "flood_s": flood_s, "flooders": stats,
            "group_cpu_s_under_flood": group_cpu_s, "group_cpu_s_normal": normal_cpu_s,
            "failed_attempts": {"normal": failures["n"], "flood": failures["f"]},
            "rss_growth_mib": round(rss1 - rss0, 1), "leader_and_term_unchanged": same_leader}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=300, help="sequential writes per phase")
    ap.add_argument("--repeat", action="store_true", help="flooders reconnect and flood again")
    ap.add_argument("--phase-timeout", type=float, default=300.0, help="seconds per phase at most")
    ap.add_argument("--flood-worker", nargs="+", metavar="ADDR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood_worker:
        flood_worker(args.flood_worker, args.repeat)
        return
    r = measure(args.writes, args.repeat, args.phase_timeout)
    normal, flooded = r["normal"], r["flooded"]
    assert isinstance(normal, list) and isinstance(flooded, list)
    if not flooded:
        print(f"no write acknowledged under the flood within {args.phase_timeout:g} s; flooders: "
              f"{r['flooders']}; RSS growth {r['rss_growth_mib']} MiB")
        print(json.dumps({"mode": "repeated flood" if args.repeat else "flood once", "acknowledged": 0,
                          **{k: r[k] for k in ("flooders", "rss_growth_mib", "failed_attempts")}}))
        return
    p50n, p99n, p50f, p99f = pct(normal, 50), pct(normal, 99), pct(flooded, 50), pct(flooded, 99)
    mode = "repeated flood" if args.repeat else "flood once"
    print(f"normal:   p50 {p50n * 1e3:.2f} ms  p99 {p99n * 1e3:.2f} ms  ({len(normal)} writes)")
    print(f"{mode}: p50 {p50f * 1e3:.2f} ms  p99 {p99f * 1e3:.2f} ms  max {max(flooded) * 1e3:.1f} ms  "
          f"({len(flooded)} writes in {r['flood_s']:.2f} s)")
    print(f"normal max {max(normal) * 1e3:.1f} ms")
    print(f"ratio flood/normal: p50 {p50f / p50n:.2f}x  p99 {p99f / p99n:.2f}x")
    print(f"CPU of the group process: {r['group_cpu_s_normal']} s for the normal writes, "
          f"{r['group_cpu_s_under_flood']} s under the flood (flooders: {r['flooders'].get('cpu_s')} s)")
    print(f"flooders: {r['flooders']}; RSS growth {r['rss_growth_mib']} MiB; failed attempts "
          f"{r['failed_attempts']}; leader and term unchanged: {r['leader_and_term_unchanged']}")
    print(json.dumps({"mode": mode, "p50_normal_ms": p50n * 1e3, "p99_normal_ms": p99n * 1e3,
                      "p50_flood_ms": p50f * 1e3, "p99_flood_ms": p99f * 1e3,
                      "mean_normal_ms": statistics.mean(normal) * 1e3,
                      "mean_flood_ms": statistics.mean(flooded) * 1e3, **{k: r[k] for k in
                      ("flood_s", "flooders", "group_cpu_s_normal", "group_cpu_s_under_flood", "rss_growth_mib",
                       "failed_attempts",
                       "leader_and_term_unchanged")}}))


if __name__ == "__main__":
    main()
