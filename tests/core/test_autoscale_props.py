"""Properties of the autoscaling decision over random policies, metrics and histories (hypothesis).

* an action never leads outside min/max, and a count within them stays within them;
* nothing acts within the cooldown of the last action;
* a load that moves within the tolerance never makes the autoscaler change direction
  (closed loop: the decisions drive a simulated fleet, with boot delays);
* a forecast that acts never causes a removal (it only raises the count), and a forecast in
  forecast-only mode never changes the decision.
"""

from __future__ import annotations

from dataclasses import replace

from canidae.core.autoscale import Action, AutoscaleHistory, Decision, evaluate
from canidae.core.autoscale_checks import Metrics, Sample
from canidae.core.autoscale_policy import (
    ForecastMode,
    ForecastSettings,
    Policy,
    ScaleUpLimits,
    Select,
    Thresholds,
)
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

CPU, MEM = 32_000, 131_072
NOW = 1_000_000_000
OFF = ForecastSettings(mode=ForecastMode.OFF)
# A short season so that a history with two of them is small: 6 samples of 60 s, 2 ahead.
SHORT = ForecastSettings(mode=ForecastMode.ACT, season_s=360, sample_interval_s=60, horizon_s=120)


@st.composite
def thresholds(draw: st.DrawFn) -> Thresholds:
    down = draw(st.floats(0.0, 90.0))
    return Thresholds(draw(st.floats(down + 1.0, 100.0)), down)


@st.composite
def policies(draw: st.DrawFn, forecast: ForecastSettings = OFF, switches: bool = True) -> Policy:
    low = draw(st.integers(0, 50))
    return Policy(
        cpu=draw(thresholds()), memory=draw(thresholds()),
        packs_per_node=draw(st.integers(1, 200)),
        min_nodes=low, max_nodes=draw(st.integers(max(1, low), 3000)),
        cooldown_s=draw(st.integers(0, 900)),
        tolerance=draw(st.floats(0.0, 0.5)),
        scale_down_window_s=draw(st.integers(0, 900)),
        scale_up=ScaleUpLimits(
            max_per_step=draw(st.integers(1, 1000)), period_s=draw(st.integers(1, 300)),
            max_nodes_per_period=draw(st.integers(1, 100)),
            max_percent_per_period=draw(st.floats(0.0, 200.0)),
            select=draw(st.sampled_from(Select)),
        ),
        metrics_max_age_s=60,
        forecast=forecast,
        dry_run=draw(st.booleans()) if switches else False,
        paused=draw(st.booleans()) if switches else False,
    )


@st.composite
def metrics_st(draw: st.DrawFn, at: int = NOW) -> Metrics:
    ready = draw(st.integers(0, 4000))
    return Metrics(
        at_ms=at - draw(st.integers(0, 60_000)), nodes_ready=ready, nodes_starting=draw(st.integers(0, 300)),
        cpu_total_m=ready * CPU, cpu_used_m=int(ready * CPU * draw(st.floats(0.0, 1.5))),
        mem_total_mib=ready * MEM, mem_used_mib=int(ready * MEM * draw(st.floats(0.0, 1.5))),
        packs=draw(st.integers(0, 300_000)), packs_pending=draw(st.integers(0, 5_000)),
    )


@st.composite
def histories(draw: st.DrawFn, last_action: bool = True) -> AutoscaleHistory:
    recs = sorted(draw(st.lists(st.tuples(st.integers(1, 900_000), st.integers(0, 5000)), max_size=20)),
                  reverse=True)
    ups = sorted(draw(st.lists(st.tuples(st.integers(1, 300_000), st.integers(1, 500)), max_size=10)),
                 reverse=True)
    ago = draw(st.one_of(st.none(), st.integers(61_000, 2_000_000))) if last_action else None
    return AutoscaleHistory(
        last_action_at_ms=None if ago is None else NOW - ago,
        recommendations=tuple((NOW - a, r) for a, r in recs),
        scale_ups=tuple((NOW - a, n) for a, n in ups),
    )


