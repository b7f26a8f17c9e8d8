"""The autoscaling decision: each check's arithmetic, each clamp, the inputs it refuses, its explanation."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from canidae.core.autoscale import MAX_KEPT, Action, AutoscaleHistory, Decision, evaluate, explain, replay
from canidae.core.autoscale_checks import ClampKind, Metrics, Sample
from canidae.core.autoscale_policy import (
    ForecastMode,
    ForecastSettings,
    Policy,
    ScaleUpLimits,
    Select,
    Thresholds,
)
from canidae.core.errors import InvalidInput
from canidae.core.forecast import synthetic_load

CPU, MEM = 32_000, 131_072
NOW = 100_000_000
EMPTY = AutoscaleHistory()
POLICY = Policy()


def metrics(
    ready: int = 100, cpu: float = 50.0, mem: float = 50.0, packs: int | None = None, *,
    at: int = NOW, starting: int = 0, pending: int = 0,
) -> Metrics:
    """A homogeneous fleet at the given utilisation; packs default to 50 per counted node."""
    return Metrics(
        at_ms=at, nodes_ready=ready, nodes_starting=starting,
        cpu_total_m=ready * CPU, cpu_used_m=round(ready * CPU * cpu / 100),
        mem_total_mib=ready * MEM, mem_used_mib=round(ready * MEM * mem / 100),
        packs=50 * (ready + starting) if packs is None else packs, packs_pending=pending,
    )


def low(ready: int = 100, **kw: object) -> Metrics:
    """Everything below its scale-down bound, so that no check holds a removal back."""
    return metrics(ready, cpu=10.0, mem=10.0, packs=5 * ready, **kw)  # type: ignore[arg-type]


def proposal(d: Decision, check: str) -> int:
    return next(p.desired for p in d.proposals if p.check == check)


def kinds(d: Decision) -> list[ClampKind]:
    return [c.kind for c in d.clamps]


# ---------------------------------------------------------------------- checks


def test_cpu_above_its_bound_asks_for_the_count_that_brings_it_to_the_midpoint() -> None:
    d = evaluate(POLICY, metrics(cpu=85.0), EMPTY, NOW)
    assert proposal(d, "cpu") == 170  # ceil(100 * 85 / 50)
    assert (d.action, d.count, d.desired, d.winner) == (Action.ADD, 70, 170, "cpu")


def test_memory_above_its_bound_aims_at_its_own_midpoint() -> None:
    d = evaluate(POLICY, metrics(mem=90.0), EMPTY, NOW)
    assert proposal(d, "memory") == 150  # ceil(100 * 90 / 60)
    assert d.desired == 150 and d.winner == "memory"


def test_within_bounds_every_check_holds() -> None:
    d = evaluate(POLICY, metrics(cpu=69.0, mem=41.0), EMPTY, NOW)
    assert d.action is Action.HOLD and d.desired == 100
    assert {p.desired for p in d.proposals} == {100}


def test_a_check_that_holds_keeps_the_others_from_removing() -> None:
    # Nomad's rule: scale-in against scale-none gives none.
    d = evaluate(POLICY, metrics(cpu=10.0, mem=50.0, packs=500), EMPTY, NOW)
    assert proposal(d, "cpu") < 100 and proposal(d, "packs") < 100
    assert d.action is Action.HOLD and d.winner == "memory"


def test_all_low_removes_down_to_the_largest_proposal() -> None:
    d = evaluate(POLICY, metrics(cpu=20.0, mem=30.0, packs=1000), EMPTY, NOW)
    # cpu ceil(100*20/50)=40, memory ceil(100*30/60)=50, packs ceil(1000/50)=20
    assert (proposal(d, "cpu"), proposal(d, "memory"), proposal(d, "packs")) == (40, 50, 20)
    assert (d.action, d.desired, d.winner) == (Action.REMOVE, 50, "memory")


def test_packs_per_node_above_the_tolerance_band_adds() -> None:
    d = evaluate(POLICY, metrics(packs=6000), EMPTY, NOW)
    assert proposal(d, "packs") == 120 and d.desired == 120


def test_pending_packs_count_as_demand() -> None:
    d = evaluate(POLICY, metrics(packs=5000, pending=1000), EMPTY, NOW)
    assert proposal(d, "packs") == 120


def test_packs_within_the_tolerance_hold_and_say_so() -> None:
    d = evaluate(POLICY, metrics(packs=5400), EMPTY, NOW)
    assert proposal(d, "packs") == 100 and d.action is Action.HOLD
    [tol] = [c for c in d.clamps if c.kind is ClampKind.TOLERANCE]
    assert (tol.before, tol.after) == (108, 100)
    assert "within 10% of 50" in tol.why


def test_removal_has_hysteresis_the_smaller_fleet_must_hold_a_tolerance_rise() -> None:
    policy = replace(POLICY, cpu=Thresholds(60.0, 40.0), min_nodes=1)
    # 5 nodes at 39 %: ceil(5*39/50)=4 would be at 48.75 %, but a 10 % rise makes it 5 again.
    d = evaluate(policy, metrics(5, cpu=39.0, mem=10.0, packs=0), EMPTY, NOW)
    assert proposal(d, "cpu") == 5 and d.action is Action.HOLD
    assert any(c.kind is ClampKind.TOLERANCE and c.before == 4 and c.after == 5 for c in d.clamps)
    # 10 nodes at 39 %: ceil(10*39*1.1/50)=9 < 10, so 8 it is.
    d = evaluate(policy, metrics(10, cpu=39.0, mem=10.0, packs=0), EMPTY, NOW)
    assert proposal(d, "cpu") == 8


def test_starting_nodes_are_counted_so_nothing_is_asked_for_twice() -> None:
    # 100 ready at 85 % want 170; 70 are already starting.
    d = evaluate(POLICY, metrics(cpu=85.0, starting=70, packs=5000), EMPTY, NOW)
    assert d.current == 170 and d.action is Action.HOLD
    assert "starting" in next(p.reason for p in d.proposals if p.check == "cpu")


def test_no_ready_nodes_leaves_the_threshold_checks_holding_and_packs_deciding() -> None:
    d = evaluate(POLICY, Metrics(NOW, 0, 0, 0, 0, 0, 0, packs_pending=500), EMPTY, NOW)
    assert proposal(d, "packs") == 10
    assert d.action is Action.ADD and d.desired == 10


def test_equal_proposals_name_the_tie() -> None:
    d = evaluate(POLICY, metrics(cpu=75.0, mem=90.0), EMPTY, NOW)  # both want 150
    assert d.winner == "cpu" and "tied with memory" in d.winner_reason


# ---------------------------------------------------------------------- clamps


def test_min_nodes_clamps_a_removal() -> None:
    d = evaluate(POLICY, low(5), EMPTY, NOW)
    [c] = [c for c in d.clamps if c.kind is ClampKind.MIN]
    assert c.after == 3 and d.desired == 3 and d.action is Action.REMOVE


def test_below_min_nodes_adds_up_to_it_even_when_the_load_is_nil() -> None:
    d = evaluate(POLICY, low(1), EMPTY, NOW)
    assert (d.action, d.desired) == (Action.ADD, 3)


def test_max_nodes_clamps_an_addition() -> None:
    d = evaluate(POLICY, metrics(900, cpu=95.0), EMPTY, NOW)
    [c] = [c for c in d.clamps if c.kind is ClampKind.MAX]
    assert (c.before, c.after) == (1710, 1000) and d.desired == 1000


def test_cooldown_holds_an_action_until_it_has_passed() -> None:
    h = replace(EMPTY, last_action_at_ms=NOW - 299_999)
    d = evaluate(POLICY, metrics(cpu=85.0), h, NOW)
    assert d.action is Action.HOLD and kinds(d)[-1] is ClampKind.COOLDOWN
    assert d.clamps[-1].before == 170 and "cooldown 300 s" in d.clamps[-1].why
    h = replace(EMPTY, last_action_at_ms=NOW - 300_000)
    assert evaluate(POLICY, metrics(cpu=85.0), h, NOW).action is Action.ADD


def test_stabilisation_takes_the_highest_recommendation_of_the_window() -> None:
    h = replace(EMPTY, recommendations=((NOW - 400_000, 190), (NOW - 200_000, 150), (NOW - 100_000, 120)))
    d = evaluate(POLICY, metrics(200, cpu=20.0, mem=30.0, packs=1000), h, NOW)
    assert d.recommended == 100
    [c] = [c for c in d.clamps if c.kind is ClampKind.STABILISATION]
    assert (c.before, c.after) == (100, 150)  # 190 is older than the 300 s window
    assert (d.action, d.desired) == (Action.REMOVE, 150)


def test_stabilisation_never_turns_a_removal_into_an_addition() -> None:
    h = replace(EMPTY, recommendations=((NOW - 10_000, 500),))
    d = evaluate(POLICY, metrics(200, cpu=20.0, mem=30.0, packs=1000), h, NOW)
    assert d.action is Action.HOLD and d.desired == 200


def test_stabilisation_does_not_slow_an_addition() -> None:
    h = replace(EMPTY, recommendations=((NOW - 10_000, 50),))
    assert evaluate(POLICY, metrics(cpu=85.0), h, NOW).desired == 170


@pytest.mark.parametrize(
    ("limits", "ups", "expected"),
    [
        (ScaleUpLimits(max_nodes_per_period=10, max_percent_per_period=20.0), (), 120),
        (ScaleUpLimits(max_nodes_per_period=10, max_percent_per_period=20.0, select=Select.MIN), (), 110),
        (ScaleUpLimits(max_nodes_per_period=10, max_percent_per_period=0.0), (), 110),
        (ScaleUpLimits(max_nodes_per_period=0, max_percent_per_period=10.0), (), 110),
        # 15 added 30 s ago: the period started at 85 nodes, 85 + 17 = 102.
        (ScaleUpLimits(max_nodes_per_period=10, max_percent_per_period=20.0), ((NOW - 30_000, 15),), 102),
        # ... but additions older than the period do not count.
        (ScaleUpLimits(max_nodes_per_period=10, max_percent_per_period=20.0), ((NOW - 60_000, 15),), 120),
        (ScaleUpLimits(max_per_step=5), (), 105),
    ],
)
def test_rate_limits_cap_an_addition(limits: ScaleUpLimits, ups: tuple[tuple[int, int], ...], expected: int) -> None:
    policy = replace(POLICY, scale_up=limits)
    d = evaluate(policy, metrics(cpu=85.0), replace(EMPTY, scale_ups=ups), NOW)
    assert d.desired == expected
    [c] = [c for c in d.clamps if c.kind is ClampKind.RATE_LIMIT]
    assert (c.before, c.after) == (170, expected)


def test_rate_limits_never_keep_a_cluster_below_min_nodes() -> None:
    policy = replace(POLICY, min_nodes=10, scale_up=ScaleUpLimits(max_nodes_per_period=1, max_percent_per_period=0.0))
    d = evaluate(policy, low(0), EMPTY, NOW)
    assert (d.action, d.desired) == (Action.ADD, 10)


def test_paused_holds_and_says_what_it_would_have_done() -> None:
    d = evaluate(replace(POLICY, paused=True), metrics(cpu=85.0), EMPTY, NOW)
    assert d.action is Action.HOLD and d.desired == 100
    assert d.clamps[-1].kind is ClampKind.PAUSED and d.clamps[-1].before == 170


def test_dry_run_holds_and_says_what_it_would_have_done() -> None:
    d = evaluate(replace(POLICY, dry_run=True), metrics(cpu=85.0), EMPTY, NOW)
    assert d.action is Action.HOLD
    c = d.clamps[-1]
    assert (c.kind, c.before, c.after) == (ClampKind.DRY_RUN, 170, 100)
    assert "would add 70 nodes" in c.why and "would add 70 nodes" in d.reason


def test_a_dry_run_does_not_start_a_cooldown() -> None:
    policy = replace(POLICY, dry_run=True)
    d = evaluate(policy, metrics(cpu=85.0), EMPTY, NOW)
    h = EMPTY.record(d, d.metrics)
    assert h.last_action_at_ms is None and h.scale_ups == ()


def test_clamps_apply_in_order_and_each_is_recorded() -> None:
    policy = replace(POLICY, max_nodes=160, dry_run=True,
                     scale_up=ScaleUpLimits(max_nodes_per_period=20, max_percent_per_period=0.0))
    d = evaluate(policy, metrics(cpu=85.0), EMPTY, NOW)
    assert [(c.kind, c.before, c.after) for c in d.clamps] == [
        (ClampKind.MAX, 170, 160), (ClampKind.RATE_LIMIT, 160, 120), (ClampKind.DRY_RUN, 120, 100),
    ]


# ---------------------------------------------------------------------- inputs refused


def test_missing_metrics_hold_at_the_last_known_count() -> None:
    h = replace(EMPTY, last_nodes=42)
    d = evaluate(POLICY, None, h, NOW)
    assert (d.action, d.current, d.desired, d.recommended) == (Action.HOLD, 42, 42, None)
    assert "no metrics" in d.reason


def test_stale_metrics_hold() -> None:
    d = evaluate(POLICY, metrics(cpu=99.0, at=NOW - 61_000), EMPTY, NOW)
    assert d.action is Action.HOLD and "stale (61 s old, limit 60 s)" in d.reason
    assert evaluate(POLICY, metrics(cpu=99.0, at=NOW - 60_000), EMPTY, NOW).action is Action.ADD


def test_metrics_older_than_the_last_action_hold() -> None:
    policy = replace(POLICY, cooldown_s=0)
    h = replace(EMPTY, last_action_at_ms=NOW - 5_000)
    d = evaluate(policy, metrics(cpu=99.0, at=NOW - 10_000), h, NOW)
    assert d.action is Action.HOLD and "before the last action" in d.reason


def test_metrics_refuse_bad_values_and_fields() -> None:
    with pytest.raises(InvalidInput, match="cpu_used_m"):
        Metrics(0, 1, 100, -1, 100, 0, 0)
    with pytest.raises(InvalidInput, match="unknown field 'cpu'"):
        Metrics.from_dict({**metrics().to_dict(), "cpu": 1})
    with pytest.raises(InvalidInput, match="missing field 'packs'"):
        Metrics.from_dict({k: v for k, v in metrics().to_dict().items() if k != "packs"})
    assert Metrics.from_dict(metrics().to_dict()) == metrics()


# ---------------------------------------------------------------------- history


def test_history_records_actions_recommendations_and_scale_ups() -> None:
    d = evaluate(POLICY, metrics(cpu=85.0), EMPTY, NOW)
    h = EMPTY.record(d, d.metrics)
    assert h.last_action_at_ms == NOW and h.scale_ups == ((NOW, 70),) and h.last_nodes == 170
    assert h.recommendations == ((NOW, 170),)


def test_recommendations_keep_only_what_can_still_be_a_window_maximum() -> None:
    h = EMPTY
    for i, (cpu, mem) in enumerate([(20.0, 30.0), (20.0, 20.0), (20.0, 36.0), (10.0, 10.0)]):
        d = evaluate(replace(POLICY, paused=True), metrics(200, cpu=cpu, mem=mem, packs=100, at=NOW + i),
                     h, NOW + i)
        h = h.record(d, d.metrics)
    # 100, 67, 120, 40: 100 and 67 are dominated by the later 120.
    assert [r for _, r in h.recommendations] == [120, 40]


def test_history_lists_are_bounded() -> None:
    policy = replace(POLICY, scale_down_window_s=100_000, cooldown_s=0,
                     forecast=ForecastSettings(season_s=600, sample_interval_s=60, horizon_s=120))
    h = EMPTY
    for i in range(MAX_KEPT + 200):
        now = NOW + i * 60_000
        d = evaluate(policy, metrics(10_000 - i, cpu=5.0, mem=5.0, packs=0, at=now), h, now)
        h = h.record(d, d.metrics)
    assert len(h.recommendations) <= MAX_KEPT
    assert len(h.samples) == 3 * 10
    assert h.closed == MAX_KEPT + 199


def test_samples_take_the_peak_of_each_interval_and_fill_gaps() -> None:
    policy = replace(POLICY, forecast=ForecastSettings(season_s=600, sample_interval_s=60, horizon_s=120))
    h = EMPTY
    for at, cpu in [(0, 10.0), (30_000, 20.0), (60_000, 5.0), (250_000, 7.0)]:
        d = evaluate(policy, metrics(10, cpu=cpu, at=at), h, at)
        h = h.record(d, d.metrics)
    peaks = [s.cpu_m for s in h.samples]
    # [0, 60) peaked at 20 %; [60, 120) at 5 %, repeated for the two missing intervals.
    assert peaks == [64_000.0, 16_000.0, 16_000.0, 16_000.0]
    assert h.bucket == 4 and h.bucket_peak is not None and h.bucket_peak.cpu_m == 22_400.0


# ---------------------------------------------------------------------- forecast


def seasonal_history(policy: Policy, peak_nodes: float, ready: int) -> AutoscaleHistory:
    """Two seasons of samples of a daily-shaped load peaking at ``peak_nodes`` nodes' worth of 100 % CPU."""
    m = policy.forecast.season_samples
    load = synthetic_load(3, m, base=0.2 * peak_nodes * CPU, amplitude=0.8 * peak_nodes * CPU)
    # Two seasons ending just before the peak (at 14/24 of a season), so that it is the next thing ahead.
    end = 2 * m + (14 * m) // 24 - 1
    samples = tuple(Sample(x, 0.3 * ready * MEM, 10.0 * ready) for x in load[end - 2 * m:end])
    return replace(EMPTY, samples=samples, closed=len(samples), sample_interval_s=policy.forecast.sample_interval_s)


