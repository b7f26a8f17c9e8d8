"""The autoscaler's checks: what each metric asks for, and what the forecast asks for.

This module owns the input value (``Metrics``), the values a decision is explained with
(``Proposal``, ``Clamp``), and the arithmetic of each check. It decides nothing about winners,
windows or cooldowns (``canidae.core.autoscale`` does) and reads no clock.

The checks, each proposing a node count against ``current`` (ready + starting nodes):

* ``cpu`` and ``memory``, threshold checks on utilisation u (used / capacity of the ready nodes).
  Above ``up``: ``ceil(ready * u / target)`` nodes, the HPA's ``ceil(current * metric / target)``,
  with target the midpoint of the bounds (50 % CPU, 60 % memory by default). The midpoint, not the
  up threshold, because a cluster scaled to sit exactly at its up threshold scales again at the
  first rise; at the midpoint the load must grow by 40 % (CPU) before the next addition and fall
  by 40 % before a removal. Below ``down``: the same formula, shrinking. Between: hold.
* ``packs``, a target-value check: ``ceil((packs + pending) / per_node)`` nodes, holding while
  the packs per node are within ``tolerance`` of the target (the HPA's tolerance, 0.1).

Removals have hysteresis in every check: a check proposes fewer nodes only if the count it
would add up to after a rise of the tolerance (``ceil(load * (1 + tolerance) / target)``) is
still below ``current``. The HPA applies its tolerance to the ratio alone; with rounding up, a
cluster just sized for a load could then shrink again on a dip smaller than the tolerance. And
when the bounds are closer together than the tolerance (``up / target < 1 + tolerance``), a
removal aims below the target, at ``up / (1 + tolerance)``, so that a rise within the tolerance
after it cannot cross the up bound. So after an action the load must move by more than the
tolerance before the opposite action: no flapping on a load that stays within the tolerance.

The forecast applies the same checks to the predicted peak of the next ``horizon_s``: if the
peak would cross a scale-up bound on today's nodes, it asks now for what the check would ask for
when the peak comes (the count that puts the peak at the target), so the capacity is there
before the peak; otherwise it asks for the fewest nodes that keep the peak under the bounds, a
floor for removals (shrinking below it would only bring an addition within the hour). Its
proposal joins the others in the max, so it can add capacity or slow a removal, never cause one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from canidae.core.autoscale_policy import ForecastMode, ForecastSettings, Policy, Thresholds
from canidae.core.errors import InvalidInput
from canidae.core.forecast import HoltWinters

_METRIC_FIELDS = ("at_ms", "nodes_ready", "cpu_total_m", "cpu_used_m", "mem_total_mib", "mem_used_mib",
                  "packs", "packs_pending", "nodes_starting")
_METRIC_REQUIRED = _METRIC_FIELDS[:7]


def ceil_count(x: float) -> int:
    """Round a node count up, ignoring float dust (100 * 0.7 / 0.7 must stay 100, not become 101)."""
    return max(0, math.ceil(round(x, 9)))


@dataclass(frozen=True, slots=True)
class Metrics:
    """The cluster's aggregates at ``at_ms``, the one input of a decision besides the policy.

    CPU in millicores and memory in MiB; ``*_used`` is what the collector measured (cgroup usage
    or reservations: the caller picks, the autoscaler only compares it with the capacity).
    ``nodes_starting`` were asked for and are not ready yet; ``packs_pending`` found no node.
    """

    at_ms: int
    nodes_ready: int
    cpu_total_m: int
    cpu_used_m: int
    mem_total_mib: int
    mem_used_mib: int
    packs: int
    packs_pending: int = 0
    nodes_starting: int = 0

    def __post_init__(self) -> None:
        for name in _METRIC_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInput(f"autoscale metrics: {name} must be a non-negative integer, got {v!r}")

    @property
    def nodes(self) -> int:
        return self.nodes_ready + self.nodes_starting

    @property
    def cpu_pct(self) -> float | None:
        return 100.0 * self.cpu_used_m / self.cpu_total_m if self.cpu_total_m and self.nodes_ready else None

    @property
    def mem_pct(self) -> float | None:
        return 100.0 * self.mem_used_mib / self.mem_total_mib if self.mem_total_mib and self.nodes_ready else None

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _METRIC_FIELDS}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Metrics:
        unknown = sorted(str(k) for k in d if k not in _METRIC_FIELDS)
        if unknown:
            raise InvalidInput(f"autoscale metrics: unknown field {unknown[0]!r}")
        missing = [k for k in _METRIC_REQUIRED if k not in d]
        if missing:
            raise InvalidInput(f"autoscale metrics: missing field {missing[0]!r}")
        return Metrics(**{k: d[k] for k in _METRIC_FIELDS if k in d})


class ClampKind(StrEnum):
    MIN = "min"
    MAX = "max"
    TOLERANCE = "tolerance"
    STABILISATION = "stabilisation"
    RATE_LIMIT = "rate_limit"
    COOLDOWN = "cooldown"
    PAUSED = "paused"
    DRY_RUN = "dry_run"


@dataclass(frozen=True, slots=True)
class Clamp:
    """One rule that changed the node count on its way to the decision: from ``before`` to ``after``."""

    kind: ClampKind
    before: int
    after: int
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "before": self.before, "after": self.after, "why": self.why}


@dataclass(frozen=True, slots=True)
class Proposal:
    """What one check asks for: the metric it read (``value`` in ``unit``), its target, a count, why.

    ``acting`` is false for a forecast in forecast-only mode: shown, never a candidate to win.
    """

    check: str
    value: float
    target: float
    unit: str
    desired: int
    reason: str
    acting: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "value": round(self.value, 3), "target": self.target, "unit": self.unit,
                "desired": self.desired, "reason": self.reason, "acting": self.acting}


@dataclass(frozen=True, slots=True)
class Sample:
    """The peaks of one sample interval: CPU used, memory used, packs (with pending)."""

    cpu_m: float
    mem_mib: float
    packs: float

    def peak_with(self, other: Sample) -> Sample:
        return Sample(max(self.cpu_m, other.cpu_m), max(self.mem_mib, other.mem_mib), max(self.packs, other.packs))


@dataclass(frozen=True, slots=True)
class ForecastPeak:
    """The predicted peaks of the next ``horizon_s``, from ``samples`` samples; cached in the history.

    ``basis`` is the history's count of closed samples when computed (the cache key, with
    ``settings``); ``params`` the smoothing parameters used for cpu, memory and packs, fitted at
    ``params_basis`` when the policy fits them.
    """

    basis: int
    samples: int
    horizon_s: int
    settings: ForecastSettings
    cpu_m: float
    mem_mib: float
    packs: float
    params: tuple[tuple[float, float, float], ...]
    params_basis: int

    def to_dict(self) -> dict[str, Any]:
        return {"horizon_s": self.horizon_s, "samples": self.samples, "cpu_m": round(self.cpu_m, 1),
                "mem_mib": round(self.mem_mib, 1), "packs": round(self.packs, 1),
                "params": [list(p) for p in self.params]}


@dataclass(frozen=True, slots=True)
class ForecastOutcome:
    """The forecast's peak and the proposal made from it."""

    peak: ForecastPeak
    proposal: Proposal

    @property
    def desired(self) -> int:
        return self.proposal.desired

    @property
    def acting(self) -> bool:
        return self.proposal.acting

    def to_dict(self) -> dict[str, Any]:
        return {"peak": self.peak.to_dict(), "desired": self.desired, "acting": self.acting}


