"""Benchmark exec packs on a real local cluster (3 servers + 1 client agent on loopback): pack
startup, yip latency and throughput between packs on two agents, and agent memory per exec pack.

    python bench/exec.py                    # everything, ~2 minutes on 2 cores
    python bench/exec.py --only startup --startups 200

* startup: ``spawn`` of a 1-member ``sleep`` pack until every member runs. ``client`` is what the
  CLI sees (create request to observed ``running``, polled every 2 ms on the local replica);
  ``cluster`` is the leader's stamps: spawn committed -> the node's ``running`` report proposed.
* yips: pack ``ya`` on s1 sends to pack ``yb`` on s2 with its pack token, through its own agent
  (s1 routes to s2); a receiver process long-polls yb's mailbox with yb's token. Latency is send
  start -> receipt (one clock: CLOCK_MONOTONIC across processes). Throughput, counted by the
  receiver: single-yip sends from 16 connections with wrk (through s1, and straight to s2), then
  batches of 100 yips per request.
* memory: RSS of the client agent before and after 500 exec packs are running on it (the packs'
  own processes are not in it), divided by 500.

Nothing here is a test: it never fails on a slow figure, it reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster  # noqa: E402
from canidae.agent.ops.waiting import wait_until  # noqa: E402
from packprocs import kill_leftovers, remove_cgroups  # noqa: E402

from canidae.agent.client.execcalls import exec_info  # noqa: E402
from canidae.agent.node.isolation import parent_name  # noqa: E402

RECEIVER = r"""
import json, ssl, sys, time, httpx
url, token, ca = sys.argv[1], sys.argv[2], sys.argv[3]
lat, last, got, t_first, done = [], 0, 0, None, False
verify = ssl.create_default_context(cafile=ca) if ca else True
with httpx.Client(headers={"authorization": "Bearer " + token}, timeout=60, verify=verify) as http:
    print("ready", flush=True)
    while not done:
        r = http.get(url, params={"after": last, "ack": last, "wait": 30, "max": 1000}).json()
        now = time.monotonic_ns()
        for y in r["yips"]:
            if y["text"] == "end":
                done = True
                break
            t_first = t_first or now
            if y["text"].startswith("t"):
                lat.append((now - int(y["text"][1:])) / 1e6)
            got += 1
        last = r["next"]
    http.get(url, params={"ack": last, "after": last})