SHORT = ForecastSettings(season_s=24 * 60, sample_interval_s=60, horizon_s=3 * 60, mode=ForecastMode.ACT)


def test_forecast_waits_for_two_seasons() -> None:
    policy = replace(POLICY, forecast=SHORT)
    d = evaluate(policy, metrics(), EMPTY, NOW)
    assert d.forecast is None and "waiting for two seasons of samples (0 of 48" in d.forecast_note


def test_forecast_acting_adds_ahead_of_a_predicted_peak() -> None:
    policy = replace(POLICY, forecast=SHORT)
    # Load now: 40 % of 100 nodes; the history says the peak ahead is 100 nodes' worth of 100 % CPU.
    h = seasonal_history(policy, peak_nodes=100, ready=100)
    d = evaluate(policy, metrics(cpu=40.0, mem=30.0, packs=1000), h, NOW)
    assert d.forecast is not None and d.forecast.acting
    assert proposal(d, "cpu") == 100
    assert d.forecast.desired > 100 and d.winner == "forecast" and d.action is Action.ADD
    # The predicted peak at the midpoint: about 100 nodes' worth / 50 %.
    assert 190 <= d.desired <= 210


def test_forecast_only_is_shown_but_never_acts() -> None:
    policy = replace(POLICY, forecast=replace(SHORT, mode=ForecastMode.FORECAST_ONLY))
    h = seasonal_history(policy, peak_nodes=100, ready=100)
    d = evaluate(policy, metrics(cpu=40.0, mem=30.0, packs=1000), h, NOW)
    assert d.forecast is not None and not d.forecast.acting and d.forecast.desired > 100
    assert d.action is Action.HOLD and d.winner != "forecast"
    assert any("[forecast-only: shown, not acting]" in line for line in explain(d))


