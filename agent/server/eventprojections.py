"""The event store's projections: the state of every pack and the packs of every node, folded
from events with the same transitions as ``canidae.core.state``, and compared with the live
replicated state (``compare``) by ``EventStore.verify``. Snapshots of them (``to_doc``) let a
store start without replaying its whole log.
"""

from __future__ import annotations

from typing import Any

HOLDING = frozenset({"placed", "running", "stopping"})

# Event type -> the pack state it leaves behind, and whether the event's node becomes the pack's
# node (True), the node is cleared (None) or kept (False). Mirrors canidae.core.state.
PACK_TRANSITIONS: dict[str, tuple[str, bool | None]] = {
    "PackCreated": ("created", None),
    "PackPending": ("pending", None),
    "PackPlaced": ("placed", True),
    "PackMigrating": ("placed", True),
    "PackStarted": ("running", True),
    "PackMigrated": ("running", True),
    "PackStopping": ("stopping", False),
    "PackStopped": ("stopped", False),
    "PackFailed": ("failed", False),
}
NODE_TRANSITIONS: dict[str, str] = {
    "NodeJoined": "ready", "NodeReturned": "ready", "NodeDown": "down", "NodeDraining": "draining",
}


class Projections:
    """The state and node of every pack, the state of every node, as of event ``seq``."""

    __slots__ = ("nodes", "on_node", "packs", "seq")

    def __init__(self) -> None:
        self.seq = 0
        # Records are immutable tuples, replaced on change: a snapshot needs only a shallow copy
        # of the dict under the store's lock, never a walk over every pack.
        self.packs: dict[str, tuple[str, str | None]] = {}  # name -> (state, node)
        self.on_node: dict[str, dict[str, None]] = {}       # node -> packs whose node it is (any state)
        self.nodes: dict[str, str] = {}                     # node -> state

    def _move(self, name: str, old: str | None, new: str | None) -> None:
        if old is not None:
            names = self.on_node.get(old)
            if names is not None:
                names.pop(name, None)
                if not names:
                    del self.on_node[old]
        if new is not None:
            self.on_node.setdefault(new, {})[name] = None

    def apply(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        pack = ev.get("pack")
        self.seq = ev["seq"]
        if pack is not None:
            if kind == "PackDeleted":
                old = self.packs.pop(pack, None)
                if old is not None:
                    self._move(pack, old[1], None)
                return
            tr = PACK_TRANSITIONS.get(kind)  # type: ignore[arg-type]
            if tr is None:
                return
            old = self.packs.get(pack)
            old_node = old[1] if old is not None else None
            if tr[1] is None:
                node = None
            elif tr[1] and ev.get("node") is not None:
                node = ev["node"]
            else:
                node = old_node
            self.packs[pack] = (tr[0], node)
            if node != old_node:
                self._move(pack, old_node, node)
            return
        node = ev.get("node")
        if node is None:
            return
        if kind in NODE_TRANSITIONS:
            self.nodes[node] = NODE_TRANSITIONS[kind]  # type: ignore[index]
        elif kind == "NodeStateChanged":
            state = (ev.get("detail") or {}).get("state")
            if isinstance(state, str):
                self.nodes[node] = state
        elif kind == "NodeRemoved":
            # The state machine detaches the packs left on a removed node without a pack event.
            self.nodes.pop(node, None)
            for name in list(self.on_node.get(node, ())):
                self.packs[name] = (self.packs[name][0], None)
                self._move(name, node, None)

    def view(self, pack: str | None = None) -> dict[str, Any]:
        names = [pack] if pack is not None else sorted(self.packs)
        packs = {n: {"state": self.packs[n][0], "node": self.packs[n][1]} for n in names if n in self.packs}
        per_node = {n: sorted(p for p in names_ if self.packs[p][0] in HOLDING)
                    for n, names_ in sorted(self.on_node.items())}
        return {"seq": self.seq, "packs": packs,
                "nodes": {n: {"state": self.nodes.get(n), "packs": per_node.get(n, [])}
                          for n in sorted(set(self.nodes) | set(per_node))}}

    def to_doc(self) -> dict[str, Any]:
        return projection_doc(self.seq, self.packs, self.nodes)

    @staticmethod
    def from_doc(doc: dict[str, Any]) -> Projections:
        if doc.get("version") != 1:
            raise ValueError(f"unsupported snapshot version {doc.get('version')!r}")
        p = Projections()
        p.seq = int(doc["seq"])
        for name, state, node in doc["packs"]:
            p.packs[name] = (state, node)
            p._move(name, None, node)
        p.nodes = {n: s for n, s in doc["nodes"]}
        return p

    @staticmethod
    def from_live(seq: int, packs: dict[str, dict[str, Any]], nodes: dict[str, str]) -> Projections:
        return Projections.from_doc({"version": 1, "seq": seq,
                                     "packs": [[n, v["state"], v.get("node")] for n, v in packs.items()],
                                     "nodes": list(nodes.items())})


def projection_doc(seq: int, packs: dict[str, tuple[str, str | None]], nodes: dict[str, str]) -> dict[str, Any]:
    # Not sorted: one sort of 100,000 names is a single long hold of the GIL (see encode_big).
    return {"version": 1, "seq": seq, "packs": [[n, r[0], r[1]] for n, r in packs.items()],
            "nodes": [[n, s] for n, s in nodes.items()]}


def compare(proj: Projections, live: dict[str, dict[str, Any]], live_nodes: dict[str, str] | None,
             pack: str | None) -> list[str]:
    out = []
    names = [pack] if pack is not None else sorted(set(proj.packs) | set(live))
    for name in names:
        h = proj.packs.get(name)
        v = live.get(name)
        if h is None and v is None:
            continue
        if h is None:
            out.append(f"pack {name}: {v['state']} on {v.get('node') or '-'} in the live state, "  # type: ignore[index]
                       "absent from the history")
        elif v is None:
            out.append(f"pack {name}: {h[0]} on {h[1] or '-'} in the history, absent from the live state")
        elif h[0] != v["state"] or h[1] != v.get("node"):
            out.append(f"pack {name}: history says {h[0]} on {h[1] or '-'}, live state says {v['state']} "
                       f"on {v.get('node') or '-'}")
    if live_nodes is not None and pack is None:
        for node in sorted(set(proj.nodes) | set(live_nodes)):
            h_state, v_state = proj.nodes.get(node), live_nodes.get(node)
            if h_state != v_state:
                out.append(f"node {node}: history says {h_state or 'absent'}, "
                           f"live state says {v_state or 'absent'}")
    return out


__all__ = ["HOLDING", "NODE_TRANSITIONS", "PACK_TRANSITIONS", "Projections", "compare", "projection_doc"]
