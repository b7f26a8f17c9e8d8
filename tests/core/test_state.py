"""ClusterState.apply: placement in apply, idempotent retries, fencing, term checks, snapshots."""

from canidae.core.commands import (
    CreatePacks,
    Noop,
    PackReport,
    PlacePacks,
    RegisterNode,
    RemoveNode,
    ReportPacks,
    ReportState,
    SetNodeState,
    StopPacks,
)
from canidae.core.state import ClusterState
from canidae.core.types import Location, Node, NodeState, PackSpec, PackState, Resources


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> dict:
        self.n += 1
        return {"id": f"r{self.n}", "at": 1000 + self.n, "term": 1}


def _cluster(n_nodes: int = 3, packs: int = 10) -> tuple[ClusterState, Ids]:
    st, ids = ClusterState(), Ids()
    for i in range(n_nodes):
        st.apply(RegisterNode(**ids(), node=Node(f"n{i}", Location(f"z{i % 3}", "r1", "c1"),
                                                 Resources(10_000, 10_000, packs))))
    return st, ids


def test_spawn_places_and_reserves():
    st, ids = _cluster()
    res = st.apply(CreatePacks(**ids(), specs=(PackSpec("web"),), count=12))
    assert res["ok"] and len(res["placements"]) == 12
    assert all(p["node"] for p in res["placements"])
    assert sum(st.node_usage(f"n{i}").packs for i in range(3)) == 12
    assert {r.state for r in st.packs.values()} == {PackState.PLACED}


def test_duplicate_names_are_refused_and_nothing_is_half_applied():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("web-3"),)))
    res = st.apply(CreatePacks(**ids(), specs=(PackSpec("web"),), count=5))
    assert res["error"]["code"] == "exists"
    assert sorted(st.packs) == ["web-3"]


def test_retry_with_same_id_returns_first_answer():
    st, ids = _cluster()
    cmd = CreatePacks(**ids(), specs=(PackSpec("a"),))
    first = st.apply(cmd)
    again = st.apply(cmd)
    assert again["duplicate"] is True and again["placements"] == first["placements"]
    assert len(st.packs) == 1


def test_no_capacity_leaves_pack_pending_with_reason_then_places_when_capacity_returns():
    st, ids = _cluster(n_nodes=1, packs=1)
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a"), PackSpec("b"))))
    assert st.packs["b"].state is PackState.PENDING and st.packs["b"].reason
    st.apply(RegisterNode(**ids(), node=Node("n9", Location("z0", "r1", "c1"), Resources(1000, 1000, 5))))
    assert st.packs["b"].state is PackState.PLACED and st.packs["b"].node == "n9"


def test_node_down_moves_only_its_packs_and_bumps_generation():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("p"),), count=9))
    before = {n: (r.node, r.generation) for n, r in st.packs.items()}
    victim = st.packs["p-0"].node
    res = st.apply(SetNodeState(**ids(), node_id=victim, state=NodeState.DOWN, reason="test"))
    moved = {m["name"] for m in res["moved"]}
    assert moved == {n for n, (node, _) in before.items() if node == victim}
    for name, rec in st.packs.items():
        if name in moved:
            assert rec.node != victim and rec.generation == before[name][1] + 1
        else:
            assert (rec.node, rec.generation) == before[name]


def test_stale_generation_reports_are_ignored():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("p"),)))
    old_node = st.packs["p"].node
    st.apply(SetNodeState(**ids(), node_id=old_node, state=NodeState.DOWN))
    res = st.apply(ReportPacks(**ids(), node_id=old_node, reports=(PackReport("p", 1, ReportState.RUNNING),)))
    assert res["stale"] == ["p"] and st.packs["p"].state is PackState.PLACED


