"""Topology: the zone > region > cell > node hierarchy, its counts and its free capacity."""

from __future__ import annotations

import json

import pytest
from canidae.core.errors import InvalidInput, NotFound
from canidae.core.topology import Topology, build_nodes
from canidae.core.types import Level, Location, Node, NodeState, Resources
from hypothesis import given, settings
from hypothesis import strategies as st

CAP = Resources(1000, 4096, 10)


def node(
    nid: str,
    zone: str = "z1",
    region: str = "r1",
    cell: str = "c1",
    state: NodeState = NodeState.READY,
    cap: Resources = CAP,
) -> Node:
    return Node(nid, Location(zone, region, cell), cap, state=state)


def test_duplicate_node_id_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="duplicate node id 'a'"):
        Topology([node("a"), node("a", zone="z2")])


def test_zero_nodes_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="at least one node"):
        Topology([])


def test_unknown_groups_and_nodes_are_not_found() -> None:
    topo = Topology([node("a")])
    with pytest.raises(NotFound, match="no zone 'z9'"):
        topo.regions("z9")
    with pytest.raises(NotFound, match="no region 'z1/r9'"):
        topo.cells("z1/r9")
    with pytest.raises(NotFound, match="no cell"):
        topo.stats(Level.CELL, "z1/r1/c9")
    with pytest.raises(NotFound, match="scoped"):
        topo.stats(Level.REGION, "r1")
    with pytest.raises(NotFound, match="no node 'b'"):
        topo.node("b")


def test_region_and_cell_ids_are_scoped_by_their_parent() -> None:
    topo = Topology([node("a", zone="z1"), node("b", zone="z2")])
    assert topo.regions() == ["z1/r1", "z2/r1"]
    assert topo.cells() == ["z1/r1/c1", "z2/r1/c1"]
    assert topo.stats(Level.REGION, "z1/r1").nodes == 1
    assert topo.match(Level.REGION, region="r1") == ["z1/r1", "z2/r1"]
    assert topo.match(Level.CELL, zone="z2", cell="c1") == ["z2/r1/c1"]
    assert topo.match(Level.ZONE, zone="z9") == []


def test_counts_and_free_capacity_per_level() -> None:
    nodes = [
        node("a"),
        node("b", cell="c2"),
        node("c", region="r2"),
        node("d", zone="z2", state=NodeState.DOWN),
        node("e", zone="z2", state=NodeState.CORDONED),
    ]
    usage = {"a": Resources(100, 1000, 2), "d": Resources(500, 500, 5), "e": Resources(1, 1, 1)}
    topo = Topology(nodes, usage)
    z1 = topo.stats(Level.ZONE, "z1")
    assert (z1.nodes, z1.ready) == (3, 3)
    assert z1.capacity == Resources(3000, 3 * 4096, 30)
    assert z1.used == Resources(100, 1000, 2)
    assert z1.free == Resources(2900, 3 * 4096 - 1000, 28)
    z2 = topo.stats(Level.ZONE, "z2")
    # Down and cordoned nodes take nothing new: their capacity is installed, not free.
    assert (z2.nodes, z2.ready, z2.free) == (2, 0, Resources())
    assert z2.used == Resources(501, 501, 6)
    assert topo.stats(Level.CELL, "z1/r1/c1").free == Resources(900, 3096, 8)
    assert topo.stats().nodes == 5
    assert topo.free("d") == Resources()
    assert topo.free("a") == Resources(900, 3096, 8)
    assert topo.used("a") == Resources(100, 1000, 2)
    assert topo.stats(Level.NODE, "b").free == CAP


def test_over_committed_node_counts_no_negative_free() -> None:
    topo = Topology([node("a"), node("b")], {"a": Resources(5000, 1, 1)})
    assert topo.stats().free.cpu == 1000


def test_summary_is_json_and_nested() -> None:
    topo = Topology(build_nodes(3, 2, 5, 60, CAP))
    s = topo.summary()
    json.dumps(s)
    assert (s["zones"], s["regions"], s["cells"], s["nodes"], s["ready"]) == (3, 6, 30, 60, 60)
    assert [z["id"] for z in s["zone_list"]] == ["z1", "z2", "z3"]
    assert s["zone_list"][0]["region_list"][0]["id"] == "z1/r1"
    assert s["zone_list"][0]["region_list"][0]["cell_list"][0]["id"] == "z1/r1/c1"
    assert "cell_list" not in topo.summary(cells=False)["zone_list"][0]["region_list"][0]


def test_build_nodes_spreads_over_every_group() -> None:
    nodes = build_nodes(3, 4, 10, 2000, CAP)
    topo = Topology(nodes)
    counts = [topo.stats(Level.CELL, c).nodes for c in topo.cells()]
    assert len(counts) == 120 and max(counts) - min(counts) <= 1
    few = Topology(build_nodes(3, 4, 10, 5, CAP))
    assert len(few.zones()) == 3  # with fewer nodes than cells, zones come first
    with pytest.raises(InvalidInput):
        build_nodes(3, 0, 1, 10, CAP)
    with pytest.raises(InvalidInput):
        build_nodes(1, 1, 1, 0, CAP)


def test_order_of_nodes_does_not_matter() -> None:
    nodes = build_nodes(2, 2, 2, 30, CAP)
    assert Topology(nodes).summary() == Topology(list(reversed(nodes))).summary()


names = st.sampled_from(["a", "b", "c"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(names, names, names, st.integers(0, 1000), st.sampled_from(list(NodeState))),
        min_size=1,
        max_size=40,
    )
)
def test_levels_add_up(rows: list[tuple[str, str, str, int, NodeState]]) -> None:
    nodes = [node(f"n{i}", z, r, c, state=s) for i, (z, r, c, _, s) in enumerate(rows)]
    usage = {f"n{i}": Resources(u, u, u % 11) for i, (_, _, _, u, _) in enumerate(rows)}
    topo = Topology(nodes, usage)

    def total(level: Level, groups: list[str]) -> tuple[int, int, Resources, Resources]:
        out = (0, 0, Resources(), Resources())
        for g in groups:
            s = topo.stats(level, g)
            out = (out[0] + s.nodes, out[1] + s.ready, out[2] + s.used, out[3] + s.free)
        return out

    fleet = topo.stats()
    expect = (fleet.nodes, fleet.ready, fleet.used, fleet.free)
    assert total(Level.ZONE, topo.zones()) == expect
    assert total(Level.REGION, topo.regions()) == expect
    assert total(Level.CELL, topo.cells()) == expect
    assert fleet.nodes == len(rows)
    assert sorted(topo.node_ids()) == sorted(n.id for n in nodes)
