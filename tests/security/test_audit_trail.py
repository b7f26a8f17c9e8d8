"""The audit trail on a real cluster (1 server, 1 client agent): who changed what is recorded, with
its outcome and request id, durably and hash-chained, by every agent in its own log; refusals too;
no secret ever reaches the log; ``canidae audit verify`` finds an edited byte, a removed record and
a cut tail (the last two through the heads signed and committed through Raft); a request that
cannot be audited is refused before anything is done; ``audit tail --follow`` shows a new record.
The CLI runs as a real process."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from harness import LocalCluster, local_cluster, wait_until

from canidae.agent.client import Client
from canidae.agent.config import AuditSettings
from canidae.core.audit import chain, encode_record
from canidae.core.errors import AuditUnavailable, NotAuthenticated, PermissionDenied

POLICY = {"name": "au", "description": "au-* packs", "pack": {"au-*": {"access": "write"}}}
SECRET_VALUE = "hunter2-s3cr3t-VALUE-91f3"
ENV_SECRET = "pw-ENV-SECRET-77a1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Plain HTTP: these tests are about the audit trail, not the transport (TLS is the default of every other
    # test cluster and is tested in tests/security/test_tls.py); their raw requests speak http://.
    lc = local_cluster(str(tmp_path_factory.mktemp("audit")), servers=1, clients=1, insecure_http=True,
                       configure=lambda cfg: replace(cfg, audit=AuditSettings(checkpoint_s=0.5, denials_per_s=0.5,
                                                                               denial_burst=20)))
    try:
        yield lc
    finally:
        lc.close()


def on(lc: LocalCluster, ident: str, token: str | None = None) -> Client:
    return Client(lc.target([ident], token=token), timeout=30)


def cli(lc: LocalCluster, *args: str, code: int = 0, addr: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CANIDAE_TOKEN": lc.token, "CANIDAE_ADDR": addr or lc.agent("s1")["api"],
           "CANIDAE_CONFIG": os.path.join(lc.data_dir, "none.toml"), "CANIDAE_INSECURE_HTTP": "1"}
    p = subprocess.run([sys.executable, "-m", "canidae", *args], capture_output=True, text=True, env=env, timeout=120,
                       check=False)
    assert p.returncode == code, f"{args}: exit {p.returncode} (wanted {code}): {p.stdout}{p.stderr}"
    return p


def records(lc: LocalCluster, ident: str, **params: Any) -> list[dict[str, Any]]:
    with on(lc, "s1") as c:
        return c.request("GET", "/v1/audit", params={"agent": ident, "limit": 1000, **params})["records"]  # type: ignore[no-any-return]


def audit_dir(lc: LocalCluster, ident: str) -> str:
    return os.path.join(lc.data_dir, "agents", ident, "audit")


def checkpoint(lc: LocalCluster, ident: str) -> dict[str, Any]:
    with on(lc, "s1") as c:
        return c.request("POST", "/v1/audit/checkpoint", params={"agent": ident})  # type: ignore[no-any-return]


def test_changes_are_recorded_with_accessor_action_target_outcome_and_request_id(cluster: LocalCluster) -> None:
    with on(cluster, "s1") as admin:
        admin.request("POST", "/v1/acl/policies", json={"policy": POLICY, "request_id": "rid-policy"})
        made = admin.request("POST", "/v1/acl/tokens", json={"name": "au", "policies": ["au"],
                                                              "request_id": "rid-token"})
    secret, accessor = made["secret"], made["token"]["accessor"]
    with on(cluster, "s1", secret) as tok:
        tok.request("POST", "/v1/packs", json={"spec": {"name": "au-web"}, "request_id": "rid-spawn"})
        tok.request("POST", "/v1/packs/au-web/stop", json={"request_id": "rid-stop"})
        tok.request("DELETE", "/v1/packs", json={"names": ["au-web"], "force": True, "request_id": "rid-delete"})
        with pytest.raises(PermissionDenied):
            tok.request("POST", "/v1/packs", json={"spec": {"name": "web"}, "request_id": "rid-refused"})
    got = {r["request_id"]: r for r in records(cluster, "s1")}
    assert got["rid-policy"]["action"] == "policy.apply" and got["rid-policy"]["target"] == "au"
    assert got["rid-token"]["action"] == "token.create" and got["rid-token"]["target"] == accessor
    for rid, action in (("rid-spawn", "pack.spawn"), ("rid-stop", "pack.stop"), ("rid-delete", "pack.delete")):
        r = got[rid]
        assert (r["action"], r["target"], r["outcome"], r["accessor"], r["agent"]) == (action, "au-web", "ok",
                                                                                       accessor, "s1"), r
        assert r["remote"].startswith("127.0.0.1:") and r["at_ms"] > 0
    refused = got["rid-refused"]
    assert (refused["outcome"], refused["code"], refused["target"]) == ("denied", "denied", "web")
    assert "'spawn' on pack 'web'" in refused["detail"]["message"]
    # Filters: by token and by action prefix.
    mine = records(cluster, "s1", token=accessor)
    assert {r["request_id"] for r in mine} >= {"rid-spawn", "rid-stop", "rid-delete", "rid-refused"}
    assert all(r["accessor"] == accessor for r in mine)
    assert {r["action"] for r in records(cluster, "s1", action="pack.*")} >= {"pack.spawn", "pack.stop"}


def test_a_wrong_credential_is_recorded_and_a_flood_of_them_is_counted_not_written(cluster: LocalCluster) -> None:
    bad = "cs_" + "A" * 43
    api = cluster.agent("c1")["api"]
    with Client(cluster.target(apis=[api], token=bad)) as c:
        with pytest.raises(NotAuthenticated):
            c.request("POST", "/v1/nodes/c1/state", json={"state": "cordoned"})
        for _ in range(400):  # beyond the burst: counted, not written
            with pytest.raises(NotAuthenticated):
                c.request("GET", "/v1/nodes")
    denials = [r for r in records(cluster, "c1") if r["outcome"] == "denied"]
    assert denials[0]["action"] == "node.cordon" or any(r["target"] == "c1" for r in denials)
    assert all(r["code"] == "unauthenticated" and r["accessor"] == "" for r in denials)
    assert 20 <= len(denials) < 200, len(denials)  # the burst (20), plus 0.5 a second while it ran
    checkpoint(cluster, "c1")  # the dropped count is written at a checkpoint tick or with the next denial

    def accounted() -> int:  # refusals written, plus those counted as dropped, from one read of the log
        recs = records(cluster, "c1")
        return (sum(1 for r in recs if r["outcome"] == "denied")
                + sum(r["detail"].get("denials_dropped", 0) for r in recs))
    # Drops are counted into a later record (the next denial's or a checkpoint tick's), perhaps in
    # more than one: wait until every refusal is accounted for, then check none is counted twice.
    wait_until(lambda: accounted() >= 401, 15, "every refusal written or counted as dropped")
    assert accounted() == 401


def test_an_agent_credential_cannot_read_the_audit_log(cluster: LocalCluster) -> None:
    """A client agent's own credential (a stolen node config) acts for its node only: no audit reads."""
    import tomllib
    with open(os.path.join(cluster.data_dir, "agents", "c1", "agent.toml"), "rb") as f:
        node_token = tomllib.load(f)["token"]
    for ident in ("s1", "c1"):
        with on(cluster, ident, node_token) as c:
            with pytest.raises(PermissionDenied):
                c.request("GET", "/v1/audit", params={"agent": "s1"})
            with pytest.raises(PermissionDenied):
                c.request("GET", "/v1/audit/checkpoints", params={"agent": "s1"})


