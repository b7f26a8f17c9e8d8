"""Scale-test plans: the seed's presets and table, and the simulated run built from parameters.

This module owns the parameters of a scale test and what follows from them alone: the presets
(``1k``, ``10k``, ``100k``) with the seed's durations, the seed's "Expected Performance at
Scale" table, the checks that reject impossible parameters, and the scenario text that a
simulated run executes (``canidae.core.sim``). It is pure: the chaos schedule comes from a
``random.Random(seed)`` of its own, so the same parameters and seed give the same scenario,
and the simulator then gives the same world, in any process.

A simulated run is ``rounds`` rounds over ``duration`` seconds of virtual time. With a ramp,
every round spawns its share of the packs (so the fleet fills gradually, faults arriving while
it grows); without one, every pack is spawned first. With chaos, the rounds also carry, at
places drawn from the seed:

* node failures: 2.5 % of the nodes (at least one), in random groups, each group revived by a
  later ``revive node=all`` (a repaired host comes back empty and takes packs by rebalancing);
* one zone failure (when there are two zones or more), revived a few rounds later;
* joins: twice, 1 % of the fleet (at least one node), rebalanced onto;
* one cordon of 0.5 % of the nodes, uncordoned two rounds later.

Every round ends with ``check``; the simulator checks every invariant after every step anyway.
The run ends with everything revived and uncordoned and ``expect packs=K unplaced=0``: with the
whole fleet back, every pack must have a place.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from canidae.core.errors import InvalidInput, NoCapacity

# The seed's "Expected Performance at Scale" table, as written there.
SEED_COLUMNS = ("packs", "nodes", "memory_per_pack", "cpu_per_pack", "yips_per_s", "p99_latency")
SEED_HEADERS = ("Packs", "Nodes", "Memory/Pack", "CPU/Pack", "Yips/sec", "p99 Latency")
SEED_TABLE: tuple[dict[str, Any], ...] = (
    {
        "packs": 100,
        "nodes": 3,
        "memory_per_pack": "500MB",
        "cpu_per_pack": "1%",
        "yips_per_s": "10K",
        "p99_latency": "1ms",
        "memory_bytes": 500e6,
        "cpu_percent": 1.0,
        "yips": 10e3,
        "p99_ms": 1.0,
    },
    {
        "packs": 1_000,
        "nodes": 20,
        "memory_per_pack": "200MB",
        "cpu_per_pack": "0.5%",
        "yips_per_s": "100K",
        "p99_latency": "5ms",
        "memory_bytes": 200e6,
        "cpu_percent": 0.5,
        "yips": 100e3,
        "p99_ms": 5.0,
    },
    {
        "packs": 10_000,
        "nodes": 200,
        "memory_per_pack": "100MB",
        "cpu_per_pack": "0.1%",
        "yips_per_s": "1M",
        "p99_latency": "10ms",
        "memory_bytes": 100e6,
        "cpu_percent": 0.1,
        "yips": 1e6,
        "p99_ms": 10.0,
    },
    {
        "packs": 100_000,
        "nodes": 2_000,
        "memory_per_pack": "50MB",
        "cpu_per_pack": "0.01%",
        "yips_per_s": "10M",
        "p99_latency": "20ms",
        "memory_bytes": 50e6,
        "cpu_percent": 0.01,
        "yips": 10e6,
        "p99_ms": 20.0,
    },
)


@dataclass(frozen=True, slots=True)
class Preset:
    """One of the seed's "Scale Testing Plan" entries, with a duration that fits one machine."""

    name: str
    packs: int
    sim_nodes: int  # the seed's table: nodes for this many packs
    live_clients: int | None  # client agents on one machine; None: too many for one machine
    chaos: bool
    ramp: bool
    full_duration_s: int  # the seed's duration
    duration_s: int  # the default, scaled down to fit one machine


PRESETS: dict[str, Preset] = {
    "1k": Preset("1k", 1_000, 20, 20, chaos=False, ramp=False, full_duration_s=24 * 3600, duration_s=30),
    "10k": Preset("10k", 10_000, 200, 50, chaos=True, ramp=False, full_duration_s=72 * 3600, duration_s=60),
    "100k": Preset(
        "100k", 100_000, 2_000, None, chaos=False, ramp=True, full_duration_s=7 * 24 * 3600, duration_s=120
    ),
}

# What one simulated pack asks for and what one simulated node offers. The pack count binds
# (cpu and memory leave room), so a node holds ``node_packs`` packs; the seed's table has about
# 50 packs per node, 110 leaves room for a zone failure.
PACK_CPU, PACK_MEM = 100, 64
DEFAULT_NODE_PACKS = 110
NODE_FAILURE_SHARE = 0.025
JOIN_SHARE = 0.01
CORDON_SHARE = 0.005
MAX_ROUNDS = 1_000


