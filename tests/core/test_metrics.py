"""Tests of node summaries and their roll-up cell -> region -> zone -> cluster (canidae.core.metrics)."""

from __future__ import annotations

import copy
import functools
import json
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from canidae.core.errors import InvalidInput
from canidae.core.metrics import (
    LEVELS,
    MAX_COUNTERS,
    MetricsTree,
    NodeSummary,
    aggregate,
    render_rows,
)
from canidae.core.sampling import FIELDS, PackReading, estimate_totals, sample_packs
from canidae.core.sketch import ALPHA, Sketch
from canidae.core.types import Location
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

QS = (0.5, 0.9, 0.99)
SLACK = 1e-9


def exact_quantile(xs: list[float], q: float) -> float:
    """The sketch's definition: the value of 0-based rank floor(q * (n - 1))."""
    return sorted(xs)[math.floor(q * (len(xs) - 1))]


def sketch_of(xs: list[float]) -> Sketch:
    s = Sketch()
    s.add_many(xs)
    return s


def build_fleet(seed: int, zones: int = 2, regions: int = 2, cells: int = 3, nodes: int = 3,
                samples: int = 300) -> tuple[list[NodeSummary], dict[str, dict[str, list[float]]]]:
    """Summaries of a small fleet and the raw latencies behind each node's sketches.

    Zone z1 is slower than z0, and each region has a slow cell, so the groups' distributions
    differ and a wrong merge shows. Both zones have regions called r0 and r1.
    """
    rng = random.Random(seed)
    summaries, raw = [], {}
    for z in range(zones):
        for r in range(regions):
            for c in range(cells):
                for n in range(nodes):
                    node = f"n-{z}-{r}-{c}-{n}"
                    spawn = [rng.lognormvariate(1.0 + 0.5 * z, 0.6) for _ in range(samples)]
                    yip = [rng.expovariate(1.0) * (10.0 if c == 0 else 1.0) for _ in range(samples)]
                    raw[node] = {"spawn_ms": spawn, "yip_ms": yip}
                    readings = [PackReading(f"{node}-p{i}", cpu_m=rng.uniform(1, 100)) for i in range(150)]
                    summaries.append(NodeSummary(
                        node=node, location=Location(f"z{z}", f"r{r}", f"c{c}"), at_ms=1_000 + n,
                        pack_count=150, sample_rate=0.1,
                        counters={"spawns": 10 + n, "yips": 100 * z},
                        gauges={"cpu_used_m": 100.0 + n, "cpu_reserved_m": 400.0, "mem_used_mib": 64.0,
                                "mem_reserved_mib": 256.0, "load1": float(n)},
                        sketches={"spawn_ms": sketch_of(spawn), "yip_ms": sketch_of(yip)},
                        packs=tuple(sample_packs(readings, 0.1)),
                    ))
    return summaries, raw


def nodes_under(t: MetricsTree) -> Iterator[str]:
    for _, g in t.walk():
        if g.level == "node":
            yield g.key


# -- percentiles from merged sketches ---------------------------------------------------------


def test_aggregated_percentiles_equal_those_of_the_raw_union_at_every_level() -> None:
    summaries, raw = build_fleet(seed=1)
    tree = aggregate(summaries, by="node")
    seen_levels = set()
    for _, group in tree.walk():
        seen_levels.add(group.level)
        for name in ("spawn_ms", "yip_ms"):
            union = [x for n in nodes_under(group) for x in raw[n][name]]
            assert group.sketches[name].count == len(union)
            for q in QS:
                exact = exact_quantile(union, q)
                got = group.quantile(name, q)
                assert got is not None
                assert abs(got - exact) <= (ALPHA + SLACK) * exact, (group.key, name, q, exact, got)
    assert seen_levels == set(LEVELS)


