"""Secrets, files and loader variables on a real cluster (a server and a client agent, root), through
the real CLI and API: a secret reaches only its pack's members and is on no disk and in no answer in
the clear; a pack reads none of the agents' files; LD_PRELOAD is refused before anything is
created; ``agent doctor`` says which protections are in force."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys

import httpx
import pytest

from canidae.agent.secretbox import Keyring
from harness import LocalCluster, local_cluster
from packprocs import kill_leftovers, member_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pack users and namespaces need root")

AGENT_ENV = {"CANIDAE_EXEC_GRACE_S": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = local_cluster(str(tmp_path_factory.mktemp("sec") / "cluster"), servers=1, clients=1)
    try:
        yield c
    finally:
        try:
            c.close()
        finally:
            left = kill_leftovers(c.data_dir)
        assert not left, f"pack processes outlived the cluster: {left}"


def cli(c: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **AGENT_ENV, "HOME": os.path.join(c.data_dir, "home"), "CANIDAE_TOKEN": c.token,
           "CANIDAE_CA": c.ca or "",
           "CANIDAE_ADDR": ",".join(a["api"] for a in c.agents if a["role"] == "server")}
    p = subprocess.run([sys.executable, "-m", "canidae", *args], capture_output=True, text=True, env=env, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    return p


def _agent_dir(c: LocalCluster, ident: str) -> str:
    return os.path.dirname(c.agent(ident)["config"])


def _files(root: str) -> list[str]:
    out = []
    for top, dirs, files in os.walk(root):
        if os.path.basename(os.path.dirname(top)) == "packs":
            dirs[:] = [d for d in dirs if d != "work"]
        out += [os.path.join(top, f) for f in files]
    return out


def test_a_secret_reaches_only_its_members_and_is_never_stored_or_shown_in_the_clear(cluster, tmp_path):
    py = member_python()
    value = "s3cr3t-" + secrets.token_hex(8)
    spec = tmp_path / "vault.toml"
    spec.write_text('[secrets]\nFILE_SECRET = "from-a-file"\n')
    code = ("import hashlib, os, time; h = lambda k: hashlib.sha256(os.environ[k].encode()).hexdigest(); "
            "print('sha', h('DB_PASSWORD'), h('FILE_SECRET'), os.environ['PLAIN'], flush=True); time.sleep(600)")
    cli(cluster, "pack", "spawn", "vault", "--node", "c1", "--secret", f"DB_PASSWORD={value}", "--file", str(spec),
        "-e", "PLAIN=visible", "--", py, "-c", code)
    cli(cluster, "pack", "logs", "vault")  # the member has run its first line once logs can be read
    out = ""
    for _ in range(200):
        out = cli(cluster, "pack", "logs", "vault").stdout
        if "sha" in out:
            break
    digest = hashlib.sha256(value.encode()).hexdigest()
    assert f"sha {digest} {hashlib.sha256(b'from-a-file').hexdigest()} visible" in out

    shown = json.loads(cli(cluster, "pack", "show", "vault", "--json").stdout)["pack"]
    assert shown["secrets"] == {"DB_PASSWORD": "***", "FILE_SECRET": "***"}
    assert shown["env"] == {"PLAIN": "visible"}  # env is documented as not secret
    answers = [cli(cluster, "pack", "show", "vault", "--json").stdout,
               cli(cluster, "pack", "list", "--json").stdout,
               cli(cluster, "pack", "history", "vault", "--json").stdout,
               httpx.get(cluster.url("s1", "/v1/packs/vault"), verify=cluster.verify,
                         headers={"authorization": f"Bearer {cluster.token}"}).text]
    for text in answers:
        assert value not in text and "from-a-file" not in text and "sealed:" not in text

    # At rest: the journal, snapshots, events, run records and logs of every agent hold it sealed.
    cli(cluster, "pack", "spawn", "filler", "--count", "50")  # more log entries and events around it
    files = _files(cluster.data_dir)
    assert any(f.endswith("raft.journal") for f in files) and any(f.endswith("run.json") for f in files)
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        assert value.encode() not in data and b"from-a-file" not in data, f"{f} holds a secret in the clear"
    with open(os.path.join(_agent_dir(cluster, "c1"), "exec", "packs", "vault", "run.json")) as f:
        sealed = json.load(f)["spec"]["secrets"]["DB_PASSWORD"]
    ring = Keyring.load(os.path.join(_agent_dir(cluster, "c1"), "secret.keys"))
    assert sealed.startswith(f"sealed:v1:{ring.current}:") and ring.open("DB_PASSWORD", sealed) == value
    cli(cluster, "pack", "stop", "vault")


def test_agent_files_are_private_and_a_pack_reads_none_of_them(cluster):
    py = member_python()
    server, client = _agent_dir(cluster, "s1"), _agent_dir(cluster, "c1")
    cli(cluster, "pack", "spawn", "victim", "--node", "c1", "--", "sleep", "600")
    targets = {"run.json": os.path.join(client, "exec", "packs", "victim", "run.json"),
               "journal": os.path.join(server, "raft", "raft.journal"),
               "agent.toml": os.path.join(client, "agent.toml"),
               "server agent.toml": os.path.join(server, "agent.toml"),
               "keys": os.path.join(client, "secret.keys"),
               "agent log": cluster.agent("c1")["log"]}
    for what, path in targets.items():
        assert os.path.exists(path), what
    code = ("import time\nfor what, path in %r.items():\n    try:\n        open(path, 'rb').read(1)\n"
            "        print(what, 'read', flush=True)\n    except OSError as e:\n"
            "        print(what, 'refused', type(e).__name__, flush=True)\nprint('done', flush=True)\n"
            "time.sleep(600)") % targets
    for node in ("c1", "s1"):  # beside the victim, and beside the Raft journal
        name = f"thief-{node}"
        cli(cluster, "pack", "spawn", name, "--node", node, "--", py, "-c", code)
        out = ""
        for _ in range(200):
            out = cli(cluster, "pack", "logs", name).stdout
            if "done" in out:
                break
        assert out.count("refused") == len(targets) and " read" not in out, out

    for agent_dir in (server, client):
        assert stat.S_IMODE(os.stat(agent_dir).st_mode) == 0o700
        for f in _files(agent_dir):
            st = os.lstat(f)
            if stat.S_ISREG(st.st_mode):
                assert st.st_uid == 0 and not st.st_mode & 0o077, f"{f} is {stat.S_IMODE(st.st_mode):04o}"
    for name in ("victim", "thief-c1", "thief-s1"):
        cli(cluster, "pack", "stop", name)


@pytest.mark.parametrize("var", ["LD_PRELOAD", "LD_LIBRARY_PATH", "GCONV_PATH"])
def test_loader_variables_are_refused_before_anything_is_created(cluster, var):
    p = cli(cluster, "pack", "spawn", "loader", "-e", f"{var}=/tmp/evil.so", "--", "sleep", "30", check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and var in p.stderr and "refused" in p.stderr
    r = httpx.post(cluster.url("c1", "/v1/packs"), headers={"authorization": f"Bearer {cluster.token}"},
                   verify=cluster.verify,
                   json={"spec": {"name": "loader", "driver": "exec", "command": ["sleep", "30"],
                                  "env": {var: "/tmp/evil.so"}}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input" and var in r.json()["error"]["message"]
    r = httpx.post(cluster.url("s1", "/v1/packs"), headers={"authorization": f"Bearer {cluster.token}"},
                   verify=cluster.verify,
                   json={"spec": {"name": "loader", "secrets": {var: "x"}}})
    assert r.status_code == 400 and var in r.json()["error"]["message"]
    assert cli(cluster, "pack", "show", "loader", check=False).returncode == 5


def test_agent_doctor_reports_the_protections_in_force(cluster):
    cfg = cluster.agent("c1")["config"]
    p = cli(cluster, "agent", "doctor", "--config", cfg, "--json", check=False)
    checks = {c["check"]: c for c in json.loads(p.stdout)["checks"]}
    for name in ("pack users", "privilege drop", "private /tmp", "network none", "secret keys", "data dir"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "NoNewPrivs" in checks["privilege drop"]["detail"]