@dataclass(frozen=True, slots=True)
class SimPlan:
    """The parameters of a simulated run (validated by ``check``)."""

    packs: int
    nodes: int
    zones: int = 3
    chaos: bool = False
    ramp: bool = False
    duration_s: int = 60
    rounds: int = 20
    seed: int = 0
    node_packs: int = DEFAULT_NODE_PACKS
    regions: int = 2  # per zone
    cells: int = 5  # per region
    batch: int = 1_000  # packs per placement call

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def capacity(self) -> int:
        return self.nodes * self.node_packs

    def check(self) -> SimPlan:
        """Return self if the run is possible; else InvalidInput (exit 2) or NoCapacity (exit 6)."""
        check_counts(self.packs, self.nodes, self.zones)
        if self.node_packs < 1:
            raise InvalidInput(f"--node-packs must be at least 1, got {self.node_packs}")
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise InvalidInput(f"--rounds must be 1..{MAX_ROUNDS}, got {self.rounds}")
        if self.duration_s < 1:
            raise InvalidInput(f"--duration must be at least 1 second, got {self.duration_s}")
        if self.batch < 1:
            raise InvalidInput(f"--batch must be at least 1, got {self.batch}")
        check_capacity(self.packs, self.nodes, self.node_packs)
        return self


def check_counts(packs: int, nodes: int, zones: int, what_nodes: str = "--nodes") -> None:
    if packs < 1:
        raise InvalidInput(f"--packs must be at least 1, got {packs}")
    if nodes < 1:
        raise InvalidInput(f"{what_nodes} must be at least 1, got {nodes}")
    if zones < 1:
        raise InvalidInput(f"--zones must be at least 1, got {zones}")
    if zones > nodes:
        raise InvalidInput(f"--zones ({zones}) cannot exceed the nodes ({nodes}): a zone needs a node")


def check_capacity(packs: int, nodes: int, node_packs: int) -> None:
    if packs > nodes * node_packs:
        raise NoCapacity(
            f"{packs:,} packs do not fit on {nodes:,} nodes of {node_packs:,} packs each "
            f"(capacity {nodes * node_packs:,}): add nodes or raise --node-packs"
        )


def from_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInput(f"unknown plan {name!r} (plans: {', '.join(PRESETS)})") from None


@dataclass(frozen=True, slots=True)
class ChaosEvent:
    """One fault or repair, at the end of a round."""

    round: int
    line: str
    kind: str  # node_failure | zone_failure | revive | zone_revive | join | cordon | uncordon

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "line": self.line, "kind": self.kind}


