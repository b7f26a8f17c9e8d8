"""Drills through the real CLI: a throwaway cluster, real SIGKILL/SIGSTOP, exit codes on breach."""

import json
import os
import subprocess
import sys


def drill(*args, home):
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "canidae", "drill", *args, "--json"], capture_output=True,
                          text=True, env=env, timeout=180)


def test_failover_drill_reports_recovery_and_breach_exits_1(tmp_path):
    p = drill("failover", "--packs", "30", "--expect-failover", "0.001", home=tmp_path)
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    r = doc["rounds"][0]
    assert r["leader_after"] and r["leader_after"] != r["leader_before"]
    assert r["lost"] == 0 and r["duplicated"] == 0
    assert doc["breaches"] and not doc["ok"]
    assert "breached" in p.stderr.splitlines()[-1]


def test_node_drill_moves_packs_and_passes_a_generous_expectation(tmp_path):
    p = drill("node", "--packs", "200", "--clients", "1", "--expect-failover", "30", home=tmp_path)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)["rounds"][0]
    assert r["affected_packs"] > 0 and r["packs_s"] is not None and r["lost"] == 0 and r["duplicated"] == 0


def test_partition_drill_cuts_the_leader_off_and_it_rejoins(tmp_path):
    """A real partition (link down, namespaces) where root allows; otherwise a pause, and it says so."""
    from canidae.agent.ops import netns

    p = drill("partition", "--packs", "20", "--clients", "1", home=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    r = doc["rounds"][0]
    assert r["leader_after"] != r["leader_before"] and r["lost"] == 0 and r["duplicated"] == 0
    if netns.unavailable_reason() is None:
        assert r["fault"].startswith("link down") and doc["method"].startswith("network namespaces")
        assert netns.remove_stale() == [], "the drill left namespaces behind"
    else:
        assert r["fault"].startswith("SIGSTOP") and doc["method"].startswith("SIGSTOP")