def test_forecast_keeps_the_capacity_a_predicted_peak_needs_from_being_removed() -> None:
    policy = replace(POLICY, forecast=SHORT)
    h = seasonal_history(policy, peak_nodes=100, ready=300)
    d = evaluate(policy, metrics(300, cpu=10.0, mem=10.0, packs=100), h, NOW)
    off = evaluate(replace(policy, forecast=replace(SHORT, mode=ForecastMode.OFF)),
                   metrics(300, cpu=10.0, mem=10.0, packs=100), h, NOW)
    assert off.action is Action.REMOVE and off.desired == 60
    assert d.action is Action.REMOVE and d.winner == "forecast" and d.desired > off.desired


def test_forecast_is_cached_until_a_new_sample_closes() -> None:
    policy = replace(POLICY, forecast=SHORT)
    h = seasonal_history(policy, peak_nodes=100, ready=100)
    d = evaluate(policy, metrics(cpu=40.0), h, NOW)
    h2 = h.record(d, None)
    assert h2.forecast_peak is d.forecast.peak  # type: ignore[union-attr]
    again = evaluate(policy, metrics(cpu=40.0), h2, NOW + 1000)
    assert again.forecast is not None and again.forecast.peak is d.forecast.peak  # type: ignore[union-attr]


def test_fitted_parameters_are_reused_within_a_season() -> None:
    policy = replace(POLICY, forecast=replace(SHORT, fit=True))
    h = seasonal_history(policy, peak_nodes=100, ready=100)
    first = evaluate(policy, metrics(cpu=40.0), h, NOW).forecast
    assert first is not None and first.peak.params_basis == h.closed
    h2 = replace(h, samples=h.samples[1:] + h.samples[:1], closed=h.closed + 1, forecast_peak=first.peak)
    second = evaluate(policy, metrics(cpu=40.0), h2, NOW).forecast
    assert second is not None and second.peak.basis == h.closed + 1
    assert second.peak.params == first.peak.params and second.peak.params_basis == h.closed


