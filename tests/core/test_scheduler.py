"""Scheduler: placement over the hierarchy, constraints, bounded loads, reasons, stickiness."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from canidae.core.errors import InvalidInput, NoCapacity, NotFound
from canidae.core.scheduler import Scheduler, require_placed
from canidae.core.topology import build_nodes
from canidae.core.types import Constraints, Level, Location, Node, NodeState, PackSpec, Resources

BIG = Resources(16_000, 65_536, 110)


def fleet(
    zones: int = 3,
    regions: int = 2,
    cells: int = 2,
    nodes: int = 36,
    cap: Resources = BIG,
    load_factor: float = 1.25,
) -> tuple[Scheduler, dict[str, Node]]:
    sched = Scheduler(load_factor=load_factor)
    built = build_nodes(zones, regions, cells, nodes, cap)
    for n in built:
        sched.add_node(n)
    return sched, {n.id: n for n in built}


def specs(n: int, prefix: str = "p", cpu: int = 100, mem: int = 64, **constraints: object) -> list[PackSpec]:
    c = Constraints(**constraints)  # type: ignore[arg-type]
    return [PackSpec(f"{prefix}{i:05d}", resources=Resources(cpu, mem, 1), constraints=c) for i in range(n)]


def with_state(node: Node, state: NodeState) -> Node:
    return Node(node.id, node.location, node.capacity, node.weight, state, node.role, node.address)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("factor", [1.0, 0.5, -2, float("nan"), float("inf"), True, "1.5"])
def test_load_factor_must_be_above_one(factor: object) -> None:
    with pytest.raises(InvalidInput, match="load factor"):
        Scheduler(load_factor=factor)  # type: ignore[arg-type]


def test_vnodes_must_be_positive() -> None:
    with pytest.raises(InvalidInput, match="vnodes"):
        Scheduler(vnodes=0)


def test_duplicate_and_unknown_nodes() -> None:
    sched, nodes = fleet(nodes=3)
    with pytest.raises(InvalidInput, match="already known"):
        sched.add_node(nodes["n1"])
    for call in (
        lambda: sched.usage("nope"),
        lambda: sched.free("nope"),
        lambda: sched.remove_node("nope"),
        lambda: sched.reserve("nope", Resources(1, 1, 1)),
        lambda: sched.update_node(Node("nope", Location("z1", "r1", "c1"), BIG)),
    ):
        with pytest.raises(NotFound, match="no node 'nope'"):
            call()


def test_release_beyond_usage_is_a_bookkeeping_error() -> None:
    sched, _ = fleet(nodes=3)
    sched.reserve("n1", Resources(100, 64, 1))
    with pytest.raises(InvalidInput, match="exceeds its usage"):
        sched.release("n1", Resources(200, 64, 1))
    sched.release("n1", Resources(100, 64, 1))
    assert sched.usage("n1") == Resources()


def test_no_nodes_is_a_clear_answer() -> None:
    sched = Scheduler()
    plan = sched.place(specs(2), seed=1)
    assert plan.placements == ()
    assert [u.reasons for u in plan.unplaced] == [("the cluster has no nodes",)] * 2
    with pytest.raises(InvalidInput, match="at least one node"):
        sched.topology()


# ---------------------------------------------------------------------- capacity and reasons


def test_place_reserves_what_it_returns() -> None:
    sched, _ = fleet(nodes=12)
    plan = sched.place(specs(100, cpu=250, mem=100), seed=7)
    assert len(plan.placements) == 100 and not plan.unplaced
    per_node = Counter(p.node for p in plan.placements)
    for nid, count in per_node.items():
        assert sched.usage(nid) == Resources(250 * count, 100 * count, count)
        assert sched.free(nid) == BIG - Resources(250 * count, 100 * count, count)
    assert sched.topology().stats().used == Resources(25_000, 10_000, 100)


def test_capacity_is_never_exceeded_and_the_rest_is_unplaced_with_reasons() -> None:
    cap = Resources(1000, 1024, 50)
    sched, _ = fleet(zones=2, regions=1, cells=2, nodes=8, cap=cap)
    plan = sched.place(specs(100, cpu=300, mem=10), seed=1)
    # 3 packs of 300m fit in 1000m: 24 fit, 76 do not.
    assert len(plan.placements) == 24
    assert all(sched.usage(n).cpu <= 1000 for n in sched.topology().node_ids())
    assert len(plan.unplaced) == 76
    assert plan.unplaced[0].reasons == (
        "zone z1: 4 nodes lacked 300m cpu",
        "zone z2: 4 nodes lacked 300m cpu",
    )


def test_reasons_count_nodes_per_zone_and_per_shortage() -> None:
    sched, nodes = fleet(zones=2, regions=1, cells=1, nodes=6, cap=Resources(1000, 1024, 2))
    # z1: n1 n3 n5; z2: n2 n4 n6.
    sched.reserve("n1", Resources(0, 1000, 0))
    sched.reserve("n3", Resources(900, 0, 0))
    sched.reserve("n5", Resources(0, 0, 2))
    sched.update_node(with_state(nodes["n2"], NodeState.DOWN))
    sched.update_node(with_state(nodes["n4"], NodeState.CORDONED))
    plan = sched.place(specs(1, cpu=512, mem=512), seed=1, exclude=frozenset({"n6"}))
    assert plan.unplaced[0].reasons == (
        "zone z1: 1 node had no free pack slot, 1 node lacked 512 MiB memory, 1 node lacked 512m cpu",
        "zone z2: 1 node were cordoned, 1 node were down, 1 node were excluded",
    )


def test_memory_shortage_reads_like_the_design() -> None:
    sched, _ = fleet(zones=2, regions=1, cells=1, nodes=80, cap=Resources(16_000, 256, 10))
    plan = sched.place(specs(1, mem=512, zone="z2"), seed=1)
    assert plan.unplaced[0].reasons == ("zone z2: 40 nodes lacked 512 MiB memory",)


def test_require_placed_raises_no_capacity_with_levels() -> None:
    sched, _ = fleet(nodes=3)
    plan = sched.place(specs(1, zone="z9"), seed=1)
    with pytest.raises(NoCapacity, match="pack p00000 fits nowhere: no zone matches zone=z9") as err:
        require_placed(plan)
    assert err.value.details == {"levels": {"p00000": ["no zone matches zone=z9"]}}
    assert require_placed(sched.place(specs(1), seed=1)).placements


def test_unknown_pins_are_reported_per_level() -> None:
    sched, _ = fleet(nodes=12)
    plan = sched.place(
        [
            PackSpec("a", constraints=Constraints(zone="z9")),
            PackSpec("b", constraints=Constraints(region="r9")),
            PackSpec("c", constraints=Constraints(zone="z1", region="r1", cell="c9")),
            PackSpec("d", constraints=Constraints(node="n99")),
            PackSpec("e", constraints=Constraints(zone="z2", node="n01")),
        ],
        seed=1,
    )
    assert [u.reason for u in plan.unplaced] == [
        "no zone matches zone=z9",
        "no region matches region=r9",
        "no cell matches zone=z1 region=r1 cell=c9",
        "no node matches node=n99",
        "node n01 is in z1/r1/c1, outside zone=z2 node=n01",
    ]


# ---------------------------------------------------------------------- constraints


def test_pins_are_honoured() -> None:
    sched, nodes = fleet(nodes=36)
    plan = sched.place(
        specs(30, "z", zone="z2")
        + specs(30, "r", region="r2")
        + specs(30, "c", zone="z3", region="r1", cell="c2")
        + specs(5, "n", node="n07"),
        seed=3,
    )
    assert not plan.unplaced
    where = {p.pack: nodes[p.node].location for p in plan.placements}
    assert {where[f"z{i:05d}"].zone for i in range(30)} == {"z2"}
    assert {where[f"r{i:05d}"].region for i in range(30)} == {"r2"}
    # Region r2 exists in every zone: packs pinned to it by name spread over all of them.
    assert {where[f"r{i:05d}"].zone for i in range(30)} == {"z1", "z2", "z3"}
    assert {where[f"c{i:05d}"].at(Level.CELL) for i in range(30)} == {"z3/r1/c2"}
    assert {p.node for p in plan.placements if p.pack.startswith("n")} == {"n07"}


@pytest.mark.parametrize("level", [Level.ZONE, Level.REGION, Level.CELL])
def test_spread_is_even_within_one(level: Level) -> None:
    sched, nodes = fleet(zones=3, regions=2, cells=2, nodes=48)
    plan = sched.place(specs(40, "w", spread=level, group="web") + specs(20, "x"), seed=1)
    counts = Counter(nodes[p.node].location.at(level) for p in plan.placements if p.pack.startswith("w"))
    groups = {n.location.at(level) for n in nodes.values()}
    assert set(counts) == groups
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sched.spread_counts(level, "web") == dict(sorted(counts.items()))


def test_spread_groups_are_independent_and_releases_count_down() -> None:
    sched, nodes = fleet(zones=3, regions=1, cells=1, nodes=9)
    a = sched.place(specs(3, "a", spread=Level.ZONE, group="a"), seed=1)
    b = sched.place(specs(3, "b", spread=Level.ZONE, group="b"), seed=1)
    for plan in (a, b):
        assert sorted(nodes[p.node].location.zone for p in plan.placements) == ["z1", "z2", "z3"]
    # Stopping a's pack in one zone makes that zone the least loaded for group a again.
    gone = a.placements[0]
    spec = specs(3, "a", spread=Level.ZONE, group="a")[0]
    sched.release(gone.node, spec.resources, spec)
    again = sched.place([PackSpec("a-new", constraints=spec.constraints)], seed=1)
    assert nodes[again.placements[0].node].location.zone == nodes[gone.node].location.zone


def test_spread_in_a_pinned_zone() -> None:
    sched, nodes = fleet(zones=2, regions=2, cells=3, nodes=48)
    plan = sched.place(specs(25, zone="z2", spread=Level.CELL, group="db"), seed=1)
    counts = Counter(nodes[p.node].location.at(Level.CELL) for p in plan.placements)
    assert len(counts) == 6 and all(c.startswith("z2/") for c in counts)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_spread_above_the_pinned_level_still_places() -> None:
    sched, nodes = fleet(zones=3, regions=2, cells=2, nodes=36)
    plan = sched.place(specs(6, cell="c1", spread=Level.ZONE, group="g"), seed=1)
    assert not plan.unplaced
    counts = Counter(nodes[p.node].location.zone for p in plan.placements)
    assert counts == {"z1": 2, "z2": 2, "z3": 2}
    assert {nodes[p.node].location.cell for p in plan.placements} == {"c1"}


# ---------------------------------------------------------------------- bounded loads


@pytest.mark.parametrize("c", [1.1, 1.25, 2.0])
def test_bounded_load_caps_every_node(c: float) -> None:
    sched, _ = fleet(zones=3, regions=2, cells=3, nodes=60, load_factor=c)
    total = 3000
    plan = sched.place(specs(total), seed=1)
    counts = Counter(p.node for p in plan.placements)
    assert max(counts.values()) <= math.ceil(c * total / 60)
    assert max(counts.values()) / (total / 60) <= c + 60 / total


def test_heavier_nodes_take_more() -> None:
    sched = Scheduler()
    for i in range(10):
        sched.add_node(
            Node(
                f"n{i}",
                Location("z1", "r1", "c1"),
                Resources(100_000, 100_000, 1000),
                weight=3.0 if i < 2 else 1.0,
            )
        )
    plan = sched.place(specs(1400), seed=1)
    counts = Counter(p.node for p in plan.placements)
    heavy = (counts["n0"] + counts["n1"]) / 2
    light = sum(counts[f"n{i}"] for i in range(2, 10)) / 8
    assert 2.0 < heavy / light <= 3.0 * 1.25


def test_past_the_bound_only_when_every_feasible_node_is_at_it() -> None:
    sched = Scheduler()
    for nid in ("a", "b", "c"):
        sched.add_node(Node(nid, Location("z1", "r1", "c1"), BIG))
    for nid in ("a", "b", "c"):
        sched.reserve(nid, Resources(0, 0, 10))
    # T = 30, W = 3: the bound lets b and c reach 13; past it, the least loaded takes each pack.
    plan = sched.place(specs(10), seed=1, exclude=frozenset({"a"}))
    counts = Counter(p.node for p in plan.placements)
    assert counts == {"b": 5, "c": 5}
    assert "a" not in counts


def test_excluded_and_not_ready_nodes_take_nothing() -> None:
    sched, nodes = fleet(zones=1, regions=1, cells=1, nodes=4)
    sched.update_node(with_state(nodes["n1"], NodeState.CORDONED))
    sched.update_node(with_state(nodes["n2"], NodeState.DRAINING))
    plan = sched.place(specs(20), seed=1, exclude=frozenset({"n3"}))
    assert {p.node for p in plan.placements} == {"n4"}


# ---------------------------------------------------------------------- stickiness


def test_node_down_moves_only_its_packs() -> None:
    sched, nodes = fleet(nodes=24)
    all_specs = {s.name: s for s in specs(600)}
    plan = sched.place(list(all_specs.values()), seed=1)
    where = {p.pack: p.node for p in plan.placements}
    victim = "n05"
    sched.update_node(with_state(nodes[victim], NodeState.DOWN))
    orphans = sorted(k for k, v in where.items() if v == victim)
    for name in orphans:
        sched.release(victim, all_specs[name].resources, all_specs[name])
    before = {nid: sched.usage(nid) for nid in nodes}
    again = sched.place([all_specs[n] for n in orphans], seed=2, exclude=frozenset({victim}))
    assert [p.pack for p in again.placements] == orphans
    assert victim not in {p.node for p in again.placements}
    # Survivors only gained the orphans; nobody else was asked to move.
    gained = Counter(p.node for p in again.placements)
    for nid in nodes:
        if nid != victim:
            assert sched.usage(nid).packs == before[nid].packs + gained[nid]


def test_cordoned_node_keeps_its_usage_and_comes_back() -> None:
    sched, nodes = fleet(zones=1, regions=1, cells=1, nodes=2)
    sched.reserve("n1", Resources(100, 64, 1))
    sched.update_node(with_state(nodes["n1"], NodeState.CORDONED))
    assert sched.usage("n1") == Resources(100, 64, 1)
    assert sched.free("n1") == Resources()
    assert {p.node for p in sched.place(specs(3, "x"), seed=1).placements} == {"n2"}
    sched.update_node(with_state(nodes["n1"], NodeState.READY))
    assert "n1" in {p.node for p in sched.place(specs(10, "y"), seed=1).placements}


def test_update_capacity_weight_and_location_keep_usage() -> None:
    sched, nodes = fleet(zones=2, regions=1, cells=1, nodes=4)
    sched.reserve("n1", Resources(500, 64, 2))
    n1 = nodes["n1"]
    sched.update_node(Node("n1", n1.location, Resources(400, 1024, 2), weight=2.0))
    assert sched.usage("n1") == Resources(500, 64, 2)
    assert sched.free("n1") == Resources(0, 960, 0)
    moved = Node("n1", Location("z9", "r1", "c1"), BIG)
    sched.update_node(moved)
    assert sched.usage("n1") == Resources(500, 64, 2)
    assert sched.topology().zones() == ["z1", "z2", "z9"]
    plan = sched.place(specs(1, zone="z9"), seed=1)
    assert plan.placements[0].node == "n1"


def test_removing_the_last_node_of_a_zone_drops_the_zone() -> None:
    sched, nodes = fleet(zones=2, regions=1, cells=1, nodes=2)
    sched.remove_node("n2")
    assert sched.topology().zones() == ["z1"]
    assert sched.place(specs(1, zone="z2"), seed=1).unplaced[0].reason == "no zone matches zone=z2"
    sched.add_node(nodes["n2"])
    assert sched.place(specs(1, zone="z2"), seed=1).placements[0].node == "n2"


# ---------------------------------------------------------------------- determinism


def test_same_inputs_same_plan_whatever_the_order_nodes_joined() -> None:
    built = build_nodes(3, 2, 3, 60, BIG)
    a, b = Scheduler(), Scheduler()
    for n in built:
        a.add_node(n)
    for n in reversed(built):
        b.add_node(n)
    work = specs(500) + specs(50, "s", spread=Level.CELL, group="g") + specs(50, "r", region="r2")
    assert a.place(work, seed=1) == b.place(work, seed=99)


def test_batches_place_like_one_call() -> None:
    work = specs(400) + specs(40, "s", spread=Level.ZONE, group="g")
    one, _ = fleet(nodes=30)
    many, _ = fleet(nodes=30)
    whole = one.place(work, seed=1)
    parts = [p for i in range(0, len(work), 7) for p in many.place(work[i : i + 7], seed=i).placements]
    assert list(whole.placements) == parts


def test_snapshot_restore_decides_like_the_original() -> None:
    sched, nodes = fleet(nodes=30)
    work = specs(300)
    plan = sched.place(work, seed=1)
    restored = Scheduler()
    for n in reversed(list(nodes.values())):
        restored.add_node(n)
    for p in reversed(plan.placements):
        restored.reserve(p.node, Resources(100, 64, 1))
    more = specs(200, "m")
    assert sched.place(more, seed=5) == restored.place(more, seed=5)


def test_restore_with_specs_keeps_spread_decisions_and_history_does_not_matter() -> None:
    # A replica that replayed joins, failures and stops must decide like one restored from a
    # snapshot of the result, provided reservations are restored with their specs.
    sched, nodes = fleet(zones=3, regions=2, cells=2, nodes=36)
    work = {s.name: s for s in specs(120, "s", spread=Level.CELL, group="g") + specs(300)}
    plan = sched.place(list(work.values()), seed=1)
    where = {p.pack: p.node for p in plan.placements}
    victim = sorted(nodes)[3]
    sched.update_node(with_state(nodes[victim], NodeState.DOWN))
    orphans = [work[k] for k in sorted(where) if where[k] == victim]
    for s in orphans:
        sched.release(victim, s.resources, s)
    where.update((p.pack, p.node) for p in sched.place(orphans, seed=2).placements)
    for name in sorted(where)[::7]:
        sched.release(where.pop(name), work[name].resources, work[name])
    restored = Scheduler()
    for nid in sorted(nodes, reverse=True):
        restored.add_node(sched.node(nid))
    for name in sorted(where):
        restored.reserve(where[name], work[name].resources, work[name])
    more = specs(60, "t", spread=Level.CELL, group="g") + specs(100, "u")
    assert sched.place(more, seed=9) == restored.place(more, seed=9)


# ---------------------------------------------------------------------- rebalancing


def test_rebalance_moves_only_onto_newcomers_about_their_share() -> None:
    sched, _ = fleet(zones=2, regions=2, cells=2, nodes=40)
    work = {s.name: s for s in specs(4000)}
    plan = sched.place(list(work.values()), seed=1)
    assignment = {p.pack: p.node for p in plan.placements}
    newcomers = build_nodes(2, 2, 2, 4, BIG, prefix="new")
    for n in newcomers:
        sched.add_node(n)
    moves = sched.rebalance_plan(assignment, work)
    new_ids = {n.id for n in newcomers}
    assert moves and all(m.target in new_ids for m in moves)
    assert all(m.source == assignment[m.pack] for m in moves)
    share = 4000 // 44
    per_target = Counter(m.target for m in moves)
    assert all(0.7 * share <= per_target[n] <= share for n in new_ids)
    assert len(moves) <= 4 * share  # never more than the optimum
    for m in moves:
        assert sched.usage(m.target).packs == per_target[m.target]
    # A second call finds nothing more to do for the same (updated) assignment.
    assignment.update({m.pack: m.target for m in moves})
    assert sched.rebalance_plan(assignment, work, newcomers=new_ids) == []


def test_rebalance_keeps_constraints() -> None:
    sched, _ = fleet(zones=2, regions=1, cells=1, nodes=4)
    work = {s.name: s for s in specs(40, "z", zone="z1") + specs(40, "n", node="n2")}
    plan = sched.place(list(work.values()), seed=1)
    assignment = {p.pack: p.node for p in plan.placements}
    sched.add_node(Node("new-z2", Location("z2", "r1", "c1"), BIG))
    moves = sched.rebalance_plan(assignment, work)
    # Packs pinned to z1 cannot go to a z2 newcomer; packs pinned to n2 never move.
    assert moves == []
    with pytest.raises(InvalidInput, match="no spec for pack"):
        sched.rebalance_plan({"ghost": "n1"}, {}, newcomers=["new-z2"])


def test_unplaced_reasons_are_counted_under_one_kind_each():
    from canidae.core.scheduler import UNPLACED_KINDS, unplaced_kind
    cases = {
        "zone z1: 3 nodes lacked 500m cpu, 2 nodes lacked 64 MiB memory": "cpu",
        "zone z1: 4 nodes lacked 64 MiB memory, 1 node lacked 500m cpu": "memory",
        "zone a: 2 nodes were down; zone b: 1 node had no free pack slot": "not_ready",
        "zone b: 1 node had no free pack slot": "slots",
        "zone a: 2 nodes were excluded": "excluded",
        "the cluster has no nodes": "no_nodes",
        "no zone matches zone=zz": "constraints",
        "node n3 is in z/r/c, outside zone=q": "constraints",
        "rebalance: zone z: 1 node were cordoned": "not_ready",
        "something new": "other",
    }
    for reason, kind in cases.items():
        assert unplaced_kind(reason) == kind, reason
        assert kind in UNPLACED_KINDS
