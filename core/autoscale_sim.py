"""The autoscaler in simulation: the real decisions driving a simple fleet through a day of load.

This module owns the fleet model of ``scale-test run --mode sim --autoscale`` and the figures it
reports; the decisions are ``canidae.core.autoscale.evaluate``'s, unchanged. It is pure: time is
a step counter, the load is a series handed in (``diurnal_load`` draws its noise from a
``random.Random(seed)`` of its own).

The fleet model, one step per ``evaluation_interval_s``:

* added nodes are billed at once and become ready ``boot_s`` later (starting nodes are reported
  to the autoscaler, which counts them);
* removed nodes leave the ready set at once (no new packs) and stay billed ``drain_s`` while
  their packs move; a removal cancels nodes still starting first;
* the load (packs and their CPU and memory use) is spread over the ready nodes; what does not fit
  in their capacity is pending (counted by the packs check, reported as overload).

The figures, over the measured steps:

* ``decisions_per_day``: adds and removes, per 24 h;
* ``node_hours`` against ``oracle_node_hours``. The oracle has, at every step and with no delay,
  exactly the nodes the policy calls enough: the fewest that keep CPU and memory at or below
  their scale-up thresholds and the packs per node within the tolerance of the target (clamped
  to min/max). An autoscaler that aims at the midpoint of its bounds uses more than the oracle
  by design; the ratio says how much, lag included;
* ``under_provisioned``: the share of steps with CPU or memory utilisation of the ready nodes
  above its scale-up threshold, or packs per ready node above the tolerance band, or packs
  pending: the steps where the oracle would have had more nodes ready (or ``nodes.max`` forbade
  enough). This is the figure we quote. ``overloaded`` is the stricter share of steps with demand
  above 100 % of the ready capacity (packs pending for lack of room).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from canidae.core.autoscale import Action, AutoscaleHistory, Decision, evaluate
from canidae.core.autoscale_checks import Metrics, ceil_count
from canidae.core.autoscale_policy import Policy
from canidae.core.errors import InvalidInput
from canidae.core.forecast import diurnal_shape

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class NodeModel:
    """One simulated node's capacity and how long it takes to arrive and to leave."""

    cpu_m: int = 32_000
    mem_mib: int = 131_072
    boot_s: int = 120
    drain_s: int = 300

    def __post_init__(self) -> None:
        if self.cpu_m <= 0 or self.mem_mib <= 0 or self.boot_s < 0 or self.drain_s < 0:
            raise InvalidInput("node model: capacity must be positive and delays non-negative")


@dataclass(frozen=True, slots=True)
class Load:
    """The demand at one step: packs wanting to run, and the CPU and memory they use."""

    packs: int
    cpu_m: int
    mem_mib: int


@dataclass(frozen=True, slots=True)
class SimStep:
    at_ms: int
    ready: int
    billed: int
    oracle: int
    action: Action
    count: int
    winner: str | None
    cpu_pct: float
    mem_pct: float
    pending: int


@dataclass(frozen=True, slots=True)
class SimFigures:
    steps: int
    hours: float
    adds: int
    removes: int
    decisions_per_day: float
    forecast_wins: int
    node_hours: float
    oracle_node_hours: float
    node_hours_ratio: float
    under_provisioned: float
    overloaded: float
    peak_nodes: int
    peak_oracle: int

    def to_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class SimResult:
    figures: SimFigures
    timeline: tuple[SimStep, ...]
    decisions: tuple[Decision, ...]  # the acting ones (adds and removes), for their explanations


def diurnal_load(
    days: int,
    step_s: int,
    peak_packs: int = 100_000,
    trough_packs: int = 30_000,
    cpu_per_pack_m: int = 300,
    mem_per_pack_mib: int = 1_024,
    noise: float = 0.02,
    seed: int = 0,
) -> tuple[Load, ...]:
    """``days`` of a daily cycle (trough at 02:00, peak at 14:00), one ``Load`` per ``step_s``.

    Packs follow the cycle; their CPU use also carries ``noise`` (a relative Gaussian jitter, as
    cgroup usage does); memory follows the packs.
    """
    if days < 1 or step_s < 1 or DAY_S % step_s:
        raise InvalidInput("diurnal load needs whole days and a step that divides a day")
    rng = random.Random(seed)
    per_day = DAY_S // step_s
    out = []
    for i in range(days * per_day):
        shape = diurnal_shape((i % per_day) / per_day)
        packs = round(trough_packs + (peak_packs - trough_packs) * shape)
        jitter = 1.0 + rng.gauss(0.0, noise) if noise else 1.0
        out.append(Load(packs, max(0, round(packs * cpu_per_pack_m * jitter)), packs * mem_per_pack_mib))
    return tuple(out)


def oracle_nodes(policy: Policy, node: NodeModel, load: Load) -> int:
    """The fewest nodes that keep every metric within the policy's bounds for ``load`` (see module doc)."""
    need = max(
        ceil_count(load.cpu_m / (node.cpu_m * policy.cpu.up / 100.0)),
        ceil_count(load.mem_mib / (node.mem_mib * policy.memory.up / 100.0)),
        ceil_count(load.packs / (policy.packs_per_node * (1.0 + policy.tolerance))),
    )
    return min(policy.max_nodes, max(policy.min_nodes, need))