# ---------------------------------------------------------------------- explanation


def test_explanation_names_inputs_checks_winner_clamps_and_result() -> None:
    policy = replace(POLICY, scale_up=ScaleUpLimits(max_nodes_per_period=20, max_percent_per_period=0.0))
    d = evaluate(policy, metrics(cpu=85.0, packs=5400), EMPTY, NOW)
    lines = explain(d)
    text = "\n".join(lines)
    assert lines[0].startswith("ADD: add 20 nodes (100 -> 120)")
    assert "100 ready + 0 starting nodes; cpu 85.0% of 3,200,000 m" in text
    assert "check cpu: 85.0% above 70%: ceil(100 x 85.0 / 50) = 170 -> 170 nodes" in text
    assert "check memory: 50.0% within 40..80% -> 100 nodes" in text
    assert "check packs:" in text and "clamp tolerance: 108 -> 100" in text
    assert "winner: cpu asks for the most nodes (170)" in text
    assert "clamp rate_limit: 170 -> 120: scale-up limited to 20 nodes per 60 s" in text
    assert lines[-1] == "result: add 20 -> 120 nodes"


def test_explanation_of_a_refused_input_says_why() -> None:
    lines = explain(evaluate(POLICY, None, EMPTY, NOW))
    assert lines[0].startswith("HOLD: hold at 0 nodes: no metrics")
    assert lines[-1] == "result: hold at 0 nodes"


