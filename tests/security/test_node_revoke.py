"""`canidae node revoke`: an attacker holds a client agent's config (its node credential). Once an
operator revokes it, every server refuses it from the next request, client agents from their
next heartbeat, the node is down and its packs run elsewhere; nothing else loses access."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import httpx
import pytest

from harness import local_cluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = local_cluster(str(tmp_path_factory.mktemp("revoke") / "cluster"), servers=3, clients=2)
    try:
        yield c
    finally:
        c.close()


def canidae(cluster, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANIDAE_")}
    env.update(CANIDAE_CONFIG=os.path.join(cluster.data_dir, "cli.toml"), HOME=cluster.data_dir)
    if token:
        env["CANIDAE_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "canidae", *args], capture_output=True, text=True, env=env,
                          timeout=90, check=False)


def call(cluster, credential: str, method: str, path: str, at: str, **kw) -> httpx.Response:
    return httpx.request(method, cluster.url(at, path), verify=cluster.verify, timeout=10,
                         headers={"authorization": f"Bearer {credential}"}, **kw)


def test_a_stolen_client_config_is_refused_everywhere_once_revoked(cluster):
    with open(cluster.agent("c1")["config"], "rb") as f:
        stolen = tomllib.load(f)["token"]
    with open(cluster.agent("c2")["config"], "rb") as f:
        other = tomllib.load(f)["token"]
    heartbeat = {"running": 0}
    with cluster.client() as c:
        c.create_packs([{"name": "p"}], count=60)  # spread by the ring: some land on c1
        c.create_packs([{"name": "elsewhere", "constraints": {"node": "c2"}}])
        names = [p["name"] for p in c.iter_packs()]
        c.wait_running(names, 30)
        on_c1 = sorted(p["name"] for p in c.iter_packs(node="c1"))
    assert on_c1
    # Before: the stolen credential acts as c1 (it heartbeats as c1, and is known to c2).
    assert call(cluster, stolen, "POST", "/v1/nodes/c1/heartbeat", "s1", json=heartbeat).status_code == 200
    assert call(cluster, stolen, "GET", "/v1/yips/elsewhere", "c2").status_code == 403  # known, not allowed

    # Only the admin token may revoke; a server's credential is not revocable.
    p = canidae(cluster, "node", "revoke", "c1", "--yes", token=other)
    assert p.returncode == 4 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = canidae(cluster, "node", "revoke", "s2", "--yes")
    assert p.returncode == 6 and "server" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = canidae(cluster, "node", "revoke", "c1")  # no terminal, no --yes: refused, nothing done
    assert p.returncode == 2 and "--yes" in p.stderr

    p = canidae(cluster, "node", "revoke", "c1", "--yes", "--reason", "config stolen", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["node_id"] == "c1" and sorted(m["name"] for m in out["moved"]) == on_c1

    # From the next request, on every server (directly, and through a client agent that passes it on).
    for at in ("s1", "s2", "s3", "c2"):
        r = call(cluster, stolen, "POST", "/v1/nodes/c1/heartbeat", at, json=heartbeat)
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"], (at, r.text)
    r = call(cluster, stolen, "POST", "/v1/nodes", "s1", json={"node": {"id": "c1", "role": "client"}})
    assert r.status_code == 401
    # A client agent refuses it on its own routes from its next heartbeat on.
    wait_until(lambda: call(cluster, stolen, "GET", "/v1/yips/elsewhere", "c2").status_code == 401, 10,
               "c2 refusing the revoked credential")
    # The node is down and its pack runs elsewhere; nobody else lost anything.
    with cluster.client() as c:
        assert c.node("c1")["state"] == "down"
        moved = c.wait_running(on_c1, 30, generations={n: 2 for n in on_c1})
        assert all(p["node"] != "c1" and p["state"] == "running" for p in moved.values()), moved
    # c1's own agent hears its credential is refused and stops what it ran: no pack runs twice.
    wait_until(lambda: call(cluster, cluster.token, "GET", "/v1/agent/running", "c1").json()["running"] == {},
               10, "c1's agent running nothing")
    assert call(cluster, other, "POST", "/v1/nodes/c2/heartbeat", "s1", json=heartbeat).status_code == 200
    assert canidae(cluster, "node", "show", "c2").returncode == 0
    # Revoking again is harmless (the same answer, nothing moves).
    p = canidae(cluster, "node", "revoke", "c1", "--yes", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["moved"] == []
