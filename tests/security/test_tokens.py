"""API tokens and policies on a real cluster (3 servers, 1 client agent): a CI token spawns its
own packs only, is refused with the missing capability named, and once revoked is refused at
once by every agent; expired tokens are refused; a read-only token lists but cannot stop; the
admin token keeps every right."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import LocalCluster, local_cluster, wait_until

from canidae.agent.client import Client
from canidae.core.errors import NotAuthenticated, PermissionDenied

CI_POLICY = {"name": "ci", "description": "CI runners: their own ci-* packs only",
             "pack": {"ci-*": {"access": "read", "capabilities": ["spawn", "stop"]}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    lc = local_cluster(str(tmp_path_factory.mktemp("tokens")), servers=3, clients=1)
    try:
        yield lc
    finally:
        lc.close()


def apis(lc: LocalCluster) -> list[str]:
    return [a["api"] for a in lc.agents]


def admin(lc: LocalCluster) -> Client:
    return Client(lc.target())


def as_token(lc: LocalCluster, api: str, secret: str) -> Client:
    """A client that talks to one agent only (so a refusal is that agent's)."""
    return Client(lc.target(apis=[api], token=secret))


def test_a_ci_token_spawns_ci_packs_only_and_is_told_what_it_lacks(cluster: LocalCluster) -> None:
    with admin(cluster) as c:
        c.apply_policy(CI_POLICY)
        made = c.create_token("ci-runner", ["ci"])
    secret, accessor = made["secret"], made["token"]["accessor"]
    assert secret.startswith("cs_") and "secret_hash" not in made["token"]
    for api in apis(cluster):  # servers decide from their replica; the client agent passes it on
        with as_token(cluster, api, secret) as ci:
            name = f"ci-{api.rsplit(':', 1)[1]}"
            assert ci.create_packs([{"name": name}])["ok"]
            assert ci.pack(name)["name"] == name
            with pytest.raises(PermissionDenied) as denied:
                ci.create_packs([{"name": "web"}])
            assert "'spawn' on pack 'web'" in denied.value.message
            assert "ci: pack 'ci-*'" in denied.value.message  # the rules consulted
            with pytest.raises(PermissionDenied):
                ci.nodes()
    with admin(cluster) as c:
        assert "web" not in {p["name"] for p in c.packs()["packs"]}, "nothing of a refused request applied"
        assert c.token(accessor)["policies"] == ["ci"]


def test_revocation_is_in_force_on_every_agent_at_the_next_request(cluster: LocalCluster) -> None:
    with admin(cluster) as c:
        c.apply_policy(CI_POLICY)
        secret = c.create_token("short-lived", ["ci"])["secret"]
        accessor = next(t["accessor"] for t in c.tokens() if t["name"] == "short-lived")
    for api in apis(cluster):
        with as_token(cluster, api, secret) as t:  # warm every agent's decision cache
            assert t.token_self(can="spawn", name="ci-warm")["decision"]["allowed"]
    with admin(cluster) as c:
        answer = c.revoke_token(accessor)
    assert answer["token"]["revoked"] and answer["in_force_on_all_servers"], answer
    for api in apis(cluster):
        with as_token(cluster, api, secret) as t, pytest.raises(NotAuthenticated, match="revoked"):
            t.create_packs([{"name": "ci-after-revoke"}])


def test_an_expired_token_is_refused(cluster: LocalCluster) -> None:
    with admin(cluster) as c:
        c.apply_policy(CI_POLICY)
        secret = c.create_token("one-second", ["ci"], ttl_s=1)["secret"]
    server = cluster.servers()[0]["api"]
    with as_token(cluster, server, secret) as t:
        def refused() -> bool:
            try:
                t.token_self()
                return False
            except NotAuthenticated as e:
                return "expired" in e.message
        wait_until(refused, timeout=10.0, what="the token to expire")


def test_a_read_only_token_lists_but_cannot_stop(cluster: LocalCluster) -> None:
    with admin(cluster) as c:
        c.create_packs([{"name": "ro-target"}])
        secret = c.create_token("auditor", ["read-only"])["secret"]
    with as_token(cluster, apis(cluster)[-1], secret) as ro:
        assert "ro-target" in {p["name"] for p in ro.packs()["packs"]}
        with pytest.raises(PermissionDenied, match="'stop' on pack 'ro-target'"):
            ro.pack_action("ro-target", "stop")
    with admin(cluster) as c:
        assert c.pack("ro-target")["state"] != "stopped"


def test_policy_changes_are_in_force_at_the_next_request_despite_the_cache(cluster: LocalCluster) -> None:
    with admin(cluster) as c:
        c.apply_policy({"name": "grow", "pack": {"a-*": {"capabilities": ["spawn"]}}})
        secret = c.create_token("grower", ["grow"])["secret"]
    server = cluster.servers()[1]["api"]
    with as_token(cluster, server, secret) as t:
        assert not t.token_self(can="spawn", name="b-1")["decision"]["allowed"]
        with admin(cluster) as c:
            c.apply_policy({"name": "grow", "pack": {"*": {"capabilities": ["spawn"]}}})
        assert t.token_self(can="spawn", name="b-1")["decision"]["allowed"]
        with admin(cluster) as c:
            c.delete_policy("grow")
        decision = t.token_self(can="spawn", name="b-1")["decision"]
        assert not decision["allowed"] and "grow" in decision["missing_policies"]


def test_tokens_cannot_call_agent_routes_and_unknown_secrets_are_refused(cluster: LocalCluster) -> None:
    with admin(cluster) as c:
        secret = c.create_token("everything", ["management"])["secret"]
    with as_token(cluster, cluster.servers()[0]["api"], secret) as t:
        assert t.packs()["packs"] is not None
        with pytest.raises(PermissionDenied, match="for agents"):
            t.request("POST", "/v1/nodes/c1/heartbeat", json={})
    bogus = "cs_" + "A" * 43
    for api in apis(cluster):
        with as_token(cluster, api, bogus) as t, pytest.raises(NotAuthenticated):
            t.packs()


def test_the_cli_worked_example(cluster: LocalCluster, tmp_path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example, through the real command line: exit 4 and the reason for web."""
    import json

    from canidae.cli import main as cli_main

    def canidae(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = cli_main.main(["--addr", ",".join(apis(cluster)), *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    monkeypatch.setenv("CANIDAE_TOKEN", cluster.token)
    monkeypatch.setenv("CANIDAE_CA", cluster.ca)
    policy = tmp_path / "ci.toml"
    policy.write_text('name = "ci"\n\n[pack."ci-*"]\naccess = "read"\ncapabilities = ["spawn", "stop"]\n')
    assert canidae("policy", "apply", str(policy))[0] == 0
    rc, out, _ = canidae("--json", "token", "create", "--name", "ci-cli", "--policy", "ci", "--ttl", "1h")
    assert rc == 0
    made = json.loads(out)
    assert made["token"]["expires_at_ms"] is not None
    rc, out, _ = canidae("--json", "policy", "show", "ci")
    assert rc == 0 and made["token"]["accessor"] in json.loads(out)["tokens"]

    monkeypatch.setenv("CANIDAE_TOKEN", made["secret"])
    rc, _, err = canidae("pack", "spawn", "ci-cli-1", "--no-wait")
    assert rc == 0, err
    rc, out, err = canidae("pack", "spawn", "web", "--no-wait")
    assert rc == 4 and out == "" and "'spawn' on pack 'web'" in err and "ci: pack 'ci-*'" in err
    rc, out, err = canidae("token", "self", "--can", "spawn", "web")
    assert rc == 4 and out == "" and "lacks 'spawn' on pack 'web'" in err and err.count("\n") == 1
    assert canidae("token", "self", "--can", "spawn", "ci-9")[0] == 0
    rc, _, err = canidae("token", "list")
    assert rc == 4 and "'tokens'" not in err and "operator" in err

    monkeypatch.setenv("CANIDAE_TOKEN", cluster.token)
    assert canidae("token", "revoke", made["token"]["accessor"])[0] == 0
    monkeypatch.setenv("CANIDAE_TOKEN", made["secret"])
    rc, _, err = canidae("token", "self")
    assert rc == 4 and "revoked" in err
