"""The autoscaler on a real cluster with the ``local`` provider: packs that burn real CPU make it
add a client agent (a real process) within one evaluation; when the load goes, it drains the
emptiest client agent after the stabilisation window, removes it only once its packs run
elsewhere, and every pack still runs exactly once. Every decision is readable afterwards."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import pytest
from harness import for_the_cli, local_cluster
from packprocs import processes_under

from canidae.agent.client import Client
from canidae.agent.ops.autoscaler import AutoscaleController, CommandProvider, LocalProvider, read_inputs
from canidae.agent.ops.localcluster import LocalCluster
from canidae.agent.ops.waiting import wait_until
from canidae.cli import main as cli_main
from canidae.core.autoscale_checks import Metrics
from canidae.core.autoscale_inputs import Usage
from canidae.core.errors import PermissionDenied
from canidae.core.types import Resources

POLICY = """
evaluation_interval_s = 1
cooldown_s = 2
metrics_max_age_s = 30
[nodes]
min = 2
max = 3
[packs]
per_node = 4
[cpu]
up = 10
down = 5
[scale_down]
window_s = 3
"""

def pack_dir(cluster: LocalCluster, pack: str) -> str:
    """Where ``pack`` runs: its directory under the agent of its node."""
    with cluster.client() as c:
        node = c.pack(pack)["node"]
    return os.path.join(cluster.data_dir, "agents", node, "exec", "packs", pack)


ZERO = Metrics(at_ms=0, nodes_ready=0, cpu_total_m=0, cpu_used_m=0, mem_total_mib=0, mem_used_mib=0, packs=0)
BURN = ["sh", "-c", "while :; do :; done"]  # what any pack user can run
SLEEP = ["sleep", "600"]


def test_load_adds_a_node_and_its_end_removes_one_without_losing_a_pack(tmp_path: Path, capsys) -> None:
    # Half a core per node; two packs burning up to the 400 m they reserve (their cgroup's quota)
    # push the measured CPU over the policy's 10 % even on a busy machine.
    cluster = local_cluster(str(tmp_path / "cluster"), servers=1, clients=1, capacity=Resources(500, 4096, 100))
    policy = tmp_path / "autoscale.toml"
    policy.write_text(POLICY)
    with for_the_cli(cluster):
        assert cli_main.main(["autoscale", "policy", "apply", str(policy)]) == 0
        with cluster.client(timeout=30.0) as c:
            ctl = AutoscaleController(c, LocalProvider(cluster), name="test", usage=Usage.MEASURED)
            # Load rises: two packs burn CPU, eight more wait: 10 packs on 2 nodes.
            c.create_packs([{"name": f"burn-{i}", "driver": "exec", "command": BURN, "cpu": 400} for i in range(2)]
                           + [{"name": f"idle-{i}", "driver": "exec", "command": SLEEP, "cpu": 10} for i in range(8)])
            c.wait_running([f"burn-{i}" for i in range(2)] + [f"idle-{i}" for i in range(8)], 60)
            # The burn shows in the nodes' measured usage (heartbeat summaries) before the step.
            wait_until(lambda: (read_inputs(c, Usage.MEASURED, 0).metrics or ZERO).cpu_used_m >= 250, 30,
                       "the burning packs' CPU measured", interval=0.25)

            first = ctl.step()
            assert first.decision.action.value == "add", first.to_dict()["explain"]
            assert first.outcome == "done" and first.nodes == ["c2"], first.to_dict()
            assert first.decision.desired == 3
            cpu = next(p for p in first.decision.proposals if p.check == "cpu")
            assert cpu.desired >= 3, cpu  # the measured CPU asks for the node (or more than nodes.max)
            assert c.node("c2")["state"] == "ready" and cluster.alive("c2")
            # Within the cooldown nothing more happens, though the load is still there.
            held = ctl.step()
            assert held.decision.action.value == "hold"

            # New work lands on the new node too; then the burners and the first idle packs go.
            c.create_packs([{"name": f"late-{i}", "driver": "exec", "command": SLEEP, "cpu": 10} for i in range(6)])
            late = [f"late-{i}" for i in range(6)]
            c.wait_running(late, 60)
            c.delete_packs([f"burn-{i}" for i in range(2)] + [f"idle-{i}" for i in range(8)], force=True)
            wait_until(lambda: all(p["state"] != "running" for p in c.iter_packs() if not p["name"].startswith("late")),
                       30, "the first packs gone")

            # Load is low: 6 packs want 2 nodes. The stabilisation window holds the removal back
            # until every recommendation of the last 3 s asks for 2; the controller then drains
            # and removes the emptiest client agent.
            placed = {name: c.pack(name)["node"] for name in late}

            def removed() -> bool:
                r = ctl.step()
                return r.decision.action.value == "remove" and r.outcome == "done"
            wait_until(removed, 60, "a node removed by the autoscaler", interval=1.0)
            last = c.autoscale_status(last=1)["decisions"][0]
            gone = last["nodes"]
            assert len(gone) == 1 and gone[0] in ("c1", "c2"), last
            assert not cluster.alive(gone[0]) if gone[0] in {a["id"] for a in cluster.agents} else True
            assert gone[0] not in {n["id"] for n in c.nodes()}
            moved = [name for name, node in placed.items() if node == gone[0]]
            assert moved, f"the removed node held none of {placed}: the drain moved nothing"

            # Nothing lost: every late pack runs, on a node that exists, with exactly one member.
            nodes = {n["id"] for n in c.nodes()}
            for name in late:
                p = c.pack(name)
                assert p["state"] == "running" and p["node"] in nodes, p
                wait_until(lambda name=name: len(processes_under(pack_dir(cluster, name))) == 1, 30,
                           f"{name} running exactly once")

        # Every decision is readable afterwards, with its reason and outcome.
        capsys.readouterr()
        assert cli_main.main(["--json", "autoscale", "status", "--last", "100"]) == 0
        status = json.loads(capsys.readouterr().out)
        outcomes = [(d["action"], d["outcome"]) for d in status["decisions"]]
        assert ("add", "done") in outcomes and ("remove", "done") in outcomes
        assert cli_main.main(["autoscale", "explain", str(first.decision_id)]) == 0
        text = capsys.readouterr().out
        assert "check cpu:" in text and "winner:" in text and "outcome: done, nodes c2" in text


PROVIDER = """
import json, sys
from canidae.agent.ops.localcluster import LocalCluster
request = json.load(sys.stdin)
with open(sys.argv[2], "a") as log:
    log.write(json.dumps(request) + "\\n")
