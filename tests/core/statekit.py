"""A ClusterState with registered nodes and a source of command stamps, for state-machine tests."""

from __future__ import annotations

from canidae.core.commands import RegisterNode
from canidae.core.state import ClusterState
from canidae.core.types import Location, Node, Resources


class Ids:
    """Stamps for commands: a fresh request id and a later time for each, in term 1."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> dict:
        self.n += 1
        return {"id": f"r{self.n}", "at": 1000 + self.n, "term": 1}


def registered(nodes: int, capacity: Resources) -> tuple[ClusterState, Ids]:
    """A state with nodes n0.. (zone z1, region r1, cell c1) of ``capacity`` each."""
    st, ids = ClusterState(), Ids()
    for i in range(nodes):
        st.apply(RegisterNode(**ids(), node=Node(f"n{i}", Location("z1", "r1", "c1"), capacity)))
    return st, ids
