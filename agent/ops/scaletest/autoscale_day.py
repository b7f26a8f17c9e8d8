"""The autoscaling part of ``scale-test run --mode sim --autoscale``: a simulated day of diurnal load.

The decisions are the cluster's own (``canidae.core.autoscale.evaluate`` through
``canidae.core.autoscale_sim.simulate_day``); this module picks the day (packs following a daily
cycle between a trough and a peak, on a fleet of thousands of nodes), runs two days of warm-up so
the forecast has its seasons, measures the third, and shapes the result for the run document:
the figures (decisions per day, node-hours against a perfect oracle, time under-provisioned),
a timeline sampled every five minutes (offered packs, ready and billed nodes, the oracle's count)
and every acting decision with its reason. ``scale-test report`` draws the timeline.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from canidae.core.autoscale_policy import ForecastMode, Policy
from canidae.core.autoscale_sim import DAY_S, NodeModel, diurnal_load, simulate_day

WARMUP_DAYS = 2
SAMPLE_S = 300  # the timeline keeps one point per five minutes (288 a day)


def autoscale_day(seed: int, peak_packs: int = 100_000, trough_packs: int = 30_000,
                  forecast: ForecastMode = ForecastMode.FORECAST_ONLY) -> dict[str, Any]:
    """One measured day (after the warm-up) of the autoscaler on the seed's policy; JSON-able."""
    node = NodeModel()
    # The seed's policy, with nodes.max raised so the fleet the load needs (about 1,800 nodes at
    # the peak) is within bounds: the default 1,000 would clamp every afternoon.
    base = Policy(max_nodes=5_000)
    policy = replace(base, forecast=replace(base.forecast, mode=forecast))
    step = policy.evaluation_interval_s
    loads = diurnal_load(WARMUP_DAYS + 1, step, peak_packs=peak_packs, trough_packs=trough_packs, seed=seed)
    start = WARMUP_DAYS * DAY_S // step
    result = simulate_day(policy, loads, node=node, measure_from=start)
    t0 = start * step * 1000
    every = SAMPLE_S // step
    series = [{"t_h": round((s.at_ms - t0) / 3_600_000, 4), "packs": loads[start + i].packs, "ready": s.ready,
               "billed": s.billed, "oracle": s.oracle}
              for i, s in enumerate(result.timeline) if i % every == 0]
    decisions = [{"t_h": round((d.at_ms - t0) / 3_600_000, 4), "action": d.action.value, "count": d.count,
                  "desired": d.desired, "winner": d.winner, "reason": d.reason} for d in result.decisions]
    return {
        "what": (f"one day of diurnal load ({trough_packs:,} to {peak_packs:,} packs), after {WARMUP_DAYS} days "
                 f"of warm-up; evaluations every {step} s; nodes of {node.cpu_m // 1000} cores, "
                 f"{node.mem_mib // 1024} GiB, boot {node.boot_s} s, drain {node.drain_s} s"),
        "policy": policy.to_dict(),
        "figures": result.figures.to_dict(),
        "series": series,
        "decisions": decisions,
    }


__all__ = ["autoscale_day"]