def test_averaging_percentiles_would_not_pass_the_same_check() -> None:
    # Why sketches travel instead of percentiles: the mean of the zones' p99s is off by far more
    # than alpha, so the check above can tell a merge from an average.
    summaries, raw = build_fleet(seed=1)
    tree = aggregate(summaries, by="zone")
    union = [x for xs in raw.values() for x in xs["spawn_ms"]]
    averaged = sum(z.quantile("spawn_ms", 0.99) or 0 for z in tree.children) / len(tree.children)
    assert abs(averaged - exact_quantile(union, 0.99)) > 5 * ALPHA * exact_quantile(union, 0.99)


located_values = st.tuples(
    st.integers(0, 1), st.integers(0, 1), st.integers(0, 2),
    st.lists(st.floats(min_value=1e-6, max_value=1e6), min_size=1, max_size=60),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(located_values, min_size=1, max_size=12))
def test_any_fleet_merges_within_alpha_at_every_level(nodes: list[tuple[int, int, int, list[float]]]) -> None:
    raw = {f"n{i}": xs for i, (_, _, _, xs) in enumerate(nodes)}
    summaries = [
        NodeSummary(f"n{i}", Location(f"z{z}", f"r{r}", f"c{c}"), 0, sketches={"lat": sketch_of(xs)})
        for i, (z, r, c, xs) in enumerate(nodes)
    ]
    for _, group in aggregate(summaries, by="node").walk():
        union = [x for n in nodes_under(group) for x in raw[n]]
        for q in (0.0, 0.5, 0.99, 1.0):
            exact = exact_quantile(union, q)
            assert abs((group.quantile("lat", q) or 0) - exact) <= (ALPHA + SLACK) * exact


# -- counters, gauges, packs ------------------------------------------------------------------


def test_counters_add_and_only_additive_gauges_sum() -> None:
    summaries, _ = build_fleet(seed=2)
    tree = aggregate(summaries, by="node")
    for _, g in tree.walk():
        under = [s for s in summaries if s.node in set(nodes_under(g))]
        assert g.nodes == len(under)
        assert g.counters["spawns"] == sum(s.counters["spawns"] for s in under)
        assert g.gauge("cpu_used_m") == sum(s.gauges["cpu_used_m"] for s in under)
        loads = [s.gauges["load1"] for s in under]
        assert g.gauge("load1") == pytest.approx(sum(loads) / len(loads))  # a mean, not a sum
        assert (g.gauges["load1"].min, g.gauges["load1"].max) == (min(loads), max(loads))
        assert g.packs == 150 * len(under)
        assert (g.oldest_ms, g.newest_ms) == (min(s.at_ms for s in under), max(s.at_ms for s in under))
    as_json = tree.to_dict()
    assert "sum" in as_json["gauges"]["cpu_used_m"] and "sum" not in as_json["gauges"]["load1"]


def test_pack_estimates_roll_up_from_every_node_sample() -> None:
    summaries, _ = build_fleet(seed=3)
    tree = aggregate(summaries, by="cell")
    direct = estimate_totals([p for s in summaries for p in s.packs])
    for f in FIELDS:
        assert tree.estimates[f].value == pytest.approx(direct[f].value)
        assert tree.estimates[f].variance == pytest.approx(direct[f].variance)
        assert tree.estimates[f].samples == direct[f].samples
    assert abs(tree.estimates["packs"].value - tree.packs) <= tree.estimates["packs"].bound


def test_the_sampling_rates_in_force_are_visible_at_every_level() -> None:
    loc = Location("z0", "r0", "c0")
    a = NodeSummary("a", loc, 0, pack_count=5_000, sample_rate=0.01)
    b = NodeSummary("b", Location("z0", "r0", "c1"), 0, pack_count=500, sample_rate=0.1)
    tree = aggregate([a, b], by="node")
    assert tree.sample_rates == (0.01, 0.1)
    rows = {r["name"]: r for r in render_rows(tree)}
    assert rows["cluster"]["sample_rate"] == "1%,10%"
    assert rows["a"]["sample_rate"] == "1%" and rows["z0/r0/c1"]["sample_rate"] == "10%"


# -- shape of the tree ------------------------------------------------------------------------