def test_a_decision_is_json() -> None:
    policy = replace(POLICY, forecast=SHORT)
    d = evaluate(policy, metrics(cpu=40.0), seasonal_history(policy, 100, 100), NOW)
    doc = json.loads(json.dumps(d.to_dict()))
    assert doc["action"] == "add" and doc["forecast"]["acting"] is True
    assert {p["check"] for p in doc["proposals"]} == {"cpu", "memory", "packs", "forecast"}
    assert Policy.from_dict(doc["policy"]) == policy


def test_replay_feeds_each_decision_into_the_next() -> None:
    series = [
        (NOW, metrics(cpu=85.0, at=NOW)),
        (NOW + 10_000, metrics(cpu=85.0, starting=70, packs=5000, at=NOW + 10_000)),
        (NOW + 20_000, metrics(cpu=99.0, starting=70, packs=5000, at=NOW + 20_000)),
    ]
    decisions, h = replay(POLICY, series)
    assert [d.action for d in decisions] == [Action.ADD, Action.HOLD, Action.HOLD]
    assert decisions[1].clamps == ()  # the starting nodes cover it
    assert [c.kind for c in decisions[2].clamps] == [ClampKind.COOLDOWN]  # 198 wanted, 170 counted
    assert h.last_action_at_ms == NOW


def test_no_flapping_when_rounding_up_sized_the_fleet() -> None:
    # 101 packs on 1 node: add to ceil(101/50) = 3. The packs then dip to 92, less than the
    # tolerance below 101: ceil(92/50) = 2 < 3, but a 10 % rise would need 3 again, so hold.
    policy = replace(POLICY, min_nodes=0, cooldown_s=0, scale_down_window_s=0)
    first = evaluate(policy, metrics(1, cpu=0.0, mem=0.0, packs=101), EMPTY, NOW)
    assert (first.action, first.desired) == (Action.ADD, 3)
    h = EMPTY.record(first, first.metrics)
    dip = evaluate(policy, metrics(3, cpu=0.0, mem=0.0, packs=92, at=NOW + 10_000), h, NOW + 10_000)
    assert dip.action is Action.HOLD
    assert any(c.kind is ClampKind.TOLERANCE and (c.before, c.after) == (2, 3) for c in dip.clamps)
    # A real fall, below 101 / 1.1, does remove.
    fall = evaluate(policy, metrics(3, cpu=0.0, mem=0.0, packs=90, at=NOW + 10_000), h, NOW + 10_000)
    assert (fall.action, fall.desired) == (Action.REMOVE, 2)
