"""Leader-only commands are fenced by the term of the log entry that carries them."""

from canidae.core.commands import CreatePacks, Noop, Rebalance, RegisterNode, SetNodeState
from canidae.core.state import ClusterState
from canidae.core.types import Location, Node, NodeState, PackSpec, Resources


def _state() -> ClusterState:
    st = ClusterState()
    for i in range(3):
        st.apply(RegisterNode(id=f"reg{i}", at=1, term=1, node=Node(
            f"n{i}", Location(f"z{i}", "r1", "c1"), Resources(10_000, 10_000, 100))), entry_term=1)
    return st


def test_a_command_stamped_in_an_older_term_than_its_entry_is_rejected():
    st = _state()
    # The deposed leader of term 3 stamped it; the leader of term 4 appended it (forwarding).
    res = st.apply(SetNodeState(id="down", at=2, term=3, node_id="n0", state=NodeState.DOWN), entry_term=4)
    assert res["error"]["code"] == "wrong_state"
    assert "stamped by the leader of term 3, appended in term 4" in res["error"]["message"]
    assert st.nodes["n0"].state is NodeState.READY


def test_fencing_needs_no_newer_command_applied_first():
    # The old check (term below the highest term seen) let this through: nothing newer was applied.
    st = _state()
    assert st.max_term == 1
    res = st.apply(SetNodeState(id="down", at=2, term=1, node_id="n0", state=NodeState.DOWN), entry_term=2)
    assert res["error"]["code"] == "wrong_state"
    assert st.nodes["n0"].state is NodeState.READY


def test_a_command_stamped_in_its_entry_term_acts():
    st = _state()
    res = st.apply(SetNodeState(id="down", at=2, term=4, node_id="n0", state=NodeState.DOWN), entry_term=4)
    assert res.get("ok"), res
    assert st.nodes["n0"].state is NodeState.DOWN


def test_only_leader_only_commands_are_fenced():
    st = _state()
    res = st.apply(CreatePacks(id="c", at=2, term=1, specs=(PackSpec("web"),)), entry_term=5)
    assert res.get("ok"), res
    assert st.apply(Rebalance(id="r", at=3, term=1), entry_term=5)["error"]["code"] == "wrong_state"


def test_a_fenced_request_can_be_retried_with_the_same_id_by_the_current_leader():
    st = _state()
    stale = SetNodeState(id="op-1", at=2, term=3, node_id="n1", state=NodeState.CORDONED)
    assert st.apply(stale, entry_term=4)["error"]["code"] == "wrong_state"
    retry = SetNodeState(id="op-1", at=3, term=4, node_id="n1", state=NodeState.CORDONED)
    assert st.apply(retry, entry_term=4).get("ok")
    assert st.nodes["n1"].state is NodeState.CORDONED
    # ... and once it acted, the same id answers that first outcome again.
    assert st.apply(stale, entry_term=4).get("duplicate")


def test_fencing_is_the_same_on_every_replica():
    cmds = [Noop(id="x", at=1, term=2),
            SetNodeState(id="a", at=2, term=2, node_id="n0", state=NodeState.DOWN),
            SetNodeState(id="b", at=3, term=1, node_id="n1", state=NodeState.DOWN)]
    replicas = [_state() for _ in range(3)]
    answers = [r.apply_batch(cmds, entry_term=2) for r in replicas]
    assert answers[0] == answers[1] == answers[2]
    assert [bool(a.get("ok")) for a in answers[0]] == [True, True, False]
    assert len({r.digest() for r in replicas}) == 1


def test_without_an_entry_term_the_highest_applied_term_still_fences():
    st = _state()
    st.apply(Noop(id="x", at=1, term=5))
    res = st.apply(SetNodeState(id="old", at=2, term=4, node_id="n0", state=NodeState.DOWN))
    assert res["error"]["code"] == "wrong_state"
