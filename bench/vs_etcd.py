"""canidae against etcd, side by side in one run: a 3-member etcd (Debian's ``etcd-server``, its
default timings) and a 3-server canidae cluster (virtual driver, fsync on), both on loopback, driven
by the same code:

- sequential writes through one keep-alive HTTP connection to the leader: etcd ``POST /v3/kv/put``
  on its HTTP/JSON gateway (base64 key and value), canidae ``POST /v1/packs`` (one virtual pack,
  admin token); p50 / p99 over N writes;
- wrk, 64 connections for 10 s, one Lua script per target (``etcd_put.lua``, ``spawn.lua``);
- failover: SIGKILL of the leader, then the time until a write to a survivor is acknowledged
  (the same request tried again every 50 ms, tries overlapping, so no client timeout rounds it
  up), over a few rounds; the victim is restarted between rounds.

    python bench/vs_etcd.py                    # about 2 minutes on 2 cores
    python bench/vs_etcd.py --json --rounds 5

Prints one table with the ratios canidae/etcd (below 1 is canidae faster, except throughput).
Exits 2, saying how to install it, when etcd is missing. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from cluster import pct, run_wrk
from etcd_cluster import INSTALL_HINT, EtcdCluster, etcd_binary

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster
from canidae.agent.ops.waiting import wait_until


@dataclass
class Target:
    """One system under test, as the driver sees it: where its members answer, what one write is,
    which member leads, and how to kill and restart one."""

    name: str
    apis: Callable[[], list[str]]  # host:port of every member, in a fixed order
    leader: Callable[[], int]  # index of the leader, waiting for one
    write: Callable[[str], tuple[str, dict[str, Any], dict[str, str]]]  # key -> path, JSON body, headers
    kill: Callable[[int], None]
    restart: Callable[[int], None]
    wrk_script: str
    wrk_env: dict[str, str]


def etcd_target(c: EtcdCluster) -> Target:
    def write(key: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        return "/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                              "value": base64.b64encode(b"value-of-a-bench-write").decode()}, {}
    return Target("etcd", lambda: [m.client for m in c.members], c.wait_leader, write, c.kill, c.restart,
                  os.path.join(HERE, "etcd_put.lua"), {})


def canidae_target(c: LocalCluster) -> Target:
    servers = [a["id"] for a in c.servers()]
    auth = {"authorization": f"Bearer {c.token}"}

    def write(key: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        # request_id makes a retried spawn (after a timeout that did commit) the same spawn
        return "/v1/packs", {"spec": {"name": key}, "request_id": uuid.uuid5(uuid.NAMESPACE_URL, key).hex}, auth

    def restart(i: int) -> None:
        c.restart(servers[i])
        wait_until(lambda: (c.health(servers[i]) or {}).get("raft", {}).get("leader") is not None, 30,
                   f"{servers[i]} rejoined", 0.05)

    return Target("canidae", lambda: [c.agent(s)["api"] for s in servers],
                  lambda: servers.index(c.wait_leader(timeout=30)), write,
                  lambda i: c.kill(servers[i]), restart,
                  os.path.join(HERE, "spawn.lua"), {"CANIDAE_TOKEN": c.token})


def sequential(t: Target, n: int, tag: str) -> dict[str, Any]:
    api = t.apis()[t.leader()]
    lat = []
    with httpx.Client(base_url=f"http://{api}", timeout=10) as http:
        for i in range(n):
            path, body, headers = t.write(f"seq-{tag}-{i}")
            t0 = time.perf_counter()
            r = http.post(path, json=body, headers=headers)
            lat.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    return {"writes": n, "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3),
            "max_ms": round(max(lat), 3)}


def concurrent(t: Target, clients: int, seconds: float) -> dict[str, Any]:
    api = t.apis()[t.leader()]
    run = "r" + "".join(random.choices(string.ascii_letters + string.digits, k=3))  # 4 base64 digits
    return run_wrk(f"http://{api}", t.wrk_script, {**t.wrk_env, "RUN": run}, clients, seconds)


def first_ack(http: httpx.Client, write: tuple[str, dict[str, Any], dict[str, str]], t0: float,
              every: float = 0.05, limit: float = 60.0) -> float:
    """Seconds from ``t0`` to the first acknowledged try of ``write``: a new try every ``every`` s,
    each waiting up to 5 s, so that neither system's way of holding a request while it has no
    leader (etcd keeps it, canidae may too) rounds the figure up to a client timeout."""
    path, body, headers = write
    acks: list[float] = []
    done = threading.Event()

    def attempt() -> None:
        try:
            if http.post(path, json=body, headers=headers, timeout=5.0).status_code == 200:
                acks.append(time.perf_counter())
                done.set()
        except httpx.HTTPError:
            pass

    with ThreadPoolExecutor(max_workers=200) as pool:
        while True:
            pool.submit(attempt)
            if done.wait(every):
                break
            if time.perf_counter() - t0 > limit:
                raise RuntimeError(f"no write acknowledged {limit:g} s after killing the leader")
    return min(acks) - t0


def failover(t: Target, rounds: int, tag: str) -> dict[str, Any]:
    results = []
    for k in range(rounds):
        victim = t.leader()
        survivor = t.apis()[(victim + 1) % len(t.apis())]
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        with httpx.Client(base_url=f"http://{survivor}", limits=limits) as http:
            path, body, headers = t.write(f"fo-pre-{tag}-{k}")
            http.post(path, json=body, headers=headers, timeout=10).raise_for_status()
            t0 = time.perf_counter()
            t.kill(victim)
            results.append(first_ack(http, t.write(f"fo-{tag}-{k}"), t0))
        t.restart(victim)
    return {"rounds": rounds, "min_s": round(min(results), 3), "median_s": round(statistics.median(results), 3),
            "max_s": round(max(results), 3), "all_s": [round(x, 3) for x in results]}


def measure(t: Target, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["sequential"] = sequential(t, args.writes, tag)
    if shutil.which("wrk"):
        out["concurrent"] = concurrent(t, args.clients, args.seconds)
    if args.rounds:
        out["failover"] = failover(t, args.rounds, tag)
    return out


def etcd_version() -> str:
    out = subprocess.run([etcd_binary() or "etcd", "--version"], capture_output=True, text=True, check=False).stdout
    return out.split()[2] if out.startswith("etcd Version:") else "?"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def table(res: dict[str, Any]) -> str:
    e, c = res["etcd"], res["canidae"]
    rows = [("sequential p50 (ms)", ("sequential", "p50_ms")), ("sequential p99 (ms)", ("sequential", "p99_ms")),
            (f"{res['clients']} clients, writes/s", ("concurrent", "per_s")),
            (f"{res['clients']} clients, p50 (ms)", ("concurrent", "p50_ms")),
            (f"{res['clients']} clients, p99 (ms)", ("concurrent", "p99_ms")),
            ("failover median (s)", ("failover", "median_s")), ("failover max (s)", ("failover", "max_s"))]
    lines = [f"{'':28} {'etcd':>10} {'canidae':>10} {'canidae/etcd':>13}"]
    for label, (sec, key) in rows:
        a, b = c.get(sec, {}).get(key), e.get(sec, {}).get(key)
        if a is None and b is None:
            continue
        lines.append(f"{label:28} {b if b is not None else '-':>10} {a if a is not None else '-':>10} {ratio(a, b):>13}")
    errs = {n: res[n].get("concurrent", {}).get("errors") for n in ("etcd", "canidae")}
    if any(errs.values()):
        lines.append(f"wrk errors (non-2xx or socket): {errs}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=1000, help="sequential writes per target")
    ap.add_argument("--clients", type=int, default=64, help="wrk connections")
    ap.add_argument("--seconds", type=float, default=10.0, help="wrk duration")
    ap.add_argument("--rounds", type=int, default=5, help="leader SIGKILL rounds per target (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if etcd_binary() is None:
        print(INSTALL_HINT, file=sys.stderr)
        sys.exit(2)
    if not shutil.which("wrk"):
        print("wrk is not installed ('apt-get install wrk'): the concurrent rows are skipped", file=sys.stderr)
    tag = uuid.uuid4().hex[:6]
    res: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "load_before": os.getloadavg()[0]},
                           "etcd_version": etcd_version(),
                           "clients": args.clients}
    with EtcdCluster.start() as ec:
        res["etcd"] = measure(etcd_target(ec), args, tag)
    with tempfile.TemporaryDirectory(prefix="canidae-vs-etcd-") as tmp, \
            LocalCluster.start(ClusterLayout(servers=3, base_port=None), os.path.join(tmp, "c"),
                               insecure_http=True) as cc:  # like for like: this etcd serves plain HTTP
        res["canidae"] = measure(canidae_target(cc), args, tag)
    res["machine"]["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(res, indent=1))
        return
    m = res["machine"]
    print(f"{m['cpus']} cores, Python {m['python']}, load average {m['load_before']:.2f} before, "
          f"{m['load_after']:.2f} after; etcd {res['etcd_version']}")
    print(table(res))


if __name__ == "__main__":
    main()
