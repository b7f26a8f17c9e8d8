"""Tests of the consistent-hash ring (canidae.core.ring) against a brute-force model."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter

import canidae.core.ring as ring_mod
import pytest
import xxhash
from canidae.core.errors import InvalidInput, NoCapacity, NotFound
from canidae.core.ring import HASH_SPACE, HashRing, key_hash, replicas
from canidae.core.ringbounded import bounded_caps, place_bounded, rebalance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- a brute-force model ----------------------------------------------------------------------


def model_points(members: dict[str, float], vnodes: int) -> list[tuple[int, str]]:
    """Every (position, node) pair, sorted by position then node id."""
    pts = []
    for n, w in members.items():
        for i in range(max(1, round(vnodes * w))):
            pts.append((key_hash(f"{n}#{i}"), n))
    return sorted(pts)


def model_lookup(pts: list[tuple[int, str]], h: int) -> str:
    for p, n in pts:
        if p >= h:
            return n
    return pts[0][1]


def build(n: int, vnodes: int = 160, prefix: str = "n", weights: list[float] | None = None) -> HashRing:
    r = HashRing(vnodes)
    for i in range(n):
        r.add_node(f"{prefix}{i:04d}", weights[i] if weights else 1.0)
    return r


KEYS = [f"pack-{i:05d}" for i in range(20_000)]


# -- hashing and lookup -----------------------------------------------------------------------


def test_key_hash_is_xxh64_of_utf8_seed_0() -> None:
    for k in ("", "a", "pack-1", "héllo/∆"):
        assert key_hash(k) == xxhash.xxh64_intdigest(k.encode("utf-8"), seed=0)
        assert 0 <= key_hash(k) < HASH_SPACE


def test_lookup_is_first_point_clockwise_with_wrap_around() -> None:
    r = build(7, vnodes=3)
    points, owners = r._arrays()
    assert points == sorted(points) and len(points) == 21 and len(owners) == 22
    for i, p in enumerate(points):
        assert r.lookup_hash(p) == owners[i]          # a key exactly on a point belongs to it
        assert r.lookup_hash(p - 1) == owners[i]      # just before it too
        nxt = owners[(i + 1) % len(points)]
        assert r.lookup_hash(p + 1) == nxt            # just after: the next point clockwise
    assert r.lookup_hash(points[-1] + 1) == owners[0]  # past the last point wraps to the first
    assert r.lookup_hash(HASH_SPACE - 1) == owners[0]
    assert r.lookup_hash(0) == owners[0]


def test_lookup_matches_model_single_and_bulk() -> None:
    members = {f"n{i}": w for i, w in enumerate([1, 2, 0.5, 1, 3, 1, 0.01])}
    r = HashRing(20)
    for n, w in members.items():
        r.add_node(n, w)
    pts = model_points(members, 20)
    keys = KEYS[:2000]
    want = [model_lookup(pts, key_hash(k)) for k in keys]
    assert [r.lookup(k) for k in keys] == want
    assert r.lookup_many(keys) == want           # few keys: plain bisection
    r.build_index()
    assert r.lookup_many(keys) == want           # with the bucket index
    assert [r.lookup(k) for k in keys] == want


@given(seed=st.integers(0, 2**32), n=st.integers(1, 40), vnodes=st.sampled_from([1, 2, 7, 50]))
@FAST
def test_bucket_index_agrees_with_bisection_at_edges(seed: int, n: int, vnodes: int) -> None:
    rnd = random.Random(seed)
    r = HashRing(vnodes)
    for i in range(n):
        r.add_node(f"x{rnd.randrange(10**6)}-{i}", rnd.choice([0.25, 1.0, 2.5]))
    r.build_index()
    points, owners = r._arrays()
    probes = points + [p + 1 for p in points] + [p - 1 for p in points if p]
    probes += [0, HASH_SPACE - 1] + [rnd.randrange(HASH_SPACE) for _ in range(200)]
    pts = [(p, owners[i]) for i, p in enumerate(points)]
    assert r._owners_of(probes) == [model_lookup(pts, h) for h in probes]


index_ops = st.lists(
    st.tuples(st.sampled_from(["add", "add", "remove", "read", "bulk"]), st.integers(0, 40),
              st.sampled_from([0.1, 0.5, 1.0, 2.0])),
    min_size=1, max_size=50,
)


def probes_for(r: HashRing, rnd: random.Random) -> list[int]:
    points = r._arrays()[0]
    probes = points + [p + 1 for p in points] + [p - 1 for p in points if p]
    return probes + [0, HASH_SPACE - 1] + [rnd.randrange(HASH_SPACE) for _ in range(100)]


def check_index(r: HashRing, rnd: random.Random) -> None:
    points, owners = r._arrays()
    pts = [(p, owners[i]) for i, p in enumerate(points)]
    probes = probes_for(r, rnd)
    want = [model_lookup(pts, h) for h in probes]
    if r._table is None:
        r.build_index()
    assert r._owners_of(probes) == want
    keys = [f"key{i}" for i in range(200)]
    assert [r.lookup(k) for k in keys] == [model_lookup(pts, key_hash(k)) for k in keys]


@given(script=index_ops, vnodes=st.sampled_from([1, 3, 20]), seed=st.integers(0, 1000))
@FAST
def test_index_patched_by_merges_agrees_with_bisection(script, vnodes: int, seed: int) -> None:
    rnd = random.Random(seed)
    r = HashRing(vnodes)
    for i in range(12):
        r.add_node(f"base-{i}")
    r.build_index()
    members = {f"base-{i}" for i in range(12)}
    for op, i, w in script:
        n = f"node-{i}"
        if op == "add" and n not in members:
            r.add_node(n, w)
            members.add(n)
        elif op == "remove" and members - {n} and n in members:
            r.remove_node(n)
            members.discard(n)
        elif op == "read":
            r.lookup("probe")  # merges, patching the index when there is one
        elif op == "bulk":
            check_index(r, rnd)
    check_index(r, rnd)


def test_index_patch_with_colliding_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring_mod, "_xxh64", lambda b: xxhash.xxh64_intdigest(b) % 5000)
    rnd = random.Random(3)
    r = HashRing(8)
    for i in range(30):
        r.add_node(f"c{i}")
    r.build_index()
    for step in range(40):
        n = f"c{rnd.randrange(40)}"
        if n in r and len(r) > 1:
            r.remove_node(n)
        elif n not in r:
            r.add_node(n)
        r.lookup("x")
        points, owners = r._arrays()
        pts = [(p, owners[i]) for i, p in enumerate(points)]
        probes = list(range(0, 5001, 7)) + points
        assert r._owners_of(probes) == [model_lookup(pts, h) for h in probes], step


def test_index_survives_one_node_in_and_out_at_scale() -> None:
    r = build(200, vnodes=40)
    r.build_index()
    before = r.lookup_many(KEYS)
    table = r._table
    r.add_node("extra")
    with_extra = r.lookup_many(KEYS)
    assert r._table is table  # patched, not rebuilt
    fresh = build_with(r.nodes(), 40)
    fresh.build_index()
    assert with_extra == fresh.lookup_many(KEYS)
    r.remove_node("extra")
    assert r.lookup_many(KEYS) == before
    assert r._table is table


def test_vnode_counts_and_accessors() -> None:
    r = HashRing(vnodes=10)
    r.add_node("a", 1.0)
    r.add_node("b", 0.01)
    r.add_node("c", 2.44)
    assert r.vnode_count("a") == 10 and r.vnode_count("b") == 1 and r.vnode_count("c") == 24
    assert r.point_count() == 35 and len(r._arrays()[0]) == 35
    assert r.weight("c") == 2.44
    assert len(r) == 3 and "a" in r and "z" not in r and 3 not in r
    assert r.nodes() == ["a", "b", "c"]
    assert r.vnodes == 10
    with pytest.raises(NotFound):
        r.weight("z")
    with pytest.raises(NotFound):
        r.vnode_count("z")


# -- incremental changes ----------------------------------------------------------------------


ops = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "read"]), st.integers(0, 30),
              st.sampled_from([0.5, 1.0, 1.5, 3.0])),
    min_size=1, max_size=60,
)


@given(script=ops, vnodes=st.sampled_from([1, 8, 40]))
@FAST
def test_incremental_changes_equal_a_fresh_ring(script, vnodes: int) -> None:
    r = HashRing(vnodes)
    members: dict[str, float] = {}
    for op, i, w in script:
        n = f"node-{i}"
        if op == "add" and n not in members:
            r.add_node(n, w)
            members[n] = w
        elif op == "remove" and n in members:
            r.remove_node(n)
            del members[n]
        else:
            if members:
                r.lookup("probe")  # merges what is pending, by the incremental path when small
    fresh = HashRing(vnodes)
    for n in sorted(members, reverse=True):  # another insertion order
        fresh.add_node(n, members[n])
    assert r._arrays() == fresh._arrays()
    assert r.nodes() == sorted(members)
    if members:
        keys = KEYS[:500]
        assert r.lookup_many(keys) == fresh.lookup_many(keys)
        pts = model_points(members, vnodes)
        assert [p for p, _ in pts] == r._arrays()[0]
        assert [n for _, n in pts] == r._arrays()[1][:-1]


def test_add_and_remove_one_node_equal_a_rebuild_at_scale() -> None:
    r = build(300, vnodes=40)
    r.build_index()
    before = r.lookup_many(KEYS)
    r.add_node("newcomer", 1.0)
    after_add = r.lookup_many(KEYS)
    assert r._arrays() == build_with(r.nodes(), 40)._arrays()
    # Keys either stay or go to the newcomer; never between two old nodes.
    assert all(a == b or a == "newcomer" for a, b in zip(after_add, before))
    r.remove_node("newcomer")
    assert r.lookup_many(KEYS) == before
    r.remove_node("n0007")
    after_remove = r.lookup_many(KEYS)
    assert all(a == b for a, b in zip(after_remove, before) if b != "n0007")
    assert "n0007" not in after_remove


def build_with(nodes: list[str], vnodes: int) -> HashRing:
    r = HashRing(vnodes)
    for n in nodes:
        r.add_node(n)
    return r


def test_readd_before_merge_with_other_weight() -> None:
    r = build(5, vnodes=10)
    r.lookup("x")
    r.remove_node("n0001")
    r.add_node("n0001", 3.0)  # removed and re-added between two reads
    r.remove_node("n0002")
    r.add_node("n0002", 2.0)
    r.remove_node("n0002")
    fresh = HashRing(10)
    for n in ("n0000", "n0003", "n0004"):
        fresh.add_node(n)
    fresh.add_node("n0001", 3.0)
    assert r._arrays() == fresh._arrays()
    assert r.vnode_count("n0001") == 30


def test_colliding_points_are_ordered_by_node_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # A weak hash makes points collide, to exercise the tie rule on every path.
    monkeypatch.setattr(ring_mod, "_xxh64", lambda b: xxhash.xxh64_intdigest(b) % 97)
    members = {f"m{i}": 1.0 for i in range(12)}

    def weak_points() -> list[tuple[int, str]]:
        return sorted((xxhash.xxh64_intdigest(f"{n}#{i}".encode()) % 97, n)
                      for n in members for i in range(9))

    a = HashRing(9)
    for n in sorted(members):
        a.add_node(n)
    b = HashRing(9)
    for n in sorted(members, reverse=True):
        b.add_node(n)
        b.lookup("x")  # merge one at a time
    pts = weak_points()
    assert a._arrays()[0] == b._arrays()[0] == [p for p, _ in pts]
    assert a._arrays()[1][:-1] == b._arrays()[1][:-1] == [n for _, n in pts]
    b.remove_node("m3")
    del members["m3"]
    b.lookup("x")
    pts = weak_points()
    assert b._arrays()[1][:-1] == [n for _, n in pts]
    b.build_index()
    probes = list(range(100))
    assert b._owners_of(probes) == [model_lookup(pts, h) for h in probes]


# -- preference, ownership, weights ------------------------------------------------------------


def test_preference_is_distinct_complete_and_starts_at_lookup() -> None:
    r = build(25, vnodes=16)
    for k in KEYS[:300]:
        pref = list(r.preference(k))
        assert pref[0] == r.lookup(k)
        assert sorted(pref) == r.nodes()
    # The order is clockwise: the model's walk gives the same sequence.
    pts = model_points({n: 1.0 for n in r.nodes()}, 16)
    h = key_hash("some-key")
    start = next((i for i, (p, _) in enumerate(pts) if p >= h), 0)
    seen: list[str] = []
    for j in range(len(pts)):
        n = pts[(start + j) % len(pts)][1]
        if n not in seen:
            seen.append(n)
    assert list(r.preference("some-key")) == seen


def test_preference_survives_a_change_during_the_walk() -> None:
    r = build(10, vnodes=4)
    walk = r.preference("k")
    first = next(walk)
    r.add_node("late")
    r.lookup("k")
    rest = list(walk)
    assert sorted([first, *rest]) == sorted(n for n in r.nodes() if n != "late")


def test_ownership_sums_to_one_and_follows_weights() -> None:
    weights = [1.0, 2.0, 4.0, 1.0, 0.5]
    r = build(5, vnodes=2000, weights=weights)
    own = r.ownership()
    assert math.isclose(sum(own.values()), 1.0, rel_tol=1e-12)
    total = sum(weights)
    for i, n in enumerate(r.nodes()):
        assert own[n] == pytest.approx(weights[i] / total, rel=0.15)
    # Keys follow the shares too.
    counts = Counter(r.lookup_many(KEYS))
    for i, n in enumerate(r.nodes()):
        assert counts[n] / len(KEYS) == pytest.approx(weights[i] / total, rel=0.15)
    assert HashRing().ownership() == {}


# -- replicas ---------------------------------------------------------------------------------


def test_replicas_one_per_zone_in_preference_order() -> None:
    r = build(30, vnodes=20)
    zone_of = {n: f"z{i % 4}" for i, n in enumerate(r.nodes())}
    for k in KEYS[:200]:
        got = replicas(r, k, 3, zone_of)
        assert len(got) == 3 and got[0] == r.lookup(k)
        assert len({zone_of[x] for x in got}) == 3
        pref = list(r.preference(k))
        assert [pref.index(x) for x in got] == sorted(pref.index(x) for x in got)
        # Each chosen node is the first of its zone in the preference list.
        for x in got:
            assert next(p for p in pref if zone_of[p] == zone_of[x]) == x
    assert len(replicas(r, "k", 10, zone_of)) == 4  # only four zones
    assert replicas(r, "k", 0, zone_of) == []
    with pytest.raises(InvalidInput):
        replicas(r, "k", -1, zone_of)
    with pytest.raises(InvalidInput):
        replicas(r, "k", 2, {})


# -- determinism across processes ------------------------------------------------------------


DIGEST_SCRIPT = textwrap.dedent("""
    import hashlib, json
    from canidae.core.ring import HashRing, replicas
    from canidae.core.ringbounded import place_bounded, rebalance
    names = {f"node-{i}" for i in range(40)}        # set order depends on PYTHONHASHSEED
    r = HashRing(32)
    for n in names:
        r.add_node(n, 1.0 + len(n) % 3)
    keys = [f"pack-{i}" for i in range(3000)]
    placed = place_bounded(r, keys, 1.1)
    zones = {n: f"z{n[-1]}" for n in names | {"late"}}
    r.add_node("late")
    for n in sorted(names)[:3]:
        r.remove_node(n)
    moves = rebalance(r, dict(placed), 1.1)
    doc = [r._arrays()[0][:50], r.lookup_many(keys), placed,
           [(m.pack, m.source, m.target, m.reason) for m in moves], sorted(r.ownership().items()),
           [replicas(r, k, 3, zones) for k in keys[:50]], [list(r.preference(k))[:5] for k in keys[:50]]]
    print(hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest())