def run_checks(policy: Policy, m: Metrics) -> tuple[list[Proposal], list[Clamp]]:
    """The reactive checks' proposals, and the tolerance clamps they applied."""
    clamps: list[Clamp] = []
    proposals = [
        _threshold("cpu", m.cpu_pct, policy.cpu, m, policy.tolerance, clamps),
        _threshold("memory", m.mem_pct, policy.memory, m, policy.tolerance, clamps),
        _packs(policy, m, clamps),
    ]
    return proposals, clamps


def _threshold(name: str, pct: float | None, t: Thresholds, m: Metrics, tol: float,
               clamps: list[Clamp]) -> Proposal:
    current = m.nodes
    target = t.target
    if pct is None:
        return Proposal(name, 0.0, target, "%", current, "no ready capacity to measure: hold")
    # ready * pct / target is the load in nodes filled to the target.
    load = m.nodes_ready * pct / target
    want = ceil_count(load)
    if pct > t.up:
        if want <= current:
            return Proposal(name, pct, target, "%", current,
                            f"{pct:.1f}% above {t.up:g}%, but the {current} nodes counted "
                            f"({m.nodes_starting} starting) cover the {want} it needs")
        return Proposal(name, pct, target, "%", want,
                        f"{pct:.1f}% above {t.up:g}%: ceil({m.nodes_ready} x {pct:.1f} / {target:g}) = {want}")
    if pct < t.down:
        # Aim a removal at the target, or lower when the bounds are closer together than the
        # tolerance, so that a rise within the tolerance after it never reaches the up bound.
        aim = min(target, t.up / (1.0 + tol))
        want = ceil_count(m.nodes_ready * pct / aim)
        # Hysteresis: the count an addition would pick after a tolerance rise must still be smaller.
        if ceil_count(load * (1.0 + tol)) >= current:
            if want < current:
                clamps.append(Clamp(ClampKind.TOLERANCE, want, current,
                                    f"{name}: {want} nodes would not hold a {tol:.0%} rise of the load"))
            return Proposal(name, pct, target, "%", current,
                            f"{pct:.1f}% below {t.down:g}%, within the tolerance of {current} nodes")
        return Proposal(name, pct, target, "%", want,
                        f"{pct:.1f}% below {t.down:g}%: ceil({m.nodes_ready} x {pct:.1f} / {aim:.3g}) = {want}")
    return Proposal(name, pct, target, "%", current, f"{pct:.1f}% within {t.down:g}..{t.up:g}%")


