"""Deleting packs, spawns that leave nothing behind when they fail, crash loops as reported by
agents, and the exit-code classes of pack commands (unknown name: not found; cannot place:
conflict)."""

from canidae.core.commands import (
    CreatePacks, DeletePacks, MigratePacks, PackReport, PlacePacks, ReportPacks, ReportState,
    StopPacks, command_from_wire,
)
from statekit import Ids, registered
from canidae.core.state import ClusterState
from canidae.core.types import Constraints, PackSpec, PackState, Resources


def _cluster(n_nodes: int = 2) -> tuple[ClusterState, Ids]:
    return registered(n_nodes, Resources(1000, 1000, 10))


def _report(st: ClusterState, ids: Ids, name: str, state: ReportState, reason: str = "") -> dict:
    rec = st.packs[name]
    return st.apply(ReportPacks(**ids(), node_id=rec.node, reports=(PackReport(name, rec.generation, state, reason),)))


def test_delete_of_a_stopped_pack_removes_it_and_tells_its_node():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("web"),)))
    node = st.packs["web"].node
    _report(st, ids, "web", ReportState.RUNNING)
    st.apply(StopPacks(**ids(), names=("web",)))
    _report(st, ids, "web", ReportState.STOPPED)
    rev = st.node_rev[node]
    res = st.apply(DeletePacks(**ids(), names=("web",)))
    assert res["ok"] and res["deleted"] == [{"name": "web", "state": "stopped", "node": node}]
    assert "web" not in st.packs and "web" not in st.by_node[node]
    assert st.changes_since(node, rev) == (False, ["web"])
    assert [e["type"] for e in st.drain_events()][-1] == "PackDeleted"
    gone = st.apply(StopPacks(**ids(), names=("web",)))
    assert gone["error"]["code"] == "not_found" and "deleted" in gone["error"]["message"]


def test_delete_of_a_running_pack_needs_force_and_then_frees_its_node():
    st, ids = _cluster(1)
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a", resources=Resources(600, 10, 1)),)))
    _report(st, ids, "a", ReportState.RUNNING)
    st.apply(CreatePacks(**ids(), specs=(PackSpec("b", resources=Resources(600, 10, 1)),)))
    assert st.packs["b"].state is PackState.PENDING
    refused = st.apply(DeletePacks(**ids(), names=("a",)))
    assert refused["error"]["code"] == "wrong_state" and "a" in st.packs
    st.apply(DeletePacks(**ids(), names=("a",), force=True))
    assert "a" not in st.packs
    assert st.packs["b"].state is PackState.PLACED  # the room it held went to the pending pack
    assert st.node_usage("n0").cpu == 600


def test_a_pack_created_again_after_delete_continues_its_generations():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("web"),)))
    first = st.packs["web"].generation
    st.apply(DeletePacks(**ids(), names=("web",), force=True))
    st.apply(CreatePacks(**ids(), specs=(PackSpec("web"),)))
    assert st.packs["web"].generation > first
    again = ClusterState.from_snapshot(st.to_snapshot())
    assert again.digest() == st.digest() and again.deleted == st.deleted


def test_delete_is_all_or_nothing():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a"),), place=False))
    res = st.apply(DeletePacks(**ids(), names=("a", "nope")))
    assert res["error"]["code"] == "not_found" and "a" in st.packs


def test_spawn_without_keep_pending_creates_nothing_when_it_cannot_place():
    st, ids = _cluster()
    res = st.apply(CreatePacks(**ids(), specs=(PackSpec("big", resources=Resources(99_999, 1, 1)),),
                               keep_pending=False))
    assert res["error"]["code"] == "no_capacity" and res["error"]["details"]["levels"]
    assert not st.packs and st.node_usage("n0") == Resources() and st.node_usage("n1") == Resources()
    # a bulk spawn where only some fit: nothing either, and the trial reservations are undone
    res = st.apply(CreatePacks(**ids(), specs=(PackSpec("s", resources=Resources(400, 1, 1)),), count=5,
                               keep_pending=False))
    assert res["error"]["code"] == "no_capacity" and not st.packs
    assert st.node_usage("n0") == Resources() and st.node_usage("n1") == Resources()
    ok = st.apply(CreatePacks(**ids(), specs=(PackSpec("s", resources=Resources(400, 1, 1)),), count=4,
                              keep_pending=False))
    assert ok["ok"] and all(p["node"] for p in ok["placements"])
    kept = st.apply(CreatePacks(**ids(), specs=(PackSpec("big", resources=Resources(99_999, 1, 1)),)))
    assert kept["placements"][0]["node"] is None and st.packs["big"].state is PackState.PENDING


def test_place_without_keep_pending_leaves_a_created_pack_as_it_was():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("big", resources=Resources(99_999, 1, 1)),), place=False))
    res = st.apply(PlacePacks(**ids(), names=("big",), keep_pending=False))
    assert res["error"]["code"] == "no_capacity" and st.packs["big"].state is PackState.CREATED


def test_unknown_zone_region_or_cell_is_not_found_and_creates_nothing():
    st, ids = _cluster()
    for c in (Constraints(zone="z9"), Constraints(region="r9"), Constraints(zone="z1", cell="c9"),
              Constraints(node="n9")):
        res = st.apply(CreatePacks(**ids(), specs=(PackSpec("p", constraints=c),)))
        assert res["error"]["code"] == "not_found", c
    assert not st.packs
    assert st.apply(CreatePacks(**ids(), specs=(PackSpec("p", constraints=Constraints(zone="z1")),)))["ok"]


def test_migrating_to_the_node_it_runs_on_is_a_conflict():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a"),)))
    res = st.apply(MigratePacks(**ids(), moves=(("a", st.packs["a"].node),)))
    assert res["error"]["code"] == "wrong_state"


def test_crash_loop_reports_mark_a_running_pack_until_it_recovers():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("web"),)))
    st.drain_events()
    _report(st, ids, "web", ReportState.CRASHLOOP, "member 1 exited 1 after 0.1 s (restart 1)")
    rec = st.packs["web"]
    assert rec.state is PackState.RUNNING and rec.crashloop and "exited 1" in rec.reason
    assert rec.view()["crashlooping"] is True
    _report(st, ids, "web", ReportState.CRASHLOOP, "member 1 exited 1 after 0.1 s (restart 2)")
    kinds = [e["type"] for e in st.drain_events()]
    assert kinds == ["PackStarted", "PackCrashLooping"]  # entering the loop is one event
    page, _, total = st.list_packs(crashlooping=True)
    assert [r.spec.name for r in page] == ["web"] and total == 1
    _report(st, ids, "web", ReportState.RUNNING)
    assert not rec.crashloop and rec.reason == ""
    assert [e["type"] for e in st.drain_events()] == ["PackRecovered"]
    assert ClusterState.from_snapshot(st.to_snapshot()).digest() == st.digest()


def test_list_total_counts_only_the_packs_that_match():
    st, ids = _cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a"),), count=3))
    st.apply(CreatePacks(**ids(), specs=(PackSpec("c"),), place=False))
    page, cursor, total = st.list_packs(state=PackState.CREATED)
    assert [r.spec.name for r in page] == ["c"] and total == 1 and cursor is None
    assert st.list_packs(limit=2)[2] == 4


def test_new_command_fields_survive_the_wire():
    for cmd in (DeletePacks(id="x", at=1, names=("a", "b"), force=True),
                CreatePacks(id="y", at=1, specs=(PackSpec("a"),), keep_pending=False),
                PlacePacks(id="z", at=1, names=("a",), keep_pending=False)):
        assert command_from_wire(cmd.to_wire()) == cmd
