"""TLS on every hop: agents serve HTTPS with certificates from the cluster's own CA, check each
other's, and the CLI checks theirs against the CA in its config. Plain HTTP only when asked for
(--insecure-http), and only on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import tomllib

import httpx
import pytest

from canidae.agent import certs
from canidae.agent.client import Client
from canidae.agent.client.link import AgentHops
from canidae.agent.config import config_from_mapping, load_config, write_config
from canidae.agent.ops.localcluster import with_tls
from canidae.core.errors import InvalidInput, Unavailable
from harness import local_cluster, pick_base_port, wait_until


def canidae(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CANIDAE_")}
    return subprocess.run([sys.executable, "-m", "canidae", *args], capture_output=True, text=True, timeout=90,
                          env={**full, **(env or {})}, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = local_cluster(str(tmp_path_factory.mktemp("tls") / "cluster"), servers=3, clients=2)
    try:
        yield c
    finally:
        c.close()


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_cluster_speaks_tls_with_its_own_ca_and_keeps_the_ca_key_with_the_operator(cluster):
    assert cluster.ca and cluster.scheme == "https"
    cli = tomllib.loads(open(os.path.join(cluster.data_dir, "cli.toml")).read())
    assert cli["ca"] == cluster.ca and "insecure_http" not in cli
    assert json.load(open(os.path.join(cluster.data_dir, "cluster.json")))["ca"] == cluster.ca
    assert mode(os.path.join(cluster.data_dir, certs.CA_KEY)) == 0o600
    for a in cluster.agents:
        cfg = load_config(a["config"])
        assert not cfg.insecure_http and mode(cfg.tls_key) == 0o600
        assert "127.0.0.1" in certs.subject_names(open(cfg.tls_cert, "rb").read())
        # No agent, client or server, holds the CA's key.
        assert not os.path.exists(os.path.join(os.path.dirname(a["config"]), certs.CA_KEY))
        assert certs.CA_KEY not in os.listdir(os.path.dirname(cfg.tls_cert))
    p = canidae("agent", "doctor", "--config", cluster.agent("c1")["config"], "--json")
    tls = {c["check"]: c for c in json.loads(p.stdout)["checks"]}["tls"]
    assert tls["status"] == "ok" and "127.0.0.1" in tls["detail"], tls


def test_plain_http_to_a_tls_agent_gets_no_answer_and_changes_nothing(cluster):
    api = cluster.agent("s1")["api"]
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://{api}/v1/packs", json={"spec": {"name": "plain"}, "request_id": "r-plain"},
                   headers={"authorization": f"Bearer {cluster.token}"}, timeout=5)
    with socket.create_connection(tuple(api.rsplit(":", 1)), timeout=5) as s:  # type: ignore[arg-type]
        s.sendall(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"HTTP/1.1" not in answer
    with cluster.client() as c:
        assert c.health()["ok"]
        assert all(p["name"] != "plain" for p in c.packs()["packs"])


def test_a_client_that_trusts_another_ca_is_refused_with_one_line_and_exit_3(cluster, tmp_path):
    certs.ClusterCA.new("other").write(str(tmp_path))
    other = str(tmp_path / certs.CA_CERT)
    with Client(cluster.target()) as good:
        assert good.status()["leader_api"]
    with Client(cluster.target()._replace(ca=other)) as bad, pytest.raises(Unavailable, match="not trusted"):
        bad.status()
    p = canidae("pack", "list", env={"CANIDAE_CONFIG": os.path.join(cluster.data_dir, "cli.toml"),
                                     "HOME": str(tmp_path), "CANIDAE_CA": other})
    assert p.returncode == 3, p.stderr
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert "TLS certificate not trusted" in p.stderr and other in p.stderr
    # And a client that thinks the cluster speaks plain HTTP is told it does not.
    p = canidae("pack", "list", env={"CANIDAE_CONFIG": os.path.join(cluster.data_dir, "cli.toml"),
                                     "HOME": str(tmp_path), "CANIDAE_INSECURE_HTTP": "1"})
    assert p.returncode == 3 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_the_cli_over_tls_end_to_end_through_client_agents_and_a_yip_hop(cluster, tmp_path):
    env = {"CANIDAE_CONFIG": os.path.join(cluster.data_dir, "cli.toml"), "HOME": str(tmp_path)}
    p = canidae("pack", "spawn", "tls-web", "--node", "c1", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["placed"] == 1
    shown = json.loads(canidae("pack", "show", "tls-web", "--json", env=env).stdout)
    assert shown["pack"]["node"] == "c1" and shown["pack"]["state"] == "running"  # c1 reported it, over TLS
    listed = json.loads(canidae("pack", "list", "--json", env=env).stdout)
    assert "tls-web" in [x["name"] for x in listed["packs"]]
    # A yip sent to s1 is relayed to c1 (agent to agent, TLS) and read back through c2 (relayed too).
    p = canidae("--addr", cluster.agent("s1")["api"], "yip", "send", "tls-web", "over tls", env=env)
    assert p.returncode == 0, p.stderr
    p = canidae("--addr", cluster.agent("c2")["api"], "yip", "recv", "--pack", "tls-web", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert "over tls" in p.stdout


def test_an_agent_whose_certificate_another_ca_signed_is_refused_by_the_others(cluster, tmp_path):
    """c2 restarted with a certificate from a CA of its own (the same name, 127.0.0.1): every
    agent-to-agent hop to it is refused before a byte of the request is sent."""
    rogue = certs.ClusterCA.new("rogue")
    c2 = load_config(cluster.agent("c2")["config"])
    files = certs.write_agent_files(rogue, "c2", certs.names_for(c2.api), str(tmp_path / "rogue"))
    cluster.kill("c2")
    write_config(with_tls(c2, certs.AgentTLS(c2.tls_ca, files.cert, files.key)), cluster.agent("c2")["config"])
    cluster.restart("c2")
    try:
        wait_until(lambda: _answers(c2.api), 20, "c2 serving its rogue certificate")
        p = canidae("agent", "doctor", "--config", cluster.agent("c2")["config"], "--json")
        tls = {c["check"]: c for c in json.loads(p.stdout)["checks"]}["tls"]
        assert p.returncode == 1 and tls["status"] == "fail" and "not issued by the CA" in tls["detail"], tls

        async def hop(api: str) -> object:
            hops = AgentHops(c2.token, ca=cluster.ca)
            try:
                return await hops.send(api, "GET", "/v1/exec/info", timeout=5)
            finally:
                hops.close()
        assert asyncio.run(hop(cluster.agent("c1")["api"]))  # an agent of the cluster: answered
        with pytest.raises(Unavailable, match="certificate not trusted"):
            asyncio.run(hop(c2.api))
        with Client(cluster.target(["c2"])) as c, pytest.raises(Unavailable, match="not trusted"):
            c.health()
    finally:
        cluster.kill("c2")
        write_config(c2, cluster.agent("c2")["config"])
        cluster.restart("c2")
        wait_until(lambda: cluster.health("c2") is not None, 20, "c2 back with its own certificate")


def _answers(api: str) -> bool:
    try:
        return httpx.get(f"https://{api}/v1/health", verify=False, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_insecure_http_is_explicit_warned_and_loopback_only(tmp_path):
    home, data = tmp_path / "home", tmp_path / "data"
    port = pick_base_port(1, 0)
    env = {"HOME": str(home)}
    p = canidae("cluster", "up", "--agents", "1", "--insecure-http", "--data-dir", str(data), "--base-port",
                str(port), "--json", env=env)
    try:
        assert p.returncode == 0, p.stderr
        assert "--insecure-http" in p.stderr and "plain HTTP" in p.stderr
        info = json.loads(p.stdout)
        assert info["tls"] is False and info["ca"] is None
        cfg = tomllib.loads((home / ".config" / "canidae" / "config.toml").read_text())
        assert cfg["insecure_http"] is True and "ca" not in cfg
        assert not (data / certs.CA_KEY).exists()
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).json() == {"ok": True}
        p = canidae("pack", "spawn", "plain", "--json", env=env)
        assert p.returncode == 0 and json.loads(p.stdout)["placed"] == 1, p.stderr
    finally:
        canidae("cluster", "down", "--data-dir", str(data), env=env)
    # Anywhere but loopback it is refused, and nothing is written.
    p = canidae("agent", "init", "--insecure-http", "--listen", "10.0.0.5:7100", "--raft", "10.0.0.5:7200",
                "--name", "s1", "--out", "s1.toml", cwd=str(tmp_path))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "loopback" in p.stderr and not (tmp_path / "s1.toml").exists()
    base = tomllib.loads((data / "agents" / "s1" / "agent.toml").read_text())
    assert base["insecure_http"] is True
    with pytest.raises(InvalidInput, match="loopback"):
        config_from_mapping({**base, "api": "10.0.0.5:7100"})


def test_agent_init_issues_a_certificate_for_the_agents_address_and_keeps_the_ca_key_apart(tmp_path):
    ops, host = tmp_path / "operator", tmp_path / "host"
    ops.mkdir()
    host.mkdir()
    p = canidae("agent", "init", "--identity", str(ops / "identity.toml"), "--ca", str(ops), "--name", "s1",
                "--listen", "10.0.0.5:7100", "--raft", "10.0.0.5:7200", "--san", "s1.example.net",
                "--out", str(host / "s1.toml"), "--json", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["tls"]["ca_created"] is True and sorted(out["tls"]["names"]) == ["10.0.0.5", "s1.example.net"]
    cfg = load_config(str(host / "s1.toml"))
    assert (cfg.tls_ca, cfg.tls_cert, cfg.tls_key) == (str(host / "ca.pem"), str(host / "s1.pem"),
                                                       str(host / "s1.key"))
    assert mode(cfg.tls_key) == 0o600 and mode(str(ops / certs.CA_KEY)) == 0o600
    assert not (host / certs.CA_KEY).exists()  # the CA key stays with the operator
    authority = certs.ClusterCA.load(str(ops / certs.CA_CERT), str(ops / certs.CA_KEY))
    assert certs.signed_by(open(cfg.tls_cert, "rb").read(), authority)
    assert not certs.signed_by(open(cfg.tls_cert, "rb").read(), certs.ClusterCA.new())
    # A second agent of the same cluster: the same CA, reused.
    p = canidae("agent", "init", "--identity", str(ops / "identity.toml"), "--ca", str(ops), "--name", "c1",
                "--client", "--listen", "127.0.0.1:7101", "--peer", "s1=10.0.0.5:7100,10.0.0.5:7200",
                "--out", str(host / "c1.toml"), "--json", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["tls"]["ca_created"] is False
    c1 = load_config(str(host / "c1.toml"))
    assert certs.signed_by(open(c1.tls_cert, "rb").read(), authority)
    assert {"127.0.0.1", "localhost"} <= set(certs.subject_names(open(c1.tls_cert, "rb").read()))
