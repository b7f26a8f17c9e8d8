"""The real CLI against a real local cluster: cluster up/status/down, spawn, list, exit codes."""

import json
import os
import subprocess
import sys

import pytest

from harness import pick_base_port


def run(args, home, check=True):
    env = {**os.environ, "HOME": str(home)}
    env.pop("CANIDAE_ADDR", None)
    env.pop("CANIDAE_TOKEN", None)
    p = subprocess.run([sys.executable, "-m", "canidae", *args], capture_output=True, text=True, env=env,
                       timeout=90)
    if check and p.returncode != 0:
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    return p


@pytest.fixture
def up(tmp_path):
    home = tmp_path / "home"
    data = tmp_path / "data"
    port = pick_base_port(3, 1)
    res = run(["cluster", "up", "--clients", "1", "--data-dir", str(data), "--base-port", str(port), "--json"], home)
    try:
        yield home, data, port, json.loads(res.stdout)
    finally:
        run(["cluster", "down", "--data-dir", str(data)], home, check=False)


def test_cluster_lifecycle_through_the_cli(up):
    home, data, port, info = up
    cfg = home / ".config" / "canidae" / "config.toml"
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"
    st = json.loads(run(["cluster", "status", "--json"], home).stdout)
    assert st["leader_api"] and all(p["up"] for p in st["peers"])
    nodes = json.loads(run(["node", "list", "--json"], home).stdout)["nodes"]
    assert sorted(n["id"] for n in nodes) == ["c1", "s1", "s2", "s3"]
    assert all(n["last_heartbeat_s_ago"] is not None for n in nodes)
    out = json.loads(run(["pack", "spawn", "web", "--cpu", "500", "--mem", "256", "--json"], home).stdout)
    assert out["placed"] == 1 and out["running_ms"] is not None
    out = json.loads(run(["pack", "spawn", "batch", "--count", "300", "--json"], home).stdout)
    assert out["placed"] == 300
    listed = json.loads(run(["pack", "list", "--limit", "1000", "--json"], home).stdout)
    assert listed["total"] == 301 and len(listed["packs"]) == 301
    # exit codes: exists -> 6, unknown pack -> 5, bad name -> 2
    assert run(["pack", "spawn", "web"], home, check=False).returncode == 6
    p = run(["pack", "show", "nope"], home, check=False)
    assert p.returncode == 5 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert run(["pack", "spawn", "../x"], home, check=False).returncode == 2
    # a second cluster up in the same dir, or on busy ports, is refused clearly
    p = run(["cluster", "up", "--data-dir", str(data), "--base-port", str(port)], home, check=False)
    assert p.returncode == 6 and "already running" in p.stderr
    other = data.parent / "other"
    p = run(["cluster", "up", "--data-dir", str(other), "--base-port", str(port)], home, check=False)
    assert p.returncode == 6 and "busy" in p.stderr
    # wrong token -> 4
    env_home = home
    p = subprocess.run([sys.executable, "-m", "canidae", "--token", "wrong", "pack", "list"], capture_output=True,
                       text=True, env={**os.environ, "HOME": str(env_home)}, timeout=30)
    assert p.returncode == 4


def test_cluster_down_stops_exactly_its_agents(up):
    home, data, port, info = up
    pids = [a["pid"] for a in info["agents"]]
    res = json.loads(run(["cluster", "down", "--json"], home).stdout)
    assert sorted(res["stopped"]) == ["c1", "s1", "s2", "s3"]
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    p = run(["cluster", "status"], home, check=False)
    assert p.returncode == 3
