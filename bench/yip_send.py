"""Yip send latency at the mailbox's own node: what the sender waits for before its yip is queued.

    python bench/yip_send.py                 # ~30 s on 2 cores
    python bench/yip_send.py --sends 3000 --seconds 5

A local cluster of 3 servers; a virtual pack ``inbox`` on s1; every send goes straight to s1 with
the admin token (no hop between agents), so the figure is the mailbox's own cost plus one HTTP
request. A durable mailbox answers only once the yip is on disk (fdatasync), so this is where its
price shows.

* sequential: one sender, one yip per request, ``--sends`` of them (acknowledged now and then by
  a receive, untimed, so the mailbox never fills);
* concurrent (with wrk installed; ``--seconds 0`` skips it): ``--concurrency`` connections for
  ``--seconds``, each request from one of as many pack tokens in turn (a sender holds at most
  half of a mailbox), while a receiver drains and acknowledges: requests per second and latency.
  Many sends share one fdatasync.
* in process (only with the durable mailbox), no HTTP: one send at a time (put + flush) to an
  in-memory and to an on-disk ``MailboxStore``; then ``--burst`` concurrent sends to one on disk,
  and how many fdatasync rounds they took.

Nothing here is a test: it never fails on a slow figure, it reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))]


def sequential(url: str, token: str, n: int, verify: Any = True) -> dict[str, Any]:
    ms: list[float] = []
    with httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=10, verify=verify) as http:
        for _ in range(50):  # warm the connection and the agent
            http.post(url, json={"text": "warm"}).raise_for_status()
        last = http.get(url, params={"after": 0, "max": 1000}).json()["yips"][-1]["seq"]
        http.post(f"{url}/ack", json={"through": last}).raise_for_status()
        for i in range(n):
            t0 = time.perf_counter()
            r = http.post(url, json={"text": f"yip {i}"})
            ms.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            if i % 200 == 199:
                http.post(f"{url}/ack", json={"through": r.json()["yips"][0]["seq"]}).raise_for_status()
    return {"n": n, "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99), "max_ms": max(ms)}


WRK_SCRIPT = """
tokens = {%s}
i = 0
request = function()
  i = i + 1
  local auth = "Bearer " .. tokens[(i %% #tokens) + 1]
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = auth},
                    '{"text":"x"}')