def simulate_day(
    policy: Policy,
    loads: Sequence[Load],
    node: NodeModel | None = None,
    initial_nodes: int | None = None,
    measure_from: int = 0,
) -> SimResult:
    """Run the autoscaler over ``loads`` (one per evaluation interval); figures over ``loads[measure_from:]``.

    Steps before ``measure_from`` are a warm-up: they run the same way (and feed the forecast its
    seasons) but count in no figure. The fleet starts at ``initial_nodes`` ready nodes, by default
    the oracle's count for the first load.
    """
    node = node or NodeModel()
    if not loads or not 0 <= measure_from < len(loads):
        raise InvalidInput("simulation needs loads and a measured part")
    step_ms = policy.evaluation_interval_s * 1000
    boot_steps = -(-node.boot_s * 1000 // step_ms)
    drain_steps = -(-node.drain_s * 1000 // step_ms)
    ready = initial_nodes if initial_nodes is not None else oracle_nodes(policy, node, loads[0])
    starting: list[tuple[int, int]] = []  # (step it becomes ready, count)
    draining: list[tuple[int, int]] = []  # (step it stops being billed, count)
    history = AutoscaleHistory()
    timeline: list[SimStep] = []
    acted: list[Decision] = []
    adds = removes = forecast_wins = 0
    node_steps = oracle_steps = under = overloaded = 0
    peak_nodes = peak_oracle = 0

    for i, load in enumerate(loads):
        now = i * step_ms
        ready += sum(n for at, n in starting if at <= i)
        starting = [(at, n) for at, n in starting if at > i]
        draining = [(at, n) for at, n in draining if at > i]
        cpu_cap, mem_cap = ready * node.cpu_m, ready * node.mem_mib
        # The share of the demand that fits on the ready nodes; the rest waits.
        fit = min(1.0, cpu_cap / load.cpu_m if load.cpu_m else 1.0, mem_cap / load.mem_mib if load.mem_mib else 1.0)
        placed = int(load.packs * fit)
        metrics = Metrics(
            at_ms=now, nodes_ready=ready, nodes_starting=sum(n for _, n in starting),
            cpu_total_m=cpu_cap, cpu_used_m=round(load.cpu_m * fit),
            mem_total_mib=mem_cap, mem_used_mib=round(load.mem_mib * fit),
            packs=placed, packs_pending=load.packs - placed,
        )
        decision = evaluate(policy, metrics, history, now)
        history = history.record(decision, metrics)
        if decision.action is Action.ADD:
            starting.append((i + boot_steps, decision.count))
        elif decision.action is Action.REMOVE:
            left = decision.count
            while left and starting:  # cancel the newest nodes still on their way first
                at, n = starting.pop()
                if n > left:
                    starting.append((at, n - left))
                    left = 0
                else:
                    left -= n
            if left:
                ready -= left
                draining.append((i + drain_steps, left))

        oracle = oracle_nodes(policy, node, load)
        billed = ready + sum(n for _, n in starting) + sum(n for _, n in draining)
        cpu_pct = 100.0 * metrics.cpu_used_m / cpu_cap if cpu_cap else 0.0
        mem_pct = 100.0 * metrics.mem_used_mib / mem_cap if mem_cap else 0.0
        if i < measure_from:
            continue
        timeline.append(SimStep(now, metrics.nodes_ready, billed, oracle, decision.action, decision.count,
                                decision.winner, cpu_pct, mem_pct, metrics.packs_pending))
        if decision.action is not Action.HOLD:
            acted.append(decision)
            adds += decision.action is Action.ADD
            removes += decision.action is Action.REMOVE
            forecast_wins += decision.winner == "forecast"
        node_steps += billed
        oracle_steps += oracle
        under += (cpu_pct > policy.cpu.up or mem_pct > policy.memory.up or metrics.packs_pending > 0
                  or load.packs > metrics.nodes_ready * policy.packs_per_node * (1.0 + policy.tolerance))
        overloaded += metrics.packs_pending > 0
        peak_nodes, peak_oracle = max(peak_nodes, billed), max(peak_oracle, oracle)

    steps = len(timeline)
    hours = steps * policy.evaluation_interval_s / 3600.0
    step_h = policy.evaluation_interval_s / 3600.0
    figures = SimFigures(
        steps=steps, hours=hours, adds=adds, removes=removes,
        decisions_per_day=(adds + removes) * 24.0 / hours, forecast_wins=forecast_wins,
        node_hours=node_steps * step_h, oracle_node_hours=oracle_steps * step_h,
        node_hours_ratio=node_steps / oracle_steps if oracle_steps else 0.0,
        under_provisioned=under / steps, overloaded=overloaded / steps,
        peak_nodes=peak_nodes, peak_oracle=peak_oracle,
    )
    return SimResult(figures, tuple(timeline), tuple(acted))


__all__ = [
    "DAY_S", "Load", "NodeModel", "SimFigures", "SimResult", "SimStep", "diurnal_load", "oracle_nodes",
    "simulate_day",
]
