"""Metrics on a real cluster (3 servers + 1 client agent on loopback): every agent's
``GET /v1/metrics`` parsed with prometheus_client's own parser, and the leader's merged tree of the
summaries nodes send with their heartbeats."""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from canidae.agent.client.execcalls import yip_recv, yip_send
from harness import local_cluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = local_cluster(str(tmp_path_factory.mktemp("metrics") / "cluster"), servers=3, clients=1)
    try:
        yield c
    finally:
        c.close()


def scrape(cluster, ident, **params):
    r = httpx.get(cluster.url(ident, "/v1/metrics"), params=params, verify=cluster.verify,
                  headers={"authorization": f"Bearer {cluster.token}"}, timeout=5.0)
    return r


def families(cluster, ident):
    r = scrape(cluster, ident)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(fams, name, **labels):
    fam = fams[name]
    found = [s.value for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())
             and not s.name.endswith(("_created", "_bucket"))]
    assert found, f"no sample of {name} with {labels}"
    return found[0]


def test_every_agent_exposes_prometheus_metrics_with_canonical_names(cluster):
    with cluster.client() as c:
        c.create_packs([{"name": "m"}], count=20)
        wait_until(lambda: c.packs(state="placed", limit=1)["packs"] == [], 15, "all packs running")
        c.create_packs([{"name": "talker"}])
        c.wait_running(["talker"], 10)
        for i in range(3):
            yip_send(c, "talker", text=f"hello {i}")
        got = yip_recv(c, "talker")
        assert len(got["yips"]) == 3
    leader = cluster.leader()
    wait_until(lambda: value(families(cluster, leader), "canidae_cluster_packs", state="running") == 21, 10,
             "the leader's gauge of running packs")
    fams = families(cluster, leader)
    assert value(fams, "canidae_raft_leader") == 1
    assert value(fams, "canidae_raft_term") >= 1
    assert value(fams, "canidae_raft_commit_index") >= value(fams, "canidae_raft_applied_index") > 0
    assert value(fams, "canidae_raft_leader_changes") >= 1
    assert fams["canidae_raft_leader_changes"].type == "counter"
    assert value(fams, "canidae_cluster_nodes", state="ready") == 4
    assert value(fams, "canidae_event_store_appends") > 21
    assert value(fams, "canidae_failure_nodes_kept_by_probe") == 0
    assert {s.labels["node"] for s in fams["canidae_heartbeat_age_seconds"].samples} >= {"s1", "s2", "s3", "c1"}
    # The client asked whichever server answered first: the servers' counts add up to its requests.
    posts = sum(sum(s.value for s in families(cluster, a)["canidae_api_requests"].samples
                    if s.name == "canidae_api_requests_total"
                    and s.labels == {"route": "/v1/packs", "method": "POST", "code": "200"})
                for a in ("s1", "s2", "s3"))
    assert posts == 2
    assert fams["canidae_api_request_duration_seconds"].type == "histogram"

    # Yips are counted where the pack's mailbox lives; the cluster's total is the sum over agents.
    queued = delivered = 0
    for a in cluster.agents:
        families(cluster, a["id"])  # a scrape is counted once answered: the next one shows it
        f = families(cluster, a["id"])
        queued += value(f, "canidae_yips_queued")
        delivered += value(f, "canidae_yips_delivered")
        assert "canidae_raft_term" in f if a["role"] == "server" else "canidae_raft_term" not in f
        assert value(f, "canidae_api_requests", route="/v1/metrics", method="GET", code="200") >= 1
        # Canonical names, base units, no label that names a pack.
        for fam in f.values():
            assert fam.name.startswith("canidae_"), fam.name
            for s in fam.samples:
                assert not any(v.startswith(("m-", "talker")) for v in s.labels.values()), s
    assert (queued, delivered) == (3, 3)


def test_json_format_and_bad_format(cluster):
    r = scrape(cluster, "c1", format="json")
    assert r.status_code == 200
    doc = r.json()["metrics"]
    assert doc["canidae_api_requests"]["type"] == "counter"
    assert doc["canidae_node_packs_running"]["samples"][0]["value"] >= 0
    bad = scrape(cluster, "c1", format="xml")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
    anon = httpx.get(cluster.url("c1", "/v1/metrics"), timeout=5.0, verify=cluster.verify)
    assert anon.status_code == 401


