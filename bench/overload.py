"""Overload: what a real cluster accepts at ten times the load it peaks at, and the cost of metrics.

3 servers + 1 client agent on loopback (virtual driver, fsync on). Load is single-pack spawns
(``POST /v1/packs``) sent to the leader from N kept-alive connections, each sending its next
request as soon as the last one is answered (closed loop). Clients do *not* back off on 429
(the worst case: the flood keeps coming); ``--honour`` makes them wait out ``Retry-After``.

1. **Peak**: N in ``--peak-clients`` (default 8, 32, 64), ``--seconds`` each; the peak is the
   highest rate of accepted (200) answers.
2. **10x**: ten times the connections of the peak run, for ``--seconds``: accepted rate as a
   percentage of the peak, p50/p99 of the *accepted* requests (the refused ones answer in
   microseconds and would flatter the figure), 429 count, other failures, and the ``NodeDown``
   events of the run (heartbeats never starve: must be 0), with the leader's admission counters.
3. **Metrics cost** (``--metrics``): a node holding 100, then 10,000 packs; from each agent's own
   counters (``canidae_metrics_summary_seconds_total``, ``_bytes_total``, ``canidae_heartbeats_total``)
   the CPU share of building summaries and the bytes each heartbeat carries, and each agent's whole
   CPU from ``/proc`` over the same window.

The load generator is in this process, on the same cores as the agents: the peak it finds is the
peak of this machine with this generator (say so with the figures). A minimal HTTP/1.1 client
(the one ``AgentHops`` parses answers with) keeps the generator's share small.

    python bench/overload.py [--seconds 10] [--peak-clients 8,32,64] [--honour] [--no-admission] [--metrics] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
import uuid
from typing import Any

from canidae.agent.client.link import AgentHops
from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster, pid_alive
from canidae.agent.ops.waiting import wait_until


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


async def offer(api: str, token: str, clients: int, seconds: float, run: str, honour: bool) -> dict[str, Any]:
    """``clients`` connections sending spawns back to back for ``seconds``."""
    host, _, port = api.rpartition(":")
    head = (f"POST /v1/packs HTTP/1.1\r\nhost: {api}\r\nauthorization: Bearer {token}\r\n"
            "content-type: application/json\r\n")
    ok: list[float] = []
    codes: dict[int, int] = {}
    first: dict[int, str] = {}  # the first answer of each failing status, to say what it was
    deadline = time.monotonic() + seconds

    async def client(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
                body = json.dumps({"spec": {"name": f"{run}-{k}-{n}"}, "request_id": uuid.uuid4().hex}).encode()
                t0 = time.perf_counter()
                try:
                    writer.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
                    status, data, keep = await AgentHops._answer(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    codes[0] = codes.get(0, 0) + 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                codes[status] = codes.get(status, 0) + 1
                if status not in (200, 429) and status not in first:
                    first[status] = data.decode(errors="replace")[:200]
                if status == 200:
                    ok.append(time.perf_counter() - t0)
                elif status == 429 and honour:
                    after = json.loads(data)["error"].get("details", {}).get("retry_after_s", 1)
                    await asyncio.sleep(after * (1 + 0.5 * random.random()))
                if not keep:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.monotonic() - t0
    return {"clients": clients, "seconds": round(elapsed, 2), "accepted_per_s": round(len(ok) / elapsed, 1),
            "p50_ms": round(pct(ok, 50) * 1000, 2), "p99_ms": round(pct(ok, 99) * 1000, 2),
            "max_ms": round(max(ok, default=0) * 1000, 2), "codes": {str(k): v for k, v in sorted(codes.items())},
            **({"failures": {str(k): v for k, v in first.items()}} if first else {})}


def node_downs(cluster: LocalCluster) -> int:
    with cluster.client(timeout=30) as c:
        return len(c.request("GET", "/v1/events", params={"type": "NodeDown", "limit": 10000}, retry_for=30)["events"])


def scrape(cluster: LocalCluster, ident: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one agent's metrics, by (name, labels). Through the typed client: a scrape
    refused for load (metrics are the lowest class) is waited out and repeated."""
    with cluster.client(timeout=30) as c:
        c.addrs = [cluster.agent(ident)["api"]]
        c.overload_retries = 30
        doc = c.request("GET", "/v1/metrics", params={"format": "json"})["metrics"]
    return {(s["name"], tuple(sorted(s["labels"].items()))): s["value"]
            for fam in doc.values() for s in fam["samples"]}


