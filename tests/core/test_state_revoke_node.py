"""Revoking a client agent's node credential in the replicated state: recorded for good, the node
declared down and its packs moved in the same step, a server refused, carried by snapshots and
the wire."""

from __future__ import annotations

from canidae.core.commands import CreatePacks, RegisterNode, RevokeNode, command_from_wire
from canidae.core.state import ClusterState
from canidae.core.types import Location, Node, NodeState, PackSpec, Resources, Role
from statekit import registered


def test_revoking_a_client_node_downs_it_moves_its_packs_and_is_kept():
    st, ids = registered(3, Resources(4000, 4096, 100))
    st.apply(CreatePacks(**ids(), specs=(PackSpec(name="web"),), place=True))
    held = st.packs["web"].node
    assert held is not None
    answer = st.apply(RevokeNode(**ids(), node_id=held, reason="config stolen"))
    assert answer["ok"] and answer["node_id"] == held and [m["name"] for m in answer["moved"]] == ["web"]
    assert st.nodes[held].state is NodeState.DOWN and held in st.revoked_nodes
    assert st.packs["web"].node not in (None, held)
    again = st.apply(RevokeNode(**ids(), node_id=held))  # idempotent: kept, nothing more moves
    assert again["ok"] and again["moved"] == [] and again["revoked_at"] == answer["revoked_at"]
    copy = ClusterState.from_snapshot(st.to_snapshot())
    assert copy.revoked_nodes == st.revoked_nodes and copy.digest() == st.digest()


def test_a_server_credential_is_not_revocable_and_an_unknown_node_is_recorded():
    st, ids = registered(1, Resources(4000, 4096, 100))
    st.apply(RegisterNode(**ids(), node=Node("s1", Location("z1", "r1", "c1"), Resources(1, 1, 1),
                                             role=Role.SERVER)))
    refused = st.apply(RevokeNode(**ids(), node_id="s1"))
    assert refused["error"]["code"] == "conflict" and "s1" not in st.revoked_nodes
    assert st.apply(RevokeNode(**ids(), node_id="c9"))["ok"] and "c9" in st.revoked_nodes
    assert "revoked_nodes" not in ClusterState().to_snapshot()  # states without any keep their digest


def test_the_command_round_trips_on_the_wire():
    cmd = RevokeNode(id="r1", at=5, term=2, node_id="c1", reason="stolen")
    assert command_from_wire(cmd.to_wire()) == cmd