def _packs(policy: Policy, m: Metrics, clamps: list[Clamp]) -> Proposal:
    current, target, tol = m.nodes, policy.packs_per_node, policy.tolerance
    demand = m.packs + m.packs_pending
    want = ceil_count(demand / target)
    shown = f"{demand:,} packs" + (f" ({m.packs_pending:,} pending)" if m.packs_pending else "")
    if current == 0:
        return Proposal("packs", float(demand), float(target), "packs/node", want,
                        f"{shown} and no nodes: ceil({demand} / {target}) = {want}")
    per_node = demand / current
    if per_node > target * (1.0 + tol) and want > current:
        return Proposal("packs", per_node, float(target), "packs/node", want,
                        f"{per_node:.1f} packs per node above {target} + {tol:.0%}: "
                        f"ceil({demand} / {target}) = {want}")
    if want < current and ceil_count(demand * (1.0 + tol) / target) < current:
        return Proposal("packs", per_node, float(target), "packs/node", want,
                        f"{per_node:.1f} packs per node below {target} - {tol:.0%}: "
                        f"ceil({demand} / {target}) = {want}")
    if want != current:
        clamps.append(Clamp(ClampKind.TOLERANCE, want, current,
                            f"packs: {per_node:.1f} per node is within {tol:.0%} of {target}"))
    return Proposal("packs", per_node, float(target), "packs/node", current,
                    f"{per_node:.1f} packs per node ({shown}) within {tol:.0%} of {target}")


