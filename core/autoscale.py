"""The autoscaling decision: from a policy, the cluster's metrics and a little history, how many nodes.

This module owns ``evaluate`` (one decision), the values it reads and returns, and ``explain``
(the decision as lines an operator reads). It must not do anything: no clock (``now_ms`` comes in),
no I/O, no nodes started or stopped. The agent runs it every ``evaluation_interval_s``, carries
out the action, and keeps ``AutoscaleHistory.record(decision, metrics)`` for the next call.

Theory of operation. A decision is a pipeline whose every step is written down:

1. Inputs. Missing metrics, metrics older than ``metrics_max_age_s``, or metrics taken before the
   last action hold, with the reason. The node count the checks compare against is the ready
   nodes plus those still starting, so nodes already on their way are never asked for twice.
2. Checks. Each proposes a node count (``autoscale_checks``): CPU and memory thresholds, packs per
   node, and the forecast when it may act. The largest proposal wins: the check asking for the
   most capacity is the safest (the Nomad Autoscaler's rule).
3. Clamps, in order: min/max nodes; the scale-down stabilisation window (a removal goes no lower
   than the highest recommendation of the last ``scale_down.window_s``, as the HPA); scale-up rate
   limits (restoring ``nodes.min`` is never limited); the cooldown since the last action;
   ``paused``; ``dry_run``. Each clamp that changes the count is recorded with from, to and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from canidae.core.autoscale_checks import (
    Clamp,
    ClampKind,
    ForecastOutcome,
    ForecastPeak,
    Metrics,
    Proposal,
    Sample,
    forecast_peak,
    forecast_proposal,
    run_checks,
)
from canidae.core.autoscale_policy import Policy, Select

# Caps on the history's lists. With evaluations every evaluation_interval_s they never fill
# (a 300 s window holds 30 recommendations); the caps bound a caller that evaluates far faster.
MAX_KEPT = 1024


class Action(StrEnum):
    ADD = "add"
    REMOVE = "remove"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Decision:
    """One evaluation, with everything needed to see why it came out as it did.

    ``current`` is the node count the checks compared against (ready + starting); ``recommended``
    the winning proposal after min/max (what the stabilisation window remembers; None when the
    inputs were refused); ``desired`` the count after every clamp, ``current +/- count``.
    """

    at_ms: int
    policy: Policy
    metrics: Metrics | None
    action: Action
    count: int
    current: int
    recommended: int | None
    desired: int
    proposals: tuple[Proposal, ...]
    winner: str | None
    winner_reason: str
    clamps: tuple[Clamp, ...]
    forecast: ForecastOutcome | None
    forecast_note: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "action": self.action.value,
            "count": self.count,
            "current": self.current,
            "recommended": self.recommended,
            "desired": self.desired,
            "reason": self.reason,
            "winner": self.winner,
            "winner_reason": self.winner_reason,
            "proposals": [p.to_dict() for p in self.proposals],
            "clamps": [c.to_dict() for c in self.clamps],
            "forecast": self.forecast.to_dict() if self.forecast else None,
            "forecast_note": self.forecast_note,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "policy": self.policy.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class AutoscaleHistory:
    """What the autoscaler remembers between evaluations; every list is bounded.

    ``recommendations`` holds (at_ms, recommended) over the scale-down window, kept as a strictly
    decreasing sequence (a recommendation followed by a larger or equal one can never again be the
    window's highest, so it is dropped). ``scale_ups`` holds (at_ms, nodes added) over the rate-limit
    period. ``samples`` are the per-interval peaks the forecast learns from, the latest
    ``history_seasons`` seasons; ``closed`` counts every sample ever closed, the key of the cached
    ``forecast_peak``.
    """

    last_action_at_ms: int | None = None
    last_nodes: int | None = None
    recommendations: tuple[tuple[int, int], ...] = ()
    scale_ups: tuple[tuple[int, int], ...] = ()
    samples: tuple[Sample, ...] = ()
    closed: int = 0
    sample_interval_s: int = 0
    bucket: int | None = None
    bucket_peak: Sample | None = None
    forecast_peak: ForecastPeak | None = None

    def record(self, decision: Decision, metrics: Metrics | None) -> AutoscaleHistory:
        """The history after ``decision`` (and the metrics it saw, folded into the forecast samples)."""
        p, now = decision.policy, decision.at_ms
        last_action = self.last_action_at_ms
        ups = self.scale_ups
        if decision.action is not Action.HOLD:
            last_action = now
            if decision.action is Action.ADD:
                ups = ups + ((now, decision.count),)
        period_ms = p.scale_up.period_s * 1000
        ups = _merge_oldest_while_over(tuple(u for u in ups if u[0] > now - period_ms), lambda a, b: a + b)
        recs = self.recommendations
        if decision.recommended is not None:
            r = decision.recommended
            recs = tuple(x for x in recs if x[1] > r) + ((now, r),)
        window_ms = p.scale_down_window_s * 1000
        recs = _merge_oldest_while_over(tuple(x for x in recs if x[0] > now - window_ms), max)
        nodes = decision.desired if decision.metrics is not None else self.last_nodes
        peak = decision.forecast.peak if decision.forecast is not None else self.forecast_peak
        folded = _fold_sample(self, metrics, p)
        return replace(folded, last_action_at_ms=last_action, last_nodes=nodes, recommendations=recs,
                       scale_ups=ups, forecast_peak=peak)


def _merge_oldest_while_over(
    items: tuple[tuple[int, int], ...], combine: Callable[[int, int], int]
) -> tuple[tuple[int, int], ...]:
    # Merging the two oldest entries into one stamped with the later time errs on the safe side:
    # a kept recommendation lasts longer, counted additions count longer.
    while len(items) > MAX_KEPT:
        (_, a), (t, b) = items[0], items[1]
        items = ((t, combine(a, b)),) + items[2:]
    return items


def _fold_sample(h: AutoscaleHistory, metrics: Metrics | None, p: Policy) -> AutoscaleHistory:
    """Fold metrics into the interval being filled; close it (and fill gaps) when a new one starts."""
    f = p.forecast
    if metrics is None:
        return h
    interval_ms = f.sample_interval_s * 1000
    index = metrics.at_ms // interval_ms
    value = Sample(float(metrics.cpu_used_m), float(metrics.mem_used_mib),
                   float(metrics.packs + metrics.packs_pending))
    if h.sample_interval_s != f.sample_interval_s:
        # Samples of another width are not one series: start again.
        return replace(h, samples=(), sample_interval_s=f.sample_interval_s, bucket=index, bucket_peak=value)
    if h.bucket is None or h.bucket_peak is None:
        return replace(h, bucket=index, bucket_peak=value)
    if index < h.bucket:
        return h  # late metrics: the interval they belong to is closed
    if index == h.bucket:
        return replace(h, bucket_peak=h.bucket_peak.peak_with(value))
    gap = index - h.bucket - 1
    keep = f.season_samples * f.history_seasons
    if gap >= f.season_samples:
        # A hole of a season or more would be a fabricated season: the series restarts.
        return replace(h, samples=(), closed=h.closed + 1, bucket=index, bucket_peak=value)
    # Missing intervals repeat the last peak, so the seasonal phase stays aligned.
    closed = (h.bucket_peak,) * (1 + gap)
    samples = (h.samples + closed)[-keep:]
    return replace(h, samples=samples, closed=h.closed + len(closed), bucket=index, bucket_peak=value)


def evaluate(policy: Policy, metrics: Metrics | None, history: AutoscaleHistory, now_ms: int) -> Decision:
    """Decide what to do now. Pure: the same arguments give the same decision."""
    if metrics is None:
        return _refused(policy, None, history, now_ms, "no metrics: holding until the metric source answers")
    age_ms = now_ms - metrics.at_ms
    if age_ms > policy.metrics_max_age_s * 1000:
        return _refused(policy, metrics, history, now_ms,
                        f"metrics are stale ({age_ms / 1000:.0f} s old, limit {policy.metrics_max_age_s} s): holding")
    if history.last_action_at_ms is not None and metrics.at_ms < history.last_action_at_ms:
        return _refused(policy, metrics, history, now_ms,
                        "metrics were taken before the last action: holding until they show its effect")

    current = metrics.nodes
    proposals, clamps = run_checks(policy, metrics)
    peak, note = forecast_peak(policy, history.samples, history.closed, history.forecast_peak)
    outcome: ForecastOutcome | None = None
    if peak is not None:
        outcome = forecast_proposal(policy, metrics, peak)
        if outcome is None:
            note = "forecast: no ready nodes to size its peak against"
        else:
            proposals.append(outcome.proposal)

    acting = [p for p in proposals if p.acting]
    # max() keeps the first of equals, so a reactive check wins a tie with the forecast.
    best = max(acting, key=lambda p: p.desired)
    others = [p.check for p in acting if p is not best and p.desired == best.desired]
    winner_reason = f"{best.check} asks for the most nodes ({best.desired}): the safest proposal wins"
    if others:
        winner_reason += f" (tied with {', '.join(others)})"
    desired = best.desired

    if desired < policy.min_nodes:
        clamps.append(Clamp(ClampKind.MIN, desired, policy.min_nodes, f"never fewer than {policy.min_nodes} nodes"))
        desired = policy.min_nodes
    elif desired > policy.max_nodes:
        clamps.append(Clamp(ClampKind.MAX, desired, policy.max_nodes, f"never more than {policy.max_nodes} nodes"))
        desired = policy.max_nodes
    recommended = desired

    if desired < current:
        desired = _stabilise(policy, history, now_ms, current, desired, clamps)
    if desired > current:
        desired = _rate_limit(policy, history, now_ms, current, desired, clamps)
    if desired != current and history.last_action_at_ms is not None:
        since_ms = now_ms - history.last_action_at_ms
        if since_ms < policy.cooldown_s * 1000:
            clamps.append(Clamp(ClampKind.COOLDOWN, desired, current,
                                f"last action {since_ms / 1000:.0f} s ago, cooldown {policy.cooldown_s} s"))
            desired = current
    if desired != current and policy.paused:
        clamps.append(Clamp(ClampKind.PAUSED, desired, current, "the policy is paused"))
        desired = current
    if desired != current and policy.dry_run:
        verb = "add" if desired > current else "remove"
        clamps.append(Clamp(ClampKind.DRY_RUN, desired, current,
                            f"dry run: would {verb} {abs(desired - current)} nodes; nothing done"))
        desired = current

    action = Action.ADD if desired > current else Action.REMOVE if desired < current else Action.HOLD
    if action is Action.HOLD:
        last = clamps[-1] if clamps and clamps[-1].kind is not ClampKind.TOLERANCE else None
        reason = f"hold at {current} nodes: " + (last.why if last is not None and last.after == current
                                                  else f"{best.check}: {best.reason}")
    else:
        reason = f"{action.value} {abs(desired - current)} nodes ({current} -> {desired}): {best.check}: {best.reason}"
        applied = [c.kind.value for c in clamps if c.kind is not ClampKind.TOLERANCE]
        if applied:
            reason += f" (then clamped: {', '.join(applied)})"
    return Decision(
        at_ms=now_ms, policy=policy, metrics=metrics, action=action, count=abs(desired - current),
        current=current, recommended=recommended, desired=desired, proposals=tuple(proposals),
        winner=best.check, winner_reason=winner_reason, clamps=tuple(clamps), forecast=outcome,
        forecast_note=note, reason=reason,
    )


def _refused(policy: Policy, metrics: Metrics | None, history: AutoscaleHistory, now_ms: int,
             why: str) -> Decision:
    current = metrics.nodes if metrics is not None else (history.last_nodes or 0)
    return Decision(
        at_ms=now_ms, policy=policy, metrics=metrics, action=Action.HOLD, count=0, current=current,
        recommended=None, desired=current, proposals=(), winner=None, winner_reason="", clamps=(),
        forecast=None, forecast_note="", reason=f"hold at {current} nodes: {why}",
    )


def _stabilise(policy: Policy, history: AutoscaleHistory, now_ms: int, current: int, desired: int,
               clamps: list[Clamp]) -> int:
    cutoff = now_ms - policy.scale_down_window_s * 1000
    seen = [(r, at) for at, r in history.recommendations if at > cutoff]
    if not seen:
        return desired
    highest, at = max(seen, key=lambda x: (x[0], -x[1]))
    # A recommendation made under an earlier, larger max_nodes does not outlive the new bound.
    stabilised = min(current, policy.max_nodes, max(desired, highest))
    if stabilised != desired:
        clamps.append(Clamp(ClampKind.STABILISATION, desired, stabilised,
                            f"scale-down takes the highest recommendation of the last {policy.scale_down_window_s} s: "
                            f"{highest} ({(now_ms - at) / 1000:.0f} s ago)"))
    return stabilised


def _rate_limit(policy: Policy, history: AutoscaleHistory, now_ms: int, current: int, desired: int,
                clamps: list[Clamp]) -> int:
    u = policy.scale_up
    cutoff = now_ms - u.period_s * 1000
    added = sum(n for at, n in history.scale_ups if at > cutoff)
    start = max(0, current - added)
    limits: list[tuple[int, str]] = []
    if u.max_nodes_per_period > 0:
        limits.append((start + u.max_nodes_per_period, f"{u.max_nodes_per_period} nodes per {u.period_s} s"))
    if u.max_percent_per_period > 0:
        # round() first: 100 * 10 / 100 must be 10, not 10.000000000000002 rounded up to 11.
        grow = math.ceil(round(start * u.max_percent_per_period / 100.0, 6))
        limits.append((start + grow, f"{u.max_percent_per_period:g}% per {u.period_s} s"))
    pick = max if u.select is Select.MAX else min
    limit, rule = pick(limits, key=lambda x: x[0])
    why = f"{rule} ({added} added in the last {u.period_s} s)"
    if current + u.max_per_step < limit:
        limit, why = current + u.max_per_step, f"at most {u.max_per_step} nodes per step"
    # Restoring the floor is not growth: a cluster below nodes.min gets there in one step.
    capped = max(min(desired, limit), min(desired, policy.min_nodes), current)
    if capped != desired:
        clamps.append(Clamp(ClampKind.RATE_LIMIT, desired, capped, f"scale-up limited to {why}"))
    return capped


def explain(decision: Decision) -> list[str]:
    """The decision as lines an operator reads, from the inputs to the action."""
    d = decision
    lines = [f"{d.action.value.upper()}: {d.reason}"]
    m = d.metrics
    if m is not None:
        cpu = f"{m.cpu_pct:.1f}%" if m.cpu_pct is not None else "n/a"
        mem = f"{m.mem_pct:.1f}%" if m.mem_pct is not None else "n/a"
        lines.append(
            f"inputs at {m.at_ms} ms: {m.nodes_ready} ready + {m.nodes_starting} starting nodes; "
            f"cpu {cpu} of {m.cpu_total_m:,} m; memory {mem} of {m.mem_total_mib:,} MiB; "
            f"{m.packs:,} packs + {m.packs_pending:,} pending"
        )
    for p in d.proposals:
        tag = "" if p.acting else " [forecast-only: shown, not acting]"
        lines.append(f"check {p.check}: {p.reason} -> {p.desired} nodes{tag}")
    # Tolerance clamps belong to a check; the others apply to the winner, after it.
    tolerance = [c for c in d.clamps if c.kind is ClampKind.TOLERANCE]
    after = [c for c in d.clamps if c.kind is not ClampKind.TOLERANCE]
    for c in tolerance:
        lines.append(f"  clamp {c.kind.value}: {c.before} -> {c.after}: {c.why}")
    if d.forecast is None and d.forecast_note:
        lines.append(d.forecast_note)
    elif d.forecast is not None:
        pk = d.forecast.peak
        lines.append(
            f"forecast next {pk.horizon_s} s peak: cpu {pk.cpu_m:,.0f} m, memory {pk.mem_mib:,.0f} MiB, "
            f"{pk.packs:,.0f} packs (from {pk.samples} samples)"
        )
    if d.winner is not None:
        lines.append(f"winner: {d.winner_reason}")
    for c in after:
        lines.append(f"clamp {c.kind.value}: {c.before} -> {c.after}: {c.why}")
    lines.append(f"result: {d.action.value} {d.count} -> {d.desired} nodes" if d.count
                 else f"result: hold at {d.desired} nodes")
    return lines


def replay(policy: Policy, series: Sequence[tuple[int, Metrics | None]],
           history: AutoscaleHistory | None = None) -> tuple[list[Decision], AutoscaleHistory]:
    """Evaluate a sequence of (now_ms, metrics) in order, recording each decision; for tests and plans."""
    h = history or AutoscaleHistory()
    out = []
    for now_ms, metrics in series:
        decision = evaluate(policy, metrics, h, now_ms)
        h = h.record(decision, metrics)
        out.append(decision)
    return out, h


__all__ = ["MAX_KEPT", "Action", "AutoscaleHistory", "Decision", "evaluate", "explain", "replay"]
