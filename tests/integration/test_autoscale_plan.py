"""``canidae autoscale plan`` on a real cluster (3 servers + 1 client agent on loopback): the
decision's inputs are the cluster's own (node count, packs and packs per node after spawning
packs, capacity), its proposals follow from them, and planning changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import LocalCluster, for_the_cli, local_cluster, wait_until

from canidae.cli import main as cli_main
from canidae.core.types import Resources

CAP = Resources(4000, 8192, 500)
PACKS = 120
PACK_CPU, PACK_MEM = 100, 128  # 12,000 m of 16,000 CPU (75 %, above 70 %); 15,360 of 32,768 MiB (47 %)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("autoscale")
    with for_the_cli(local_cluster(str(data / "cluster"), servers=3, clients=1, capacity=CAP)) as lc:
        yield lc


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def plan(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = cli(capsys, "autoscale", "plan", "--json", *argv)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_plan_reads_the_clusters_nodes_and_packs(cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    with cluster.client() as c:
        c.create_packs([{"name": "load", "cpu": PACK_CPU, "mem": PACK_MEM}], count=PACKS)
        wait_until(lambda: c.packs(state="placed", limit=1)["packs"] == [] and
                   c.status()["pack_states"].get("running") == PACKS, 30, "every pack running")
        # Every node's summary reaches the leader with a heartbeat: wait until all four counted theirs.
        wait_until(lambda: (t := c.metrics_cluster("node")["tree"])["nodes"] == 4 and t["packs"] == PACKS,
                   30, "the leader's metrics tree holds every node and pack")
        views = {n["id"]: n for n in c.nodes()}

    doc = plan(capsys)
    m = doc["decision"]["metrics"]
    assert (m["nodes_ready"], m["nodes_starting"], m["packs"], m["packs_pending"]) == (4, 0, PACKS, 0)
    assert (m["cpu_total_m"], m["mem_total_mib"]) == (4 * CAP.cpu, 4 * CAP.mem)
    rows = {r["node"]: r for r in doc["inputs"]["nodes"]}
    assert sorted(rows) == ["c1", "s1", "s2", "s3"] and all(r["counted"] for r in rows.values())
    assert {k: r["packs"] for k, r in rows.items()} == {k: v["packs"] for k, v in views.items()}
    proposals = {p["check"]: p for p in doc["decision"]["proposals"]}
    assert proposals["packs"]["value"] == PACKS / 4 and proposals["packs"]["target"] == 50
    assert doc["decision"]["current"] == 4 and doc["changed"] is False

    # Reserved usage is read from the replicated state: 75 % CPU, so the CPU check asks for
    # ceil(4 x 75 / 50) = 6 nodes and wins over the packs check (30 per node asks for 3).
    doc = plan(capsys, "--usage", "reserved")
    d = doc["decision"]
    assert d["metrics"]["cpu_used_m"] == PACKS * PACK_CPU and d["metrics"]["mem_used_mib"] == PACKS * PACK_MEM
    assert (d["action"], d["current"], d["desired"], d["winner"]) == ("add", 4, 6, "cpu")
    assert {p["check"]: p["desired"] for p in d["proposals"]}["packs"] == 3

    # A policy file changes the decision: 20 packs per node asks for ceil(120 / 20) = 6 as well,
    # and a CPU bound of 90 % leaves the packs check the winner.
    policy = tmp_path / "autoscale.toml"
    policy.write_text("[cpu]\nup = 90.0\ndown = 10.0\n[packs]\nper_node = 20\n")
    d = plan(capsys, "--usage", "reserved", "--policy", str(policy))["decision"]
    assert (d["action"], d["desired"], d["winner"]) == ("add", 6, "packs")
    assert d["policy"]["packs"]["per_node"] == 20

    # People read the same decision; and planning wrote nothing to the cluster.
    code, out, _ = cli(capsys, "autoscale", "plan", "--usage", "reserved")
    assert code == 0
    assert out.startswith("ADD: add 2 nodes (4 -> 6)") and "winner: cpu" in out and "nothing changed" in out
    with cluster.client() as c:
        assert c.status()["pack_states"] == {"running": PACKS}
        assert sorted((n["id"], n["state"]) for n in c.nodes()) == sorted((k, v["state"]) for k, v in views.items())