def consistent(d: Decision) -> None:
    assert d.count == abs(d.desired - d.current)
    assert (d.action is Action.ADD) == (d.desired > d.current)
    assert (d.action is Action.REMOVE) == (d.desired < d.current)


@settings(max_examples=250, deadline=None)
@given(policies(), metrics_st(), histories())
def test_never_outside_min_max(policy: Policy, m: Metrics, h: AutoscaleHistory) -> None:
    d = evaluate(policy, m, h, NOW)
    consistent(d)
    if d.action is not Action.HOLD:
        assert policy.min_nodes <= d.desired <= policy.max_nodes
    if policy.min_nodes <= d.current <= policy.max_nodes:
        assert policy.min_nodes <= d.desired <= policy.max_nodes
    if d.action is Action.ADD:
        assert d.recommended is not None and d.desired <= d.recommended
    if d.action is Action.REMOVE:
        assert d.recommended is not None and d.desired >= d.recommended


@settings(max_examples=200, deadline=None)
@given(policies(), metrics_st(), histories(last_action=False), st.floats(0.0, 0.999))
def test_never_acting_within_the_cooldown(policy: Policy, m: Metrics, h: AutoscaleHistory, share: float) -> None:
    assume(policy.cooldown_s > 0)
    h = replace(h, last_action_at_ms=NOW - int(policy.cooldown_s * 1000 * share))
    d = evaluate(policy, replace(m, at_ms=NOW), h, NOW)
    assert d.action is Action.HOLD and d.desired == d.current


@settings(max_examples=100, deadline=None)
@given(policies(switches=False), st.lists(metrics_st(), min_size=2, max_size=40),
       st.lists(st.integers(1, 120), min_size=40, max_size=40))
def test_actions_in_a_stream_are_a_cooldown_apart(policy: Policy, ms: list[Metrics], gaps: list[int]) -> None:
    h, now, last = AutoscaleHistory(), NOW, None
    for m, gap in zip(ms, gaps):
        now += gap * 1000
        d = evaluate(policy, replace(m, at_ms=now), h, now)
        h = h.record(d, d.metrics)
        if d.action is not Action.HOLD:
            assert last is None or now - last >= policy.cooldown_s * 1000
            last = now


@settings(max_examples=400, deadline=None)
@given(
    policies(switches=False),
    st.one_of(st.integers(0, 10), st.integers(0, 400)),
    # Each resource in nodes' worth (CPU and memory at 100 %, packs at the target). Often one
    # resource alone, so that a single check's rounding decides (no load is below every
    # scale-down bound), and often a few nodes' worth, or a whole number of nodes, where
    # rounding weighs most.
    st.tuples(*[st.one_of(st.just(0.0), st.integers(1, 6).map(float), st.floats(0, 4), st.floats(0, 300))
                for _ in range(3)]),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=5, max_size=60),
    st.integers(0, 3),
    st.sampled_from([10, 60, 300]),
    st.booleans(),
)
# A fleet that rounding up sized: 110 packs want ceil(110/50) = 3 nodes; 100 packs, within the
# tolerance, fit in 2, yet removing one would bring an addition back at the next rise.
@example(Policy(min_nodes=0, cooldown_s=0, scale_down_window_s=0, forecast=OFF), 1, (0.0, 0.0, 2.0),
         [(0.0, 0.0, 1.0)] + [(0.0, 0.0, 0.0)] * 4, 0, 10, False)
