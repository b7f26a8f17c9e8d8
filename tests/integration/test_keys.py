"""Keyrings on a real cluster (3 servers in regions r1, r2, r3 and a client agent in r2).

Rotating every purpose region by region while 8 clients spawn packs with secrets and send yips
(with the admin token, an API token and pack tokens) answers every request 2xx; the regions
switch in name order; sealed secrets are rewrapped under the new key and still open to the same
values; pack tokens and API tokens made before the rotation still work, until their key is
retired; a key still needed cannot be retired; the Raft journal holds no plain key.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator

import httpx
import pytest
from harness import LocalCluster, local_cluster, wait_until

from canidae.agent.client import Client
from canidae.agent.config import load_config
from canidae.agent.keyring import ClusterKeys
from canidae.core.errors import WrongState

REGIONS = {"s1": "r1", "s2": "r2", "s3": "r3", "c1": "r2"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Plain HTTP: these tests are about keys, not the transport (TLS is the default of every other
    # test cluster and is tested in tests/security/test_tls.py); their raw requests speak http://.
    lc = local_cluster(str(tmp_path_factory.mktemp("keys")), servers=3, clients=1, insecure_http=True,
                       configure=lambda c: dataclasses.replace(c, region=REGIONS[c.node_id]))
    try:
        with lc.client() as c:
            wait_until(lambda: {k["purpose"] for k in c.keys()} == {"token", "pack", "secrets", "audit"}, 15,
                       "the leader seeded every keyring")
        yield lc
    finally:
        lc.close()


def active(c: Client, purpose: str) -> str:
    return next(k["id"] for k in c.keys() if k["purpose"] == purpose and k["state"] == "active")


def keys_of(lc: LocalCluster, agent: str) -> ClusterKeys:
    """The keys as that agent holds them (its key file, the replicated keyrings)."""
    cfg = load_config(lc.agent(agent)["config"])
    keys = ClusterKeys(cfg.data_dir, cfg.region, cfg.token)
    with lc.client() as c:
        keys.update(c.request("GET", "/v1/keys/sealed"))
    return keys


def yip(api: str, pack: str, token: str, text: str) -> int:
    return httpx.post(f"http://{api}/v1/yips/{pack}", json={"text": text},
                      headers={"authorization": f"Bearer {token}"}, timeout=10).status_code


def recv_status(api: str, pack: str, token: str) -> int:
    return httpx.get(f"http://{api}/v1/yips/{pack}", params={"after": 0, "max": 1},
                     headers={"authorization": f"Bearer {token}"}, timeout=10).status_code


def wait_rotation(c: Client, rotation: dict, seen: list[list[str]] | None = None, timeout: float = 60) -> None:
    def done() -> bool:
        ks = {k["id"]: k for k in c.keys()}
        if seen is not None:
            for kid in rotation["keys"].values():
                seen.append(list(ks[kid]["regions"]))
        return all(ks[kid]["state"] == "active" for kid in rotation["keys"].values())
    wait_until(done, timeout, "the rotation's keys active")


def test_rotating_every_keyring_by_region_under_load_fails_no_request(cluster: LocalCluster) -> None:
    lc = cluster
    apis = [a["api"] for a in lc.agents]
    with lc.client() as c:
        c.create_packs([{"name": f"box-{i}", "secrets": {"PASS": f"pw-{i}"}} for i in range(8)])
        c.wait_running([f"box-{i}" for i in range(8)], 30)
        api_token = c.create_token("loader", ["management"])["secret"]
        before = {p: active(c, p) for p in ("token", "pack", "secrets", "audit")}
    old_tokens = {f"box-{i}": lc.pack_token(f"box-{i}") for i in range(8)}
    node_api = {}
    with lc.client() as c:
        for i in range(8):
            node_api[f"box-{i}"] = lc.agent(c.pack(f"box-{i}")["node"])["api"]

    failures: list[str] = []
    done = threading.Event()
    counts = [0] * 8

    def client_loop(i: int) -> None:
        token = lc.token if i % 2 else api_token  # spawns: the admin token or an API token
        n = 0
        with Client(lc.target(apis=[apis[i % len(apis)]], token=token), timeout=20) as cl:
            while not done.is_set():
                n += 1
                try:
                    cl.create_packs([{"name": f"load-{i}-{n}", "secrets": {"K": f"v-{i}-{n}"}}])
                except Exception as e:  # every failure counts, whatever it is
                    failures.append(f"spawn by client {i}: {e}")
                box = f"box-{(i + n) % 8}"
                code = yip(apis[(i + n) % len(apis)], box, lc.token, f"from {i}")  # yips take no API token
                if code // 100 != 2:
                    failures.append(f"yip by client {i} to {box}: HTTP {code}")
                # as the pack itself, with the token its run got before the rotation
                code = recv_status(node_api[box], box, old_tokens[box])
                if code // 100 != 2:
                    failures.append(f"recv of {box} with its pack token: HTTP {code}")
                counts[i] += 3

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    seen: list[list[str]] = []
    try:
        with lc.client() as c:
            wait_until(lambda: sum(counts) >= 40, 60, "load under way")
            rotation = c.rotate_keys(None, 2, by_region=True)["rotation"]
            assert rotation["regions"] == ["r1", "r2", "r3"]
            wait_rotation(c, rotation, seen)
            target = sum(counts) + 40
            wait_until(lambda: sum(counts) >= target, 60, "load after the rotation")
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert failures == [], f"{len(failures)} of {sum(counts)} requests failed: {failures[:5]}"

    with lc.client() as c:
        ks = {k["id"]: k for k in c.keys()}
        for purpose, kid in rotation["keys"].items():
            assert ks[kid]["state"] == "active" and ks[before[purpose]]["state"] == "retiring"
            # region by region, in name order: every view seen was a prefix of r1, r2, r3
            assert ks[kid]["regions"] == ["r1", "r2", "r3"]
        for regions in seen:
            assert regions == ["r1", "r2", "r3"][:len(regions)]
        assert any(0 < len(r) < 3 for r in seen), "the rollout was seen part way"
        # Every sealed secret is rewrapped under the new key (n of m), so the old one can go.
        wait_until(lambda: c.keys_status()["rewrap"]["done"], 30, "every sealed secret rewrapped")
        status = c.keys_status()
        assert status["rewrap"]["sealed_values"] == status["rewrap"]["under_active_key"] >= 8
        assert c.retire_key(before["secrets"])["state"] == "retired"
        assert {f"box-{i}" for i in range(8)} <= {p["name"] for p in c.iter_packs()}


@pytest.mark.skipif(os.geteuid() != 0, reason="exec packs with pack users need root")
def test_a_secret_rewrapped_and_its_old_key_retired_still_reaches_the_pack(cluster: LocalCluster) -> None:
    from packprocs import environ_of, member_python, processes_under
    lc = cluster
    client_dir = os.path.dirname(lc.agent("c1")["config"])
    spec = {"name": "vault", "driver": "exec", "command": [member_python(), "-c", "import time; time.sleep(600)"],
            "secrets": {"PASS": "open-sesame"}, "constraints": {"node": "c1"}}

    def member_env() -> dict[str, str] | None:
        for pid in processes_under(os.path.join(client_dir, "exec", "packs", "vault")):
            env = environ_of(pid)
            if env.get("CANIDAE_PACK") == "vault":
                return env
        return None
    with lc.client() as c:
        c.create_packs([spec])
        first = wait_until(member_env, 30, "the vault member runs")
        assert first["PASS"] == "open-sesame"
        old = active(c, "secrets")
        wait_rotation(c, c.rotate_keys(["secrets"], 0)["rotation"])
        wait_until(lambda: c.keys_status()["rewrap"]["done"], 30, "rewrapped")
        c.retire_key(old)
        gen = c.pack("vault")["generation"]
        c.pack_action("vault", "stop")
        wait_until(lambda: c.pack("vault")["state"] == "stopped" and member_env() is None, 30, "vault stopped")
        c.pack_action("vault", "place")
        again = wait_until(lambda: member_env() if c.pack("vault")["generation"] > gen else None, 30,
                           "the vault member runs again")
        assert again["PASS"] == "open-sesame"  # opened with the new key on the client agent
        assert again["CANIDAE_PACK_TOKEN"] != first["CANIDAE_PACK_TOKEN"]
        c.pack_action("vault", "stop")
        wait_until(lambda: member_env() is None, 30, "the vault member stopped")


def test_old_tokens_hold_until_their_key_is_retired_and_a_needed_key_is_not(cluster: LocalCluster) -> None:
    lc = cluster
    with lc.client() as c:
        c.create_packs([{"name": "holder"}])
        c.wait_running(["holder"], 30)
        made = c.create_token("before-rotation", ["read-only"])
        old_pack_key, old_token_key = active(c, "pack"), active(c, "token")
    with lc.client() as c:
        pack_api = lc.agent(c.pack("holder")["node"])["api"]
    old_pack_token = lc.pack_token("holder")
    with lc.client() as c:
        wait_rotation(c, c.rotate_keys(["pack", "token"], 0)["rotation"])
    new_pack_token = lc.pack_token("holder")
    assert old_pack_key in old_pack_token and old_pack_key not in new_pack_token
    for token in (old_pack_token, new_pack_token):
        assert recv_status(pack_api, "holder", token) == 200
    for a in lc.agents:  # the API token made under the old key: every agent still takes it
        with Client(lc.target(apis=[a["api"]], token=made["secret"])) as t:
            assert t.packs()["total"] >= 1
    with lc.client() as c:
        # a live API token still needs the old token key: refused, exit 6
        with pytest.raises(WrongState, match="live API tokens"):
            c.retire_key(old_token_key)
        c.revoke_token(made["token"]["accessor"])
        assert c.retire_key(old_token_key)["state"] == "retired"
        assert c.retire_key(old_pack_key)["state"] == "retired"
    # every agent refreshes within a second: then the retired key's tokens are refused
    wait_until(lambda: recv_status(pack_api, "holder", old_pack_token) == 401, 10, "the old pack token refused")
    assert recv_status(pack_api, "holder", new_pack_token) == 200


def test_the_raft_journal_and_snapshots_hold_no_plain_key(cluster: LocalCluster) -> None:
    keys = keys_of(cluster, "s1")
    materials = [k.material for k in keys._keys.values()]
    raft_dir = os.path.join(load_config(cluster.agent("s1")["config"]).data_dir, "raft")
    blobs = b""
    for dirpath, _, files in os.walk(raft_dir):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                blobs += fh.read()
    import base64
    assert blobs, "the journal exists"
    for m in materials:
        for form in (m, base64.b64encode(m), base64.urlsafe_b64encode(m), m.hex().encode()):
            assert form not in blobs


def test_the_keys_commands_answer_json_and_exit_codes_and_need_the_keys_capability(cluster: LocalCluster) -> None:
    import json
    import subprocess
    import sys

    def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CANIDAE_CONFIG": os.path.join(cluster.data_dir, "cli.toml")}
        env.pop("CANIDAE_TOKEN", None)
        extra = ["--token", token] if token else []
        return subprocess.run([sys.executable, "-m", "canidae", *extra, "keys", *args], capture_output=True,
                              text=True, env=env, timeout=120, check=False)
    listed = json.loads(cli("list", "--json").stdout)["keys"]
    assert {k["purpose"] for k in listed} == {"token", "pack", "secrets", "audit"}
    assert all("wrapped" not in k for k in listed)  # material, even wrapped, is for agents only
    status = json.loads(cli("status", "--json").stdout)
    assert set(status["purposes"]) == {"token", "pack", "secrets", "audit"} and "rewrap" in status
    assert cli("rotate", "--purpose", "bogus").returncode == 2
    assert cli("rotate", "--by", "zone").returncode == 2
    assert cli("rotate", "--prepublish", "soon").returncode == 2
    active_audit = next(k["id"] for k in listed if k["purpose"] == "audit" and k["state"] == "active")
    refused = cli("retire", active_audit)
    assert refused.returncode == 6 and "only a retiring key" in refused.stderr
    assert cli("retire", "0000dead").returncode == 5
    assert cli("retire", "not-an-id").returncode == 2
    with cluster.client() as c:
        reader = c.create_token("reader", ["read-only"])["secret"]
    assert cli("list", token=reader).returncode == 0          # read may look
    denied = cli("rotate", "--purpose", "audit", token=reader)  # but not rotate
    assert denied.returncode == 4 and "'keys'" in denied.stderr
    rotated = json.loads(cli("rotate", "--purpose", "audit", "--prepublish", "0", "--json").stdout)
    assert rotated["active"] and rotated["keys"][0]["purpose"] == "audit" and rotated["keys"][0]["state"] == "active"


def test_bad_requests_and_foreign_credentials_change_no_key(cluster: LocalCluster) -> None:
    lc = cluster
    api = lc.servers()[0]["api"]
    admin = {"authorization": f"Bearer {lc.token}"}
    with lc.client() as c:
        before = c.keys()
        c.create_packs([{"name": "prober"}])
        c.wait_running(["prober"], 30)
    for path, body in (("/v1/acl/bootstrap", {"hash": "nope"}), ("/v1/keys/rotate", {"purposes": ["nope"]}),
                       ("/v1/keys/rotate", {"prepublish_s": -1}), ("/v1/keys/rotate", {"surprise": 1}),
                       ("/v1/keys/retire", {"id": "../../x"})):
        r = httpx.post(f"http://{api}{path}", json=body, headers=admin, timeout=10)
        assert r.status_code == 400 and set(r.json()["error"]) >= {"code", "message"}, (path, r.text)
    # A pack's own token reaches no key route, not even the wrapped keys.
    pack_token = lc.pack_token("prober")
    for a in lc.agents:
        r = httpx.get(f"http://{a['api']}/v1/keys/sealed", headers={"authorization": f"Bearer {pack_token}"},
                      timeout=10)
        assert r.status_code == 401
    # A client agent's own credential may fetch the wrapped keys (it unwraps them with its key file)
    # but may neither rotate nor replace the admin token.
    cred = load_config(lc.agent("c1")["config"]).token
    headers = {"authorization": f"Bearer {cred}"}
    assert httpx.get(f"http://{api}/v1/keys/sealed", headers=headers, timeout=10).status_code == 200
    assert httpx.post(f"http://{api}/v1/keys/rotate", json={}, headers=headers, timeout=10).status_code == 403
    assert httpx.post(f"http://{api}/v1/acl/bootstrap", json={"hash": "a" * 64}, headers=headers,
                      timeout=10).status_code == 403
    with lc.client() as c:
        assert c.keys() == before
