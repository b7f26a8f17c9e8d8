"""Tests of the ring index (canidae.core.ringindex): positions, walks and bounded-load checks,
against a brute-force model of the circle, and the exact bounded-load arithmetic."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from canidae.core.errors import InvalidInput, NoCapacity
from canidae.core.ring import HASH_SPACE, HashRing, key_hash, vnode_positions
from canidae.core.ringindex import LoadBound, RingIndex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def model_points(ring: HashRing) -> list[tuple[int, str]]:
    """Every (position, node) of the ring, computed from the layout rule alone."""
    return sorted((p, n) for n in ring.nodes() for p in vnode_positions(n, ring.vnode_count(n)))


def model_walk(pts: list[tuple[int, str]], h: int) -> list[str]:
    start = next((i for i, (p, _) in enumerate(pts) if p >= h), 0)
    out: list[str] = []
    for p, n in pts[start:] + pts[:start]:
        if n not in out:
            out.append(n)
    return out


def ring_of(ids: list[str], vnodes: int, weights: list[float] | None = None) -> HashRing:
    r = HashRing(vnodes)
    for i, n in enumerate(ids):
        r.add_node(n, weights[i] if weights else 1.0)
    return r


@FAST
@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**32))
def test_owner_slot_and_walk_match_the_model(n: int, vnodes: int, seed: int) -> None:
    rng = random.Random(seed)
    r = ring_of([f"node-{i}" for i in range(n)], vnodes, [rng.choice([0.5, 1.0, 2.0]) for _ in range(n)])
    idx = r.index()
    pts = model_points(r)
    assert len(idx) == len(pts) and idx.members == n
    probes = [rng.randrange(HASH_SPACE) for _ in range(50)] + [p for p, _ in pts] + [0, HASH_SPACE - 1]
    probes += [p + 1 for p, _ in pts if p + 1 < HASH_SPACE]
    for h in probes:
        want = model_walk(pts, h)
        assert idx.owner(h) == want[0] == r.lookup_hash(h)
        assert list(idx.walk(h)) == want
        slot = idx.slot(h)
        assert slot == next((i for i, (p, _) in enumerate(pts) if p >= h), len(pts))


def test_preference_is_the_index_walk_from_the_key() -> None:
    r = ring_of([f"n{i}" for i in range(9)], 20)
    for k in (f"pack-{i}" for i in range(200)):
        assert list(r.preference(k)) == list(r.index().walk(key_hash(k)))


def test_first_with_room_and_met_before_follow_the_walk() -> None:
    r = ring_of([f"n{i}" for i in range(8)], 16)
    idx = r.index()
    rng = random.Random(3)
    for _ in range(200):
        h = rng.randrange(HASH_SPACE)
        order = list(idx.walk(h))
        room = {n: rng.choice([0, 0, 1]) for n in order}
        with_room = [n for n in order if room[n] > 0]
        assert idx.first_with_room(h, room) == (with_room[0] if with_room else None)
        allowed = set(rng.sample(order, 3))
        fits = [n for n in with_room if n in allowed]
        assert idx.first_with_room(h, room, allowed) == (fits[0] if fits else None)
        stop = rng.choice(order)
        wanted = set(rng.sample(order, 4))
        assert idx.met_before(h, stop, wanted) == [n for n in order[: order.index(stop)] if n in wanted]


def test_a_snapshot_does_not_change_with_the_ring() -> None:
    r = ring_of([f"n{i}" for i in range(5)], 10)
    before = r.index()
    walks = [list(before.walk(h)) for h in range(0, HASH_SPACE, HASH_SPACE // 64)]
    assert r.index() is before  # kept while the membership stands
    r.add_node("late")
    r.remove_node("n0")
    after = r.index()
    assert after is not before and after.members == 5
    assert [list(before.walk(h)) for h in range(0, HASH_SPACE, HASH_SPACE // 64)] == walks
    assert "late" in set(after.walk(0)) and "n0" not in set(after.walk(0))


def test_an_empty_index_has_no_owner_and_an_empty_walk() -> None:
    idx = HashRing().index()
    assert len(idx) == 0 and idx.members == 0
    assert list(idx.walk(123)) == []
    assert idx.first_with_room(5, {}) is None
    with pytest.raises(NoCapacity):
        idx.owner(42)
    with pytest.raises(NoCapacity):
        HashRing().lookup_hash(42)
    with pytest.raises(InvalidInput):
        RingIndex([1, 2], ["a", "b"], 2)  # the wrap-around owner is missing


@pytest.mark.parametrize("c", [1.1, 1.25, 1.5, 2.0, 3])
def test_load_bound_terms_agree_with_the_exact_cap(c: float) -> None:
    bound = LoadBound(c)
    assert bound.factor == Fraction(repr(float(c)))
    rng = random.Random(7)
    for _ in range(500):
        total, weight = rng.randrange(0, 5000), rng.randrange(1, 3_000_000)
        total_weight = weight + rng.randrange(0, 90_000_000)
        cap = bound.cap(total, weight, total_weight)
        assert cap == math.ceil(Fraction(repr(float(c))) * total * weight / total_weight)
        kn, kd = bound.terms(total, total_weight)
        for used in (0, max(0, cap - 1), cap, cap + 1):
            assert LoadBound.admits(used, weight, kn, kd) == (used < cap)


def test_load_bound_takes_the_printed_decimal() -> None:
    assert LoadBound(1.1).cap(100, 1, 1) == 110  # with the binary float it would be 111


@pytest.mark.parametrize("bad", [1.0, 0.5, float("nan"), float("inf"), True, "1.5", None])
def test_load_bound_refuses_a_bad_factor(bad: object) -> None:
    with pytest.raises(InvalidInput, match="load factor"):
        LoadBound(bad)  # type: ignore[arg-type]