def test_no_oscillation_on_a_load_within_the_tolerance(
    policy: Policy, ready: int, base: tuple[float, float, float],
    jitter: list[tuple[float, float, float]], boot_steps: int, step_s: int, bare: bool,
) -> None:
    # The load (CPU and memory in nodes' worth at 100 %, and packs) moves within a band of
    # relative width ``tolerance``; the decisions drive the fleet. Directions must not reverse.
    if bare:
        # Without the cooldown, the window and the floor, only the checks stand against flapping.
        policy = replace(policy, cooldown_s=0, scale_down_window_s=0, min_nodes=0)
    tol = policy.tolerance
    starting: list[tuple[int, int]] = []
    h = AutoscaleHistory()
    seen: set[Action] = set()
    for i, (ec, em, ep) in enumerate(jitter):
        now = NOW + i * step_s * 1000
        ready += sum(n for at, n in starting if at <= i)
        starting = [(at, n) for at, n in starting if at > i]
        m = Metrics(
            at_ms=now, nodes_ready=ready, nodes_starting=sum(n for _, n in starting),
            cpu_total_m=ready * CPU, cpu_used_m=int(base[0] * CPU * (1 + tol * ec)),
            mem_total_mib=ready * MEM, mem_used_mib=int(base[1] * MEM * (1 + tol * em)),
            packs=int(base[2] * policy.packs_per_node * (1 + tol * ep)),
        )
        d = evaluate(policy, m, h, now)
        h = h.record(d, m)
        if d.action is Action.ADD:
            starting.append((i + boot_steps, d.count))
        elif d.action is Action.REMOVE:
            left = d.count
            while left and starting:
                at, n = starting.pop()
                if n > left:
                    starting.append((at, n - left))
                    left = 0
                else:
                    left -= n
            ready -= left
        if d.action is not Action.HOLD:
            seen.add(d.action)
    assert not {Action.ADD, Action.REMOVE} <= seen


@st.composite
def seasonal_samples(draw: st.DrawFn) -> tuple[Sample, ...]:
    m = SHORT.season_samples
    n = draw(st.integers(2 * m, 3 * m))
    values = st.tuples(st.floats(0, 4000 * CPU), st.floats(0, 4000 * MEM), st.floats(0, 300_000))
    return tuple(Sample(*v) for v in draw(st.lists(values, min_size=n, max_size=n)))


def with_samples(h: AutoscaleHistory, samples: tuple[Sample, ...]) -> AutoscaleHistory:
    return replace(h, samples=samples, closed=len(samples), sample_interval_s=SHORT.sample_interval_s)


def same_outcome(a: Decision, b: Decision) -> None:
    assert (a.action, a.count, a.desired, a.recommended, a.winner, a.clamps) == \
           (b.action, b.count, b.desired, b.recommended, b.winner, b.clamps)


@settings(max_examples=150, deadline=None)
@given(policies(forecast=SHORT), metrics_st(), histories(), seasonal_samples())
def test_a_forecast_never_causes_a_removal(
    policy: Policy, m: Metrics, h: AutoscaleHistory, samples: tuple[Sample, ...],
) -> None:
    h = with_samples(h, samples)
    acting = evaluate(policy, m, h, NOW)
    without = evaluate(replace(policy, forecast=replace(SHORT, mode=ForecastMode.OFF)), m, h, NOW)
    consistent(acting)
    assert acting.desired >= without.desired
    if acting.action is Action.REMOVE:
        assert without.action is Action.REMOVE and without.count >= acting.count
    if acting.forecast is not None and m.nodes_ready:
        assert acting.forecast.acting


@settings(max_examples=150, deadline=None)
@given(policies(forecast=replace(SHORT, mode=ForecastMode.FORECAST_ONLY)), metrics_st(), histories(),
       seasonal_samples())
def test_forecast_only_never_changes_the_decision(
    policy: Policy, m: Metrics, h: AutoscaleHistory, samples: tuple[Sample, ...],
) -> None:
    h = with_samples(h, samples)
    shown = evaluate(policy, m, h, NOW)
    without = evaluate(replace(policy, forecast=replace(SHORT, mode=ForecastMode.OFF)), m, h, NOW)
    same_outcome(shown, without)
    if m.nodes_ready and shown.recommended is not None:
        assert shown.forecast is not None and not shown.forecast.acting


@settings(max_examples=100, deadline=None)
@given(policies(), metrics_st(), histories())
def test_a_decision_is_a_function_of_its_inputs(policy: Policy, m: Metrics, h: AutoscaleHistory) -> None:
    assert evaluate(policy, m, h, NOW) == evaluate(policy, m, h, NOW)