def test_no_secret_reaches_the_audit_files(cluster: LocalCluster) -> None:
    cli(cluster, "pack", "spawn", "au-secret", "--secret", f"API_KEY={SECRET_VALUE}",
        "--env", f"DB_PASSWORD={ENV_SECRET}", "--env", "MODE=plain")
    with on(cluster, "s1") as c:
        made = c.create_token("leaky", ["au"])
    r = next(r for r in records(cluster, "s1") if r["action"] == "pack.spawn" and r["target"] == "au-secret")
    assert r["detail"]["body"]["spec"]["secrets"] == {"API_KEY": "***"}
    assert r["detail"]["body"]["spec"]["env"] == {"DB_PASSWORD": "***", "MODE": "plain"}
    for ident in ("s1", "c1"):
        for name in os.listdir(audit_dir(cluster, ident)):
            with open(os.path.join(audit_dir(cluster, ident), name), "rb") as f:
                data = f.read()
            for secret in (SECRET_VALUE, ENV_SECRET, made["secret"], cluster.token):
                assert secret.encode() not in data, (ident, name)
            assert os.stat(os.path.join(audit_dir(cluster, ident), name)).st_mode & 0o077 == 0
    assert os.stat(audit_dir(cluster, "s1")).st_mode & 0o077 == 0