""")


def test_results_do_not_depend_on_pythonhashseed() -> None:
    digests = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT], env=env, check=False,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        digests.append(out.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]


# -- bad input --------------------------------------------------------------------------------


def test_bad_input() -> None:
    for v in (0, -1, 1.5, True, "160"):
        with pytest.raises(InvalidInput):
            HashRing(v)  # type: ignore[arg-type]
    r = HashRing()
    r.add_node("a")
    with pytest.raises(InvalidInput, match="already"):
        r.add_node("a")
    for w in (0, -1.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(InvalidInput):
            r.add_node("b", w)  # type: ignore[arg-type]
    assert "b" not in r
    with pytest.raises(InvalidInput):
        r.add_node("", 1.0)
    with pytest.raises(InvalidInput):
        r.add_node("huge", 1e9)
    with pytest.raises(NotFound):
        r.remove_node("b")
    empty = HashRing()
    with pytest.raises(NoCapacity, match="the ring has no nodes"):
        empty.lookup("k")
    with pytest.raises(NoCapacity):
        empty.lookup_many(["k"])
    with pytest.raises(NoCapacity):
        empty.preference("k")
    with pytest.raises(NoCapacity):
        place_bounded(empty, ["k"])
    for c in (1.0, 0.5, -2, float("nan"), True):
        with pytest.raises(InvalidInput):
            bounded_caps(r, 10, c)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            place_bounded(r, ["k"], c)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            rebalance(r, {"k": "a"}, c)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        bounded_caps(r, -1)
    with pytest.raises(InvalidInput, match="distinct"):
        place_bounded(r, ["k", "k"])
    with pytest.raises(InvalidInput):
        place_bounded(r, ["k"], loads={"a": -3})


def test_emptied_ring_and_refill() -> None:
    r = build(3, vnodes=5)
    r.lookup("x")
    for n in r.nodes():
        r.remove_node(n)
    assert len(r) == 0
    with pytest.raises(NoCapacity):
        r.lookup("x")
    r.add_node("again")
    assert r.lookup("x") == "again"
    assert json.dumps(r.ownership()) == '{"again": 1.0}'
