"""The autoscaler in simulation: a diurnal day on a small fleet, its figures, and what changes them.

The figures of the full-size run (2,000 nodes, 10 s evaluations) are measured outside the test
run; here the same model runs at 60 s steps and about 200 nodes so that it stays quick.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest
from canidae.core.autoscale import Action
from canidae.core.autoscale_policy import ForecastMode, ForecastSettings, Policy
from canidae.core.autoscale_sim import (
    DAY_S,
    Load,
    NodeModel,
    SimResult,
    diurnal_load,
    oracle_nodes,
    simulate_day,
)
from canidae.core.errors import InvalidInput

STEP = 60
PER_DAY = DAY_S // STEP
POLICY = Policy(evaluation_interval_s=STEP, forecast=ForecastSettings(mode=ForecastMode.OFF))
# 15-minute samples keep the forecast's fits small; the next hour is four of them.
FORECAST = ForecastSettings(mode=ForecastMode.ACT, sample_interval_s=900)
LOADS = diurnal_load(3, STEP, peak_packs=10_000, trough_packs=3_000, seed=2)


def run(policy: Policy = POLICY, loads: tuple[Load, ...] = LOADS) -> SimResult:
    return simulate_day(policy, loads, measure_from=2 * PER_DAY)


@pytest.fixture(scope="module")
def reactive() -> SimResult:
    return run()


@pytest.fixture(scope="module")
def forecasting() -> SimResult:
    return run(replace(POLICY, forecast=FORECAST))


def test_a_reactive_day_follows_the_load_within_bounds(reactive: SimResult) -> None:
    f = reactive.figures
    assert f.steps == PER_DAY and f.hours == 24.0
    assert 4 <= f.decisions_per_day <= 40
    assert f.adds + f.removes == len(reactive.decisions)
    assert f.overloaded == 0.0
    # Under-provisioned only while nodes boot behind a rise: a few percent of the day at most.
    assert 0.0 < f.under_provisioned < 0.05
    # Aiming at the midpoint costs capacity against an oracle sized at the up thresholds.
    assert 1.0 < f.node_hours_ratio < 1.4
    assert all(POLICY.min_nodes <= s.ready <= POLICY.max_nodes for s in reactive.timeline)


def test_actions_are_a_cooldown_apart(reactive: SimResult) -> None:
    times = [d.at_ms for d in reactive.decisions]
    assert all(b - a >= POLICY.cooldown_s * 1000 for a, b in pairwise(times))


def test_the_fleet_grows_in_the_morning_and_shrinks_at_night(reactive: SimResult) -> None:
    hour = PER_DAY // 24
    actions = [(s.at_ms // 3_600_000 % 24, s.action) for s in reactive.timeline if s.action is not Action.HOLD]
    assert {h for h, a in actions if a is Action.ADD} <= set(range(2, 15))
    assert {h for h, a in actions if a is Action.REMOVE} <= set(range(14, 24)) | {0, 1}
    assert reactive.timeline[14 * hour].ready > 2 * reactive.timeline[2 * hour].ready


def test_an_acting_forecast_adds_before_the_rise_and_is_never_under_provisioned(
    reactive: SimResult, forecasting: SimResult,
) -> None:
    f, r = forecasting.figures, reactive.figures
    assert f.forecast_wins > 0
    assert f.under_provisioned == 0.0 < r.under_provisioned
    # The capacity it adds ahead of time costs node-hours, within reason.
    assert r.node_hours < f.node_hours < 1.15 * r.node_hours
    assert f.removes > 0  # it slows removals, it does not forbid them


def test_forecast_only_changes_nothing(reactive: SimResult) -> None:
    shown = run(replace(POLICY, forecast=replace(FORECAST, mode=ForecastMode.FORECAST_ONLY)))
    assert shown.figures == reactive.figures
    assert [s.ready for s in shown.timeline] == [s.ready for s in reactive.timeline]
    assert all(d.forecast is not None and not d.forecast.acting for d in shown.decisions)


def test_a_simulation_is_deterministic(reactive: SimResult) -> None:
    again = run()
    assert again.figures == reactive.figures and again.timeline == reactive.timeline


def test_a_max_below_the_need_shows_as_overload() -> None:
    # The peak needs about 94 nodes' worth of CPU at 100 %.
    f = run(replace(POLICY, max_nodes=80)).figures
    assert f.peak_nodes <= 80
    assert f.overloaded > 0.1 and f.under_provisioned > f.overloaded


def test_added_nodes_become_ready_after_the_boot_delay() -> None:
    flat = (Load(1000, 1000 * 300, 1000 * 1024),) * 30
    result = simulate_day(POLICY, flat, node=NodeModel(boot_s=180), initial_nodes=3)
    first = result.decisions[0]
    assert first.action is Action.ADD
    at = result.timeline.index(next(s for s in result.timeline if s.at_ms == first.at_ms))
    readies = [s.ready for s in result.timeline]
    assert readies[at:at + 3] == [3, 3, 3] and readies[at + 3] == 3 + first.count
    assert result.timeline[at].billed == 3 + first.count


def test_oracle_is_the_fewest_nodes_within_every_bound() -> None:
    node = NodeModel()
    # CPU: 700,000 m at 70 % of 32,000 m per node -> 31.25 -> 32; packs 1000 / 55 -> 19; memory small.
    assert oracle_nodes(POLICY, node, Load(1000, 700_000, 1000)) == 32
    assert oracle_nodes(POLICY, node, Load(0, 0, 0)) == POLICY.min_nodes
    assert oracle_nodes(replace(POLICY, max_nodes=10), node, Load(1000, 700_000, 1000)) == 10


def test_bad_simulation_inputs_are_refused() -> None:
    with pytest.raises(InvalidInput):
        simulate_day(POLICY, ())
    with pytest.raises(InvalidInput):
        simulate_day(POLICY, LOADS[:10], measure_from=10)
    with pytest.raises(InvalidInput):
        diurnal_load(1, 7)
    with pytest.raises(InvalidInput):
        NodeModel(cpu_m=0)
