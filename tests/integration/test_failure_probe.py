"""The leader asks a silent node before declaring it down: alive-but-slow keeps its packs.

A client agent heartbeats at an interval far longer than the leader's TTL, so it is
silent for seconds at a time while alive and answering; the leader must keep it up (it answers
the probe), and once the same agent is paused for real it must be declared down and its packs
moved. Both halves run against real agent processes.
"""

from __future__ import annotations

import signal
import time
from dataclasses import replace

from harness import local_cluster, wait_until


def _slow_heartbeats_on_c1(cfg):
    # c1 heartbeats every 4 s, far past the servers' TTL of 1.5 s: silent for seconds while alive.
    return replace(cfg, heartbeat_interval_s=4.0, heartbeat_ttl_s=8.0) if cfg.node_id == "c1" else cfg


def test_a_silent_but_answering_node_is_kept_and_a_paused_one_is_declared(tmp_path):
    cluster = local_cluster(str(tmp_path / "cluster"), servers=3, clients=1, configure=_slow_heartbeats_on_c1)
    try:
        with cluster.client() as c:
            c.create_packs([{"name": "p"}], count=40)
            wait_until(lambda: c.status()["pack_states"].get("running", 0) == 40, 30, "40 packs running")
            on_c1 = {p["name"] for p in c.iter_packs() if p["node"] == "c1"}
            assert on_c1, "the ring put nothing on c1"
            # The fault under test is the agent's silence itself: three of its long gaps.
            time.sleep(3 * 4.0)
            assert c.node("c1")["state"] == "ready"
            assert [e for e in c.events(type="NodeDown", limit=100)["events"] if e["node"] == "c1"] == []

            cluster.kill("c1", signal.SIGSTOP)
            try:
                wait_until(lambda: c.node("c1")["state"] == "down", 30, "the paused c1 declared down")
                wait_until(lambda: all(p["node"] != "c1" and p["state"] == "running"
                                       for p in c.iter_packs() if p["name"] in on_c1), 30,
                           "c1's packs running elsewhere")
            finally:
                cluster.kill("c1", signal.SIGCONT)
    finally:
        cluster.close()
