"""The leader's cost of heartbeats: 3 servers + N idle client agents, CPU of each server from /proc.

    python bench/heartbeats.py --clients 50
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster  # noqa: E402
from canidae.agent.ops.waiting import wait_until  # noqa: E402


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(prefix="canidae-hb-") as tmp:
        c = LocalCluster.start(ClusterLayout(servers=3, clients=args.clients, base_port=None), os.path.join(tmp, "c"))
        try:
            leader = c.wait_leader()
            with c.client() as cl:
                wait_until(lambda: len(cl.nodes()) == 3 + args.clients, 60, "every agent registered")
            time.sleep(3.0)  # let start-up work settle before measuring the steady state
            pids = {a["id"]: a["pid"] for a in c.agents}
            before = {k: cpu_ticks(p) for k, p in pids.items()}
            time.sleep(args.seconds)
            after = {k: cpu_ticks(p) for k, p in pids.items()}
            pct = {k: round((after[k] - before[k]) / hz / args.seconds * 100, 2) for k in pids}
            with c.client() as cl:
                down = [n["id"] for n in cl.nodes() if n["state"] != "ready"]
        finally:
            c.close()
    clients = [v for k, v in pct.items() if k.startswith("c")]
    print(json.dumps({"clients": args.clients, "seconds": args.seconds, "leader": leader,
                      "leader_cpu_percent": pct[leader],
                      "followers_cpu_percent": {k: v for k, v in pct.items() if k.startswith("s") and k != leader},
                      "client_cpu_percent_mean": round(sum(clients) / max(1, len(clients)), 2),
                      "false_node_down": down}))


if __name__ == "__main__":
    main()