@pytest.mark.parametrize("by", LEVELS)
def test_by_sets_the_depth_and_never_the_totals(by: str) -> None:
    summaries, _ = build_fleet(seed=4, cells=2, nodes=2)
    tree = aggregate(summaries, by=by)
    assert max(d for d, _ in tree.walk()) == LEVELS.index(by)
    assert {g.level for d, g in tree.walk()} == set(LEVELS[: LEVELS.index(by) + 1])
    whole = aggregate(summaries, by="node").to_dict()
    mine = tree.to_dict()
    whole.pop("children")
    mine.pop("children")
    assert mine == whole


def test_the_order_of_the_summaries_does_not_matter() -> None:
    summaries, _ = build_fleet(seed=5, cells=2)
    shuffled = summaries[:]
    random.Random(0).shuffle(shuffled)
    a, b = aggregate(summaries, by="node").to_dict(), aggregate(shuffled, by="node").to_dict()
    # Float sums may differ in the last bit with the order; nothing else may.
    assert _rounded(a) == _rounded(b)


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def test_groups_are_keyed_within_their_parent() -> None:
    summaries, _ = build_fleet(seed=6, cells=1, nodes=1)
    tree = aggregate(summaries, by="region")
    assert [z.key for z in tree.children] == ["z0", "z1"]
    assert [r.key for r in tree.children[1].children] == ["z1/r0", "z1/r1"]
    assert all(r.nodes == 1 for z in tree.children for r in z.children)


def test_aggregate_leaves_the_summaries_as_they_were() -> None:
    summaries, _ = build_fleet(seed=7, cells=1)
    before = [s.to_wire() for s in summaries]
    aggregate(summaries, by="node")
    aggregate(summaries, by="cluster")
    assert [s.to_wire() for s in summaries] == before


def test_no_summaries_give_an_empty_cluster() -> None:
    tree = aggregate([], by="node")
    assert (tree.level, tree.nodes, tree.packs, tree.children) == ("cluster", 0, 0, ())
    assert render_rows(tree)[0]["name"] == "cluster"


def test_two_summaries_of_one_node_are_rejected() -> None:
    s = NodeSummary("a", Location("z", "r", "c"), 0)
    with pytest.raises(InvalidInput):
        aggregate([s, s])


def test_an_unknown_level_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        aggregate([], by="rack")


# -- rows and JSON for the CLI ----------------------------------------------------------------


def test_rows_are_flat_with_the_same_columns_and_the_trees_values() -> None:
    summaries, _ = build_fleet(seed=8, cells=2, nodes=2)
    tree = aggregate(summaries, by="cell")
    rows = render_rows(tree, sketches=["spawn_ms", "absent"])
    assert len(rows) == sum(1 for _ in tree.walk())
    assert all(list(r) == list(rows[0]) for r in rows)
    assert list(rows[0]) == [
        "level", "name", "depth", "nodes", "packs", "cpu_used_m", "cpu_reserved_m", "mem_used_mib",
        "mem_reserved_mib", "sample_rate", "spawn_ms.p50", "spawn_ms.p99", "absent.p50", "absent.p99",
        "spawns.total", "yips.total",
    ]
    for (_, g), r in zip(tree.walk(), rows, strict=True):
        assert r["spawn_ms.p99"] == g.quantile("spawn_ms", 0.99)
        assert r["absent.p50"] is None
        assert r["cpu_reserved_m"] == 400.0 * g.nodes and r["packs"] == g.packs
    assert [r["level"] for r in rows[:4]] == ["cluster", "zone", "region", "cell"]


def test_the_json_tree_is_strict_json_with_percentiles() -> None:
    summaries, _ = build_fleet(seed=9, cells=1, nodes=2)
    doc = json.loads(json.dumps(aggregate(summaries, by="zone").to_dict(), allow_nan=False))
    spawn = doc["sketches"]["spawn_ms"]
    assert set(spawn) == {"count", "sum", "min", "max", "p50", "p90", "p99"}
    assert spawn["min"] <= spawn["p50"] <= spawn["p99"] <= spawn["max"]
    assert [c["level"] for c in doc["children"]] == ["zone", "zone"] and doc["children"][0]["children"] == []
    assert set(doc["pack_estimates"]) == set(FIELDS)