def test_tail_follow_shows_a_new_record(cluster: LocalCluster) -> None:
    env = {**os.environ, "CANIDAE_TOKEN": cluster.token, "CANIDAE_ADDR": cluster.agent("s1")["api"],
           "CANIDAE_CONFIG": os.path.join(cluster.data_dir, "none.toml"), "CANIDAE_INSECURE_HTTP": "1"}
    p = subprocess.Popen([sys.executable, "-m", "canidae", "audit", "tail", "--follow", "--json", "-n", "0",
                          "--action", "pack.spawn"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in p.stdout or []], daemon=True).start()
    sent: list[str] = []
    try:
        with on(cluster, "s1") as c:
            def shown() -> bool:
                # Spawn (again) until the follower, whenever it is up, prints one of them.
                rid = f"rid-followed-{len(sent)}"
                c.request("POST", "/v1/packs", json={"spec": {"name": f"au-followed-{len(sent)}"}, "request_id": rid})
                sent.append(rid)
                try:
                    lines.put(lines.get(timeout=2.0))
                    return True
                except queue.Empty:
                    return False
            wait_until(shown, 60, "audit tail --follow printing a new spawn")
        rec = json.loads(lines.get())
        assert rec["request_id"] in sent and rec["action"] == "pack.spawn", rec
    finally:
        p.terminate()
        p.wait(10)


def verify(cluster: LocalCluster, *args: str, code: int = 0) -> dict[str, Any]:
    p = cli(cluster, "audit", "verify", "--json", *args, code=code)
    return json.loads(p.stdout) if code == 0 else {"stderr": p.stderr}


def test_verify_passes_an_intact_log_and_export_is_ndjson(cluster: LocalCluster) -> None:
    checkpoint(cluster, "c1")
    for args in (("--agent", "s1"), ("--agent", "c1"), ("--dir", os.path.join(cluster.data_dir, "agents", "s1"))):
        out = verify(cluster, *args)
        assert out["ok"] and out["checked"] > 0, out
    assert verify(cluster, "--agent", "c1")["checkpoints_checked"] >= 1
    lines = cli(cluster, "audit", "export", "--agent", "s1").stdout.splitlines()
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 3


def _tamper_with_c1(cluster: LocalCluster, change: Any) -> None:
    d = audit_dir(cluster, "c1")
    name = min(n for n in os.listdir(d) if n.startswith("seg-"))
    path = os.path.join(d, name)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(change(data))


def rehashed_from(lines: list[bytes], index: int) -> bytes:
    """The log with record ``index``'s target changed and it and every later record re-hashed."""
    out, prev = list(lines[:index]), json.loads(lines[index - 1])["hash"]
    for i, line in enumerate(lines[index:]):
        d = json.loads(line)
        fields = {k: v for k, v in d.items() if k not in ("prev_hash", "hash")}
        if i == 0:
            fields["target"] = "someone-else"
        rec = chain(prev, fields)
        out.append(encode_record(rec))
        prev = rec.hash
    return b"\n".join(out) + b"\n"