end
"""


def concurrent(url: str, admin: str, cluster: LocalCluster, senders: int, seconds: float, workdir: str
               ) -> dict[str, Any]:
    """``senders`` connections of wrk (a C load generator: a Python client would be the bottleneck),
    each request from one of ``senders`` running packs' tokens in turn, while a receiver drains the mailbox."""
    with cluster.client() as cl:
        names = [f"sender-{i}" for i in range(senders)]
        cl.create_packs([{"name": n, "driver": "virtual", "constraints": {"node": "s1"}} for n in names])
        cl.wait_running(names, 30)
    tokens = ", ".join(f'"{cluster.pack_token(n)}"' for n in names)
    lua = os.path.join(workdir, "yips.lua")
    with open(lua, "w") as f:
        f.write(WRK_SCRIPT % tokens)
    received = [0]
    done = threading.Event()

    def receiver() -> None:
        last = 0
        with httpx.Client(headers={"authorization": f"Bearer {admin}"}, timeout=10, verify=cluster.verify) as http:
            while not done.is_set():
                got = http.get(url, params={"after": last, "ack": last, "wait": 1, "max": 1000}).json()
                received[0] += len(got["yips"])
                last = got["next"]
            http.get(url, params={"after": last, "ack": last})
    rx = threading.Thread(target=receiver)
    rx.start()
    try:
        out = subprocess.run(["wrk", "-t2", f"-c{senders}", f"-d{seconds:g}s", "--latency", "-s", lua, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        done.set()
        rx.join(15)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"senders": senders, "yips_per_s": round(float(re.search(r"Requests/sec:\s+(\S+)", out).group(1))),
            "refused_full": int(refused.group(1)) if refused else 0, "received": received[0],
            "p50": lat.get("50", "?"), "p99": lat.get("99", "?")}


def single_in_process(n: int) -> dict[str, Any] | None:
    """One send at a time to one mailbox in this process, put + flush: in memory, then on disk.
    The difference is what durability costs a lone send (a thread hop and one fdatasync)."""
    from canidae.agent.node import mailbox
    if "data_dir" not in mailbox.MailboxStore.__init__.__code__.co_varnames:
        return None
    tmp = tempfile.mkdtemp(prefix="canidae-bench-mailbox-")

    async def run(store: Any) -> dict[str, float]:
        box = store.get("inbox")
        ms = []
        for i in range(n):
            t0 = time.perf_counter()
            y = box.put("s", [({"text": f"yip {i}"}, None)])[0]
            await box.flush()
            ms.append((time.perf_counter() - t0) * 1000)
            if i % 100 == 99:
                box.ack(y["seq"])
        store.close()
        return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99)}
    try:
        return {"n": n, "memory": asyncio.run(run(mailbox.MailboxStore())),
                "disk": asyncio.run(run(mailbox.MailboxStore(os.path.join(tmp, "mailboxes"))))}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def group_commit_in_process(burst: int) -> dict[str, Any] | None:
    """``burst`` concurrent one-yip sends to one durable mailbox: how many fdatasync rounds they took."""
    from canidae.agent.node import mailbox
    if "data_dir" not in mailbox.MailboxStore.__init__.__code__.co_varnames:
        return None  # the in-memory mailbox: nothing to measure
    tmp = tempfile.mkdtemp(prefix="canidae-bench-mailbox-")

    async def main() -> dict[str, Any]:
        store = mailbox.MailboxStore(os.path.join(tmp, "mailboxes"), max_yips=4 * burst, max_bytes=1 << 24)
        box = store.get("inbox")

        async def one(i: int) -> float:
            t0 = time.perf_counter()
            box.put(f"s{i % 4}", [({"text": f"yip {i}"}, None)])
            await box.flush()
            return (time.perf_counter() - t0) * 1000
        await one(-1)
        rounds0 = store.syncer.rounds
        t0 = time.perf_counter()
        ms = await asyncio.gather(*(one(i) for i in range(burst)))
        took = (time.perf_counter() - t0) * 1000
        store.close()
        return {"sends": burst, "fdatasync_rounds": store.syncer.rounds - rounds0,
                "all_done_ms": round(took, 2), "p50_ms": pct(list(ms), 50), "p99_ms": pct(list(ms), 99)}
    try:
        return asyncio.run(main())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="canidae-bench-yips-")
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    c = LocalCluster.start(ClusterLayout(servers=3, base_port=None), os.path.join(tmp, "cluster"))
    try:
        with c.client() as cl:
            cl.create_packs([{"name": "inbox", "driver": "virtual", "constraints": {"node": "s1"}}])
            cl.wait_running(["inbox"], 30)
        url = c.url("s1", "/v1/yips/inbox")
        out["sequential"] = sequential(url, c.token, args.sends, c.verify)
        if shutil.which("wrk") and args.seconds > 0:
            out["concurrent"] = concurrent(url, c.token, c, args.concurrency, args.seconds, tmp)
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out["single_in_process"] = single_in_process(args.sends)
    out["group_commit_in_process"] = group_commit_in_process(args.burst)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    s, k = out["sequential"], out.get("concurrent")
    print(f"single-yip send to the mailbox's node, one at a time ({s['n']}): p50 {s['p50_ms']:.2f} ms  "
          f"p90 {s['p90_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  max {s['max_ms']:.2f} ms")
    if k:
        print(f"single-yip sends from {k['senders']} connections (wrk, one sender each in turn): "
              f"{k['yips_per_s']} requests/s ({k['refused_full']} refused while the mailbox was full, "
              f"{k['received']} yips received), latency p50 {k['p50']}  p99 {k['p99']}")
    one = out["single_in_process"]
    if one:
        print(f"one send at a time in process, put + flush ({one['n']}): in memory p50 "
              f"{one['memory']['p50_ms']:.3f} ms p99 {one['memory']['p99_ms']:.3f} ms; on disk p50 "
              f"{one['disk']['p50_ms']:.3f} ms p99 {one['disk']['p99_ms']:.3f} ms")
    g = out["group_commit_in_process"]
    if g:
        print(f"group commit, in process: {g['sends']} concurrent sends took {g['fdatasync_rounds']} "
              f"fdatasync round(s), {g['all_done_ms']} ms in all "
              f"(p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
