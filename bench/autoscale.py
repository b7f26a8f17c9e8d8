"""Figures of the autoscaler (canidae.core.autoscale): a simulated diurnal day on a 2,000-node
fleet, reactive and with the forecast in each mode, and the forecast's backtest on synthetic daily
and weekly load. Prints a table, or one JSON document with ``--json``.

The day: packs follow a daily cycle from 30,000 (02:00) to 100,000 (14:00), each using about
300 m of CPU (2 % jitter) and 1 GiB; nodes have 32 cores and 128 GiB, boot in 120 s and drain
in 300 s; evaluations every 10 s. Two days of warm-up before the measured day give the forecast
its two seasons. The seed's default ``nodes.max`` (1,000) is raised to 3,000 for this fleet.

    python bench/autoscale.py [--json] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from typing import Any

from canidae.core.autoscale_policy import ForecastMode, Policy
from canidae.core.autoscale_sim import DAY_S, diurnal_load, simulate_day
from canidae.core.forecast import backtest, synthetic_load

SAMPLES_PER_DAY = 288  # 5-minute samples, as the policy's default forecast takes them
HOUR = 12


def sim_figures(seed: int) -> dict[str, Any]:
    base = Policy(max_nodes=3000)
    step = base.evaluation_interval_s
    loads = diurnal_load(3, step, seed=seed)
    out = {}
    for mode in ForecastMode:
        policy = replace(base, forecast=replace(base.forecast, mode=mode))
        start = time.perf_counter()
        result = simulate_day(policy, loads, measure_from=2 * DAY_S // step)
        out[mode.value] = {**result.figures.to_dict(), "wall_s": time.perf_counter() - start}
    return out


def backtest_figures(seed: int) -> dict[str, Any]:
    out = {}
    cases = {
        "daily": (5, SAMPLES_PER_DAY, None),
        "weekly": (21, 7 * SAMPLES_PER_DAY, 0.4),
    }
    for name, (days, season, weekend) in cases.items():
        for noise in (0.02, 0.05):
            noisy = synthetic_load(days, SAMPLES_PER_DAY, 1000, 2000, noise=noise, seed=seed, weekend_factor=weekend)
            clean = synthetic_load(days, SAMPLES_PER_DAY, 1000, 2000, weekend_factor=weekend)
            vs_pattern = backtest(noisy, season, HOUR, reference=clean)
            vs_noisy = backtest(noisy, season, HOUR)
            out[f"{name} noise={noise:.0%}"] = {
                "vs_pattern": asdict(vs_pattern), "vs_noisy": asdict(vs_noisy),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--seed", type=int, default=1, help="seed of the load's noise")
    args = parser.parse_args()
    figures = {"simulation": sim_figures(args.seed), "backtest": backtest_figures(args.seed)}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print("simulated diurnal day, 2,000-node scale, 10 s evaluations")
    print(f"{'forecast':<14}{'decisions/day':>14}{'node-hours':>12}{'oracle':>10}{'ratio':>7}"
          f"{'under-prov.':>12}{'overload':>9}{'peak':>6}{'wall s':>8}")
    for mode, f in figures["simulation"].items():
        print(f"{mode:<14}{f['decisions_per_day']:>14.0f}{f['node_hours']:>12,.0f}{f['oracle_node_hours']:>10,.0f}"
              f"{f['node_hours_ratio']:>7.3f}{f['under_provisioned']:>12.2%}{f['overloaded']:>9.2%}"
              f"{f['peak_nodes']:>6}{f['wall_s']:>8.1f}")
    print()
    print("Holt-Winters backtest, 5-minute samples, next-hour horizon (percent)")
    print(f"{'series':<20}{'MAPE':>7}{'peak err':>10}{'worst':>7}{'MAPE (noisy)':>14}{'origins':>9}")
    for name, r in figures["backtest"].items():
        p, n = r["vs_pattern"], r["vs_noisy"]
        print(f"{name:<20}{p['mape']:>7.2f}{p['peak_error']:>10.2f}{p['worst_peak_error']:>7.2f}"
              f"{n['mape']:>14.2f}{p['origins']:>9}")


if __name__ == "__main__":
    main()
