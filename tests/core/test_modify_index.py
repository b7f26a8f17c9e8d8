"""The modify indexes blocking reads compare against: a pack's (``PackRecord.index``) moves with
each change of that pack and only then; the list's (``packs_index``) with each change of any pack,
deletions included; both survive a snapshot and are the same on every replica."""

from __future__ import annotations

from statekit import registered

from canidae.core.commands import CreatePacks, DeletePacks, PackReport, ReportPacks, ReportState, StopPacks
from canidae.core.state import ClusterState
from canidae.core.types import PackSpec, Resources


def test_a_pack_index_moves_with_its_changes_and_the_list_index_with_any() -> None:
    st, ids = registered(2, Resources(10_000, 10_000, 100))
    assert st.packs_index == 0
    st.apply(CreatePacks(**ids(), specs=(PackSpec(name="a"), PackSpec(name="b")), place=True))
    a0, b0, list0 = st.packs["a"].index, st.packs["b"].index, st.packs_index
    assert 0 < a0 and 0 < b0 and list0 == max(a0, b0)

    rec = st.packs["a"]
    st.apply(ReportPacks(**ids(), node_id=rec.node, reports=(PackReport("a", rec.generation, ReportState.RUNNING, ""),)))
    assert st.packs["a"].index > a0 and st.packs["b"].index == b0  # only the changed pack moves
    assert st.packs_index == st.packs["a"].index > list0

    a1 = st.packs["a"].index
    st.apply(StopPacks(**ids(), names=("b",)))
    assert st.packs["a"].index == a1 and st.packs["b"].index > b0

    before = st.packs_index
    st.apply(DeletePacks(**ids(), names=("b",), force=True))
    assert "b" not in st.packs and st.packs_index > before  # a deletion moves the list's index

    unchanged = st.packs_index
    st.apply(StopPacks(**ids(), names=("nosuch",)))  # refused: nothing changed
    assert st.packs_index == unchanged


def test_indexes_survive_a_snapshot_and_agree_across_replicas() -> None:
    st, ids = registered(1, Resources(10_000, 10_000, 100))
    st.apply(CreatePacks(**ids(), specs=(PackSpec(name="p"),), place=True, count=3))
    copy = ClusterState.from_snapshot(st.to_snapshot())
    assert copy.packs_index == st.packs_index
    assert {n: r.index for n, r in copy.packs.items()} == {n: r.index for n, r in st.packs.items()}
    assert copy.digest() == st.digest()
