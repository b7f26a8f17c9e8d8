"""Raft failover, measured on the replica alone: a 3-member group on loopback (one process, one
tick thread per member), the leader destroyed as kill -9 would (its sockets close, nothing is
handed over), then the time until a survivor is leader and until the next write is acknowledged.

    python bench/raft_failover.py --runs 10
    python bench/raft_failover.py --runs 10 --no-pre-vote   # pysyncobj's plain elections

Prints min / median / max over the runs (seconds) and one JSON line with the raw figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "agent"))

from canidae.agent.config import RaftSettings
from canidae.core.commands import CreatePacks
from canidae.core.types import PackSpec
from raft_group import Group, wait_until


def one_run(root: str, settings: RaftSettings, pre_vote: bool, k: int) -> tuple[float, float]:
    with Group(root, settings=settings, pre_vote=pre_vote) as g:
        lead = g.leader()
        g.propose(lead, [CreatePacks(id=f"w{k}", at=1, specs=(PackSpec(f"w{k}"),), place=False)])
        time.sleep(0.3)  # a few heartbeats of steady state, as before a real failure
        victim = g.index(lead)
        g.stop(victim)  # returns once its tick thread has closed every socket
        t0 = time.perf_counter()
        new = wait_until(lambda: next((r for r in g.live() if r.is_leader()), None), 30, "a new leader")
        t_leader = time.perf_counter() - t0
        g.propose(new, [CreatePacks(id=f"x{k}", at=2, specs=(PackSpec(f"x{k}"),), place=False)], timeout=30)
        t_write = time.perf_counter() - t0
        return t_leader, t_write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-pre-vote", action="store_true", help="plain pysyncobj elections")
    args = ap.parse_args()
    settings = RaftSettings()
    leaders, writes = [], []
    with tempfile.TemporaryDirectory(prefix="canidae-failover-") as tmp:
        for k in range(args.runs):
            t_leader, t_write = one_run(os.path.join(tmp, f"run{k}"), settings, not args.no_pre_vote, k)
            leaders.append(t_leader)
            writes.append(t_write)
            print(f"run {k + 1}: new leader {t_leader:.3f} s, next write {t_write:.3f} s", flush=True)

    def mmm(xs: list[float]) -> str:
        return f"{min(xs):.3f} / {statistics.median(xs):.3f} / {max(xs):.3f}"

    mode = "plain" if args.no_pre_vote else "pre-vote"
    print(f"{mode}: new leader min/median/max {mmm(leaders)} s; next write {mmm(writes)} s "
          f"({args.runs} runs, election timeout {settings.election_min_s}-{settings.election_max_s} s)")
    print(json.dumps({"mode": mode, "runs": args.runs, "new_leader_s": leaders, "next_write_s": writes,
                      "settings": dataclasses.asdict(settings)}))


if __name__ == "__main__":
    main()