print(json.dumps({"lat_ms": lat, "got": got, "span_s": (time.monotonic_ns() - (t_first or 0)) / 1e9}), flush=True)
"""

def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_driver_start(n: int) -> dict[str, Any]:
    """The exec driver alone, in this process (no cluster): start() of a 1-member pack."""
    from canidae.agent.node.exec_driver import ExecDriver

    async def report(*_: Any) -> None:
        pass

    async def run(data: str) -> list[float]:
        drv = ExecDriver(report, data_dir=data, node_id="bench", token="t", api="127.0.0.1:1")
        drv.running()
        out = []
        try:
            for i in range(n):
                t0 = time.perf_counter()
                await drv.start(f"d{i}", 1, {"name": f"d{i}", "command": ["sleep", "600"], "cpu": 10, "mem": 16})
                out.append((time.perf_counter() - t0) * 1000)
        finally:
            await drv.close()
        return out
    data = tempfile.mkdtemp(prefix="canidae-bench-driver-")
    try:
        ms = asyncio.run(run(data))
    finally:
        kill_leftovers(data)
        shutil.rmtree(data, ignore_errors=True)
    return {"n": n, "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99)}


def bench_startup(c: LocalCluster, n: int, driver: str = "exec") -> dict[str, Any]:
    client_ms, cluster_ms = [], []
    with c.client() as cl:
        for i in range(n):
            name = f"st-{driver}-{i}"
            t0 = time.perf_counter()
            spec: dict[str, Any] = {"name": name, "driver": driver, "cpu": 10, "mem": 16}
            if driver == "exec":
                spec["command"] = ["sleep", "600"]
            cl.create_packs([spec])
            while True:
                p = cl.pack(name, stale=True)
                if p["state"] != "placed":
                    break
                time.sleep(0.002)
            client_ms.append((time.perf_counter() - t0) * 1000)
            cluster_ms.append(float(p["updated_at"] - p["created_at"]))
            assert p["state"] == "running", p
        for i in range(n):
            cl.pack_action(f"st-{driver}-{i}", "stop")
    return {"n": n, "client_p50_ms": pct(client_ms, 50), "client_p99_ms": pct(client_ms, 99),
            "cluster_p50_ms": pct(cluster_ms, 50), "cluster_p99_ms": pct(cluster_ms, 99)}


def bench_yips(c: LocalCluster, n_latency: int, seconds: float) -> dict[str, Any]:
    with c.client() as cl:
        for name, node in (("ya", "s1"), ("yb", "s2")):
            cl.create_packs([{"name": name, "driver": "exec", "command": ["sleep", "600"],
                              "constraints": {"node": node}}])
        cl.wait_running(["ya", "yb"], 30)
    ya, yb = c.pack_token("ya"), c.pack_token("yb")  # taken by the agents of their nodes (s1, s2)
    url_send, url_recv = c.url("s1", "/v1/yips/yb"), c.url("s2", "/v1/yips/yb")
    out: dict[str, Any] = {}
    with httpx.Client(verify=c.verify) as http:  # the floor: one plain request to one agent
        floor = []
        for _ in range(300):
            t0 = time.perf_counter()
            http.get(c.url("s1", "/v1/health"))
            floor.append((time.perf_counter() - t0) * 1000)
    out["request_floor"] = {"p50_ms": pct(floor, 50), "p99_ms": pct(floor, 99)}

    def receiver() -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-c", RECEIVER, url_recv, yb, c.ca or ""], stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p

    # Latency: one sender, one yip at a time.
    rx = receiver()
    with httpx.Client(headers={"authorization": f"Bearer {ya}"}, timeout=10, verify=c.verify) as http:
        for _ in range(50):  # warm the connections on both hops
            http.post(url_send, json={"text": "warm"}).raise_for_status()
        for _ in range(n_latency):
            http.post(url_send, json={"text": f"t{time.monotonic_ns()}"}).raise_for_status()
        http.post(url_send, json={"text": "end"}).raise_for_status()
    res = json.loads(rx.communicate(timeout=120)[0])
    out["latency"] = {"n": len(res["lat_ms"]), "p50_ms": pct(res["lat_ms"], 50), "p99_ms": pct(res["lat_ms"], 99)}

    # Throughput: concurrent single-yip senders, then batches, while the receiver drains the mailbox.
    async def flood(batch: int, concurrency: int) -> None:
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {ya}"}, timeout=10, verify=c.verify,
                                     limits=httpx.Limits(max_connections=concurrency)) as http:
            async def worker() -> None:
                body = {"text": "x"} if batch == 1 else {"yips": [{"text": "x"}] * batch}
                while time.monotonic() < deadline:
                    r = await http.post(url_send, json=body)
                    if r.status_code == 409:  # mailbox full: the receiver is behind; let it drain
                        await asyncio.sleep(0.002)
                        continue
                    r.raise_for_status()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            while (await http.post(url_send, json={"text": "end"})).status_code == 409:
                await asyncio.sleep(0.01)

    def wrk_flood(url: str) -> None:
        """Single-yip sends from wrk (a C load generator: a Python client would be the bottleneck)."""
        lua = os.path.join(c.data_dir, "yip.lua")
        with open(lua, "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.body = \'{{"text":"x"}}\'\n'
                    f'wrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.headers["Authorization"] = "Bearer {ya}"\n')
        subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds:g}s", "-s", lua, url], capture_output=True, check=True)
        with httpx.Client(headers={"authorization": f"Bearer {ya}"}, verify=c.verify) as http:
            while http.post(url, json={"text": "end"}).status_code == 409:
                time.sleep(0.01)

    runs: list[tuple[str, Any]] = [("batch100", lambda: asyncio.run(flood(100, 4)))]
    if shutil.which("wrk"):
        runs = [("single_routed", lambda: wrk_flood(url_send)),  # to the sender's agent, which routes
                ("single_direct", lambda: wrk_flood(url_recv))] + runs  # to the mailbox's node
    else:
        runs = [("single_routed", lambda: asyncio.run(flood(1, 16)))] + runs
    for label, go in runs:
        rx = receiver()
        go()
        res = json.loads(rx.communicate(timeout=120)[0])
        out[f"throughput_{label}"] = {"received": res["got"], "yips_per_s": round(res["got"] / res["span_s"])}
    return out


def bench_memory(c: LocalCluster, n: int) -> dict[str, Any]:
    agent = c.agent("c1")
    with c.client() as cl:
        cl.create_packs([{"name": "warm", "driver": "exec", "command": ["sleep", "600"],
                          "constraints": {"node": "c1"}}])
        cl.wait_running(["warm"], 30)
        time.sleep(1.0)
        before = rss_kib(agent["pid"])
        t0 = time.monotonic()
        cl.create_packs([{"name": "mem", "driver": "exec", "command": ["sleep", "600"], "cpu": 1, "mem": 8,
                          "constraints": {"node": "c1"}}], count=n)
        def running_now() -> int:
            return sum(1 for p in cl.iter_packs(node="c1") if p["state"] == "running" and p["name"] != "warm")
        wait_until(lambda: running_now() == n, 300, "all running", interval=0.2)
        took = time.monotonic() - t0
        running = running_now()
        time.sleep(2.0)
        after = rss_kib(agent["pid"])
    return {"packs": n, "running_on_c1": running, "rss_before_kib": before, "rss_after_kib": after,
            "per_pack_kib": round((after - before) / n, 1), "start_all_s": round(took, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["startup", "yips", "memory"])
    ap.add_argument("--startups", type=int, default=100)
    ap.add_argument("--yips", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--packs", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="canidae-bench-exec-")
    c = LocalCluster.start(ClusterLayout(servers=3, clients=1, base_port=None), os.path.join(tmp, "cluster"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    try:
        with c.client() as cl:
            info = exec_info(cl)["exec"]
            results["isolation"] = {"mechanism": info["mechanism"], "pack_users": info["pack_users"]}
        if args.only in (None, "startup"):
            results["startup"] = bench_startup(c, args.startups)
            results["startup_virtual"] = bench_startup(c, max(20, args.startups // 2), "virtual")
            results["driver_start"] = bench_driver_start(args.startups)
        if args.only in (None, "yips"):
            results["yips"] = bench_yips(c, args.yips, args.seconds)
        if args.only in (None, "memory"):
            results["memory"] = bench_memory(c, args.packs)
    finally:
        try:
            c.close()
        finally:  # an agent that had to be SIGKILLed leaves its packs: never leave them behind
            kill_leftovers(c.data_dir)
            for a in c.agents:
                remove_cgroups(parent_name(a["id"], os.path.dirname(a["config"])))
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"isolation: {results['isolation']}  ({results['machine']['cpus']} cpus)")
    if "startup" in results:
        s = results["startup"]
        print(f"pack startup, spawn -> all members running ({s['n']} x 1 member 'sleep'):")
        print(f"  client  p50 {s['client_p50_ms']:.1f} ms  p99 {s['client_p99_ms']:.1f} ms   (target p50 <= 30, "
              f"p99 <= 100)")
        print(f"  cluster p50 {s['cluster_p50_ms']:.1f} ms  p99 {s['cluster_p99_ms']:.1f} ms   (leader stamps)")
        v, d = results["startup_virtual"], results["driver_start"]
        print(f"  the same path with the virtual driver (no process): client p50 {v['client_p50_ms']:.1f} ms  "
              f"p99 {v['client_p99_ms']:.1f} ms; cluster p50 {v['cluster_p50_ms']:.1f} ms  p99 {v['cluster_p99_ms']:.1f} ms")
        print(f"  exec driver start() alone, no cluster ({d['n']} packs): p50 {d['p50_ms']:.2f} ms  "
              f"p99 {d['p99_ms']:.2f} ms")
    if "yips" in results:
        y = results["yips"]
        print(f"yip latency ya@s1 -> yb@s2 ({y['latency']['n']} yips): p50 {y['latency']['p50_ms']:.2f} ms  "
              f"p99 {y['latency']['p99_ms']:.2f} ms   (target p99 <= 2)")
        print(f"  (one plain GET /v1/health to one agent, for scale: p50 {y['request_floor']['p50_ms']:.2f} ms  "
              f"p99 {y['request_floor']['p99_ms']:.2f} ms)")
        direct = y.get("throughput_single_direct")
        print(f"yip throughput (16 concurrent senders): single yips through the sender's agent "
              f"{y['throughput_single_routed']['yips_per_s']}/s" +
              (f", straight to the mailbox's node {direct['yips_per_s']}/s" if direct else "") +
              f"; batches of 100 {y['throughput_batch100']['yips_per_s']}/s   (target >= 5000/s)")
    if "memory" in results:
        m = results["memory"]
        print(f"agent memory: {m['packs']} exec packs on c1 ({m['running_on_c1']} running, started in "
              f"{m['start_all_s']} s): RSS {m['rss_before_kib']} -> {m['rss_after_kib']} KiB = "
              f"{m['per_pack_kib']} KiB per pack   (target <= 100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