def forecast_peak(policy: Policy, samples: tuple[Sample, ...], closed: int,
                  cached: ForecastPeak | None) -> tuple[ForecastPeak | None, str]:
    """The next horizon's predicted peaks (reusing ``cached`` when still valid), or None and why."""
    f = policy.forecast
    if f.mode is ForecastMode.OFF:
        return None, ""
    m = f.season_samples
    if len(samples) < 2 * m:
        return None, (f"forecast: waiting for two seasons of samples ({len(samples)} of {2 * m}, "
                      f"one per {f.sample_interval_s} s)")
    if cached is not None and cached.basis == closed and cached.settings == f:
        return cached, ""
    series = (
        [s.cpu_m for s in samples], [s.mem_mib for s in samples], [s.packs for s in samples],
    )
    refit = f.fit and (cached is None or cached.settings != f or closed - cached.params_basis >= m)
    models = []
    for i, ys in enumerate(series):
        if refit:
            models.append(HoltWinters.fit(ys, m))
        elif f.fit and cached is not None:
            a, b, g = cached.params[i]
            models.append(HoltWinters.fit(ys, m, a, b, g))
        else:
            models.append(HoltWinters.fit(ys, m, f.alpha, f.beta, f.gamma))
    h = f.horizon_samples
    peaks = [max(0.0, max(model.forecast(h))) for model in models]
    params_basis = closed if refit or not f.fit or cached is None else cached.params_basis
    peak = ForecastPeak(
        basis=closed, samples=len(samples), horizon_s=f.horizon_s, settings=f,
        cpu_m=peaks[0], mem_mib=peaks[1], packs=peaks[2],
        params=tuple((md.alpha, md.beta, md.gamma) for md in models), params_basis=params_basis,
    )
    return peak, ""


def forecast_proposal(policy: Policy, m: Metrics, peak: ForecastPeak) -> ForecastOutcome | None:
    """The reactive checks applied to the predicted peak, at today's per-node capacity; None without ready nodes.

    Per resource: if the peak would exceed the scale-up bound on the nodes counted now, ask for
    the count that puts it at the check's target (as the check itself would when the peak comes);
    otherwise ask for the fewest nodes that keep it under the bound, a floor for any removal.
    """
    if m.nodes_ready == 0 or m.cpu_total_m == 0 or m.mem_total_mib == 0:
        return None
    current = m.nodes
    per_node = (m.cpu_total_m / m.nodes_ready, m.mem_total_mib / m.nodes_ready, 1.0)
    bounds = (
        ("cpu", peak.cpu_m, policy.cpu.up / 100.0, policy.cpu.target / 100.0, "%"),
        ("memory", peak.mem_mib, policy.memory.up / 100.0, policy.memory.target / 100.0, "%"),
        ("packs", peak.packs, policy.packs_per_node * (1.0 + policy.tolerance), float(policy.packs_per_node),
         " packs/node"),
    )
    best: tuple[int, str] | None = None
    for (name, value, up, target, unit), cap in zip(bounds, per_node):
        scale = 100.0 if unit == "%" else 1.0
        on_current = value / (cap * current) if current else float("inf")
        if on_current > up:
            want = ceil_count(value / (cap * target))
            why = (f"{name} peak would be {on_current * scale:.1f}{unit} of {current} nodes, above "
                   f"{up * scale:g}{unit}: {want} nodes put it at {target * scale:g}{unit}")
        else:
            want = ceil_count(value / (cap * up))
            why = (f"{name} peak would be {on_current * scale:.1f}{unit} of {current} nodes; "
                   f"{want} nodes keep it under {up * scale:g}{unit}")
        if best is None or want > best[0]:
            best = (want, why)
    assert best is not None
    want, why = best
    reason = f"next {peak.horizon_s // 60} min: {why}"
    # Its value is the count the peak needs and its target the count there is: the per-resource
    # figures are in the reason.
    acting = policy.forecast.mode is ForecastMode.ACT
    return ForecastOutcome(peak, Proposal("forecast", float(want), float(current), "nodes", want, reason, acting))


__all__ = [
    "Clamp",
    "ClampKind",
    "ForecastOutcome",
    "ForecastPeak",
    "Metrics",
    "Proposal",
    "Sample",
    "ceil_count",
    "forecast_peak",
    "forecast_proposal",
    "run_checks",
]
