"""``canidae ring simulate`` reports what the cluster does: the same nodes and pack names, fed to
the replicated state machine (``ClusterState.apply``: RegisterNode, CreatePacks, Rebalance,
SetNodeState DOWN), land on the same nodes as in the simulation, step by step."""

from __future__ import annotations

from collections import Counter

import pytest
from canidae.cli.ring import run_simulation
from canidae.core.commands import CreatePacks, Rebalance, RegisterNode, SetNodeState
from canidae.core.ringsim import RingSim
from canidae.core.scheduler import Scheduler
from canidae.core.state import ClusterState
from canidae.core.types import NodeState
from statekit import Ids


def cluster_with(sim: RingSim) -> tuple[ClusterState, Ids]:
    """A state machine that registered the simulation's nodes and created its packs."""
    st, ids = ClusterState(load_factor=sim.load_factor, vnodes=sim.vnodes), Ids()
    for n in sim.nodes:
        st.apply(RegisterNode(**ids(), node=n))
    res = st.apply(CreatePacks(**ids(), specs=sim.specs))
    assert res["ok"]
    return st, ids


def where(st: ClusterState) -> dict[str, str]:
    return {name: rec.node for name, rec in st.packs.items() if rec.node is not None}


@pytest.mark.parametrize("nodes,packs,vnodes,c,zones,add,remove,seed", [
    (30, 3000, 40, 1.25, 3, 3, 4, 11),
    (12, 2000, 160, 1.1, 1, 2, 3, 0),
    (7, 900, 20, 1.5, 2, 1, 2, 5),
])
def test_simulate_places_and_moves_as_the_cluster_does(
    nodes: int, packs: int, vnodes: int, c: float, zones: int, add: int, remove: int, seed: int
) -> None:
    report, steps = run_simulation(nodes, packs, vnodes, c, zones, add, remove, seed)
    sim = RingSim.build(nodes, packs, vnodes, c, zones, add, remove, seed)

    # Placement: one CreatePacks.
    st, ids = cluster_with(sim)
    assert where(st) == steps["placed"]
    loads = Counter(steps["placed"].values())
    assert report["max_load"] == max(loads.values())

    # Nodes join, then an operator rebalances.
    for n in sim.joining:
        st.apply(RegisterNode(**ids(), node=n))
    moved = st.apply(Rebalance(**ids()))["migrations"]
    assert where(st) == steps["after_add"]
    assert report["add"]["moved"] == len(moved) > 0

    # Nodes leave, from the original placement: the failure detector declares each one down.
    st, ids = cluster_with(sim)
    for node_id in report["remove"]["removed"]:
        st.apply(SetNodeState(**ids(), node_id=node_id, state=NodeState.DOWN, reason="gone"))
    assert where(st) == steps["after_remove"]
    assert report["remove"]["moved"] == sum(1 for k, v in steps["placed"].items() if v != where(st)[k]) > 0


def test_simulate_places_as_a_bare_scheduler_does() -> None:
    _, steps = run_simulation(25, 2500, 64, 1.25, 2, 0, 0, 9)
    sim = RingSim.build(25, 2500, 64, 1.25, 2, 0, 0, 9)
    sched = Scheduler(load_factor=1.25, vnodes=64)
    for n in sim.nodes:
        sched.add_node(n)
    for i in range(0, len(sim.specs), 700):  # batching does not change where packs go
        for p in sched.place(sim.specs[i:i + 700], seed=i).placements:
            assert steps["placed"][p.pack] == p.node


def test_the_simulated_fleet_is_drawn_from_the_seed() -> None:
    a = RingSim.build(10, 100, 16, 1.25, 3, 2, 3, seed=1)
    assert a == RingSim.build(10, 100, 16, 1.25, 3, 2, 3, seed=1)
    b = RingSim.build(10, 100, 16, 1.25, 3, 2, 3, seed=2)
    assert [s.name for s in a.specs] != [s.name for s in b.specs]
    assert [n.id for n in a.nodes] == [f"n{i:04d}" for i in range(10)]
    assert [n.id for n in a.joining] == ["n0010", "n0011"]
    assert [n.location.zone for n in a.nodes[:4]] == ["z0", "z1", "z2", "z0"]
    assert len(a.leaving) == 3 and set(a.leaving) <= {n.id for n in a.nodes}
    assert len({s.name for s in a.specs}) == 100
