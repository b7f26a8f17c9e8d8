"""The autoscaler's replicated state: the policy in force, pause, and the decisions recorded.

This module owns what the cluster remembers about autoscaling, changed only through typed
commands applied by ``ClusterState.apply`` (so every server agrees, and a restarted controller
picks up where the last one stopped):

* the policy (``canidae.core.autoscale_policy.Policy``; the seed's numbers until one is applied);
* ``paused``: a pause set by an operator overrides the policy's own ``paused`` and is kept with
  who paused it and why, so ``autoscale status`` can say so;
* the last ``DECISIONS_KEPT`` decisions, each with a cluster-wide sequence number (its id, what
  ``autoscale explain ID`` takes), the decision as the pure evaluation wrote it (inputs, every
  check's proposal, the winner and why, every clamp) and, once the controller acted on it, the
  outcome (nodes added or removed, or the error).

The history an evaluation needs (cooldown, stabilisation window, scale-up rate limits, forecast
samples) is rebuilt from these records by ``history_from_records``: a decision replays into
``AutoscaleHistory.record`` exactly as it did when it was taken. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from canidae.core.autoscale import Action, AutoscaleHistory, Decision
from canidae.core.autoscale_checks import Metrics
from canidae.core.autoscale_policy import DEFAULT_POLICY, Policy
from canidae.core.errors import InvalidInput, NotFound, WrongState

# With the default 10 s evaluation interval, 720 decisions are the last two hours: more than any
# window or cooldown of a sane policy. Each record is a few KB, so the state stays small.
DECISIONS_KEPT = 720
MAX_REASON = 200
OUTCOMES = ("done", "failed", "skipped")


@dataclass
class AutoscaleState:
    """Policy, pause and recent decisions; see the module docstring."""

    policy: Policy = DEFAULT_POLICY
    policy_set: bool = False  # False: the default policy, never applied
    paused: bool = False
    paused_by: str = ""
    paused_reason: str = ""
    paused_at_ms: int = 0
    seq: int = 0
    decisions: OrderedDict[int, dict[str, Any]] = field(default_factory=OrderedDict)

    # --------------------------------------------------------------- changes

    def set_policy(self, doc: Mapping[str, Any]) -> Policy:
        self.policy = Policy.from_dict(doc)
        self.policy_set = True
        return self.policy

    def set_paused(self, paused: bool, by: str, reason: str, at_ms: int) -> bool:
        """Pause or resume; returns whether anything changed."""
        if len(reason) > MAX_REASON:
            raise InvalidInput(f"reason is limited to {MAX_REASON} characters")
        changed = paused != self.paused
        self.paused = paused
        self.paused_by, self.paused_reason, self.paused_at_ms = (by, reason, at_ms) if paused else ("", "", 0)
        return changed

    def record(self, decision: Mapping[str, Any], controller: str, at_ms: int) -> dict[str, Any]:
        """Keep one decision (the ``Decision.to_dict`` form); returns the stored record."""
        _check_decision(decision)
        self.seq += 1
        rec = {"id": self.seq, "at_ms": at_ms, "controller": controller, "decision": dict(decision),
               "outcome": None}
        self.decisions[self.seq] = rec
        while len(self.decisions) > DECISIONS_KEPT:
            self.decisions.popitem(last=False)
        return rec

    def set_outcome(self, decision_id: int, status: str, nodes: Iterable[str], error: str,
                    at_ms: int) -> dict[str, Any]:
        rec = self.decisions.get(decision_id)
        if rec is None:
            raise NotFound(f"no autoscale decision {decision_id} (the last {DECISIONS_KEPT} are kept)")
        if status not in OUTCOMES:
            raise InvalidInput(f"outcome status must be one of {', '.join(OUTCOMES)}, got {status!r}")
        if rec["outcome"] is not None:
            raise WrongState(f"autoscale decision {decision_id} already has an outcome")
        rec["outcome"] = {"status": status, "nodes": sorted(nodes), "error": error[:1000], "at_ms": at_ms}
        return rec

    # --------------------------------------------------------------- reads

    def effective_policy(self) -> Policy:
        """The policy evaluations use: the applied one, paused when an operator paused it."""
        if self.paused and not self.policy.paused:
            return Policy.from_dict({**self.policy.to_dict(), "paused": True})
        return self.policy

    def status(self, last: int = 10) -> dict[str, Any]:
        recent = list(self.decisions.values())[-last:] if last > 0 else []
        return {
            "policy": self.policy.to_dict(), "policy_set": self.policy_set,
            "paused": self.paused or self.policy.paused,
            "paused_by": self.paused_by, "paused_reason": self.paused_reason or (
                "the policy sets paused = true" if self.policy.paused and not self.paused else ""),
            "paused_at_ms": self.paused_at_ms,
            "decisions_kept": len(self.decisions), "last_id": self.seq,
            "decisions": [summary(r) for r in reversed(recent)],
        }

    def get(self, decision_id: int) -> dict[str, Any]:
        rec = self.decisions.get(decision_id)
        if rec is None:
            raise NotFound(f"no autoscale decision {decision_id} (the last {DECISIONS_KEPT} are kept)")
        return rec

    # --------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict(), "policy_set": self.policy_set, "paused": self.paused,
                "paused_by": self.paused_by, "paused_reason": self.paused_reason,
                "paused_at_ms": self.paused_at_ms, "seq": self.seq,
                "decisions": list(self.decisions.values())}

    @staticmethod
    def from_snapshot(d: Mapping[str, Any] | None) -> AutoscaleState:
        if not d:
            return AutoscaleState()
        st = AutoscaleState(Policy.from_dict(d["policy"]), bool(d["policy_set"]), bool(d["paused"]),
                            str(d["paused_by"]), str(d["paused_reason"]), int(d["paused_at_ms"]), int(d["seq"]))
        for rec in d["decisions"]:
            st.decisions[int(rec["id"])] = dict(rec)
        return st


def summary(rec: Mapping[str, Any]) -> dict[str, Any]:
    """One line's worth of a recorded decision (status lists these; explain shows the whole)."""
    d = rec["decision"]
    out = rec.get("outcome")
    return {"id": rec["id"], "at_ms": rec["at_ms"], "action": d["action"], "count": d["count"],
            "current": d["current"], "desired": d["desired"], "reason": d["reason"],
            "outcome": out["status"] if out else None, "nodes": out["nodes"] if out else []}