cluster = LocalCluster.open(sys.argv[1])
if request["action"] == "add":
    print(json.dumps({"nodes": [cluster.add_client() for _ in range(request["count"])]}))
elif request["action"] == "removable":
    print(json.dumps({"nodes": [n for n in request["nodes"] if n.startswith("c")]}))
else:
    for n in request["nodes"]:
        cluster.stop_agent(n)
    print(json.dumps({"nodes": request["nodes"]}))
"""


def test_the_command_provider_acts_and_its_failures_are_recorded(tmp_path: Path, capsys) -> None:
    cluster = local_cluster(str(tmp_path / "cluster"), servers=1, clients=0)
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/bin/sh\ncat >/dev/null\necho 'cloud says: no quota left' >&2\nexit 3\n")
    broken.chmod(0o755)
    script = tmp_path / "provider.py"
    script.write_text(PROVIDER)
    requests = tmp_path / "requests.ndjson"
    with for_the_cli(cluster):
        policy = tmp_path / "p.toml"
        policy.write_text("evaluation_interval_s = 1\ncooldown_s = 1\n[nodes]\nmin = 2\nmax = 3\n")
        assert cli_main.main(["autoscale", "policy", "apply", str(policy)]) == 0
        with cluster.client(timeout=30.0) as c:
            # One node (the server) and nodes.min = 2: the controller must add one.
            failed = AutoscaleController(c, CommandProvider([str(broken)]), name="t1").step()
            assert failed.decision.action.value == "add" and failed.outcome == "failed"
            assert "exited 3" in failed.error and "no quota left" in failed.error
            assert c.autoscale_decision(failed.decision_id)["outcome"]["status"] == "failed"

            ctl = AutoscaleController(c, CommandProvider([sys.executable, str(script), cluster.data_dir,
                                                          str(requests)]), name="t2")
            # The failed attempt counts for the cooldown (its nodes may be half made); then it acts.
            wait_until(lambda: ctl.step().outcome == "done", 30, "a node added by the command provider",
                       interval=0.5)
            assert [json.loads(x) for x in requests.read_text().splitlines()] == [{"action": "add", "count": 1}]
            cluster.agents[:] = LocalCluster.open(cluster.data_dir).agents  # the script added one
            assert c.node("c1")["state"] == "ready"
        capsys.readouterr()
        assert cli_main.main(["autoscale", "status"]) == 0
        out = capsys.readouterr().out
        assert "-> failed" in out and "-> done (c1)" in out

        # Paused: the controller still evaluates and records, but the pause clamps every action.
        policy.write_text("evaluation_interval_s = 1\ncooldown_s = 0\n[nodes]\nmin = 3\nmax = 3\n")
        assert cli_main.main(["autoscale", "policy", "apply", str(policy)]) == 0
        assert cli_main.main(["autoscale", "pause", "--reason", "change freeze"]) == 0
        capsys.readouterr()
        assert cli_main.main(["--json", "autoscale", "run", "--provider", "local", "--data-dir", cluster.data_dir,
                              "--once"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["decision"]["action"] == "hold" and doc["outcome"] is None
        assert [c["kind"] for c in doc["decision"]["clamps"]][-1] == "paused"
        assert cli_main.main(["autoscale", "status"]) == 0
        assert "paused by" in capsys.readouterr().out
        assert cli_main.main(["autoscale", "resume"]) == 0
        assert cli_main.main(["--json", "autoscale", "run", "--provider", "local", "--data-dir", cluster.data_dir,
                              "--once"]) == 0
        doc = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert doc["decision"]["action"] == "add" and doc["outcome"] == "done" and doc["nodes"] == ["c2"]
        cluster.agents[:] = LocalCluster.open(cluster.data_dir).agents

        # As an attacker: a read-only token reads but cannot pause, set the policy or record; a
        # client agent's own node credential can do none of it.
        with cluster.client() as c:
            secret = c.create_token("viewer", ["read-only"])["secret"]
            node_cred = tomllib.loads(Path(cluster.agent("c1")["config"]).read_text())["token"]
        for cred, can_read in ((secret, True), (node_cred, False)):
            with Client(cluster.target(token=cred)) as other:
                if can_read:
                    assert other.autoscale_status()["paused"] is False
                else:
                    with pytest.raises(PermissionDenied):
                        other.autoscale_status()
                for attempt in (lambda: other.set_autoscale_paused(True),
                                lambda: other.set_autoscale_policy({"nodes": {"min": 0}}),
                                lambda: other.record_autoscale_decision({"action": "add"}, "evil")):
                    with pytest.raises(PermissionDenied):
                        attempt()
        with cluster.client() as c:
            assert c.autoscale_status()["paused"] is False
