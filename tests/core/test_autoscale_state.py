"""The autoscaler's replicated state: decisions recorded through commands replay into the same
history the live evaluation kept, pause overrides the policy, outcomes are set once, snapshots
round-trip, and what is kept stays bounded."""

from __future__ import annotations

import json

import pytest

from canidae.core.autoscale import AutoscaleHistory, evaluate
from canidae.core.autoscale_checks import Metrics
from canidae.core.autoscale_policy import Policy
from canidae.core.autoscale_state import DECISIONS_KEPT, history_from_records
from canidae.core.commands import (
    RecordAutoscaleDecision,
    SetAutoscaleOutcome,
    SetAutoscalePaused,
    SetAutoscalePolicy,
    command_from_wire,
)
from canidae.core.state import ClusterState

POLICY = Policy.from_dict({"nodes": {"min": 1, "max": 20}, "cooldown_s": 60, "scale_down": {"window_s": 120},
                           "forecast": {"sample_interval_s": 60, "season_s": 3600}})


def metrics(at_ms: int, nodes: int, cpu_pct: float) -> Metrics:
    total = nodes * 4000
    return Metrics(at_ms=at_ms, nodes_ready=nodes, cpu_total_m=total, cpu_used_m=int(total * cpu_pct / 100),
                   mem_total_mib=nodes * 8192, mem_used_mib=nodes * 1000, packs=nodes * 10)


def wire(cmd: object) -> object:
    """Through the wire form, as a replica applies it."""
    return command_from_wire(json.loads(json.dumps(cmd.to_wire())))  # type: ignore[attr-defined]


def test_recorded_decisions_replay_into_the_history_the_live_loop_kept() -> None:
    st = ClusterState()
    live = AutoscaleHistory()
    nodes = 3
    load = [95, 95, 90, 60, 40, 20, 10, 10, 10, 10, 80, 95, 20, 10]
    for i, cpu in enumerate(load):
        now = 1_000_000 + i * 30_000
        m = metrics(now - 1000, nodes, cpu)
        d = evaluate(POLICY, m, live, now)
        live = live.record(d, m)
        res = st.apply(wire(RecordAutoscaleDecision(id=f"r{i}", at=now, decision=d.to_dict(), controller="ctl")))
        assert res["ok"] and res["id"] == i + 1
        nodes = d.desired
        rebuilt = history_from_records(st.autoscale.decisions.values())
        # The forecast's cached peak is recomputed on demand; everything else must be equal.
        assert rebuilt.last_action_at_ms == live.last_action_at_ms
        assert rebuilt.recommendations == live.recommendations
        assert rebuilt.scale_ups == live.scale_ups
        assert rebuilt.samples == live.samples and rebuilt.bucket_peak == live.bucket_peak
        # And the next decision taken from the rebuilt history is the one the live loop takes.
        nxt = metrics(now + 29_000, nodes, cpu)
        assert evaluate(POLICY, nxt, rebuilt, now + 30_000).to_dict() == evaluate(POLICY, nxt, live, now + 30_000).to_dict()
    actions = {r["decision"]["action"] for r in st.autoscale.decisions.values()}
    assert actions == {"add", "remove", "hold"}


def test_pause_overrides_the_policy_and_is_recorded_with_who_and_why() -> None:
    st = ClusterState()
    st.apply(wire(SetAutoscalePolicy(id="p", at=1, policy=POLICY.to_dict())))
    assert st.autoscale.effective_policy().paused is False
    res = st.apply(wire(SetAutoscalePaused(id="x", at=5, paused=True, reason="maintenance", by="ca_x")))
    assert res == {"ok": True, "paused": True, "changed": True}
    assert st.autoscale.effective_policy().paused is True
    status = st.autoscale.status()
    assert (status["paused"], status["paused_by"], status["paused_reason"]) == (True, "ca_x", "maintenance")
    m = metrics(9_000, 3, 99)
    d = evaluate(st.autoscale.effective_policy(), m, AutoscaleHistory(), 10_000)
    assert d.action.value == "hold" and any(c.kind.value == "paused" for c in d.clamps)
    assert st.apply(wire(SetAutoscalePaused(id="y", at=6, paused=True)))["changed"] is False
    st.apply(wire(SetAutoscalePaused(id="z", at=7, paused=False)))
    assert st.autoscale.status()["paused"] is False and st.autoscale.paused_by == ""
    kinds = [e["type"] for e in st.drain_events()]
    assert kinds == ["AutoscalePolicySet", "AutoscalePaused", "AutoscaleResumed"]


def test_an_outcome_is_set_once_on_a_kept_decision() -> None:
    st = ClusterState()
    d = evaluate(POLICY, metrics(0, 3, 99), AutoscaleHistory(), 1000).to_dict()
    st.apply(wire(RecordAutoscaleDecision(id="r", at=1000, decision=d, controller="ctl")))
    ok = st.apply(wire(SetAutoscaleOutcome(id="o1", at=2000, decision_id=1, status="done", nodes=("c9", "c8"))))
    assert ok["ok"] and st.autoscale.get(1)["outcome"] == {"status": "done", "nodes": ["c8", "c9"], "error": "",
                                                            "at_ms": 2000}
    again = st.apply(wire(SetAutoscaleOutcome(id="o2", at=3000, decision_id=1, status="failed")))
    assert again["error"]["code"] == "wrong_state"
    missing = st.apply(wire(SetAutoscaleOutcome(id="o3", at=3000, decision_id=7, status="done")))
    assert missing["error"]["code"] == "not_found"
    bad = st.apply(wire(SetAutoscaleOutcome(id="o4", at=3000, decision_id=1, status="maybe")))
    assert bad["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("broken", [
    {"action": "explode"}, {"count": -1}, {"desired": "many"}, {"reason": 3}, {"policy": {"cooldown": 1}},
    {"metrics": {"at_ms": 1}},
])
def test_a_decision_that_could_not_replay_is_refused(broken: dict[str, object]) -> None:
    st = ClusterState()
    d = {**evaluate(POLICY, metrics(0, 3, 50), AutoscaleHistory(), 1000).to_dict(), **broken}
    res = st.apply(wire(RecordAutoscaleDecision(id="r", at=1, decision=d, controller="ctl")))
    assert res["error"]["code"] == "invalid_input" and not st.autoscale.decisions


def test_kept_decisions_are_bounded_and_survive_a_snapshot() -> None:
    st = ClusterState()
    d = evaluate(POLICY, metrics(0, 3, 50), AutoscaleHistory(), 1000).to_dict()
    for i in range(DECISIONS_KEPT + 5):
        st.apply(RecordAutoscaleDecision(id=f"r{i}", at=i, decision=d, controller="ctl"))
    assert len(st.autoscale.decisions) == DECISIONS_KEPT
    assert next(iter(st.autoscale.decisions)) == 6 and st.autoscale.seq == DECISIONS_KEPT + 5
    st.apply(SetAutoscalePaused(id="p", at=9, paused=True, reason="r", by="me"))
    copy = ClusterState.from_snapshot(json.loads(json.dumps(st.to_snapshot())))
    assert copy.digest() == st.digest()
    assert copy.autoscale.status(5) == st.autoscale.status(5)