def chaos_schedule(plan: SimPlan) -> list[ChaosEvent]:
    """The faults and repairs of a run, drawn from its seed; empty without chaos."""
    if not plan.chaos:
        return []
    rng = random.Random(plan.seed)
    r_total = plan.rounds
    events: list[ChaosEvent] = []
    # The zone failure: from a third to two thirds of the run, repaired about a fifth later.
    zone_at = zone_back = -1
    if plan.zones >= 2:
        zone_at = rng.randrange(max(1, r_total // 3), max(2, 2 * r_total // 3)) if r_total > 1 else 0
        zone_back = min(r_total - 1, zone_at + max(1, r_total // 5))
        zone = f"z{rng.randint(1, plan.zones)}"
        events.append(ChaosEvent(zone_at, f"kill zone={zone}", "zone_failure"))
        if zone_back > zone_at:
            events.append(ChaosEvent(zone_back, f"revive zone={zone}", "zone_revive"))
    # Rounds that a zone is down all through (a repair there would bring the zone back early).
    zone_down: set[int] = set()
    if zone_at >= 0:
        zone_down = set(range(zone_at + 1, zone_back if zone_back > zone_at else r_total))
    # Node failures: each failure falls in a random round; a round's failures are one step.
    failures = max(1, math.ceil(plan.nodes * NODE_FAILURE_SHARE))
    per_round = [0] * r_total
    for _ in range(failures):
        per_round[rng.randrange(r_total)] += 1
    for r, k in enumerate(per_round):
        if k:
            events.append(ChaosEvent(r, f"kill node=random count={k}", "node_failure"))
    # Repairs: failed nodes come back every fourth round, unless a zone is down (that would bring
    # the zone back early); everything comes back at the end anyway.
    for r in range(3, r_total - 1, 4):
        if r not in zone_down:
            events.append(ChaosEvent(r, "revive node=all", "revive"))
    # Joins: twice, in the first and the second half.
    join = max(1, math.ceil(plan.nodes * JOIN_SHARE))
    for lo, hi in ((0, r_total // 2), (r_total // 2, r_total)):
        if hi > lo:
            events.append(ChaosEvent(rng.randrange(lo, hi), f"join nodes={join}", "join"))
    # One cordon, lifted two rounds later.
    cordon_at = rng.randrange(r_total)
    events.append(
        ChaosEvent(
            cordon_at, f"cordon node=random count={max(1, math.ceil(plan.nodes * CORDON_SHARE))}", "cordon"
        )
    )
    events.append(ChaosEvent(min(r_total - 1, cordon_at + 2), "uncordon node=all", "uncordon"))
    # Within a round: repairs first (they make room), then joins, then faults.
    order = {
        "zone_revive": 0,
        "revive": 1,
        "uncordon": 2,
        "join": 3,
        "cordon": 4,
        "node_failure": 5,
        "zone_failure": 6,
    }
    events.sort(key=lambda e: (e.round, order[e.kind]))
    return events


def build_scenario(plan: SimPlan) -> str:
    """The scenario text (``canidae.core.scenario``) of a simulated run."""
    plan.check()
    p = plan
    round_ms = max(1, p.duration_s * 1000 // p.rounds)
    lines = [
        f"# scale test: {p.packs} packs on {p.nodes} nodes in {p.zones} zones, seed {p.seed}, "
        f"{p.rounds} rounds over {p.duration_s} s (virtual)"
        + (", chaos" if p.chaos else "")
        + (", ramp" if p.ramp else ""),
        (
            f"topology zones={p.zones} regions={p.regions} cells={p.cells} nodes={p.nodes} "
            f"cpu={p.node_packs * PACK_CPU * 2} mem={p.node_packs * PACK_MEM * 2} packs={p.node_packs}"
        ),
    ]
    if not p.ramp:
        lines.append(f"spawn {p.packs} cpu={PACK_CPU} mem={PACK_MEM} batch={p.batch}")
        lines.append("check")
    by_round: dict[int, list[ChaosEvent]] = {}
    for e in chaos_schedule(p):
        by_round.setdefault(e.round, []).append(e)
    for r in range(p.rounds):
        lines.append(f"# round {r + 1}")
        if p.ramp:
            share = p.packs * (r + 1) // p.rounds - p.packs * r // p.rounds
            if share:
                lines.append(f"spawn {share} cpu={PACK_CPU} mem={PACK_MEM} batch={p.batch} over={round_ms}")
            else:
                lines.append(f"advance {round_ms}")
        else:
            lines.append(f"advance {round_ms}")
        lines.extend(e.line for e in by_round.get(r, []))
        lines.append("check")
    if p.chaos:
        lines += ["# the end: every fault repaired", "revive node=all", "uncordon node=all"]
    lines.append(f"expect packs={p.packs} unplaced=0")
    return "\n".join(lines) + "\n"


def chaos_counts(scenario_steps: Any) -> dict[str, int]:
    """How many faults a list of parsed steps injects (for the run's summary)."""
    out = {"node_failures": 0, "zone_failures": 0, "joins": 0, "joined_nodes": 0, "revivals": 0}
    for s in scenario_steps:
        if s.op == "kill" and s.args.get("node") == "random":
            out["node_failures"] += s.args.get("count", 1)
        elif s.op == "kill" and "node" in s.args:
            out["node_failures"] += 1
        elif s.op == "kill":
            out["zone_failures"] += 1
        elif s.op == "join":
            out["joins"] += 1
            out["joined_nodes"] += s.args["nodes"]
        elif s.op == "revive":
            out["revivals"] += 1
    return out


def nearest_seed_row(packs: int) -> int:
    """The index of the seed's row closest to ``packs`` (on a log scale)."""
    return min(
        range(len(SEED_TABLE)), key=lambda i: abs(math.log10(SEED_TABLE[i]["packs"]) - math.log10(packs))
    )


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile of ``values`` (p in 0..100); NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def windows(samples: list[tuple[float, float]], count: int = 30) -> list[dict[str, Any]]:
    """Percentiles of (time, value) samples in ``count`` equal windows of time (empty ones left out)."""
    if not samples:
        return []
    t0 = min(t for t, _ in samples)
    t1 = max(t for t, _ in samples)
    width = (t1 - t0) / count if t1 > t0 else 1.0
    buckets: dict[int, list[float]] = {}
    for t, v in samples:
        buckets.setdefault(min(count - 1, int((t - t0) / width)), []).append(v)
    out = []
    for i in sorted(buckets):
        vals = buckets[i]
        out.append(
            {
                "t": round(t0 + (i + 0.5) * width, 3),
                "n": len(vals),
                "p50": round(percentile(vals, 50), 3),
                "p90": round(percentile(vals, 90), 3),
                "p99": round(percentile(vals, 99), 3),
                "max": round(max(vals), 3),
            }
        )
    return out


__all__ = [
    "PRESETS",
    "SEED_COLUMNS",
    "SEED_HEADERS",
    "SEED_TABLE",
    "ChaosEvent",
    "Preset",
    "SimPlan",
    "build_scenario",
    "chaos_counts",
    "chaos_schedule",
    "check_capacity",
    "check_counts",
    "from_preset",
    "nearest_seed_row",
    "percentile",
    "windows",
]
