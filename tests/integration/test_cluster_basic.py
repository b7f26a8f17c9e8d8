"""A real 3-server cluster (+1 client agent) on loopback: spawn, list, stop, nodes, status."""

import httpx
import pytest

from harness import local_cluster, wait_until


@pytest.fixture
def cluster(tmp_path):
    c = local_cluster(str(tmp_path / "cluster"), servers=3, clients=1)
    try:
        yield c
    finally:
        c.close()


def test_spawn_runs_on_a_node_and_every_agent_is_listed(cluster):
    with cluster.client() as c:
        nodes = c.nodes()
        assert sorted(n["id"] for n in nodes) == ["c1", "s1", "s2", "s3"]
        assert {n["role"] for n in nodes} == {"server", "client"}
        res = c.create_packs([{"name": "web", "cpu": 500, "mem": 256}])
        node = res["placements"][0]["node"]
        assert node in {"c1", "s1", "s2", "s3"}
        p = c.wait_running(["web"], 10)["web"]
        assert p["state"] == "running" and p["node"] == node
        used = c.node(node)["used"]
        assert used["cpu"] >= 500 and used["mem"] >= 256


def test_bulk_spawn_list_paging_and_stop(cluster):
    with cluster.client() as c:
        res = c.create_packs([{"name": "w"}], count=250)
        assert len(res["placements"]) == 250
        names = [p["name"] for p in c.iter_packs(limit=100) ]
        assert names == sorted(f"w-{i}" for i in range(250))
        wait_until(lambda: c.packs(state="placed", limit=1)["packs"] == [], 10, "all packs running")
        c.pack_action("w-7", "stop")
        wait_until(lambda: c.pack("w-7")["state"] == "stopped", 10, "w-7 stopped")
        by_node = {}
        for p in c.iter_packs():
            if p["state"] == "running":
                by_node[p["node"]] = by_node.get(p["node"], 0) + 1
        assert sum(by_node.values()) == 249
        assert len(by_node) == 4  # bounded load spreads over every node
        ring = c.ring()
        assert abs(sum(n["share"] for n in ring["nodes"]) - 1) < 1e-3
        assert all(n["vnodes"] == 160 and n["packs"] <= n["cap"] for n in ring["nodes"])
        look = c.ring_lookup("w-3")
        assert look["ring_node"] == look["preference"][0] and look["placed_on"] == c.pack("w-3")["node"]


def test_writes_through_any_agent_including_a_client(cluster):
    client_api = cluster.agent("c1")["api"]
    from canidae.agent.client import Client
    with Client(cluster.target(apis=[client_api])) as c:
        c.create_packs([{"name": "via-client"}])
        assert c.pack("via-client")["node"]
    for s in ("s1", "s2", "s3"):
        with Client(cluster.target([s])) as c:
            assert c.pack("via-client")["name"] == "via-client"


def test_status_names_leader_and_peers(cluster):
    cluster.wait_leader()
    with cluster.client() as c:
        # Just after an election a follower may not know the leader yet: wait until the status
        # names the leader that the agents' health says leads.
        def agreed():
            st, leader = c.status(), cluster.leader()
            return st if leader and st["leader_api"] == cluster.agent(leader)["api"] else None
        st = wait_until(agreed, 15, "the status naming the leader")
    assert len(st["peers"]) == 3 and st["has_quorum"]


BAD_BODIES = [
    (b"{not json", 400),
    (b'{"spec": {"name": 5}}', 400),
    (b'{"spec": {"name": "ok", "cpu": "lots"}}', 400),
    (b'{"spec": {"name": "ok"}, "bogus": 1}', 400),
    (b'{"spec": {"name": ""}}', 400),
    (b'{"spec": {"name": "' + b"a" * 300 + b'"}}', 400),
    (b'{"spec": {"name": "../x"}}', 400),
    (b'{"spec": {"name": "a\\u0001b"}}', 400),
    (b'[1, 2]', 400),
]


def test_bad_input_gets_4xx_changes_nothing_and_agent_stays_up(cluster):
    api = cluster.agent("s1")["api"]
    auth = {"authorization": f"Bearer {cluster.token}", "content-type": "application/json"}
    api = f"{cluster.scheme}://{api}"
    with httpx.Client(timeout=5, verify=cluster.verify) as http:
        for body, status in BAD_BODIES:
            r = http.post(f"{api}/v1/packs", content=body, headers=auth)
            assert r.status_code == status, body
            err = r.json()["error"]
            assert err["code"] and err["message"]
        big = b'{"spec": {"name": "x", "env": {"k": "' + b"v" * (9 * 1024 * 1024) + b'"}}}'
        r = http.post(f"{api}/v1/packs", content=big, headers=auth)
        assert r.status_code == 413
        assert http.post(f"{api}/v1/packs", json={"spec": {"name": "x"}}).status_code == 401
        assert http.post(f"{api}/v1/packs", json={"spec": {"name": "x"}},
                         headers={"authorization": "Bearer wrong"}).status_code == 401
        assert http.get(f"{api}/v1/packs").status_code == 401
        assert http.get(f"{api}/v1/health").status_code == 200
        r = http.get(f"{api}/v1/packs", headers=auth)
        assert r.status_code == 200 and r.json()["total"] == 0
        assert http.get(f"{api}/v1/openapi.json", headers=auth).json()["openapi"].startswith("3.")
