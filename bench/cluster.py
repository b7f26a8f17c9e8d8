"""Benchmark a real local cluster (3 servers on loopback, virtual driver): latency, throughput,
failover, memory and idle CPU. Prints a table (and one JSON document with --json).

    python bench/cluster.py                 # everything, ~3 minutes on 2 cores
    python bench/cluster.py --only failover --failover-runs 10
    python bench/cluster.py --only idle --idle-seconds 1 --tls-vs-plain --sequential 500 --seconds 5

The cluster speaks TLS, as every cluster does by default; ``--tls-vs-plain`` then runs the
sequential and concurrent spawns on a TLS cluster and a plain-HTTP one (``insecure_http``)
alternately, three rounds, and prints the medians side by side: what TLS costs.

Figures are client-side and include the HTTP round trip. Nothing here is a test: it never fails
on a slow figure, it reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import statistics
import tempfile
import time
import uuid
from typing import Any

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster  # noqa: E402
from canidae.agent.ops.waiting import wait_until  # noqa: E402

from canidae.agent.ops.localcluster import pid_alive  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


def bench_sequential(cluster: LocalCluster, n: int, prefix: str = "") -> dict[str, Any]:
    lat = []
    with cluster.client() as c:
        leader = cluster.agent(cluster.wait_leader())["api"]
        c.addrs.insert(0, c.addrs.pop(c.addrs.index(leader)))
        for i in range(n):
            t0 = time.perf_counter()
            c.create_packs([{"name": f"seq-{prefix}{i}"}])
            lat.append((time.perf_counter() - t0) * 1000)
    return {"requests": n, "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3),
            "max_ms": round(max(lat), 3)}


async def _concurrent(cluster: LocalCluster, apis: list[str], total: int, workers: int,
                      prefix: str = "") -> tuple[float, list[float]]:
    lat: list[float] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {cluster.token}"}, limits=limits, timeout=30,
                                 verify=cluster.verify) as http:
        async def worker(k: int) -> None:
            api = apis[0]
            for i in counter:
                body = {"spec": {"name": f"conc-{prefix}{i}"}, "request_id": uuid.uuid4().hex}
                t0 = time.perf_counter()
                r = await http.post(f"{cluster.scheme}://{api}/v1/packs", json=body)
                lat.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(r.text)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(workers)))
        return time.perf_counter() - t0, lat


def run_wrk(url: str, script: str, env: dict[str, str], clients: int, seconds: float) -> dict[str, Any]:
    """Run wrk (2 threads, ``clients`` connections, ``seconds``) with a Lua ``script`` against
    ``url`` (``env`` added to its environment for the script) and parse its summary."""
    out = subprocess.run(["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds:g}", "--latency", "-s", script, url],
                         capture_output=True, text=True, env={**os.environ, **env}, check=True).stdout
    res: dict[str, Any] = {"tool": "wrk", "clients": clients, "seconds": seconds, "errors": 0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            res["per_s"] = float(parts[1])
        elif parts[:1] in (["50%"], ["99%"]):
            v = parts[1]
            ms = float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") \
                else float(v[:-1]) * 1000
            res["p50_ms" if parts[0] == "50%" else "p99_ms"] = round(ms, 3)
        elif "Non-2xx" in line or "Socket errors" in line:
            res["errors"] += sum(int(x.rstrip(",")) for x in parts if x.rstrip(",").isdigit())
        elif "requests in" in line:
            res["requests"] = int(parts[0])
    return res


def bench_concurrent(cluster: LocalCluster, total: int, workers: int, seconds: float) -> dict[str, Any]:
    """Single-pack spawns from ``workers`` concurrent connections.

    Uses wrk (a C load generator, Debian package ``wrk``) when installed: a Python client on the
    same 2 cores measures mostly itself (httpx's async client topped out near 150 requests/s
    here while the agent served 1,600). Falls back to httpx, and says so.
    """
    leader = cluster.agent(cluster.wait_leader())["api"]
    if shutil.which("wrk"):
        env = {"CANIDAE_TOKEN": cluster.token, "RUN": f"c{workers}x{uuid.uuid4().hex[:6]}-"}
        return run_wrk(f"{cluster.scheme}://{leader}", os.path.join(HERE, "spawn.lua"), env, workers, seconds)
    elapsed, lat = asyncio.run(_concurrent(cluster, [leader], total, workers, f"{workers}x-"))
    return {"tool": "httpx (wrk not installed)", "requests": total, "clients": workers,
            "per_s": round(total / elapsed, 1), "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3)}


def bench_bulk(cluster: LocalCluster, total: int, per_request: int) -> dict[str, Any]:
    servers = [a for a in cluster.agents if a["role"] == "server"]
    rss_before = {a["id"]: rss_kib(a["pid"]) for a in servers}
    times = []
    with cluster.client(timeout=120) as c:
        leader = cluster.agent(cluster.wait_leader())["api"]
        c.addrs.insert(0, c.addrs.pop(c.addrs.index(leader)))
        for k in range(total // per_request):
            t0 = time.perf_counter()
            res = c.create_packs([{"name": f"bulk{k}"}], count=per_request)
            times.append(time.perf_counter() - t0)
            assert len(res["placements"]) == per_request
        wait_until(lambda: c.packs(state="placed", limit=1, stale=True)["packs"] == [], 300, "all running", 0.5)
        held = c.packs(limit=1)["total"]
    # Let every replica catch up before reading its memory.
    time.sleep(1.0)
    rss_after = {a["id"]: rss_kib(a["pid"]) for a in servers}
    growth = {k: (rss_after[k] - rss_before[k]) * 1024 for k in rss_after}
    return {"packs": total, "per_request": per_request, "packs_per_s": round(total / sum(times), 1),
            "held_in_state": held,
            "rss_growth_mb": {k: round(v / 1e6, 1) for k, v in growth.items()},
            "bytes_per_pack": {k: round(v / total) for k, v in growth.items()}}


def bench_failover(cluster: LocalCluster, runs: int) -> dict[str, Any]:
    results = []
    for run in range(runs):
        victim = cluster.wait_leader(timeout=20)
        with cluster.client(timeout=1.0) as c:
            c.create_packs([{"name": f"fo-pre-{run}"}])
            cluster.kill(victim)
            t0 = time.perf_counter()
            c.create_packs([{"name": f"fo-{run}"}], request_id=uuid.uuid4().hex, retry_for=30)
            results.append(time.perf_counter() - t0)
        cluster.restart(victim)
        wait_until(lambda: cluster.health(victim)["raft"]["leader"] is not None, 20, "victim rejoined", 0.05)
    return {"runs": runs, "min_s": round(min(results), 3), "median_s": round(statistics.median(results), 3),
            "max_s": round(max(results), 3), "all_s": [round(x, 3) for x in results]}


def bench_idle_cpu(cluster: LocalCluster, seconds: float) -> dict[str, Any]:
    hz = os.sysconf("SC_CLK_TCK")
    before = {a["id"]: cpu_ticks(a["pid"]) for a in cluster.agents}
    time.sleep(seconds)
    after = {a["id"]: cpu_ticks(a["pid"]) for a in cluster.agents}
    return {"seconds": seconds,
            "cpu_percent": {k: round((after[k] - before[k]) / hz / seconds * 100, 2) for k in before}}


def compare_plain(args: argparse.Namespace, data_dir: str, rounds: int = 3) -> dict[str, Any]:
    """What TLS costs: a TLS cluster and a plain-HTTP one (``insecure_http``) up side by side,
    sequential spawns and the concurrent run alternated between them ``rounds`` times (so that a
    shared machine's load swings hit both alike); the median of each figure per side."""
    tls = LocalCluster.start(ClusterLayout(servers=3, base_port=None), os.path.join(data_dir, "tls"))
    plain = LocalCluster.start(ClusterLayout(servers=3, base_port=None), os.path.join(data_dir, "plain"),
                               insecure_http=True)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"tls": {}, "plain": {}}
    try:
        for r in range(rounds):
            for side, cluster in (("tls", tls), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("tls", tls)):
                seq = bench_sequential(cluster, args.sequential, prefix=f"r{r}-")
                conc = bench_concurrent(cluster, args.concurrent, args.clients, args.seconds)
                runs[side].setdefault("sequential_spawn", []).append(seq)
                runs[side].setdefault("concurrent_spawn", []).append(conc)
    finally:
        tls.close()
        plain.close()
    out: dict[str, Any] = {"rounds": rounds}
    for key in ("sequential_spawn", "concurrent_spawn"):
        row = {}
        for side in ("tls", "plain"):
            for fig in ("p50_ms", "p99_ms", "per_s"):
                values = [x[fig] for x in runs[side][key] if fig in x]
                if values:
                    row[f"{fig}_{side}"] = round(statistics.median(values), 3)
            if any("errors" in x for x in runs[side][key]):
                row[f"errors_{side}"] = sum(x.get("errors", 0) for x in runs[side][key])
        out[key] = row
    return out