def test_verify_names_the_first_bad_record_edited_removed_or_cut(cluster: LocalCluster) -> None:
    """c1's log is tampered with on disk, three ways, each found with exit 1; restored in between."""
    with on(cluster, "c1") as c:  # records on c1's own log: requests it passes on to the server
        for state in ("cordoned", "ready", "cordoned", "ready"):
            c.set_node_state("c1", state)
    checkpoint(cluster, "c1")
    d = audit_dir(cluster, "c1")
    name = min(n for n in os.listdir(d) if n.startswith("seg-"))
    with open(os.path.join(d, name), "rb") as f:
        original = f.read()
    lines = original.split(b"\n")[:-1]
    assert len(lines) >= 3
    third = json.loads(lines[2])
    try:
        # One byte of the third record's target or action changes: edited, named by seq and line.
        pos = original.index(b'"action":"', sum(len(x) + 1 for x in lines[:2])) + len(b'"action":"')
        _tamper_with_c1(cluster, lambda b: b[:pos] + bytes([b[pos] ^ 0x01]) + b[pos + 1:])
        for args in (("--agent", "c1"), ("--dir", os.path.join(cluster.data_dir, "agents", "c1"))):
            err = verify(cluster, *args, code=1)["stderr"]
            assert f"seq {third['seq']}" in err and "edited" in err and f"{name} line 3" in err, err
        # The second record removed: a gap.
        _tamper_with_c1(cluster, lambda b: b"\n".join([lines[0], *lines[2:]]) + b"\n")
        err = verify(cluster, "--agent", "c1", code=1)["stderr"]
        assert "removed" in err and f"seq {json.loads(lines[1])['seq']}" in err, err
        # The tail cut after the first record: consistent by itself, found by the committed head.
        _tamper_with_c1(cluster, lambda b: lines[0] + b"\n")
        err = verify(cluster, "--agent", "c1", code=1)["stderr"]
        assert "truncated" in err, err
        # The second record rewritten and every record after it re-hashed: a consistent chain, but
        # not the one the committed heads pin.
        _tamper_with_c1(cluster, lambda b: rehashed_from(lines, 1))
        err = verify(cluster, "--agent", "c1", code=1)["stderr"]
        assert "checkpoint_mismatch" in err and "rewritten" in err, err
    finally:
        _tamper_with_c1(cluster, lambda b: original)
    assert verify(cluster, "--agent", "c1")["ok"]


def test_a_request_that_cannot_be_audited_is_refused_before_it_is_done(tmp_path: Any) -> None:
    """Every record takes a new segment (segment_bytes 1); a directory where the next segments
    should be stands in for a disk that takes no more: the spawn is refused with 503 and not done."""
    lc = local_cluster(str(tmp_path), servers=1, clients=0, insecure_http=True,
                       configure=lambda cfg: replace(cfg, audit=AuditSettings(segment_bytes=1, checkpoint_s=3600)))
    try:
        with on(lc, "s1") as c:
            c.request("POST", "/v1/packs", json={"spec": {"name": "before"}})
            head = c.request("GET", "/v1/audit", params={"raw": 1})["head"]["seq"]
            d = audit_dir(lc, "s1")
            blocked = [os.path.join(d, f"seg-{s:020d}.log") for s in range(head + 1, head + 20)]
            for path in blocked:
                os.mkdir(path)
            with pytest.raises(AuditUnavailable) as refused:
                c.request("POST", "/v1/packs", json={"spec": {"name": "unaudited"}})
            assert "audit" in refused.value.message
            assert "unaudited" not in {p["name"] for p in c.packs()["packs"]}, "refused before it was done"
            for path in blocked:
                os.rmdir(path)
            c.request("POST", "/v1/packs", json={"spec": {"name": "after"}})
            assert {"before", "after"} <= {r["target"] for r in c.request("GET", "/v1/audit")["records"]}
    finally:
        lc.close()


def test_bad_audit_queries_are_refused_with_a_4xx(cluster: LocalCluster) -> None:
    from canidae.core.errors import InvalidInput, NotFound
    with on(cluster, "s1") as c:
        for params in ({"after": "x"}, {"after": "²"}, {"limit": 0}, {"wait": 99}, {"token": "cs_nope"},
                       {"outcome": "maybe"}, {"raw": 1, "segment": "../key"}, {"raw": 1, "segment": "key"},
                       {"agent": "../s1"}):
            with pytest.raises(InvalidInput):
                c.request("GET", "/v1/audit", params=params)
        with pytest.raises(NotFound):
            c.request("GET", "/v1/audit", params={"agent": "nobody"})
        with pytest.raises(NotFound):
            c.request("GET", "/v1/audit", params={"raw": 1, "segment": "seg-99999999999999999999.log"})
        with pytest.raises(InvalidInput):  # a forged head: the signature does not check
            cp = {"seq": 1, "head_hash": "0" * 64, "at_ms": 1, "key_id": "s1/0000000000000000", "signature": "00" * 64}
            c.request("POST", "/v1/audit/checkpoints", json={"node": "s1", "public_key": "A" * 43, "checkpoint": cp})