def _check_decision(d: Mapping[str, Any]) -> None:
    """A decision record must replay: the fields ``history_from_records`` reads are present and typed."""
    if not isinstance(d, Mapping):
        raise InvalidInput("decision must be an object")
    for key in ("at_ms", "count", "current", "desired"):
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidInput(f"decision.{key} must be a non-negative integer")
    if d.get("action") not in {a.value for a in Action}:
        raise InvalidInput(f"decision.action must be one of {', '.join(a.value for a in Action)}")
    rec = d.get("recommended")
    if rec is not None and (isinstance(rec, bool) or not isinstance(rec, int) or rec < 0):
        raise InvalidInput("decision.recommended must be a non-negative integer or null")
    if not isinstance(d.get("reason"), str):
        raise InvalidInput("decision.reason must be a string")
    Policy.from_dict(d.get("policy") or {})
    if d.get("metrics") is not None:
        Metrics.from_dict(d["metrics"])


def replayable(d: Mapping[str, Any]) -> Decision:
    """The fields of a recorded decision that ``AutoscaleHistory.record`` reads, as a ``Decision``.

    Proposals, clamps and the forecast outcome are left out: the history does not keep them (the
    forecast's cached peak is recomputed from the samples on the next evaluation).
    """
    metrics = Metrics.from_dict(d["metrics"]) if d.get("metrics") is not None else None
    return Decision(at_ms=d["at_ms"], policy=Policy.from_dict(d["policy"]), metrics=metrics,
                    action=Action(d["action"]), count=d["count"], current=d["current"],
                    recommended=d.get("recommended"), desired=d["desired"], proposals=(), winner=d.get("winner"),
                    winner_reason=d.get("winner_reason", ""), clamps=(), forecast=None,
                    forecast_note=d.get("forecast_note", ""), reason=d["reason"])


def history_from_records(records: Iterable[Mapping[str, Any]]) -> AutoscaleHistory:
    """The history after the recorded decisions, oldest first.

    An action whose outcome failed still counts for the cooldown: the nodes may be half made, and
    a second attempt at once is what a cooldown exists to stop.
    """
    h = AutoscaleHistory()
    for rec in records:
        decision = replayable(rec["decision"])
        h = h.record(decision, decision.metrics)
    return h


__all__ = ["DECISIONS_KEPT", "OUTCOMES", "AutoscaleState", "history_from_records", "replayable", "summary"]