def compare_startup(rounds: int, data_dir: str) -> dict[str, Any]:
    """Seconds to start 3 servers + 1 client agent until all are registered, TLS and plain HTTP
    alternated ``rounds`` times (what TLS adds to every test that starts a cluster); medians."""
    took: dict[str, list[float]] = {"tls": [], "plain": []}
    for r in range(rounds):
        for side in ("tls", "plain") if r % 2 == 0 else ("plain", "tls"):
            t0 = time.perf_counter()
            cluster = LocalCluster.start(ClusterLayout(servers=3, clients=1, base_port=None),
                                         os.path.join(data_dir, f"{side}{r}"), insecure_http=side == "plain")
            took[side].append(time.perf_counter() - t0)
            cluster.close()
    return {"rounds": rounds, **{f"start_s_{side}": round(statistics.median(v), 3) for side, v in took.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["sequential", "concurrent", "bulk", "failover", "idle"], action="append")
    ap.add_argument("--sequential", type=int, default=1000)
    ap.add_argument("--concurrent", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the concurrent run (wrk)")
    ap.add_argument("--bulk-total", type=int, default=100_000)
    ap.add_argument("--bulk-per-request", type=int, default=10_000)
    ap.add_argument("--failover-runs", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--tls-vs-plain", action="store_true",
                    help="also compare TLS with plain HTTP (--insecure-http): sequential and concurrent spawns")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    only = set(args.only or ["idle", "sequential", "concurrent", "bulk", "failover"])
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "platform": platform.platform()}}
    with tempfile.TemporaryDirectory(prefix="canidae-bench-") as tmp:
        cluster = LocalCluster.start(ClusterLayout(servers=3, base_port=None), os.path.join(tmp, "c"))
        try:
            if "idle" in only:
                out["idle"] = bench_idle_cpu(cluster, args.idle_seconds)
            if "sequential" in only:
                out["sequential_spawn"] = bench_sequential(cluster, args.sequential)
            if "concurrent" in only:
                out["concurrent_spawn"] = bench_concurrent(cluster, args.concurrent, args.clients, args.seconds)
            if "failover" in only:
                out["failover"] = bench_failover(cluster, args.failover_runs)
            if "bulk" in only:
                out["bulk_spawn"] = bench_bulk(cluster, args.bulk_total, args.bulk_per_request)
        finally:
            cluster.close()
            assert not any(pid_alive(a["pid"], a["config"]) for a in cluster.agents)
        if args.tls_vs_plain:
            out["tls_vs_plain"] = compare_plain(args, os.path.join(tmp, "compare"))
            out["tls_vs_plain_startup"] = compare_startup(3, os.path.join(tmp, "startup"))
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"machine: {out['machine']['cpus']} cores, Python {out['machine']['python']}")
    for k, v in out.items():
        if k != "machine":
            print(f"{k:18} {json.dumps(v)}")


if __name__ == "__main__":
    main()
