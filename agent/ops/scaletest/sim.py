"""The simulated scale test: ``canidae.core.sim`` driven through a scenario, timed from outside (wall,
CPU, memory kept apart from the deterministic result).
"""

from __future__ import annotations

import os
import time
from typing import Any

from canidae.agent.ops.scaletest.plan import Progress, no_progress
from canidae.agent.ops.scaletest.report import DOC_KIND, DOC_VERSION, fmt_ms, measured_row, pcts, table_doc
from canidae.agent.ops.scaletest.usage import busy_note, machine, others_cpu, rss_bytes
from canidae.core import scaleplan
from canidae.core.scaleplan import SimPlan, percentile, windows
from canidae.core.scenario import parse_scenario
from canidae.core.sim import Simulation
from canidae.core.types import NodeState


def packs_per_node(where: dict[str, str], nodes: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(sorted(nodes), 0)
    for node in where.values():
        if node in counts:
            counts[node] += 1
    return counts


def run_sim(plan: SimPlan, progress: Progress = no_progress) -> dict[str, Any]:
    """Run a simulated scale test and return its document (see the module docstring)."""
    text = scaleplan.build_scenario(plan)
    steps = parse_scenario(text)
    sim = Simulation(plan.seed)
    # (virtual s, ms) of each decision: placements (spawn batches, re-placements) and rebalances.
    samples: list[tuple[float, float]] = []
    rebalances: list[tuple[float, float]] = []
    decisions = {"place": 0, "rebalance": 0, "packs_decided": 0}
    host0 = machine()
    rss0 = rss_bytes(os.getpid())
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i, step in enumerate(steps):
        sim.apply(step)
        if step.op == "topology":
            _time_decisions(sim, samples, rebalances, decisions)
        progress(f"sim: {step.text[:48]}", i + 1, len(steps))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rss1 = rss_bytes(os.getpid())
    host1 = machine()
    result = sim.result()
    chaos = scaleplan.chaos_counts(steps)
    live_nodes = [k for k, n in sim.nodes.items() if n.state is not NodeState.DOWN]
    growth = max(0, rss1 - rss0)
    decided = max(1, decisions["packs_decided"])
    p99 = percentile([ms for _, ms in samples], 99) if samples else None
    measured = measured_row(
        result.packs,
        result.nodes,
        memory=growth / max(1, result.packs),
        memory_note="growth of the simulating process's RSS over the run, per pack (the scheduler's "
        "and the simulator's records of every pack and node)",
        cpu=None,
        cpu_text=f"{cpu / decided * 1e6:.3g} µs",
        cpu_note="a simulation runs no pack, so there is no CPU per running pack: this is the CPU time of "
        "the whole run (placements, re-placements, rebalancing, invariant checks) per pack decided",
        yips=None,
        yips_note="not simulated: the simulator models placement, not messages",
        p99=p99,
        p99_note=f"p99 wall time of one placement decision of the scheduler (a batch of up to "
        f"{plan.batch:,} packs, or the re-placement of a failed node's or zone's packs), "
        f"{len(samples):,} decisions; rebalances onto joined or revived nodes apart: p99 "
        f"{fmt_ms(percentile([ms for _, ms in rebalances], 99))} over {len(rebalances)}",
    )
    problems = list(result.violations)
    return {
        "kind": DOC_KIND,
        "version": DOC_VERSION,
        "mode": "sim",
        "params": plan.to_dict(),
        "ok": result.ok,
        "problems": problems,
        "summary": {
            "packs": result.packs,
            "placed": result.placed,
            "unplaced": result.unplaced,
            "nodes": result.nodes,
            "node_failures": chaos["node_failures"],
            "zone_failures": chaos["zone_failures"],
            "joined_nodes": chaos["joined_nodes"],
            "moves": result.moves,
            "balance": result.balance,
            "steps": len(steps),
            "violations": len(result.violations),
            "virtual_s": result.clock_ms / 1000,
            "wall_s": round(wall, 3),
            "digest": result.digest,
        },
        "table": table_doc(measured),
        "series": {
            "latency": {
                "what": "scheduler decisions (ms): placements, rebalances",
                "x": "virtual time (s)",
                "windows": [dict(w, phase="placements") for w in windows(samples)]
                + [dict(w, phase="rebalances") for w in windows(rebalances)],
            },
            "packs_per_node": packs_per_node(sim.where, live_nodes),
        },
        "sim": {**result.to_dict(), "chaos": chaos, "scenario": text},
        "timing": {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "decisions": decisions,
            "placement_ms": pcts([ms for _, ms in samples]),
            "rebalance_ms": pcts([ms for _, ms in rebalances]),
            "machine": {
                "cpus": host0["cpus"],
                "loadavg": host1["loadavg"],
                "others_cpu_percent": others_cpu(host0, host1),
            },
        },
        "notes": busy_note(others_cpu(host0, host1), host0["cpus"], "during the run"),
    }


def _time_decisions(
    sim: Simulation,
    samples: list[tuple[float, float]],
    rebalances: list[tuple[float, float]],
    counts: dict[str, int],
) -> None:
    """Time every placement and rebalance the scheduler decides, by wrapping its two entry points.

    The wrappers only read the clock around the pure calls: the decisions, and so the run's
    result and digest, are the same as without them.
    """
    sched = sim.scheduler
    assert sched is not None
    place, rebalance = sched.place, sched.rebalance_plan

    def timed_place(specs: Any, seed: int, exclude: frozenset[str] = frozenset()) -> Any:
        t = time.perf_counter()
        plan = place(specs, seed=seed, exclude=exclude)
        samples.append((sim.clock_ms / 1000, (time.perf_counter() - t) * 1000))
        counts["place"] += 1
        counts["packs_decided"] += len(specs)
        return plan

    def timed_rebalance(assignment: Any, specs: Any, newcomers: Any = None) -> Any:
        t = time.perf_counter()
        moves = rebalance(assignment, specs, newcomers=newcomers)
        rebalances.append((sim.clock_ms / 1000, (time.perf_counter() - t) * 1000))
        counts["rebalance"] += 1
        counts["packs_decided"] += len(moves)
        return moves

    sched.place = timed_place  # type: ignore[method-assign]
    sched.rebalance_plan = timed_rebalance  # type: ignore[method-assign]