def test_the_leader_merges_the_summaries_nodes_send_with_heartbeats(cluster):
    with cluster.client() as c:
        c.create_packs([{"name": "t", "cpu": 10, "mem": 4}], count=40)
        wait_until(lambda: c.packs(state="placed", limit=1)["packs"] == [], 15, "all packs running")

        def merged():
            doc = c.request("GET", "/v1/metrics/cluster", params={"by": "node"})
            root = doc["tree"]
            # Other tests of this module may or may not have run on this cluster first (xdist):
            # at least this test's packs, from every node.
            return doc if root["nodes"] == 4 and root["packs"] >= 40 else None
        doc = wait_until(merged, 30, "every node's summary in the leader's tree")
        root = doc["tree"]
        assert doc["by"] == "node" and doc["sample_rate"] == 1.0 and root["sample_rates"] == [1.0]
        # Reserved CPU is an additive gauge: the cluster's is the sum of its nodes'.
        nodes = [row for row in doc["rows"] if row["level"] == "node"]
        assert sorted(r["name"] for r in nodes) == ["c1", "s1", "s2", "s3"]
        assert doc["rows"][0]["cpu_reserved_m"] == sum(r["cpu_reserved_m"] for r in nodes) >= 400
        assert root["pack_estimates"]["packs"]["value"] == root["packs"]  # rate 1: the estimate is exact
        assert root["counters"]["heartbeats"] >= 4
        assert "heartbeat_ms" in root["sketches"]
        # The same tree by zone; filters; bad input is refused whole.
        by_zone = c.request("GET", "/v1/metrics/cluster", params={"by": "zone", "packs": 5, "sort": "name"})
        assert [ch["level"] for ch in by_zone["tree"]["children"]] == ["zone"]
        assert len(by_zone["packs"]) == 5 and by_zone["packs"] == sorted(by_zone["packs"], key=lambda p: p["name"])
        none = c.request("GET", "/v1/metrics/cluster", params={"zone": "nowhere"})
        assert none["tree"]["nodes"] == 0
        from canidae.core.errors import InvalidInput
        with pytest.raises(InvalidInput):
            c.request("GET", "/v1/metrics/cluster", params={"by": "planet"})


def test_a_heartbeat_with_a_bad_summary_is_refused_and_changes_nothing(cluster):
    leader = cluster.leader()
    api = cluster.agent(leader)["api"]
    h = {"authorization": f"Bearer {cluster.token}"}
    bad = {"running": 0, "metrics": {"v": 1, "node": "s2", "zone": "z1", "region": "r1", "cell": "c1",
                                     "at_ms": 1, "counters": {"BAD NAME": 1}}}
    r = httpx.post(f"{cluster.scheme}://{api}/v1/nodes/c1/heartbeat", json=bad, headers=h, timeout=5.0,
                   verify=cluster.verify)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    wrong_node = {"running": 0, "metrics": {**bad["metrics"], "counters": {}}}
    r = httpx.post(f"{cluster.scheme}://{api}/v1/nodes/c1/heartbeat", json=wrong_node, headers=h, timeout=5.0,
                   verify=cluster.verify)
    assert r.status_code == 400 and "not c1" in r.json()["error"]["message"]


