"""``canidae fleet bootstrap`` against real sshd: five hosts, each a network namespace of its own
with its own address on a bridge, its own sshd and host key, key authentication only.

One scenario, in order: the first run records the host keys (--accept-new), installs the wheels
into a venv per host over SFTP, starts 3 servers then 2 clients and writes the client config;
packs spawned with that config run on the clients; a re-run changes nothing; a host cut off the
network fails alone (unreachable) and ``--limit @failed`` completes it once it is back; a host
whose host key changed is refused. Every agent, sshd and namespace is removed at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fleetrig import HOSTS, ROOT, Fleet, fleet_rig
from fleetrig import by_host as _by_host
from fleetrig import pack_processes as _pack_process

from canidae import __version__
from canidae.agent.ops.waiting import wait_until

pytestmark = pytest.mark.netns


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with fleet_rig() as f:
        yield f


def test_fleet_bootstrap_over_ssh(fleet: Fleet) -> None:
    # Without --accept-new, hosts whose key is not known are refused, and nothing is installed.
    doc = fleet.bootstrap(code=1)
    assert {h["step"] for h in doc["hosts"]} <= {"host-key", "leader"}
    assert "not in" in _by_host(doc)["s1"]["error"] and not fleet.host_dir("s1").exists()

    doc = fleet.bootstrap("--accept-new")
    hosts = _by_host(doc)
    assert {h["status"] for h in hosts.values()} == {"ok"}, doc
    assert doc["leader"] in ("s1", "s2", "s3") and doc["registered"] and doc["failed"] == []
    assert "install" in hosts["c2"]["changed"]
    assert len((fleet.root / "known_hosts").read_text().splitlines()) == 5
    assert fleet.cli_config.stat().st_mode & 0o777 == 0o600
    for name, _ in HOSTS:
        assert (fleet.host_dir(name) / "venv" / "bin" / "python").exists()
        assert (fleet.host_dir(name) / "agent.toml").stat().st_mode & 0o777 == 0o600
        assert fleet.agent_pid(name) is not None
    keys = {(fleet.host_dir(n) / "data" / "secret.keys").read_bytes() for n, _ in HOSTS}
    assert len(keys) == 1  # one cluster key file on every agent
    assert "cluster_password" not in (fleet.host_dir("c1") / "agent.toml").read_text()

    print(f"\nfleet bootstrap of 5 hosts (3 servers, 2 clients; venvs installed over SFTP): {doc['seconds']:.1f} s")
    status = json.loads(fleet.cli("fleet", "status", str(fleet.inventory), "--json").stdout)
    assert [(h["host"], h["up"], h["version"]) for h in status["hosts"]] == [(n, True, __version__) for n, _ in HOSTS]
    assert sorted(h["raft_state"] for h in status["hosts"] if h["role"] == "server") == ["follower", "follower",
                                                                                         "leader"]

    # Packs spawned with the written config run on the clients.
    for host in ("c1", "c2"):
        out = json.loads(fleet.cli("--json", "pack", "spawn", f"web-{host}", "--node", host, "--check", "0",
                                   "--", "sleep", "600").stdout)
        assert out["state"] == "running", out
        wait_until(lambda host=host: _pack_process(fleet, host), 10, f"the pack's process on {host}")
    nodes = {n["id"] for n in json.loads(fleet.cli("--json", "node", "list").stdout)["nodes"]}
    assert nodes == {n for n, _ in HOSTS}

    # A re-run changes nothing and says so; the agents keep running, not restarted.
    pids = {n: fleet.agent_pid(n) for n, _ in HOSTS}
    doc = fleet.bootstrap()
    assert {h["status"] for h in doc["hosts"]} == {"unchanged"} and doc["changed"] == 0
    assert {n: fleet.agent_pid(n) for n, _ in HOSTS} == pids
    human = fleet.cli("fleet", "bootstrap", str(fleet.inventory), "--yes", "--source", ROOT).stdout
    assert "nothing changed: 5 host(s)" in human

    # A host cut off fails alone (unreachable); once back, --limit @failed completes it.
    fleet.stop_agent("c1")
    fleet.net.cut("c1")
    status = json.loads(fleet.cli("fleet", "status", str(fleet.inventory), "--json", code=3).stdout)
    assert status["down"] == ["c1"]
    doc = fleet.bootstrap(code=1)
    hosts = _by_host(doc)
    assert hosts["c1"]["status"] == "unreachable" and doc["failed"] == ["c1"]
    assert {hosts[n]["status"] for n in ("s1", "s2", "s3", "c2")} == {"unchanged"}
    fleet.net.heal("c1")
    doc = fleet.bootstrap("--limit", "@failed")
    assert [(h["host"], h["status"]) for h in doc["hosts"]] == [("c1", "ok")]
    assert "install" not in doc["hosts"][0]["changed"] and "start" in doc["hosts"][0]["changed"]
    assert fleet.agent_pid("c1") is not None
    assert fleet.bootstrap("--limit", "@failed")["hosts"] == []  # nothing left to retry

    # A host whose key changed is refused, with --accept-new too; known_hosts is left as it was.
    known = (fleet.root / "known_hosts").read_text()
    fleet.stop_sshd("c2")
    fleet.new_host_key("c2")
    fleet.start_sshd("c2")
    doc = fleet.bootstrap("--accept-new", code=1)
    c2 = _by_host(doc)["c2"]
    assert (c2["status"], c2["step"]) == ("failed", "host-key") and "does not match" in c2["error"]
    assert doc["failed"] == ["c2"] and (fleet.root / "known_hosts").read_text() == known
    assert fleet.agent_pid("c2") == pids["c2"]  # nothing was done to it
