"""An attacker holding one client agent's config: it acts as that node only, never as another
node or as the admin, and cannot forge pack tokens. The admin token is on no agent's disk."""

from __future__ import annotations

import math
import time
import tomllib

import httpx
import pytest

from canidae.agent.identity import Identity
from canidae.core.packtoken import pack_token
from canidae.core.types import Role
from harness import local_cluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = local_cluster(str(tmp_path_factory.mktemp("identity") / "cluster"), servers=1, clients=2)
    try:
        yield c
    finally:
        c.close()


def stolen(cluster, ident: str) -> dict:
    with open(cluster.agent(ident)["config"], "rb") as f:
        return tomllib.load(f)


def call(cluster, credential: str, method: str, path: str, at: str = "s1", **kw) -> httpx.Response:
    return httpx.request(method, cluster.url(at, path), verify=cluster.verify,
                         headers={"authorization": f"Bearer {credential}"}, timeout=10, **kw)


def test_the_admin_token_is_in_no_agent_config(cluster):
    for a in cluster.agents:
        with open(a["config"], "rb") as f:
            raw = f.read()
        assert cluster.token.encode() not in raw, a["id"]
        cfg = tomllib.loads(raw.decode())
        assert cfg["token"] != cluster.token and cfg["token"].startswith(f"nc.{a['id']}.")
        assert "signing_key" not in cfg and ("cluster_password" in cfg) == (a["role"] == "server")
    creds = {stolen(cluster, a["id"])["token"] for a in cluster.agents}
    assert len(creds) == len(cluster.agents)  # one credential per agent


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/packs", {"spec": {"name": "evil"}}),
    ("GET", "/v1/packs", None),
    ("GET", "/v1/status", None),
    ("POST", "/v1/nodes/c2/state", {"state": "cordoned"}),
    ("POST", "/v1/nodes/c1/state", {"state": "cordoned"}),
    ("DELETE", "/v1/nodes/c2", {}),  # fleet remove's call: no node may forget another, or itself
    ("DELETE", "/v1/nodes/c1", {}),
    ("POST", "/v1/rebalance", {}),
    ("GET", "/v1/events", None),
    ("GET", "/v1/agent/running", None),
])
def test_a_client_credential_cannot_make_admin_calls(cluster, method, path, body):
    cred = stolen(cluster, "c1")["token"]
    for at in ("s1", "c1", "c2"):  # straight to a server, or through a client agent that forwards
        r = call(cluster, cred, method, path, at=at, json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "denied", (at, r.text)
    with cluster.client() as c:
        assert {n["id"]: n["state"] for n in c.nodes()} == {"s1": "ready", "c1": "ready", "c2": "ready"}
        assert c.packs()["total"] == 0


def test_a_client_credential_cannot_act_as_another_node(cluster):
    cred = stolen(cluster, "c1")["token"]
    assert call(cluster, cred, "POST", "/v1/nodes/c1/heartbeat", json={}).status_code == 200  # as itself: yes
    for method, path, body in [("POST", "/v1/nodes/c2/heartbeat", {}), ("POST", "/v1/nodes/s1/heartbeat", {}),
                               ("GET", "/v1/nodes/c2/assignments", None),
                               ("POST", "/v1/nodes/c2/assignments", {"running": {}}),
                               ("POST", "/v1/nodes/c2/reports", {"reports": [["x", 1, "running", ""]]})]:
        r = call(cluster, cred, method, path, json=body)
        assert r.status_code == 403, (path, r.text)
    # A well-formed registration (the wire form of Node.to_dict), so the credential is what refuses it.
    node = {"id": "c2", "role": "client", "address": "127.0.0.1:1", "zone": "z1", "region": "r1", "cell": "c1",
            "capacity": {"cpu": 1, "mem": 1, "packs": 1}}
    for forged in (node, {**node, "id": "c1", "role": "server"}, {**node, "id": "new"}):
        assert call(cluster, cred, "POST", "/v1/nodes", json={"node": forged}).status_code == 403
    with cluster.client() as c:
        assert {n["id"]: n["address"] for n in c.nodes()}["c2"] == cluster.agent("c2")["api"]


def test_a_credential_for_a_made_up_node_or_a_forged_role_is_refused(cluster):
    cred = stolen(cluster, "c1")["token"]
    node, role, sig = cred[3:].split(".")
    # One signature character changed in the middle (the last ones carry padding bits).
    tampered = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    for forged in (f"nc.c2.{role}.{sig}", f"nc.c1.s.{sig}", f"nc.c1.{role}.{tampered}",
                   Identity.new().node_credential("c1", Role.SERVER)):  # another cluster's key
        r = call(cluster, forged, "POST", "/v1/nodes/c1/heartbeat", json={})
        assert r.status_code == 401, forged
    h = call(cluster, cluster.token, "GET", "/v1/health").json()
    assert h["auth_failures"] >= 4


def test_a_client_credential_cannot_forge_a_pack_token(cluster):
    with cluster.client() as c:
        c.create_packs([{"name": "victim", "constraints": {"node": "c2"}}])
        c.wait_running(["victim"], 10)
        gen = c.pack("victim")["generation"]
    with httpx.Client(timeout=10, verify=cluster.verify) as http:
        http.post(cluster.url("s1", "/v1/yips/victim"), json={"text": "secret"},
                  headers={"authorization": f"Bearer {cluster.token}"}).raise_for_status()
    c1 = stolen(cluster, "c1")["token"]
    c2_api = cluster.agent("c2")["api"]
    # Signed with the key the attacker holds (c1's), for the run on c2: refused everywhere.
    for node in ("c2", "c1"):
        forged = pack_token(c1, "victim", gen, node)
        for at in ("c1", "c2", "s1"):
            r = call(cluster, forged, "GET", "/v1/yips/victim", at=at)
            assert r.status_code == 401, (node, at, r.text)
    # The agent's own credential cannot read a mailbox either; it may only hand on yips.
    r = httpx.get(f"https://{c2_api}/v1/yips/victim", headers={"authorization": f"Bearer {c1}"}, timeout=10,
                  verify=cluster.verify)
    assert r.status_code == 403
    r = httpx.post(f"https://{c2_api}/v1/yips/victim", json={"text": "x"},
                   headers={"authorization": f"Bearer {c1}"}, timeout=10, verify=cluster.verify)
    assert r.status_code == 403


def test_a_pack_token_ends_with_its_run(cluster):
    c2 = stolen(cluster, "c2")["token"]  # the node's own key: what its agent signs with
    with cluster.client() as c:
        c.create_packs([{"name": "short", "constraints": {"node": "c2"}}])
        c.wait_running(["short"], 10)
        gen = c.pack("short")["generation"]
        token = pack_token(c2, "short", gen, "c2")
        at = cluster.agent("c2")["api"]
        read = lambda tok: httpx.get(f"https://{at}/v1/yips/short", timeout=10, verify=cluster.verify,  # noqa: E731
                                     headers={"authorization": f"Bearer {tok}"})
        assert read(token).status_code == 200
        assert read(pack_token(c2, "short", gen + 1, "c2")).status_code == 401  # a run not on yet
        c.pack_action("short", "stop")
        wait_until(lambda: c.pack("short")["state"] == "stopped", 10, "short stopped")
        c.pack_action("short", "place")
        c.wait_running(["short"], 10, generations={"short": gen + 1})
        new_gen = c.pack("short")["generation"]
        assert new_gen > gen
        if c.pack("short")["node"] == "c2":
            wait_until(lambda: read(pack_token(c2, "short", new_gen, "c2")).status_code == 200, 10, "new run's token")
        assert read(token).status_code == 401  # the old run's token reads nothing of the new run


def test_health_without_a_credential_says_only_up(cluster):
    for a in cluster.agents:
        r = httpx.get(cluster.url(a, "/v1/health"), timeout=5, verify=cluster.verify)
        assert r.status_code == 200 and r.json() == {"ok": True}
    full = call(cluster, cluster.token, "GET", "/v1/health").json()
    assert full["raft"]["state"] == "leader" and "pid" in full


def test_events_name_the_acting_credential(cluster):
    from canidae.agent.identity import public_id
    with cluster.client() as c:
        c.create_packs([{"name": "audited"}])
        c.pack_action("audited", "stop")
        # The event store is written after apply: wait until this agent's copy has both events.
        events = wait_until(lambda: (lambda evs: evs if {"PackCreated", "PackStopped"} <= {e["type"] for e in evs}
                                     else None)(c.events(pack="audited")["events"]), 10, "the pack's events")
    by = {e["type"]: e.get("by") for e in events}
    assert by["PackCreated"] == public_id(cluster.token) and by["PackCreated"].startswith("ca_")
    assert cluster.token not in str(events) and "api" not in by.values()


def test_failed_logins_are_logged_at_a_bounded_rate(cluster):
    from canidae.agent.httpedge import AuthFailures
    log = cluster.agent("s1")["log"]

    def refusals() -> list[str]:
        return [ln for ln in open(log).read().splitlines() if "refused" in ln]
    before = len(refusals())
    t0 = time.monotonic()
    for _ in range(200):
        call(cluster, "cs_wrong", "GET", "/v1/status")
    # An earlier test's refusal may have opened the current window: keep guessing until it ends.
    wait_until(lambda: (call(cluster, "cs_wrong", "GET", "/v1/status"), len(refusals()) > before)[1],
               AuthFailures.EVERY_S + 5, "a refusal logged")
    h = call(cluster, cluster.token, "GET", "/v1/health").json()
    windows = 1 + math.ceil((time.monotonic() - t0) / AuthFailures.EVERY_S)
    assert h["auth_failures"] >= 200
    lines = refusals()
    assert 1 <= len(lines) - before <= windows and "wrong credential" in lines[-1]
    assert "cs_wrong" not in open(log).read()