def cli(cluster, *args):
    import os
    import subprocess
    import sys
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CANIDAE_")}, "COLUMNS": "200",
           "CANIDAE_CA": cluster.ca}
    addr = ",".join(a["api"] for a in cluster.agents if a["role"] == "server")
    return subprocess.run([sys.executable, "-m", "canidae", "--addr", addr, "--token", cluster.token, *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_metrics_command_prints_the_tree_with_the_rate_in_force(cluster):
    import json
    wait_until(lambda: json.loads(cli(cluster, "metrics", "--json").stdout)["tree"]["nodes"] == 4, 15,
             "every node in the tree")
    doc = json.loads(cli(cluster, "metrics", "--by", "region", "--json").stdout)
    assert doc["by"] == "region" and {r["level"] for r in doc["rows"]} == {"cluster", "zone", "region"}
    p = cli(cluster, "metrics", "--by", "node")
    assert p.returncode == 0, p.stderr
    assert "sampled at 100%" in p.stdout and "s1" in p.stdout and "heartbeat_ms" in p.stdout
    bad = cli(cluster, "metrics", "--by", "planet")
    assert bad.returncode == 2 and bad.stdout == ""


def test_top_once_and_json_read_the_aggregated_view(cluster):
    import json
    with cluster.client() as c:
        c.create_packs([{"name": "busy", "cpu": 100, "mem": 64}])
        c.wait_running(["busy"], 10)

    def sampled():
        s = json.loads(cli(cluster, "top", "--json", "--sort", "name").stdout)
        return s if s["packs"] and s["packs"][0]["name"] == "busy" else None
    by_name = wait_until(sampled, 15, "the new pack in the sampled view")
    assert by_name["packs"][0]["node"] in {"c1", "s1", "s2", "s3"} and len(by_name["packs"]) == 20
    snap = json.loads(cli(cluster, "top", "--json", "--sort", "packs").stdout)
    assert snap["sort"] == "packs" and snap["nodes_total"] == 4
    assert [n["packs"] for n in snap["nodes"]] == sorted((n["packs"] for n in snap["nodes"]), reverse=True)
    assert sum(n["packs"] for n in snap["nodes"]) == snap["packs_total"]
    assert all(p["weight"] == 1.0 for p in snap["packs"])  # under 100 packs every pack is sampled
    only = json.loads(cli(cluster, "top", "--json", "--zone", "nowhere").stdout)
    assert only["nodes"] == [] and only["packs"] == []
    p = cli(cluster, "top", "--once", "--sort", "name")
    assert p.returncode == 0, p.stderr
    lines = p.stdout
    assert "sampled at 100%" in lines and lines.index("c1") < lines.index("s1") < lines.index("s3")


def total(fams, name, **labels):
    """The sum of a family's samples named ``name`` with ``labels`` (0 when there is none)."""
    fam = fams.get(name.removesuffix("_total").removesuffix("_count").removesuffix("_sum"))
    if fam is None:
        return 0
    return sum(s.value for s in fam.samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_commit_latency_scheduler_mailboxes_node_usage_and_admission_are_measured_and_move(cluster):
    leader = cluster.leader()
    before = families(cluster, leader)
    everyone = {a["id"]: families(cluster, a["id"]) for a in cluster.agents}
    with cluster.client() as c:
        c.create_packs([{"name": "sched", "cpu": 7, "mem": 3}], count=5)
        # Fits nowhere (each node offers 1,000 cores): pending, counted under the kind "cpu".
        c.create_packs([{"name": "too-big", "cpu": 2_000_000}])
        wait_until(lambda: all(c.pack(f"sched-{i}")["state"] == "running" for i in range(5)), 15, "packs running")
        c.create_packs([{"name": "inbox"}])
        c.wait_running(["inbox"], 10)
        for i in range(4):
            yip_send(c, "inbox", text=f"unread {i}")
        c.delete_packs(["too-big"])
    after = families(cluster, leader)
    # Raft commit latency and event store commits: histograms in seconds that moved.
    assert after["canidae_raft_commit_seconds"].type == "histogram"
    assert total(after, "canidae_raft_commit_seconds_count") > total(before, "canidae_raft_commit_seconds_count")
    assert 0 < total(after, "canidae_raft_commit_seconds_sum") < total(after, "canidae_raft_commit_seconds_count") * 5
    assert total(after, "canidae_event_store_commit_seconds_count") > \
        total(before, "canidae_event_store_commit_seconds_count")
    # The scheduler: placements, and the pack that fitted nowhere under its reason's kind only.
    assert total(after, "canidae_scheduler_placements_total") >= total(before, "canidae_scheduler_placements_total") + 6
    assert total(after, "canidae_scheduler_unplaced_total", reason="cpu") == \
        total(before, "canidae_scheduler_unplaced_total", reason="cpu") + 1
    assert {s.labels["reason"] for s in after["canidae_scheduler_unplaced"].samples} >= {"cpu", "memory", "other"}
    # Every agent: mailbox depth (the 4 unread yips sit on the node that holds "inbox"), and what
    # its packs use against what they reserve and what the node offers.
    depth = reserved = system = 0.0
    with cluster.client() as c:
        node = c.pack("inbox")["node"]
    for a in cluster.agents:
        f = wait_until(lambda a=a: (lambda f: f if a["id"] != node or total(f, "canidae_yips_mailbox_depth") >= 4
                                    else None)(families(cluster, a["id"])), 10, "the mailbox depth")
        depth += total(f, "canidae_yips_mailbox_depth")
        assert total(f, "canidae_yips_mailbox_depth_max") <= total(f, "canidae_yips_mailbox_depth")
        assert total(f, "canidae_node_cpu_capacity_cores") == 1000
        assert total(f, "canidae_node_memory_capacity_bytes") == 1_048_576 * 1024 * 1024
        assert total(f, "canidae_node_cpu_used_cores") >= 0 and total(f, "canidae_node_memory_used_bytes") >= 0
        reserved += total(f, "canidae_node_cpu_reserved_cores")
        # Admission: each scrape is a bulk request admitted; nothing was refused.
        assert total(f, "canidae_admission_admitted_total", **{"class": "bulk"}) > \
            total(everyone[a["id"]], "canidae_admission_admitted_total", **{"class": "bulk"})
        assert total(f, "canidae_admission_rejected_total") == 0
        system += total(f, "canidae_admission_admitted_total", **{"class": "system"})
    assert depth >= 4
    assert system > 0  # heartbeats and reports, on the leader
    # Reserved CPU reaches the metrics with the next heartbeat summary: at least the 5 x 7m.
    assert reserved >= 0.035 or wait_until(
        lambda: sum(total(families(cluster, a["id"]), "canidae_node_cpu_reserved_cores")
                    for a in cluster.agents) >= 0.035, 10, "reserved CPU in the metrics")