def admission_counts(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in m.items():
        if name in ("canidae_admission_rejected_total", "canidae_admission_queued_total") and v:
            lab = dict(labels)
            out[f"{name.removeprefix('canidae_admission_').removesuffix('_total')} {lab['class']}"
                f"{' ' + lab['reason'] if 'reason' in lab else ''}"] = v
    return out


def bench_overload(cluster: LocalCluster, seconds: float, peak_clients: list[int], honour: bool) -> dict[str, Any]:
    leader = cluster.wait_leader()
    api = cluster.agent(leader)["api"]
    downs = node_downs(cluster)
    runs = []
    for n in peak_clients:
        m0 = scrape(cluster, leader)
        runs.append(asyncio.run(offer(api, cluster.token, n, seconds, f"p{n}", honour)))
        m1 = scrape(cluster, leader)
        batches = m1[("canidae_group_commit_batches_total", ())] - m0[("canidae_group_commit_batches_total", ())]
        runs[-1]["commands_per_entry"] = round((m1[("canidae_group_commit_commands_total", ())]
                                                - m0[("canidae_group_commit_commands_total", ())]) / batches, 1) \
            if batches else None
    best = max(runs, key=lambda r: r["accepted_per_s"])
    before = scrape(cluster, leader)
    flood = asyncio.run(offer(api, cluster.token, best["clients"] * 10, seconds, "x10", honour))
    after = scrape(cluster, leader)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    batches = delta.get(("canidae_group_commit_batches_total", ()), 0)
    flood["commands_per_entry"] = round(delta.get(("canidae_group_commit_commands_total", ()), 0) / batches, 1) \
        if batches else None
    return {"peak_runs": runs, "peak_per_s": best["accepted_per_s"], "peak_clients": best["clients"],
            "x10": flood, "x10_accepted_pct_of_peak": round(100 * flood["accepted_per_s"] / best["accepted_per_s"], 1),
            "x10_leader_admission": admission_counts(delta),
            "node_down_events": node_downs(cluster) - downs,
            "leader_still": cluster.wait_leader() == leader}


def bench_metrics_cost(cluster: LocalCluster, seconds: float) -> dict[str, Any]:
    """Each agent's summary cost and bytes per heartbeat, and its whole CPU, at 100 and at 10,000
    packs on the client agent (pinned there), the other agents holding none."""
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[str, Any] = {}
    node = next(a["id"] for a in cluster.agents if a["role"] == "client")
    with cluster.client(timeout=120) as c:
        for total in (100, 10_000):
            have = c.packs(node=node, limit=1, total=True)["total"]
            if total > have:
                c.create_packs([{"name": f"mc{total}", "constraints": {"node": node}}], count=total - have,
                               retry_for=60)
            wait_until(lambda: c.packs(node=node, state="running", limit=1, total=True)["total"] >= total, 300,  # noqa: B023
                       "packs running", 0.5)
            time.sleep(3.0)  # the rate handed out settles with the next heartbeats
            before = {a["id"]: (scrape(cluster, a["id"]), cpu_ticks(a["pid"])) for a in cluster.agents}
            t0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            row = {}
            for a in cluster.agents:
                m1, cpu1 = before[a["id"]]
                m2, cpu2 = scrape(cluster, a["id"]), cpu_ticks(a["pid"])

                def d(name: str) -> float:
                    return m2.get((name, ()), 0.0) - m1.get((name, ()), 0.0)  # noqa: B023
                beats = d("canidae_heartbeats_total")
                row[a["id"]] = {"packs": int(m2.get(("canidae_node_packs_running", ()), 0)),
                                "summary_cpu_pct": round(100 * d("canidae_metrics_summary_seconds_total") / elapsed, 3),
                                "bytes_per_heartbeat": round(d("canidae_metrics_summary_bytes_total") / beats) if beats else None,
                                "heartbeats": int(beats),
                                "agent_cpu_pct": round(100 * (cpu2 - cpu1) / hz / elapsed, 2)}
            out[f"{total}_packs"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--peak-clients", default="8,32,64")
    ap.add_argument("--honour", action="store_true", help="clients wait out Retry-After (with jitter)")
    ap.add_argument("--no-admission", action="store_true", help="agents run with CANIDAE_ADMISSION=off")
    ap.add_argument("--metrics", action="store_true", help="measure the cost of metrics instead of overload")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                           "admission": not args.no_admission, "honour_retry_after": args.honour}
    env = {"CANIDAE_ADMISSION": "off"} if args.no_admission else None
    with tempfile.TemporaryDirectory(prefix="canidae-overload-") as tmp:
        cluster = LocalCluster.start(ClusterLayout(servers=3, clients=1, base_port=None), os.path.join(tmp, "c"),
                                     env=env)
        try:
            if args.metrics:
                out["metrics_cost"] = bench_metrics_cost(cluster, args.seconds)
            else:
                out["overload"] = bench_overload(cluster, args.seconds,
                                                 [int(x) for x in args.peak_clients.split(",")], args.honour)
        finally:
            cluster.close()
            assert not any(pid_alive(a["pid"], a["config"]) for a in cluster.agents)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"machine: {out['machine']['cpus']} cores, Python {out['machine']['python']}; "
          f"admission {'on' if out['admission'] else 'off'}, clients {'honour' if args.honour else 'ignore'} Retry-After")
    for k, v in out.items():
        if k not in ("machine", "admission", "honour_retry_after"):
            for kk, vv in v.items():
                print(f"{k}.{kk:28} {json.dumps(vv)}")


if __name__ == "__main__":
    main()
