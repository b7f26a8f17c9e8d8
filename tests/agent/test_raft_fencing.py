"""A deposed leader's leader-only command is rejected by the term of the entry that carries it,
on every replica, even when pysyncobj forwards it to the next leader (real replicas, real TCP)."""

from __future__ import annotations

import threading

import pytest
from canidae.core.commands import RegisterNode, SetNodeState
from canidae.core.types import Location, Node, NodeState, Resources
from raft_group import Group, wait_until


@pytest.fixture
def group(tmp_path):
    with Group(str(tmp_path)) as g:
        yield g


def _register(g: Group) -> None:
    lead = g.leader()
    nodes = [Node(f"n{i}", Location("z1", "r1", "c1"), Resources(1000, 1000, 10)) for i in range(2)]
    res = g.propose(lead, [RegisterNode(id=f"reg-{n.id}", at=1, node=n) for n in nodes])
    assert all(r.get("ok") for r in res), res


def _transfer(g: Group, old, new) -> None:
    """Move leadership from ``old`` to ``new`` (pysyncobj's TimeoutNow); wait until all follow it."""
    def attempt() -> bool:
        done = threading.Event()
        old.transferLeadership(new.selfNode.address, callback=lambda res, err: done.set())
        done.wait(2)
        return g.leader(timeout=2) is new  # a Timeout from it is "not yet"
    wait_until(attempt, 20, "leadership to move to the chosen member")


def test_a_command_stamped_by_a_deposed_leader_and_forwarded_to_the_next_one_is_rejected(group):
    g = group
    _register(g)
    old = g.leader()
    old_term = old.current_term()
    new = g.followers()[0]
    _transfer(g, old, new)
    assert new.current_term() > old_term

    # The deposed leader's failure detector decided under its old term; pysyncobj forwards the
    # command to the new leader, which appends it in its own term.
    stale = SetNodeState(id="down-n0", at=2, term=old_term, node_id="n0", state=NodeState.DOWN)
    [res] = g.propose(old, [stale])
    assert res["error"]["code"] == "wrong_state", res
    assert f"stamped by the leader of term {old_term}, appended in term {new.current_term()}" \
        in res["error"]["message"]

    # The current leader's decision, submitted through the same follower, acts.
    fresh = SetNodeState(id="down-n1", at=3, term=new.current_term(), node_id="n1", state=NodeState.DOWN)
    [res] = g.propose(old, [fresh])
    assert res.get("ok"), res

    wait_until(lambda: all(r.raftLastApplied == new.raftLastApplied for r in g.live()), 10, "all applied")
    for r in g.live():
        assert r.state.nodes["n0"].state is NodeState.READY
        assert r.state.nodes["n1"].state is NodeState.DOWN
    assert len({r.state.digest() for r in g.live()}) == 1


def test_a_command_stamped_with_an_older_term_submitted_through_a_follower_is_rejected(group):
    g = group
    _register(g)
    lead = g.leader()
    term = lead.current_term()
    follower = g.followers()[0]
    [res] = g.propose(follower, [SetNodeState(id="old", at=2, term=term - 1, node_id="n0",
                                              state=NodeState.CORDONED)])
    assert res["error"]["code"] == "wrong_state", res
    [res] = g.propose(follower, [SetNodeState(id="cur", at=3, term=term, node_id="n0",
                                              state=NodeState.CORDONED)])
    assert res.get("ok"), res
    wait_until(lambda: all(r.state.nodes["n0"].state is NodeState.CORDONED for r in g.live()), 10,
               "the cordon applied everywhere")
