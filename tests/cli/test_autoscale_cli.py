"""``canidae autoscale plan`` without a cluster: policy files (good, bad, each failure one line
naming the field, exit 2), the inputs summed from node views and a metrics tree built by
``canidae.core.metrics.aggregate``, and the decision document the command prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from canidae.cli import main as cli_main
from canidae.cli.autoscale import NO_HISTORY, load_policy, plan_document
from canidae.core.autoscale_inputs import Usage, cluster_inputs
from canidae.core.autoscale_policy import DEFAULT_POLICY
from canidae.core.errors import InvalidInput
from canidae.core.metrics import NodeSummary, aggregate
from canidae.core.types import Location, Node, NodeState, Resources, Role

NOW = 1_700_000_000_000
CAP = Resources(4000, 8192, 500)


def view(node_id: str, state: NodeState, packs: int, reserved_cpu: int, reserved_mem: int) -> dict[str, Any]:
    """A node as ``GET /v1/nodes`` shows it: ``Node.to_dict`` plus its packs and reservations."""
    n = Node(node_id, Location("z1", "r1", "c1"), CAP, state=state, role=Role.CLIENT)
    return {**n.to_dict(), "packs": packs, "used": Resources(reserved_cpu, reserved_mem, packs).to_dict()}


def summary(node_id: str, packs: int, cpu_used: float, mem_used: float, at_ms: int = NOW - 2_000) -> NodeSummary:
    return NodeSummary(node=node_id, location=Location("z1", "r1", "c1"), at_ms=at_ms, pack_count=packs,
                       gauges={"cpu_used_m": cpu_used, "mem_used_mib": mem_used,
                               "cpu_capacity_m": float(CAP.cpu), "mem_capacity_mib": float(CAP.mem)})


def tree(*summaries: NodeSummary) -> dict[str, Any]:
    return aggregate(summaries, by="node").to_dict()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# Policy files


def test_no_policy_file_means_the_seeds_numbers() -> None:
    p = load_policy(None)
    assert p is DEFAULT_POLICY
    assert (p.cpu.up, p.cpu.down, p.memory.up, p.memory.down) == (70.0, 30.0, 80.0, 40.0)
    assert (p.packs_per_node, p.min_nodes, p.max_nodes, p.cooldown_s) == (50, 3, 1000, 300)


def test_a_policy_file_overrides_only_the_keys_it_names(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("cooldown_s = 60\n[cpu]\nup = 90\n[nodes]\nmin = 1\n")
    p = load_policy(f)
    assert (p.cpu.up, p.cpu.down, p.cooldown_s, p.min_nodes) == (90.0, 30.0, 60, 1)
    assert p.memory == DEFAULT_POLICY.memory and p.max_nodes == 1000


@pytest.mark.parametrize("text, field", [
    ('[cpu]\nup = "high"\n', "cpu.up"),
    ("[cpu]\nupp = 75\n", "cpu.upp"),
    ("[cpu]\nup = 20\ndown = 30\n", "cpu.down"),
    ("[nodes]\nmin = 10\nmax = 5\n", "nodes.max"),
    ("[packs]\nper_node = 0\n", "packs.per_node"),
    ("cooldown = 300\n", "cooldown"),
    ('[forecast]\nmode = "sometimes"\n', "forecast.mode"),
    ("[cpu\nup = 70\n", "not valid TOML"),
])
def test_a_bad_policy_file_is_one_line_naming_the_field_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    # The policy is read before the cluster is asked: no address is needed to refuse it.
    code, out, err = run(capsys, "--addr", "127.0.0.1:1", "autoscale", "plan", "--policy", str(f))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("canidae: error: ") and "Traceback" not in err
    assert field in err and str(f) in err


def test_a_missing_policy_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--addr", "127.0.0.1:1", "autoscale", "plan", "--policy", str(tmp_path / "no.toml"))
    assert code == 2 and "cannot read policy file" in err and err.count("\n") == 1


def test_an_unknown_usage_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--addr", "127.0.0.1:1", "autoscale", "plan", "--usage", "guessed")
    assert code == 2 and "--usage" in err


# ---------------------------------------------------------------------------------------------
# Inputs


def test_measured_inputs_sum_ready_capacity_and_every_live_nodes_use() -> None:
    nodes = [view("a", NodeState.READY, 40, 0, 0), view("b", NodeState.READY, 60, 0, 0),
             view("c", NodeState.DRAINING, 10, 0, 0), view("d", NodeState.DOWN, 0, 0, 0)]
    t = tree(summary("a", 40, 1000.0, 2000.0, NOW - 3_000), summary("b", 60, 1500.0, 1000.0),
             summary("c", 10, 500.0, 96.0))
    inputs = cluster_inputs(nodes, t, 7, Usage.MEASURED, NOW)
    m = inputs.metrics
    assert m is not None
    # Capacity: the two ready nodes; use: every node that is not down (draining packs land elsewhere).
    assert (m.nodes_ready, m.cpu_total_m, m.mem_total_mib) == (2, 8000, 16384)
    assert (m.cpu_used_m, m.mem_used_mib, m.packs, m.packs_pending) == (3000, 3096, 110, 7)
    assert m.at_ms == NOW - 3_000  # the oldest summary counted
    assert [n.node for n in inputs.nodes] == ["a", "b", "c"]
    assert inputs.note == ""


def test_a_ready_node_without_a_summary_is_not_capacity_and_is_named() -> None:
    nodes = [view("a", NodeState.READY, 10, 0, 0), view("b", NodeState.READY, 10, 0, 0)]
    inputs = cluster_inputs(nodes, tree(summary("a", 10, 800.0, 100.0)), 0, Usage.MEASURED, NOW)
    assert inputs.metrics is not None and inputs.metrics.cpu_total_m == 4000 and inputs.metrics.nodes_ready == 2
    assert "b" in inputs.note and [n.counted for n in inputs.nodes] == [True, False]


def test_no_summary_at_all_means_no_metrics_and_the_decision_holds() -> None:
    inputs = cluster_inputs([view("a", NodeState.READY, 0, 0, 0)], tree(), 0, Usage.MEASURED, NOW)
    assert inputs.metrics is None
    doc = plan_document(DEFAULT_POLICY, inputs, NOW)
    assert doc["decision"]["action"] == "hold" and "no metrics" in doc["decision"]["reason"]


def test_reserved_inputs_read_the_state_now() -> None:
    nodes = [view(f"n{i}", NodeState.READY, 30, 3000, 1024) for i in range(4)]
    inputs = cluster_inputs(nodes, tree(), 0, Usage.RESERVED, NOW)
    m = inputs.metrics
    assert m is not None and m.at_ms == NOW
    assert (m.cpu_used_m, m.cpu_total_m, m.mem_used_mib, m.packs) == (12000, 16000, 4096, 120)


# ---------------------------------------------------------------------------------------------
# The decision document


def test_plan_adds_what_the_safest_check_asks_and_says_why() -> None:
    # 75 % CPU reserved on 4 nodes: the CPU check asks ceil(4 x 75 / 50) = 6; 30 packs per node
    # and memory at 49 % would hold at 4; the largest proposal wins.
    nodes = [view(f"n{i}", NodeState.READY, 30, 3000, 4000) for i in range(4)]
    doc = plan_document(DEFAULT_POLICY, cluster_inputs(nodes, tree(), 0, Usage.RESERVED, NOW), NOW)
    d = doc["decision"]
    assert (d["action"], d["count"], d["current"], d["desired"], d["winner"]) == ("add", 2, 4, 6, "cpu")
    checks = {p["check"]: p for p in d["proposals"]}
    assert checks["cpu"]["desired"] == 6 and checks["cpu"]["value"] == 75.0
    assert checks["packs"]["value"] == 30.0 and checks["memory"]["desired"] == 4
    assert "safest" in d["winner_reason"]
    assert doc["changed"] is False and NO_HISTORY in doc["notes"]
    assert doc["explain"][0].startswith("ADD: add 2 nodes (4 -> 6)")
    assert any(line.startswith("winner: cpu") for line in doc["explain"])


def test_plan_shows_the_clamps_it_applies(tmp_path: Path) -> None:
    # 5 % CPU on 5 nodes asks for 1; nodes.min brings it back to 3, and a dry-run policy holds.
    f = tmp_path / "p.toml"
    f.write_text("dry_run = true\n")
    nodes = [view(f"n{i}", NodeState.READY, 10, 200, 512) for i in range(5)]
    doc = plan_document(load_policy(f), cluster_inputs(nodes, tree(), 0, Usage.RESERVED, NOW), NOW)
    d = doc["decision"]
    kinds = [c["kind"] for c in d["clamps"]]
    assert "min" in kinds and kinds[-1] == "dry_run"
    assert (d["action"], d["desired"], d["recommended"]) == ("hold", 5, 3)
    assert any("dry run: would remove 2 nodes" in line for line in doc["explain"])


def test_stale_summaries_hold() -> None:
    nodes = [view("a", NodeState.READY, 10, 0, 0)]
    inputs = cluster_inputs(nodes, tree(summary("a", 10, 3900.0, 100.0, NOW - 120_000)), 0, Usage.MEASURED, NOW)
    d = plan_document(DEFAULT_POLICY, inputs, NOW)["decision"]
    assert d["action"] == "hold" and "stale" in d["reason"]


def test_malformed_node_views_are_invalid_input() -> None:
    bad = {**view("a", NodeState.READY, 10, 0, 0), "packs": -1}
    with pytest.raises(InvalidInput, match="node a: packs"):
        cluster_inputs([bad], tree(), 0, Usage.RESERVED, NOW)