# -- wire -------------------------------------------------------------------------------------


def test_summary_wire_round_trip_through_json() -> None:
    summaries, _ = build_fleet(seed=10, cells=1, nodes=2)
    for s in summaries:
        wire = json.loads(json.dumps(s.to_wire(), allow_nan=False))
        back = NodeSummary.from_wire(wire)
        assert back.to_wire() == s.to_wire()
        assert back.sketches == s.sketches and back.packs == s.packs


@functools.cache
def _good_json() -> str:
    summaries, _ = build_fleet(seed=11, zones=1, regions=1, cells=1, nodes=1, samples=20)
    return json.dumps(summaries[0].to_wire())


def _good() -> dict[str, Any]:
    """A valid summary's wire form, fresh each call so a test may change it."""
    return json.loads(_good_json())  # type: ignore[no-any-return]


def _with(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(_good())
    *head, last = path.split(".")
    target: Any = d
    for k in head:
        target = target[int(k)] if isinstance(target, list) else target[k]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return d


BAD_WIRE: list[tuple[str, Any]] = [
    ("not an object", ["n1"]),
    ("wrong version", _with("v", 2)),
    ("unknown field", _with("extra", 1)),
    ("bad node name", _with("node", "../etc")),
    ("missing zone", {k: v for k, v in _good().items() if k != "zone"}),
    ("negative at_ms", _with("at_ms", -5)),
    ("huge at_ms", _with("at_ms", 2**64)),
    ("float pack count", _with("pack_count", 1.5)),
    ("rate zero", _with("sample_rate", 0)),
    ("rate above one", _with("sample_rate", 2.0)),
    ("counters a list", _with("counters", [1, 2])),
    ("bad counter name", _with("counters", {"Spawns!": 1})),
    ("negative counter", _with("counters.spawns", -1)),
    ("float counter", _with("counters.spawns", 1.5)),
    ("bool counter", _with("counters.spawns", True)),
    ("huge counter", _with("counters.spawns", 2**64)),
    ("too many counters", _with("counters", {f"c{i}": 1 for i in range(MAX_COUNTERS + 1)})),
    ("nan gauge", _with("gauges.load1", math.nan)),
    ("string gauge", _with("gauges.load1", "1")),
    ("sketch of other accuracy", _with("sketches.spawn_ms.a", 0.05)),
    ("malformed sketch", _with("sketches.spawn_ms.k", "x")),
    ("packs not a list", _with("packs", {"a": 1})),
    ("more samples than packs", _with("pack_count", 0)),
    ("weight not one over the rate", _with("packs.0.1", 3.0)),
    ("duplicate pack", {**_good(), "packs": [_good()["packs"][0]] * 2}),
    ("bad sample flags", _with("packs.0.6", 9)),
]


@pytest.mark.parametrize("wire", [w for _, w in BAD_WIRE], ids=[n for n, _ in BAD_WIRE])
def test_bad_wire_input_is_rejected(wire: Any) -> None:
    with pytest.raises(InvalidInput):
        NodeSummary.from_wire(wire)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_garbage_in_any_field_is_invalid_input_or_accepted(data: st.DataObject) -> None:
    good = _good()
    paths = ["", *good, *(f"sketches.spawn_ms.{k}" for k in good["sketches"]["spawn_ms"]),
             "packs.0", "packs.0.0", "packs.0.1", "packs.0.6", "counters.spawns", "gauges.load1"]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(json_values)
    wire = value if path == "" else _with(path, value)
    try:
        NodeSummary.from_wire(wire)
    except InvalidInput:
        pass


def test_the_good_wire_the_bad_ones_derive_from_is_accepted() -> None:
    good = _good()
    assert len(good["packs"]) >= 2 and NodeSummary.from_wire(good).node == "n-0-0-0-0"
