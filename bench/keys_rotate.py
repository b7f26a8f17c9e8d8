"""Requests during a key rotation: none may fail, and what the rotation costs in latency.

    python bench/keys_rotate.py                       # 64 clients, ~1 min on 2 cores
    python bench/keys_rotate.py --clients 16 --warmup 5 --before 5

A local cluster of 3 servers (regions r1, r2, r3) and 1 client agent (r2); 16 virtual packs with
a secret each. ``--clients`` asyncio clients, spread over every agent, each in a loop: spawn a
pack with a secret (half with the admin token, half with an API token made before the rotation),
send a yip to a pack (admin token), read the mailbox of a pack with that pack's token as its
agent made it before the rotation. For ``--before`` seconds nothing rotates (the baseline); then
every keyring (token, pack, secrets, audit) is rotated with ``--by region`` (prepublish 2 s, one
region a second) and the load goes on until every new key is active and the secrets are
rewrapped. The first ``--warmup`` seconds (every client's cold first requests at once) are
reported apart. Reports every answer that was not 2xx (and every transport error), and the latency of
each kind of request before and during the rotation (by when it started).

Nothing here is a test: it never fails on a slow figure, it reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Any

import httpx

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster

REGIONS = {"s1": "r1", "s2": "r2", "s3": "r3", "c1": "r2"}
PACKS = 16


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))]


class Load:
    def __init__(self) -> None:
        self.phase = "warmup"
        self.ms: dict[tuple[str, str], list[float]] = {}
        self.bad: list[str] = []
        self.stop = False

    def took(self, phase: str, kind: str, ms: float) -> None:
        self.ms.setdefault((phase, kind), []).append(ms)


async def client(i: int, load: Load, apis: list[str], admin: str, api_token: str,
                 pack_tokens: dict[str, tuple[str, str]]) -> None:
    token = admin if i % 2 else api_token
    n = 0
    async with httpx.AsyncClient(timeout=30) as http:
        while not load.stop:
            n += 1
            api = apis[(i + n) % len(apis)]
            box = f"box-{(i + n) % PACKS}"
            node_api, ptoken = pack_tokens[box]
            for kind, method, url, body, tok in (
                ("spawn", "POST", f"http://{api}/v1/packs", {"specs": [{"name": f"l{i}-{n}", "secrets": {"K": "v"}}]},
                 token),
                ("yip", "POST", f"http://{api}/v1/yips/{box}", {"text": f"{i}-{n}"}, admin),
                ("recv", "GET", f"http://{node_api}/v1/yips/{box}?after=0&max=1", None, ptoken),
            ):
                t0, phase = time.perf_counter(), load.phase  # a request counts in the phase it started in
                try:
                    r = await http.request(method, url, json=body, headers={"authorization": f"Bearer {tok}"})
                    ok = r.status_code // 100 == 2
                    why = f"HTTP {r.status_code} {r.text[:120]}"
                except httpx.HTTPError as e:
                    ok, why = False, f"{type(e).__name__}: {e}"
                load.took(phase, kind, (time.perf_counter() - t0) * 1000)
                if not ok:
                    load.bad.append(f"{phase} {kind} {url}: {why}")


async def run(args: argparse.Namespace, cluster: LocalCluster) -> dict[str, Any]:
    apis = [a["api"] for a in cluster.agents]
    with cluster.client(timeout=30) as c:
        deadline = time.monotonic() + 30
        while len(c.keys()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        c.create_packs([{"name": f"box-{i}", "secrets": {"PASS": f"p{i}"}} for i in range(PACKS)])
        c.wait_running([f"box-{i}" for i in range(PACKS)], 60)
        api_token = c.create_token("bench", ["management"])["secret"]
        nodes = {f"box-{i}": c.pack(f"box-{i}")["node"] for i in range(PACKS)}
    pack_tokens = {p: (cluster.agent(n)["api"], cluster.pack_token(p)) for p, n in nodes.items()}
    load = Load()
    tasks = [asyncio.create_task(client(i, load, apis, cluster.token, api_token, pack_tokens))
             for i in range(args.clients)]
    await asyncio.sleep(args.warmup)  # 64 cold connections and first requests at once: not the baseline
    load.phase = "before"
    await asyncio.sleep(args.before)
    load.phase = "during"
    t0 = time.monotonic()
    with cluster.client(timeout=30) as c:
        rotation = await asyncio.to_thread(c.rotate_keys, None, 2.0, True)
        keys = rotation["rotation"]["keys"]

        def finished() -> bool:
            ks = {k["id"]: k["state"] for k in c.keys()}
            return all(ks.get(k) == "active" for k in keys.values()) and c.keys_status()["rewrap"]["done"]
        while not await asyncio.to_thread(finished):
            await asyncio.sleep(0.2)
        rotation_s = time.monotonic() - t0
        status = await asyncio.to_thread(c.keys_status)
    load.stop = True
    await asyncio.gather(*tasks)
    out: dict[str, Any] = {
        "clients": args.clients, "warmup_s": args.warmup, "before_s": args.before, "rotation_s": round(rotation_s, 2),
        "non_2xx_or_errors": len(load.bad), "first_failures": load.bad[:10],
        "sealed_values": status["rewrap"]["sealed_values"], "rewrapped": status["rewrap"]["under_active_key"],
        "new_keys": keys,
    }
    for (phase, kind), ms in sorted(load.ms.items()):
        out[f"{phase}.{kind}"] = {"n": len(ms), "p50_ms": round(pct(ms, 50), 1), "p99_ms": round(pct(ms, 99), 1),
                                  "max_ms": round(max(ms), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds of load first, reported apart")
    ap.add_argument("--before", type=float, default=15.0, help="seconds of load measured before the rotation")
    ap.add_argument("--base-port", type=int, default=None)
    args = ap.parse_args()
    layout = ClusterLayout(servers=3, clients=1, base_port=args.base_port)
    cluster = LocalCluster.start(layout, None, timeout=60,
                                 configure=lambda c: dataclasses.replace(c, region=REGIONS[c.node_id]))
    try:
        result = asyncio.run(run(args, cluster))
    finally:
        cluster.close()
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_avg": os.getloadavg()}
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
