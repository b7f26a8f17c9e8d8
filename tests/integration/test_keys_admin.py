"""Operator credentials of a real cluster (3 servers, 1 client agent): the bootstrap admin token is
rotated (the old one refused by every agent at the next request, also after the client agent
restarts; the new one written to the CLI config and identity.toml), and the Raft password is
changed by a coordinated restart (state kept, writes work, API tokens still valid)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import httpx
import pytest
from harness import LocalCluster, local_cluster, wait_until

from canidae.agent.client import Client
from canidae.agent.identity import Identity
from canidae.agent.ops.admintoken import rotate_admin_token
from canidae.agent.ops.raftpassword import change_raft_password


@pytest.fixture()
def cluster(tmp_path) -> LocalCluster:
    # Plain HTTP: these tests are about key and password changes, not the transport (TLS is the default of every other
    # test cluster and is tested in tests/security/test_tls.py); their raw requests speak http://.
    lc = local_cluster(str(tmp_path / "cluster"), servers=3, clients=1, insecure_http=True)
    try:
        with lc.client() as c:
            wait_until(lambda: len(c.keys()) >= 4, 15, "the keyrings seeded")
        yield lc
    finally:
        lc.close()


def status_with(api: str, token: str, path: str = "/v1/nodes") -> int:
    return httpx.get(f"http://{api}{path}", headers={"authorization": f"Bearer {token}"}, timeout=10).status_code


def test_the_bootstrap_token_is_rotated_and_the_old_one_refused_everywhere(cluster: LocalCluster) -> None:
    lc = cluster
    old = lc.token
    config = os.path.join(lc.data_dir, "cli.toml")
    for a in lc.agents:
        assert status_with(a["api"], old) == 200 and status_with(a["api"], old, "/v1/metrics") == 200
    out = rotate_admin_token(lc.target(token=old), config)
    assert out["in_force_on_all_servers"] and out["client_agents_confirmed"] == ["c1"]
    with open(config, "rb") as f:
        new = tomllib.load(f)["token"]
    assert new != old and "token" not in out  # written to the config, not shown
    assert Identity.load(os.path.join(lc.data_dir, "identity.toml")).admin_token == new
    for a in lc.agents:  # the client agent's node-local routes check the admin token themselves
        for path in ("/v1/nodes", "/v1/metrics"):
            assert status_with(a["api"], old, path) == 401, (a["id"], path)
            assert status_with(a["api"], new, path) == 200, (a["id"], path)
    # A restarted client agent does not take the old token back before it hears from a server.
    lc.kill("c1")
    lc.restart("c1")
    c1 = lc.agent("c1")["api"]
    wait_until(lambda: status_with(c1, new, "/v1/metrics") == 200, 20, "c1 back")
    assert status_with(c1, old, "/v1/metrics") == 401
    # The CLI uses the config it was given: the new token works there.
    env = {**os.environ, "CANIDAE_CONFIG": config}
    env.pop("CANIDAE_TOKEN", None)
    p = subprocess.run([sys.executable, "-m", "canidae", "node", "list", "--json"], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    bad = subprocess.run([sys.executable, "-m", "canidae", "--token", old, "node", "list"], capture_output=True,
                         text=True, env=env, timeout=60, check=False)
    assert bad.returncode == 4 and "token" in bad.stderr


def test_the_raft_password_is_changed_by_a_coordinated_restart(cluster: LocalCluster) -> None:
    lc = cluster
    with lc.client() as c:
        c.create_packs([{"name": f"keep-{i}", "secrets": {"S": f"v{i}"}} for i in range(20)])
        c.wait_running([f"keep-{i}" for i in range(20)], 30)
        api_token = c.create_token("survivor", ["management"])["secret"]
        digest_before = sorted(p["name"] for p in c.iter_packs())
    old_password = Identity.load(os.path.join(lc.data_dir, "identity.toml")).cluster_password
    out = change_raft_password(lc, timeout=60)
    assert out["ok"] and sorted(out["servers"]) == ["s1", "s2", "s3"]
    ident = Identity.load(os.path.join(lc.data_dir, "identity.toml"))
    assert ident.cluster_password != old_password
    for a in lc.servers():
        with open(a["config"], "rb") as f:
            assert tomllib.load(f)["cluster_password"] == ident.cluster_password
    with lc.client() as c:
        assert sorted(p["name"] for p in c.iter_packs()) == digest_before  # the state survived
        assert c.create_packs([{"name": "after-change"}])["ok"]             # writes work
        c.wait_running(["after-change"], 30)
        st = c.status()
        assert st.get("leader")
    with Client(lc.target(token=api_token)) as t:
        assert t.pack("keep-3")["name"] == "keep-3"  # API tokens do not depend on the password
    # Every server took part again (each applied the last write).
    for a in lc.servers():
        wait_until(lambda a=a: (lc.health(a) or {}).get("raft", {}).get("has_quorum"), 20, f"{a['id']} in the group")


def test_a_rotation_whose_server_died_part_way_is_carried_out_by_the_next_rotate(cluster: LocalCluster) -> None:
    lc = cluster
    s3 = lc.agent("s3")
    with Client(lc.target(apis=[s3["api"]])) as on_s3:
        started = on_s3.rotate_keys(["pack"], 60)["rotation"]  # s3 would wait a minute before activating
    kid = started["keys"]["pack"]
    lc.kill("s3")
    lc.wait_leader(30)  # s3 may have led: the others elect one first
    with Client(lc.target(apis=[a["api"] for a in lc.servers() if a["id"] != "s3"])) as c:
        state = wait_until(lambda: next(k for k in c.keys() if k["id"] == kid)["state"], 30, "the keys readable")
        assert state == "prepublished"
        again = c.rotate_keys(["pack"], 0)["rotation"]
        assert again["keys"]["pack"] == kid and again["resumed"] == ["pack"]
        wait_until(lambda: next(k for k in c.keys() if k["id"] == kid)["state"] == "active", 30,
                   "the taken-over key active")
    lc.restart("s3")
