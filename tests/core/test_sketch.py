"""Tests of the mergeable quantile sketch (canidae.core.sketch) against exact quantiles."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from canidae.core.errors import InvalidInput
from canidae.core.sketch import ALPHA, Sketch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QS = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
# Room for rounding in the bucket arithmetic, far below alpha.
SLACK = 1e-9

values = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)
value_lists = st.lists(st.one_of(values, st.just(0.0)), min_size=1, max_size=400)


def exact_quantile(xs: list[float], q: float) -> float:
    """The definition the sketch documents: the value of 0-based rank floor(q * (n - 1))."""
    return sorted(xs)[math.floor(q * (len(xs) - 1))]


def sketch_of(xs: list[float], **kw: Any) -> Sketch:
    s = Sketch(**kw)
    s.add_many(xs)
    return s


def assert_within_alpha(s: Sketch, xs: list[float], alpha: float = ALPHA) -> None:
    for q in QS:
        exact, got = exact_quantile(xs, q), s.quantile(q)
        assert got is not None
        assert abs(got - exact) <= (alpha + SLACK) * exact, (q, exact, got)


@FAST
@given(value_lists)
def test_every_quantile_is_within_alpha_of_the_exact_one(xs: list[float]) -> None:
    assert_within_alpha(sketch_of(xs), xs)


@FAST
@given(value_lists, st.sampled_from([0.001, 0.02, 0.05]))
def test_the_guarantee_holds_for_other_accuracies(xs: list[float], alpha: float) -> None:
    assert_within_alpha(sketch_of(xs, alpha=alpha), xs, alpha)


def test_values_on_bucket_edges_stay_within_alpha() -> None:
    s = Sketch()
    xs = [s.gamma**k for k in range(-200, 200)]
    s.add_many(xs)
    assert_within_alpha(s, xs)


def test_a_coarser_sketch_misses_the_bound_so_the_check_can_fail() -> None:
    xs = [1.0 + i / 1000 for i in range(1000)]
    with pytest.raises(AssertionError):
        assert_within_alpha(sketch_of(xs, alpha=0.2), xs, ALPHA)


def test_count_sum_min_max_are_exact() -> None:
    xs = [3.0, 0.0, 1.5, 1e6, 2.25]
    s = sketch_of(xs)
    s.add(7.0, count=3)
    assert (s.count, s.sum, s.min, s.max) == (8, sum(xs) + 21.0, 0.0, 1e6)
    assert s.quantile(0.0) == 0.0 and s.quantile(1.0) == 1e6


def test_an_empty_sketch_has_no_quantiles() -> None:
    s = Sketch()
    assert s.quantile(0.5) is None and s.quantiles([0.1, 0.9]) == [None, None]
    assert (s.count, s.sum, s.min, s.max) == (0, 0.0, None, None)


def test_quantiles_in_one_walk_equal_one_at_a_time() -> None:
    rng = random.Random(3)
    s = sketch_of([rng.expovariate(1.0) for _ in range(2000)])
    qs = [0.99, 0.1, 0.5, 0.5, 1.0, 0.0]
    assert s.quantiles(qs) == [s.quantile(q) for q in qs]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, True, "1", None])
def test_add_rejects_values_that_are_not_non_negative_numbers(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        Sketch().add(bad)


@pytest.mark.parametrize("q", [-0.1, 1.1, math.nan, True])
def test_quantile_rejects_q_outside_zero_one(q: Any) -> None:
    with pytest.raises(InvalidInput):
        sketch_of([1.0]).quantile(q)


# -- merging ----------------------------------------------------------------------------------


@FAST
@given(st.lists(value_lists, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_merging_in_any_order_equals_the_sketch_of_the_union(parts: list[list[float]], rnd: random.Random) -> None:
    union = [x for p in parts for x in p]
    whole = sketch_of(union)
    sketches = [sketch_of(p) for p in parts]
    rnd.shuffle(sketches)
    left = Sketch.merged(sketches)
    # a right fold: s0 + (s1 + (s2 + ...))
    right = sketches[-1].copy()
    for s in reversed(sketches[:-1]):
        t = s.copy()
        t.merge(right)
        right = t
    for m in (left, right):
        assert m == whole
        assert m.quantiles(QS) == whole.quantiles(QS)
    assert_within_alpha(left, union)


@FAST
@given(st.lists(st.lists(values, min_size=1, max_size=60), min_size=2, max_size=4),
       st.randoms(use_true_random=False))
def test_collapsed_sketches_merge_the_same_in_any_order(parts: list[list[float]], rnd: random.Random) -> None:
    sketches = [sketch_of(p, max_buckets=8) for p in parts]
    a = Sketch.merged(sketches)
    rnd.shuffle(sketches)
    b = Sketch.merged(reversed(sketches))
    assert a == b and a.buckets <= 8
    union = [x for p in parts for x in p]
    assert a.count == len(union) and a.max == max(union)
    # The top buckets are never collapsed: the second highest value is still within alpha.
    q = (len(union) - 2) / (len(union) - 1)
    exact = exact_quantile(union, q)
    assert abs((a.quantile(q) or 0) - exact) <= (ALPHA + SLACK) * exact


def test_collapsing_keeps_the_high_quantiles_accurate() -> None:
    xs = [1.0 * 1.5**i for i in range(200)]  # 200 values, each in its own bucket
    s = sketch_of(xs, max_buckets=50)
    assert s.buckets == 50 and s.floor is not None and s.count == 200
    for q in (0.8, 0.9, 0.99, 1.0):
        exact = exact_quantile(xs, q)
        assert abs((s.quantile(q) or 0) - exact) <= (ALPHA + SLACK) * exact
    # Low quantiles fell into the folded bucket: no longer within alpha, as documented.
    assert abs((s.quantile(0.1) or 0) - exact_quantile(xs, 0.1)) > ALPHA * exact_quantile(xs, 0.1)


def test_merge_leaves_the_other_sketch_and_merged_leaves_its_inputs() -> None:
    a, b = sketch_of([1.0, 2.0]), sketch_of([3.0, 400.0])
    before = b.to_wire()
    a.merge(b)
    assert b.to_wire() == before and a.count == 4
    m = Sketch.merged([a, b])
    assert a.count == 4 and b.count == 2 and m.count == 6


def test_sketches_of_different_accuracy_do_not_merge() -> None:
    with pytest.raises(InvalidInput):
        sketch_of([1.0]).merge(sketch_of([1.0], alpha=0.02))


# -- wire -------------------------------------------------------------------------------------


@FAST
@given(value_lists, st.sampled_from([8, 2048]))
def test_wire_round_trip_through_json(xs: list[float], max_buckets: int) -> None:
    s = sketch_of(xs, max_buckets=max_buckets)
    back = Sketch.from_wire(json.loads(json.dumps(s.to_wire(), allow_nan=False)), max_buckets=max_buckets)
    assert back == s and back.to_wire() == s.to_wire()
    assert back.quantiles(QS) == s.quantiles(QS)


def test_empty_sketch_round_trips() -> None:
    assert Sketch.from_wire(Sketch().to_wire()) == Sketch()


def test_wire_keys_are_gaps() -> None:
    s = Sketch()
    for x in (1.0, s.gamma**2, s.gamma**3, s.gamma**10):
        s.add(x)
    assert s.to_wire()["k"] == [0, 2, 1, 7]


def _good() -> dict[str, Any]:
    return sketch_of([0.0, 1.0, 2.0, 50.0]).to_wire()


BAD_WIRE: list[tuple[str, Any]] = [
    ("not an object", [1, 2]),
    ("other accuracy", {**_good(), "a": 0.02}),
    ("unknown field", {**_good(), "x": 1}),
    ("keys not a list", {**_good(), "k": "0,1"}),
    ("lengths differ", {**_good(), "c": [1]}),
    ("keys not increasing", {**_good(), "k": [0, 0, 1]}),
    ("negative gap", {**_good(), "k": [0, -1, 5]}),
    ("float key", {**_good(), "k": [0.5, 1, 1]}),
    ("zero count", {**_good(), "c": [1, 0, 1]}),
    ("bool count", {**_good(), "c": [1, True, 1]}),
    ("negative zero count", {**_good(), "z": -1}),
    ("key out of range", {**_good(), "k": [10**9, 1, 1]}),
    ("too many buckets", {"a": ALPHA, "z": 0, "s": 1.0, "k": [0] + [1] * 3000, "c": [1] * 3001,
                          "lo": 1.0, "hi": 1e30}),
    ("nan sum", {**_good(), "s": math.nan}),
    ("min above max", {**_good(), "lo": 60.0}),
    ("negative min", {**_good(), "lo": -1.0}),
    ("missing min", {k: v for k, v in _good().items() if k != "lo"}),
    ("empty with a max", {**Sketch().to_wire(), "hi": 1.0}),
    ("floor above lowest key", {**_good(), "f": 10}),
    ("count over 2**53", {**_good(), "z": 2**60}),
]


@pytest.mark.parametrize("wire", [w for _, w in BAD_WIRE], ids=[n for n, _ in BAD_WIRE])
def test_bad_wire_input_is_rejected(wire: Any) -> None:
    with pytest.raises(InvalidInput):
        Sketch.from_wire(wire)


def test_the_good_wire_the_bad_ones_derive_from_is_accepted() -> None:
    assert Sketch.from_wire(_good()).count == 4
