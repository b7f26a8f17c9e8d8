"""``fleet upgrade`` and ``fleet remove`` against real sshd (the five-host rig of ``fleetrig``: 3
servers, 2 clients, each a network namespace with its own sshd).

One scenario: bootstrap; exec packs on both clients; then a rolling upgrade to canidae built from
a changed copy of the source tree while one thread polls every server for a leader and another
keeps creating packs (each write retried with its request id until it is acknowledged). After:
every write was acknowledged, every acknowledged pack runs, on one node, the exec packs each as
exactly one process, the leader was never missing for long (an election, not an outage), and
every host runs the new wheels. A second upgrade changes nothing. Then ``fleet remove`` refuses a
server, and removes a client: its packs run elsewhere, the node leaves ``node list``, the host is
clean.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from fleetrig import HOSTS, ROOT, Fleet, by_host, fleet_rig, pack_processes

from canidae.agent.client.calls import Client, resolve_target
from canidae.core.errors import CanidaeError
from canidae.agent.ops.waiting import wait_until

pytestmark = pytest.mark.netns

SERVERS = [n for n, r in HOSTS if r == "server"]


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with fleet_rig() as f:
        yield f


def _changed_tree(dest: Path) -> Path:
    """A copy of the source tree whose canidae wheel differs (one comment more)."""
    dest.mkdir(parents=True)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, part), dest / part)
    for part in ("core", "agent", "cli", "src"):
        shutil.copytree(os.path.join(ROOT, part), dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    with open(dest / "src" / "canidae" / "__init__.py", "a") as f:
        f.write("\n# built for the upgrade test\n")
    return dest


class Watch:
    """While an upgrade runs: who leads (polled on every server), and writes that must all land."""

    def __init__(self, fleet: Fleet, token: str) -> None:
        self.apis = [f"{fleet.addrs[s]}:7100" for s in SERVERS]
        # The fleet's CLI config names its CA: the servers speak TLS.
        self.target = resolve_target(",".join(self.apis), token, str(fleet.cli_config))
        self.stop = threading.Event()
        self.leader_seen: list[float] = []
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._poll, daemon=True),
                        threading.Thread(target=self._write, daemon=True)]

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)

    def _poll(self) -> None:
        with Client(self.target, timeout=1.0) as c:
            while not self.stop.is_set():
                for api in self.apis:
                    try:
                        st = c.ask(api, "GET", "/v1/status", params={"stale": 1})
                    except CanidaeError:
                        continue
                    if st.get("raft_state") == "leader" and st.get("has_quorum"):
                        self.leader_seen.append(time.monotonic())
                        break
                self.stop.wait(0.1)

    def _write(self) -> None:
        i = 0
        with Client(self.target, timeout=5.0) as c:
            while not self.stop.is_set():
                name, rid = f"during-{i}", uuid.uuid4().hex
                i += 1
                try:  # the same request id on every try: a write lands once, however often it is sent
                    c.create_packs([{"name": name, "cpu": 10, "mem": 8}], request_id=rid, retry_for=120.0)
                    self.acked.append(name)
                except Exception as e:  # noqa: BLE001 (recorded, and the test fails on it)
                    self.failed.append(f"{name}: {type(e).__name__}: {e}")
                self.stop.wait(1.0)

    def longest_gap(self, since: float, until: float) -> float:
        seen = [since, *[t for t in self.leader_seen if since <= t <= until], until]
        return max(b - a for a, b in itertools.pairwise(seen))


def _upgrade(fleet: Fleet, *args: str, code: int = 0) -> dict[str, Any]:
    p = fleet.cli("fleet", "upgrade", str(fleet.inventory), "--yes", "--json", *args, code=code)
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def test_rolling_upgrade_keeps_a_leader_then_remove_a_client(fleet: Fleet, tmp_path: Path) -> None:
    doc = fleet.bootstrap("--accept-new")
    assert doc["failed"] == [] and doc["leader"], doc
    with open(fleet.cli_config, "rb") as f:
        token = tomllib.load(f)["token"]
    apis = tuple(f"{fleet.addrs[s]}:7100" for s in SERVERS)
    c = Client(resolve_target(",".join(apis), token, str(fleet.cli_config)), timeout=5.0)
    for host in ("c1", "c2"):  # pinned: a drain of their node leaves them pending until it is back
        for k in range(2):
            out = json.loads(fleet.cli("--json", "pack", "spawn", f"job-{host}-{k}", "--node", host, "--check", "0",
                                       "--", "sleep", "600").stdout)
            assert out["state"] == "running", out
    for k in range(2):  # free to run anywhere
        out = json.loads(fleet.cli("--json", "pack", "spawn", f"free-{k}", "--check", "0", "--", "sleep", "600").stdout)
        assert out["state"] == "running", out
    jobs = [f"job-{h}-{k}" for h in ("c1", "c2") for k in range(2)] + ["free-0", "free-1"]
    wait_until(lambda: _job_processes(fleet, jobs) == dict.fromkeys(jobs, 1), 30, "the jobs' processes")
    leader_before = doc["leader"]
    pids = {n: fleet.agent_pid(n) for n, _ in HOSTS}

    tree = _changed_tree(tmp_path / "next")
    with Watch(fleet, token) as watch:
        t0 = time.monotonic()
        up = _upgrade(fleet, "--source", str(tree))
        t1 = time.monotonic()
        wait_until(lambda: len(watch.acked) >= 3, 30, "writes after the upgrade")
    rows = by_host(up)
    print(f"\nfleet upgrade of 5 hosts: {up['seconds']:.1f} s; longest time without a leader seen: "
          f"{watch.longest_gap(t0, t1):.1f} s; {len(watch.acked)} writes during it")
    assert up["stopped"] == "" and {r["status"] for r in rows.values()} == {"ok"}, up
    order = [r["host"] for r in up["hosts"]]
    assert order[2] == leader_before and set(order[:3]) == set(SERVERS) and order[3:] == ["c1", "c2"]
    for client in ("c1", "c2"):  # drained, upgraded, ready again
        assert rows[client]["changed"][0] == "drain" and rows[client]["changed"][-1] == "uncordon", rows[client]
    assert all(fleet.agent_pid(n) not in (None, pids[n]) for n, _ in HOSTS)  # every agent was restarted
    for n, _ in HOSTS:
        assert (fleet.host_dir(n) / "wheels.sha256").read_text().strip() == up["target"]["wheels"]
    # Writes during the upgrade all landed; the leader was missing at most for an election (a
    # liveness bound, far above an election's few seconds: not a speed check).
    assert watch.failed == [], watch.failed[:5]
    assert watch.longest_gap(t0, t1) < 30.0
    # Every acknowledged pack runs on one node; each exec job is one process.
    packs = {p["name"]: p for p in c.iter_packs()}
    for name in watch.acked + jobs:
        wait_until(lambda name=name: c.pack(name)["state"] == "running", 30, f"{name} running")
    assert len(packs) >= len(watch.acked) + len(jobs)
    nodes = {n["id"]: n for n in c.nodes()}
    assert {nodes["c1"]["state"], nodes["c2"]["state"]} == {"ready"}
    wait_until(lambda: _job_processes(fleet, jobs) == dict.fromkeys(jobs, 1), 30, "each job running once")

    # Again: nothing to do, nothing restarted.
    pids = {n: fleet.agent_pid(n) for n, _ in HOSTS}
    again = _upgrade(fleet, "--source", str(tree))
    assert {r["status"] for r in again["hosts"]} == {"unchanged"} and again["upgraded"] == 0, again
    assert {n: fleet.agent_pid(n) for n, _ in HOSTS} == pids

    # The first failure stops the run, with the table: s1's agent stopped (the run restarts it: it
    # needs a change, and the others keep quorum), c1 cut off (unreachable); c2 is not reached.
    fleet.stop_agent("s1")
    fleet.net.cut("c1")
    try:
        bad = _upgrade(fleet, "--source", str(tree), code=1)
        human = fleet.cli("fleet", "upgrade", str(fleet.inventory), "--yes", "--source", str(tree), code=1).stdout
    finally:
        fleet.net.heal("c1")
    rows = by_host(bad)
    assert [rows[n]["status"] for n in ("s1", "c1", "c2")] == ["ok", "unreachable", "skipped"], bad
    assert {rows["s2"]["status"], rows["s3"]["status"]} == {"unchanged"} and bad["stopped"] == "c1 failed", bad
    assert "stopped: c1 failed" in human and "skipped" in human
    assert fleet.agent_pid("s1") is not None and fleet.agent_pid("c2") == pids["c2"]
    wait_until(lambda: c.node("c1")["state"] == "ready", 60, "c1 back")
    pids["s1"] = fleet.agent_pid("s1")

    # A server cannot be removed; a client can.
    p = fleet.cli("fleet", "remove", "s2", str(fleet.inventory), "--yes", code=2)
    assert "is a server" in p.stderr and fleet.agent_pid("s2") == pids["s2"]
    # Packs pinned to c2 would have nowhere to go: refused before anything is done.
    p = fleet.cli("fleet", "remove", "c2", str(fleet.inventory), "--yes", "--json", code=1)
    refused = json.loads(p.stdout)
    assert (refused["status"], refused["step"], refused["steps"]) == ("failed", "drain", []), refused
    assert "nowhere to go" in refused["error"] and "job-c2-0" in refused["error"]
    assert fleet.agent_pid("c2") == pids["c2"] and c.node("c2")["state"] == "ready"
    c.delete_packs(["job-c2-0", "job-c2-1"], force=True)
    jobs = [j for j in jobs if not j.startswith("job-c2-")]
    if c.pack("free-0")["node"] != "c2":
        c.migrate("free-0", to="c2")
        wait_until(lambda: c.pack("free-0")["node"] == "c2" and c.pack("free-0")["state"] == "running", 30,
                   "free-0 on c2")
    on_c2 = [p["name"] for p in c.iter_packs(node="c2")]
    gone = json.loads(fleet.cli("fleet", "remove", "c2", str(fleet.inventory), "--yes", "--json").stdout)
    assert (gone["status"], gone["steps"]) == ("removed", ["drain", "stop", "forget", "uninstall"]), gone
    assert "c2" not in {n["id"] for n in c.nodes()}
    for name in on_c2:
        pack = c.pack(name)
        assert pack["state"] == "running" and pack["node"] not in (None, "c2"), pack
    wait_until(lambda: _job_processes(fleet, jobs) == dict.fromkeys(jobs, 1), 30, "the jobs once each, off c2")
    assert fleet.agent_pid("c2") is None and not pack_processes(fleet, "c2")
    assert not fleet.host_dir("c2").exists()  # every file bootstrap wrote, and then the dir itself
    # Removing it again finds nothing left to do, and says it is removed.
    again_rm = json.loads(fleet.cli("fleet", "remove", "c2", str(fleet.inventory), "--yes", "--json").stdout)
    assert again_rm["status"] == "removed" and "forget" not in again_rm["steps"]
    c.close()


def _job_processes(fleet: Fleet, jobs: list[str]) -> dict[str, int]:
    """How many processes run each job, over every host (by the pack's work dir)."""
    counts = dict.fromkeys(jobs, 0)
    for n, _ in HOSTS:
        for pid in pack_processes(fleet, n):
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            for j in jobs:
                if f"/{j}/" in cwd + "/" and cmd.split(b"\0")[0].endswith(b"sleep"):
                    counts[j] += 1
    return counts


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s"]))
