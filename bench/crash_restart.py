"""Whole-cluster crash and restart, measured: SIGKILL all 3 servers, restart them in random order
0-1.5 s apart, and time the first leader after the last start; count acknowledged writes lost.

    python bench/crash_restart.py --rounds 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--writes", type=int, default=50, help="acknowledged spawns before each crash")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    acked: list[str] = []
    leader_after_last_start = []
    with tempfile.TemporaryDirectory(prefix="canidae-crash-") as tmp:
        c = LocalCluster.start(ClusterLayout(servers=3, base_port=None), os.path.join(tmp, "c"))
        ids = ["s1", "s2", "s3"]
        try:
            for rnd in range(args.rounds):
                with c.client(timeout=2) as cl:
                    for i in range(args.writes):
                        name = f"r{rnd}-{i}"
                        cl.create_packs([{"name": name}], request_id=uuid.uuid4().hex, retry_for=20)
                        acked.append(name)
                for i in ids:
                    c.kill(i)
                order = ids[:]
                rng.shuffle(order)
                for k, i in enumerate(order):
                    c.restart(i)
                    if k < len(order) - 1:
                        time.sleep(rng.uniform(0, 1.5))
                t_last = time.monotonic()
                c.wait_leader(timeout=30)
                leader_after_last_start.append(time.monotonic() - t_last)
            with c.client(timeout=5) as cl:
                have = {p["name"] for p in cl.iter_packs()}
        finally:
            c.close()
    lost = len(set(acked) - have)
    xs = sorted(leader_after_last_start)
    out = {"rounds": args.rounds, "acknowledged": len(acked), "lost": lost,
           "leader_after_last_start_s": {"min": round(xs[0], 3), "median": round(statistics.median(xs), 3),
                                         "max": round(xs[-1], 3)}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
