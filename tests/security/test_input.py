"""Bad input against a real agent: every finding of the input review answers a 400, never a 500,
and changes nothing; the client refuses names that fail the name rules before anything is sent."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from canidae.core.errors import InvalidInput
from canidae.core.types import validate_name
from harness import local_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = local_cluster(str(tmp_path_factory.mktemp("input") / "cluster"), servers=1, clients=1)
    try:
        yield c
    finally:
        c.close()


def api(cluster, method, path, **kw):
    return httpx.request(method, cluster.url(cluster.agents[0], path), verify=cluster.verify,
                         headers={"authorization": f"Bearer {cluster.token}"}, timeout=10, **kw)


def bad_request(r: httpx.Response) -> bool:
    return r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"


def test_deeply_nested_json_is_a_400(cluster):
    assert bad_request(api(cluster, "POST", "/v1/packs", content=b"[" * 100_000))
    # Over the nesting limit of 400, though well-formed and small.
    r = api(cluster, "POST", "/v1/packs", content=b'{"spec": ' + b"[" * 401 + b"]" * 401 + b"}")
    assert bad_request(r) and "nest" in r.json()["error"]["message"]
    # Within it: the body is parsed, and refused for what it says.
    r = api(cluster, "POST", "/v1/packs", content=b'{"spec": ' + b"[" * 300 + b"]" * 300 + b"}")
    assert bad_request(r) and "nest" not in r.json()["error"]["message"]


@pytest.mark.parametrize("count", [100_001, 2**40, -1, 1.5])
def test_out_of_range_count_is_a_400(cluster, count):
    r = api(cluster, "POST", "/v1/packs", json={"spec": {"name": "series"}, "count": count})
    assert bad_request(r), r.text


@pytest.mark.parametrize("spec", [{"cpu": 2**70}, {"mem": 2**40}, {"cpu": 2**40}])
def test_out_of_range_resources_are_a_400(cluster, spec):
    r = api(cluster, "POST", "/v1/packs", json={"spec": {"name": "huge", **spec}})
    assert bad_request(r), r.text
    assert api(cluster, "GET", "/v1/packs/huge").status_code == 404


def test_out_of_range_node_capacity_and_report_generation_are_a_400(cluster):
    node = {"id": "big", "location": {"zone": "z1", "region": "r1", "cell": "c1"},
            "capacity": {"cpu": 2**80, "mem": 1, "packs": 1}}
    assert bad_request(api(cluster, "POST", "/v1/nodes", json={"node": node}))
    r = api(cluster, "POST", "/v1/nodes/c1/reports", json={"reports": [["x", 2**80, "running", ""]]})
    assert bad_request(r), r.text


@pytest.mark.parametrize("path", ["/v1/packs/a%0A", "/v1/nodes/c1%0A", "/v1/packs/a%0A/history",
                                  "/v1/ring/lookup/a%0A", "/v1/packs?after=a%0A", "/v1/packs?node=c1%0A"])
def test_a_trailing_newline_is_not_a_name(cluster, path):
    assert bad_request(api(cluster, "GET", path))


def test_names_are_matched_whole():
    for bad in ("a\n", "c1\n", "../nodes/c1", "a?b=1", "a/b", "a b"):
        with pytest.raises(InvalidInput):
            validate_name("pack", bad)


@pytest.mark.parametrize("name", ["../nodes/c1", "a?b=1", "c1\n", "%2e%2e", "a/b"])
def test_the_client_refuses_bad_names_before_sending(cluster, name):
    with cluster.client() as c:
        with pytest.raises(InvalidInput):
            c.set_node_state(name, "cordoned")
        with pytest.raises(InvalidInput):
            c.pack(name)
        assert {n["id"]: n["state"] for n in c.nodes()}["c1"] == "ready"


def test_cli_node_cordon_of_a_path_changes_nothing(cluster):
    cfg = f"{cluster.data_dir}/cli.toml"
    for argv in (["node", "cordon", "../nodes/c1"], ["pack", "show", "a?b=1"], ["pack", "show", "../../v1/health"]):
        r = subprocess.run([sys.executable, "-m", "canidae", "--config", cfg, *argv], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    with cluster.client() as c:
        assert {n["id"]: n["state"] for n in c.nodes()}["c1"] == "ready"


@pytest.mark.parametrize("query", ["/v1/packs?limit=%C2%B2", "/v1/events?after=%C2%B2",
                                   "/v1/packs/x/history?since=%C2%B2"])
def test_non_ascii_digits_in_a_query_integer_are_a_400(cluster, query):
    # "²".isdigit() holds but int("²") raises: these were 500s.
    r = api(cluster, "GET", query)
    assert bad_request(r), r.text