def test_report_running_then_stop_releases_resources():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("p"),)))
    node = st.packs["p"].node
    st.apply(ReportPacks(**ids(), node_id=node, reports=(PackReport("p", 1, ReportState.RUNNING),)))
    assert st.packs["p"].state is PackState.RUNNING
    st.apply(StopPacks(**ids(), names=("p",)))
    assert st.packs["p"].state is PackState.STOPPING
    st.apply(ReportPacks(**ids(), node_id=node, reports=(PackReport("p", 1, ReportState.STOPPED),)))
    assert st.packs["p"].state is PackState.STOPPED and st.node_usage(node).packs == 0
    st.apply(PlacePacks(**ids(), names=("p",)))
    assert st.packs["p"].state is PackState.PLACED and st.packs["p"].generation == 2


def test_deposed_leader_command_is_rejected():
    st, ids = _cluster()
    st.apply(Noop(id="x", at=1, term=5))
    res = st.apply(SetNodeState(id="old", at=2, term=4, node_id="n0", state=NodeState.DOWN))
    assert res["error"]["code"] == "wrong_state"
    assert st.nodes["n0"].state is NodeState.READY


def test_snapshot_round_trip_keeps_digest_and_behaviour():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("p"),), count=20))
    st.apply(SetNodeState(**ids(), node_id="n1", state=NodeState.DOWN))
    back = ClusterState.from_snapshot(st.to_snapshot())
    assert back.digest() == st.digest()
    cmd = CreatePacks(**ids(), specs=(PackSpec("q"),), count=5)
    assert back.apply(cmd) == st.apply(cmd)
    assert back.digest() == st.digest()


def test_remove_node_evacuates():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("p"),), count=6))
    st.apply(RemoveNode(**ids(), node_id="n2"))
    assert "n2" not in st.nodes
    assert all(r.node != "n2" for r in st.packs.values())


def test_events_are_numbered():
    st, ids = _cluster()
    st.drain_events()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("p"),)))
    evs = st.drain_events()
    assert [e["type"] for e in evs] == ["PackCreated", "PackPlaced"]
    assert evs[1]["seq"] == evs[0]["seq"] + 1


def test_migrate_to_named_target_and_back_refused_when_full():
    from canidae.core.commands import MigratePacks
    st, ids = _cluster(n_nodes=3, packs=2)
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a"),)))
    src = st.packs["a"].node
    target = next(n for n in ("n0", "n1", "n2") if n != src)
    res = st.apply(MigratePacks(**ids(), moves=(("a", target),)))
    assert res["migrations"][0]["moved"] and st.packs["a"].node == target and st.packs["a"].generation == 2
    assert st.node_usage(src).packs == 0 and st.node_usage(target).packs == 1
    # fill every other node, then ask to move: it stays put, nothing half-applied
    st.apply(CreatePacks(**ids(), specs=(PackSpec("f"),), count=5))
    res = st.apply(MigratePacks(**ids(), moves=(("a", None),)))
    assert res["migrations"][0]["moved"] is False and st.packs["a"].node == target
    assert sum(st.node_usage(n).packs for n in ("n0", "n1", "n2")) == 6


def test_drain_evacuates_and_takes_nothing_new():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("p"),), count=9))
    res = st.apply(SetNodeState(**ids(), node_id="n1", state=NodeState.DRAINING))
    assert res["moved"] and all(r.node != "n1" for r in st.packs.values())
    st.apply(CreatePacks(**ids(), specs=(PackSpec("q"),), count=6))
    assert all(r.node != "n1" for r in st.packs.values())


def test_rebalance_moves_only_onto_newcomers():
    from canidae.core.commands import Rebalance
    st, ids = _cluster(n_nodes=3, packs=100)
    st.apply(CreatePacks(**ids(), specs=(PackSpec("p"),), count=90))
    before = {n: r.node for n, r in st.packs.items()}
    st.apply(RegisterNode(**ids(), node=Node("n9", Location("z0", "r1", "c1"), Resources(10_000, 10_000, 100))))
    res = st.apply(Rebalance(**ids()))
    assert res["migrations"]
    for m in res["migrations"]:
        assert m["node"] == "n9" and before[m["name"]] == m["source"]
    moved = {m["name"] for m in res["migrations"]}
    assert all(st.packs[n].node == before[n] for n in before if n not in moved)
