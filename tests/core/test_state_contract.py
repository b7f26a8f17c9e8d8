"""The contract in the state machine: reports never stop a pack the state wants running, every
change of what a node should run bumps its revision, revisions never repeat, and a resync names
an explicit reason for every pack an agent must stop."""

from canidae.core.commands import (
    CreatePacks,
    MigratePacks,
    PackReport,
    RegisterNode,
    RemoveNode,
    ReportPacks,
    ReportState,
    StopPacks,
)
from statekit import Ids, registered
from canidae.core.state import ClusterState, running_digest
from canidae.core.types import Constraints, Location, Node, PackSpec, PackState, Resources


def cluster(nodes: int = 3) -> tuple[ClusterState, Ids]:
    return registered(nodes, Resources(10_000, 10_000, 100))


def running(st: ClusterState, ids: Ids, name: str) -> str:
    rec = st.packs[name]
    st.apply(ReportPacks(**ids(), node_id=rec.node, reports=(PackReport(name, rec.generation, ReportState.RUNNING),)))
    assert st.packs[name].state is PackState.RUNNING
    return rec.node


def test_a_stopped_report_for_a_pack_meant_to_run_does_not_stop_it_and_tells_the_agent_again():
    st, ids = cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("web"),)))
    node = running(st, ids, "web")
    rev = st.node_rev[node]
    res = st.apply(ReportPacks(**ids(), node_id=node, reports=(PackReport("web", 1, ReportState.STOPPED,
                                                                            "no longer assigned here"),)))
    assert res["reasserted"] == ["web"]
    assert st.packs["web"].state is PackState.RUNNING and st.node_usage(node).packs == 1
    assert st.node_rev[node] > rev
    resync, items = st.changes_since(node, rev)
    assert not resync and [r.spec.name for r in items] == ["web"]
    assert "PackReasserted" in [e["type"] for e in st.drain_events()]


def test_exited_and_failed_reports_end_the_pack_and_bump_the_revision():
    st, ids = cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("job"), PackSpec("bad"))))
    for name, report, final in (("job", ReportState.EXITED, PackState.STOPPED),
                                ("bad", ReportState.FAILED, PackState.FAILED)):
        node = running(st, ids, name)
        rev = st.node_rev[node]
        st.apply(ReportPacks(**ids(), node_id=node, reports=(PackReport(name, 1, report, "exit"),)))
        assert st.packs[name].state is final and st.node_rev[node] > rev
        resync, items = st.changes_since(node, rev)
        assert not resync and items == [name]  # gone from the node: an explicit instruction


def test_a_stop_request_ends_with_the_stopped_report():
    st, ids = cluster()
    st.apply(CreatePacks(**ids(), specs=(PackSpec("web"),)))
    node = running(st, ids, "web")
    st.apply(StopPacks(**ids(), names=("web",)))
    st.apply(ReportPacks(**ids(), node_id=node, reports=(PackReport("web", 1, ReportState.STOPPED),)))
    assert st.packs["web"].state is PackState.STOPPED and st.node_usage(node).packs == 0


def test_revisions_are_cluster_wide_and_never_repeat_even_for_a_node_registered_again():
    st, ids = cluster(2)
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a"),), count=5))
    seen = dict(st.node_rev)
    st.apply(RemoveNode(**ids(), node_id="n1"))
    st.apply(RegisterNode(**ids(), node=Node("n1", Location("z1", "r1", "c1"), Resources(10_000, 10_000, 100))))
    assert st.node_rev["n1"] > max(seen.values())
    assert st.is_behind("n1", st.node_rev["n1"] + 1) and not st.is_behind("n1", st.node_rev["n1"])


def test_changes_since_asks_for_a_resync_instead_of_handing_out_a_full_list():
    st, ids = cluster(1)
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a"),), count=3))
    assert st.changes_since("n0", 0) == (True, [])
    assert st.changes_since("n0", st.node_rev["n0"] + 5) == (True, [])  # this replica is behind


def test_resync_names_a_reason_for_every_pack_the_agent_must_stop():
    st, ids = cluster(2)
    on_n0 = Constraints(node="n0")
    st.apply(CreatePacks(**ids(), specs=tuple(PackSpec(n, constraints=on_n0) for n in ("keep", "moved", "stopped"))))
    for name in ("keep", "moved", "stopped"):
        assert running(st, ids, name) == "n0"
    st.apply(MigratePacks(**ids(), moves=(("moved", "n1"),), reason="test"))
    st.apply(StopPacks(**ids(), names=("stopped",)))
    st.apply(ReportPacks(**ids(), node_id="n0", reports=(PackReport("stopped", 1, ReportState.STOPPED),)))
    held, gone = st.resync_view("n0", {"keep": 1, "moved": 1, "stopped": 1, "ghost": 4})
    assert [r.spec.name for r in held] == ["keep"]
    assert {g["name"]: g["reason"] for g in gone} == {
        "moved": "moved to n1 (generation 2)", "stopped": "the pack is stopped",
        "ghost": "the pack no longer exists"}
    held, gone = st.resync_view("n0", {"keep": 7})
    assert gone == [{"name": "keep", "generation": 7, "reason": "replaced by generation 1 on this node"}]


def test_running_digest_is_order_free_and_sees_a_changed_generation():
    a = running_digest([("x", 1), ("y", 2)])
    assert a == running_digest([("y", 2), ("x", 1)])
    assert a != running_digest([("x", 1), ("y", 3)])
    assert running_digest([]) == "0:0000000000000000"


def test_snapshot_keeps_the_revision_counter():
    st, ids = cluster(2)
    st.apply(CreatePacks(**ids(), specs=(PackSpec("a"),), count=4))
    copy = ClusterState.from_snapshot(st.to_snapshot())
    assert copy.rev_seq == st.rev_seq and copy.digest() == st.digest()
