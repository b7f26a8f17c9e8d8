"""Tests of adaptive pack-metric sampling and estimated totals (canidae.core.sampling)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from canidae.core.errors import InvalidInput
from canidae.core.ring import key_hash
from canidae.core.sampling import (
    FIELDS,
    Estimate,
    PackReading,
    PackSample,
    estimate_total,
    estimate_totals,
    is_sampled,
    sample_packs,
    sample_rate,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# -- a simulated fleet of packs ---------------------------------------------------------------


def simulate(n: int, seed: int, interval: int = 0) -> list[PackReading]:
    """``n`` packs whose names depend on ``seed`` only and whose readings change every interval.

    CPU and memory are log-normal, about 2% of packs are in error (and restart), about 1% are
    outliers that burn twenty times their usual CPU.
    """
    rng = random.Random(seed * 1_000_003 + interval)
    out = []
    for i in range(n):
        error = rng.random() < 0.02
        outlier = rng.random() < 0.01
        cpu = rng.lognormvariate(4.0, 1.0) * (20.0 if outlier else 1.0)
        out.append(PackReading(
            name=f"pack-{seed}-{i}", cpu_m=cpu, mem_mib=rng.lognormvariate(5.0, 0.7),
            restarts=(rng.randint(1, 5) if error else int(rng.random() < 0.05)),
            yips=int(rng.expovariate(1 / 50)), error=error, outlier=outlier,
        ))
    return out


def truth(readings: list[PackReading]) -> dict[str, float]:
    return {f: float(len(readings)) if f == "packs" else math.fsum(getattr(r, f) for r in readings)
            for f in FIELDS}


# -- rates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("packs", "rate"), [
    (0, 1.0), (1, 1.0), (100, 1.0), (101, 0.1), (1_000, 0.1), (1_001, 0.01), (10_000, 0.01),
    (10_001, 0.001), (100_000, 0.001), (10**9, 0.001),
])
def test_sample_rate_follows_the_seed_tiers(packs: int, rate: float) -> None:
    assert sample_rate(packs) == rate


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", None])
def test_sample_rate_rejects_a_bad_pack_count(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        sample_rate(bad)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, 1e-9, math.nan, True])
def test_is_sampled_rejects_a_bad_rate(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        is_sampled("web", bad)


# -- which packs ------------------------------------------------------------------------------


def test_every_pack_is_sampled_at_rate_one() -> None:
    assert all(is_sampled(f"p{i}", 1.0) for i in range(5000))


@pytest.mark.parametrize("rate", [0.1, 0.01, 0.001])
def test_the_share_sampled_is_the_rate(rate: float) -> None:
    n = 200_000
    got = sum(is_sampled(f"svc-{i}", rate) for i in range(n))
    assert abs(got - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=100),
       st.sampled_from([1.0, 0.1, 0.01, 0.001]), st.sampled_from([1.0, 0.1, 0.01, 0.001]))
def test_a_lower_rate_samples_a_subset(names: list[str], r1: float, r2: float) -> None:
    lo, hi = sorted((r1, r2))
    assert {n for n in names if is_sampled(n, lo)} <= {n for n in names if is_sampled(n, hi)}


def test_the_sample_does_not_follow_the_ring() -> None:
    # Were the ring's hash used, every sampled pack would sit on the ring's first 10% of arc.
    rate = 0.1
    sampled = [f"job-{i}" for i in range(100_000) if is_sampled(f"job-{i}", rate)]
    on_first_arc = sum(key_hash(n) < rate * 2**64 for n in sampled)
    n = len(sampled)
    assert abs(on_first_arc - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate))


def test_errors_and_outliers_are_always_kept_with_weight_one() -> None:
    readings = simulate(10_000, seed=1)
    flagged = {r.name for r in readings if r.error or r.outlier}
    for rate in (1.0, 0.1, 0.01, 0.001):
        samples = sample_packs(readings, rate)
        kept = {s.name: s for s in samples}
        assert flagged <= set(kept)
        assert all(kept[n].weight == 1.0 for n in flagged)
        hashed = [s for s in samples if not s.always_kept]
        assert all(s.weight == 1.0 / rate for s in hashed)
        assert {s.name for s in hashed} == {
            r.name for r in readings if not (r.error or r.outlier) and is_sampled(r.name, rate)}


@pytest.mark.parametrize("rate", [0.1, 0.01])
def test_the_same_packs_are_sampled_every_interval(rate: float) -> None:
    intervals = [simulate(10_000, seed=2, interval=t) for t in range(4)]
    # The readings, and which packs are in error, change from interval to interval...
    assert intervals[0][0].cpu_m != intervals[1][0].cpu_m
    flagged_ever = {r.name for rs in intervals for r in rs if r.error or r.outlier}
    hashed_sets = []
    for readings in intervals:
        hashed = {s.name for s in sample_packs(readings, rate) if not s.always_kept}
        hashed_sets.append(hashed - flagged_ever)
    # ...but among packs never flagged, exactly the same ones are sampled each time.
    assert all(h == hashed_sets[0] for h in hashed_sets)
    assert len(hashed_sets[0]) > 0.5 * rate * 10_000


# -- estimates --------------------------------------------------------------------------------


# About 1,000 and 100 hashed samples: the 3-sigma bound is ~10-20% of the truth at 10% and
# ~30-80% at 1% (restarts, which few packs have, are the widest).
@pytest.mark.parametrize(("rate", "widest"), [(0.1, 0.25), (0.01, 1.0)])
def test_totals_over_10000_packs_are_within_the_stated_bound(rate: float, widest: float) -> None:
    readings = simulate(10_000, seed=3)
    real = truth(readings)
    samples = sample_packs(readings, rate)
    assert len(samples) < 10_000 * rate + 500  # the hashed share plus ~3% flagged packs
    for f in FIELDS:
        est = estimate_total(samples, f)
        assert est.bound > 0
        assert abs(est.value - real[f]) <= est.bound, (f, est, real[f])
        # The bound says something: a share of the truth, not a multiple of it.
        assert est.bound <= widest * real[f], (f, est.bound / real[f])


def test_the_bound_covers_the_truth_in_nearly_every_simulated_fleet() -> None:
    # 3 standard errors cover about 99.7% of the time under the normal approximation; demand
    # 95% over 150 fleets of 2,000 packs at 10% (about 200 hashed samples each). Unbiased: the
    # mean relative error is within 4 of its own standard errors of zero.
    fleets = 150
    covered = dict.fromkeys(FIELDS, 0)
    rel_err = dict.fromkeys(FIELDS, 0.0)
    rel_se = dict.fromkeys(FIELDS, 0.0)
    for seed in range(100, 100 + fleets):
        readings = simulate(2_000, seed=seed)
        real = truth(readings)
        ests = estimate_totals(sample_packs(readings, 0.1))
        for f in FIELDS:
            err = ests[f].value - real[f]
            covered[f] += abs(err) <= ests[f].bound
            rel_err[f] += err / real[f]
            rel_se[f] += ests[f].stderr / real[f]
    for f in FIELDS:
        assert covered[f] >= 0.95 * fleets, (f, covered[f])
        mean_err, mean_se = rel_err[f] / fleets, rel_se[f] / fleets
        assert abs(mean_err) <= 4 * mean_se / math.sqrt(fleets), (f, mean_err, mean_se)


def test_at_rate_one_the_estimate_is_exact() -> None:
    readings = simulate(3_000, seed=4)
    real = truth(readings)
    ests = estimate_totals(sample_packs(readings, 1.0))
    for f in FIELDS:
        assert math.isclose(ests[f].value, real[f], rel_tol=1e-12) and ests[f].bound == 0.0


def test_estimates_of_disjoint_groups_add_up() -> None:
    samples = sample_packs(simulate(5_000, seed=5), 0.01)
    a, b = samples[: len(samples) // 3], samples[len(samples) // 3:]
    for f in FIELDS:
        whole, parts = estimate_total(samples, f), estimate_total(a, f) + estimate_total(b, f)
        assert math.isclose(whole.value, parts.value) and math.isclose(whole.variance, parts.variance)
        assert whole.samples == parts.samples == len(samples)
    assert Estimate() + Estimate(2.0, 4.0, 1) == Estimate(2.0, 4.0, 1)


def test_estimate_rejects_an_unknown_field() -> None:
    with pytest.raises(InvalidInput):
        estimate_total([], "latency")


# -- samples on the wire ----------------------------------------------------------------------


def test_pack_sample_wire_round_trip() -> None:
    samples = sample_packs(simulate(2_000, seed=6), 0.1)
    wire = json.loads(json.dumps([s.to_wire() for s in samples]))
    assert [PackSample.from_wire(w) for w in wire] == samples


BAD_ROWS: list[tuple[str, Any]] = [
    ("not a list", {"name": "web"}),
    ("short", ["web", 1.0, 0, 0, 0, 0]),
    ("bad name", ["-web", 1.0, 0, 0, 0, 0, 0]),
    ("weight below one", ["web", 0.5, 0, 0, 0, 0, 0]),
    ("weight too large", ["web", 1e7, 0, 0, 0, 0, 0]),
    ("error with weight", ["web", 10.0, 0, 0, 0, 0, 1]),
    ("negative cpu", ["web", 1.0, -1, 0, 0, 0, 0]),
    ("nan memory", ["web", 1.0, 0, math.nan, 0, 0, 0]),
    ("float restarts", ["web", 1.0, 0, 0, 1.5, 0, 0]),
    ("bool yips", ["web", 1.0, 0, 0, 0, True, 0]),
    ("flags out of range", ["web", 1.0, 0, 0, 0, 0, 4]),
]


@pytest.mark.parametrize("row", [r for _, r in BAD_ROWS], ids=[n for n, _ in BAD_ROWS])
def test_bad_sample_rows_are_rejected(row: Any) -> None:
    with pytest.raises(InvalidInput):
        PackSample.from_wire(row)
