"""Pack history on a real cluster: every server records the same events; the history survives a
SIGKILL'ed server and a whole-cluster SIGKILL and restart with every acknowledged event; the CLI
shows it (pack history, events tail, history verify) and an unknown pack exits 5.

Bounded in time, loopback only, every process stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from canidae.agent.client import Client
from harness import LocalCluster, local_cluster, wait_until

SERVERS = ["s1", "s2", "s3"]


@pytest.fixture
def cluster(tmp_path):
    c = local_cluster(str(tmp_path / "cluster"), servers=3)
    try:
        yield c
    finally:
        c.close()


def cli(cluster: LocalCluster, home: Any, *args: str, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "CANIDAE_TOKEN": cluster.token, "CANIDAE_CA": cluster.ca or "",
           "CANIDAE_ADDR": ",".join(a["api"] for a in cluster.agents if a["role"] == "server")}
    p = subprocess.run([sys.executable, "-m", "canidae", *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    return p


def on(cluster: LocalCluster, ident: str, timeout: float = 10.0) -> Client:
    """A client that talks to one server only."""
    return Client(cluster.target([ident]), timeout=timeout)


def history(cluster: LocalCluster, ident: str, name: str) -> list[dict[str, Any]]:
    with on(cluster, ident) as c:
        return c.pack_events(name)["events"]  # type: ignore[no-any-return]


def all_events(cluster: LocalCluster, ident: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with on(cluster, ident) as c:
        while True:
            page = c.events(after=out[-1]["seq"] if out else 0, limit=5000)
            out.extend(page["events"])
            if len(page["events"]) < 5000:
                return out


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_history_is_the_same_on_every_server_and_survives_restarts(cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with cluster.client() as c:
        c.create_packs([{"name": "web"}])
        c.wait_running(["web"], 15)
        c.pack_action("web", "stop")
        wait_until(lambda: c.pack("web", stale=True)["state"] == "stopped", 15, "web to stop")
        c.create_packs([{"name": "batch"}], count=20)

    # The timeline through the CLI: every step, with the time between steps.
    out = json.loads(cli(cluster, home, "pack", "history", "web", "--json").stdout)
    lifecycle = ["PackCreated", "PackPlaced", "PackStarted", "PackStopping", "PackStopped"]
    assert types(out["events"]) == lifecycle
    assert out["events"][0]["step_ms"] is None
    assert all(e["step_ms"] == e["at"] - p["at"] for p, e in zip(out["events"], out["events"][1:]))
    assert all(e["cause"] and e["at"] > 0 for e in out["events"])
    assert out["events"][2]["by"].startswith("agent:")
    human = cli(cluster, home, "pack", "history", "web").stdout
    assert "PackStarted" in human and "5 event(s)" in human
    since = cli(cluster, home, "pack", "history", "web", "--since", str(out["events"][3]["at"]),
                "--json").stdout
    assert types(json.loads(since)["events"]) == lifecycle[3:]

    # An unknown pack: exit 5, one clear line on stderr, nothing on stdout.
    p = cli(cluster, home, "pack", "history", "nope", check=False)
    assert p.returncode == 5, p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1 and "nope" in p.stderr and "Traceback" not in p.stderr

    # Every server recorded the same events under the same numbers.
    before = {i: history(cluster, i, "web") for i in SERVERS}
    assert all(h == before["s1"] for h in before.values())
    assert [{k: v for k, v in e.items() if k != "step_ms"} for e in out["events"]] == before["s1"]

    # events tail: NDJSON, filtered; --follow sees a new pack's events as they happen.
    lines = cli(cluster, home, "events", "tail", "--pack", "web", "--json", "-n", "100").stdout.splitlines()
    assert [json.loads(x) for x in lines] == before["s1"]
    started = cli(cluster, home, "events", "tail", "--type", "PackStarted", "--json", "-n", "100").stdout
    assert {json.loads(x)["type"] for x in started.splitlines()} == {"PackStarted"}
    with on(cluster, "s1") as c:
        cursor = c.events(last=1)["last_seq"]
    env = {**os.environ, "HOME": str(home), "CANIDAE_TOKEN": cluster.token, "CANIDAE_CA": cluster.ca or "",
           "CANIDAE_ADDR": cluster.agent("s2")["api"]}
    follower = subprocess.Popen([sys.executable, "-m", "canidae", "events", "tail", "--follow", "--json",
                                 "--after", str(cursor), "--pack", "followed", "--count", "3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        with cluster.client() as c:
            c.create_packs([{"name": "followed"}])
        stdout, stderr = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, stderr
    assert types([json.loads(x) for x in stdout.splitlines()]) == ["PackCreated", "PackPlaced", "PackStarted"]

    # One server SIGKILLed; the cluster goes on; back, it holds what it had and what it missed.
    cluster.kill("s2")
    with cluster.client() as c:
        c.create_packs([{"name": "while-down"}])
        c.wait_running(["while-down"], 15)
    cluster.restart("s2")
    wait_until(lambda: types(history(cluster, "s2", "while-down"))[:3] == lifecycle[:3], 30,
             "s2 to record what it missed")
    assert history(cluster, "s2", "web") == before["s1"]

    # The whole cluster SIGKILLed right after acknowledged writes, then restarted.
    recorded = {i: all_events(cluster, i) for i in SERVERS}
    with cluster.client() as c:
        acked = c.create_packs([{"name": "last"}], count=30)["placements"]
    assert len(acked) == 30
    for i in SERVERS:
        cluster.kill(i)
    for i in SERVERS:
        cluster.restart(i)
    cluster.wait_leader(timeout=20)

    def caught_up(ident: str) -> bool:
        return all(types(history(cluster, ident, f"last-{k}"))[:2] == ["PackCreated", "PackPlaced"]
                   for k in (0, 29))
    for i in SERVERS:
        wait_until(lambda i=i: caught_up(i), 30, f"{i} to replay the acknowledged spawns")
    after = {i: all_events(cluster, i) for i in SERVERS}
    for i in SERVERS:
        # Nothing recorded before the crash is lost or changed, and nothing is numbered twice.
        assert after[i][:len(recorded[i])] == recorded[i]
        seqs = [e["seq"] for e in after[i]]
        assert seqs == sorted(set(seqs)) and seqs == list(range(1, len(seqs) + 1))
        created = {e["pack"] for e in after[i] if e["type"] == "PackCreated"}
        assert {f"last-{k}" for k in range(30)} <= created
        assert history(cluster, i, "web") == before["s1"]

    # Projections rebuilt from each server's log equal its live state.
    report = json.loads(cli(cluster, home, "history", "verify", "--json").stdout)
    assert report["ok"] and [r["server"] for r in report["servers"]] == SERVERS, report
    assert all(r["records_checked"] == r["seq"] for r in report["servers"]), report
    full = json.loads(cli(cluster, home, "history", "verify", "--full", "--json").stdout)
    assert full["ok"] and all(r["base"] == "the first event" for r in full["servers"]), full
