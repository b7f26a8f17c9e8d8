"""The scheduler's model of the fleet: a tree of groups (fleet, zones, regions, cells) over nodes,
each group with a consistent-hash ring over its children and aggregates of what lies beneath.

This module owns the bookkeeping: nodes joining, changing and leaving, usage going up and down,
the aggregates carried up the tree, and the group rings kept in step with the READY weight
beneath each child. It decides nothing; feasibility (``scheduler_feasible``), ranking
(``scheduler_rank``), spread (``scheduler_spread``), explanation (``scheduler_explain``) and
rebalancing (``scheduler_rebalance``) read it, and ``core.scheduler`` ties them together.

Each group's ring is a ``core.ring.HashRing``, walked only through the ``core.ringindex.RingIndex``
it hands out (``Group.idx``), refreshed lazily by ``Fleet.refresh`` once per scheduler call.

Weights are summed as integers (millionths), so no aggregate depends on the order float sums
were made in: a replica restored from a snapshot holds exactly the tree of one that replayed
the log. Group rings weigh each child by its READY weight relative to its siblings' mean (a ring
gives a member ``vnodes * weight`` points, so raw sums would blow up at the top).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import xxhash
from canidae.core.errors import InvalidInput, NotFound
from canidae.core.ring import HashRing, key_hash
from canidae.core.ringindex import RingIndex
from canidae.core.types import Level, Node, NodeState

WEIGHT_UNIT = 1_000_000  # node weights are summed in millionths: integer sums have no order
LEVELS = (Level.ZONE, Level.REGION, Level.CELL)
LEVEL_DEPTH = {"fleet": 0, "zone": 1, "region": 2, "cell": 3}
# Group rings have few members (3 zones, 4 regions, 10 cells) and the error of each level's
# shares multiplies into the next: more points per member keep a node's overall share within
# a few percent of its weight's (with vnodes alone, 4 levels of ~8% error compound to ~18%).
GROUP_VNODE_FACTOR = 8

Hashes = tuple[int, int, int, int]
_xxh64 = xxhash.xxh64_intdigest
_EMPTY = RingIndex([], [], 0)


def hashes(key: str) -> Hashes:
    """The key's position on the ring of each depth: the fleet's, a zone's, a region's, a cell's.

    One independent hash per depth: with a single hash, the keys reaching a cell would be those
    in the intersection of three levels of arcs, a few large pieces of the circle, and the nodes
    of the cell would share them very unevenly.
    """
    b = key.encode()
    return (key_hash(key), _xxh64(b, seed=1), _xxh64(b, seed=2), _xxh64(b, seed=3))


def quantize(weight: float) -> int:
    return max(1, round(weight * WEIGHT_UNIT))


class Slot:
    """A node as the scheduler tracks it: its capacity, its usage and its place in the tree."""

    __slots__ = (
        "cap_cpu",
        "cap_mem",
        "cap_packs",
        "cell",
        "chain",
        "id",
        "node",
        "ready",
        "used_cpu",
        "used_mem",
        "used_packs",
        "wq",
    )

    def __init__(self, node: Node, cell: Group) -> None:
        self.id = node.id
        self.node = node
        self.wq = quantize(node.weight)
        self.ready = node.state is NodeState.READY
        self.cap_cpu, self.cap_mem, self.cap_packs = node.capacity.cpu, node.capacity.mem, node.capacity.packs
        self.used_cpu = self.used_mem = self.used_packs = 0
        self.cell = cell
        self.chain = tuple(cell.chain())  # cell, region, zone, fleet: every aggregate it feeds

    def free_tuple(self) -> tuple[int, int, int]:
        """Free capacity counted into group aggregates: only READY nodes offer any."""
        if not self.ready:
            return (0, 0, 0)
        return (
            max(0, self.cap_cpu - self.used_cpu),
            max(0, self.cap_mem - self.used_mem),
            max(0, self.cap_packs - self.used_packs),
        )


class Group:
    """The fleet root, a zone, a region or a cell: children, a ring over them, aggregates.

    ``wq`` (READY weight) and ``packs`` (packs on READY nodes) drive ring weights and bounded
    loads; ``free_*`` sum the free capacity of READY nodes, a quick filter: a group whose sum is
    short of a pack cannot hold it. ``size`` counts nodes beneath whatever their state.
    """

    __slots__ = (
        "children",
        "depth",
        "free_cpu",
        "free_mem",
        "free_packs",
        "id",
        "idx",
        "is_cell",
        "level",
        "name",
        "on_ring",
        "packs",
        "parent",
        "ring",
        "size",
        "wq",
    )

    def __init__(self, gid: str, name: str, level: str, parent: Group | None, vnodes: int) -> None:
        self.id = gid
        self.name = name
        self.level = level
        self.is_cell = level == "cell"
        self.depth: int = 0 if parent is None else parent.depth + 1  # which of the key's hashes to use
        self.parent = parent
        # Groups under the fleet, zones and regions; slots (nodes) in a cell. Any, not a union:
        # the hot path knows which one it holds from ``is_cell`` and must not pay for isinstance.
        self.children: dict[str, Any] = {}
        self.ring = HashRing(vnodes=vnodes if level == "cell" else vnodes * GROUP_VNODE_FACTOR)
        self.on_ring: dict[str, float] = {}  # child name -> its weight on the ring
        # The ring's index, read once per change rather than once per walk (see Fleet.refresh).
        self.idx = _EMPTY
        self.wq = 0
        self.packs = 0
        self.free_cpu = self.free_mem = self.free_packs = 0
        self.size = 0

    def chain(self) -> Iterator[Group]:
        g: Group | None = self
        while g is not None:
            yield g
            g = g.parent

    def path(self) -> list[Group]:
        """Ancestors below the root, then this group: zone, region, cell."""
        out = [g for g in self.chain() if g.parent is not None]
        out.reverse()
        return out


def ancestor_at(g: Group, level: str) -> Group:
    """``g`` or its ancestor at ``level`` (``g`` itself when it is above it)."""
    a: Group | None = g
    while a is not None and a.level != level:
        a = a.parent
    return a if a is not None else g


def sorted_groups(g: Group) -> list[Group]:
    return [g.children[k] for k in sorted(g.children)]


def slots_under(g: Group) -> list[Slot]:
    if g.is_cell:
        return [g.children[k] for k in sorted(g.children)]
    out: list[Slot] = []
    for child in sorted_groups(g):
        out.extend(slots_under(child))
    return out


class Fleet:
    """The tree of groups and slots, its aggregates and its rings (see the module docstring)."""

    def __init__(self, vnodes: int) -> None:
        self.vnodes = vnodes
        self.root = Group("", "", "fleet", None, vnodes)
        self.groups: dict[str, Group] = {}  # scoped id -> zone, region or cell
        self.slots: dict[str, Slot] = {}
        self._stale: dict[str, Group] = {}  # groups whose ring lags their children's weights
        self._reread: dict[str, Group] = {}  # groups whose ring changed since idx was read

    def slot(self, node_id: str) -> Slot:
        slot = self.slots.get(node_id)
        if slot is None:
            raise NotFound(f"no node {node_id!r} known to the scheduler")
        return slot

    def add(self, node: Node) -> Slot:
        if node.id in self.slots:
            raise InvalidInput(f"node {node.id!r} is already known to the scheduler")
        cell = self._cell_for(node)
        slot = Slot(node, cell)
        self.slots[node.id] = slot
        cell.children[node.id] = slot
        for g in cell.chain():
            g.size += 1
        self._account(slot, +1)
        self._sync_cell_ring(slot)
        return slot

    def update(self, slot: Slot, node: Node) -> None:
        """Apply a change of state, capacity or weight (same location); the usage is kept."""
        self._account(slot, -1)
        slot.node = node
        slot.wq = quantize(node.weight)
        slot.ready = node.state is NodeState.READY
        slot.cap_cpu, slot.cap_mem, slot.cap_packs = node.capacity.cpu, node.capacity.mem, node.capacity.packs
        self._account(slot, +1)
        self._sync_cell_ring(slot)

    def remove(self, node_id: str) -> None:
        slot = self.slot(node_id)
        self._account(slot, -1)
        slot.ready = False
        self._sync_cell_ring(slot)
        cell = slot.cell
        del cell.children[node_id]
        del self.slots[node_id]
        for g in cell.chain():
            g.size -= 1
        # Drop groups left empty, so they stop showing up in rings, topologies and reasons.
        g = cell
        while g.parent is not None and not g.children:
            parent = g.parent
            del parent.children[g.name]
            del self.groups[g.id]
            self._stale.pop(g.id, None)
            self._reread.pop(g.id, None)
            self._stale[parent.id] = parent
            g = parent

    def use(self, slot: Slot, cpu: int, mem: int, packs: int) -> None:
        """Change the slot's usage by the given amounts and carry the change up the tree."""
        if slot.ready:
            fc0, fm0, fp0 = slot.free_tuple()
            slot.used_cpu += cpu
            slot.used_mem += mem
            slot.used_packs += packs
            fc1, fm1, fp1 = slot.free_tuple()
            dc, dm, dp = fc1 - fc0, fm1 - fm0, fp1 - fp0
            g: Group | None = slot.cell
            while g is not None:
                g.free_cpu += dc
                g.free_mem += dm
                g.free_packs += dp
                g.packs += packs
                g = g.parent
        else:
            # A node that is not READY offers nothing and counts no packs toward bounds.
            slot.used_cpu += cpu
            slot.used_mem += mem
            slot.used_packs += packs

    @staticmethod
    def take(slot: Slot, cpu: int, mem: int) -> None:
        """Reserve one pack on a READY slot known to fit it (``use``'s fast path for placement):
        free capacity then drops by exactly the reservation at every level."""
        slot.used_cpu += cpu
        slot.used_mem += mem
        slot.used_packs += 1
        for g in slot.chain:
            g.free_cpu -= cpu
            g.free_mem -= mem
            g.free_packs -= 1
            g.packs += 1

    def refresh(self) -> None:
        """Bring group rings up to date: each child weighted by READY weight / the siblings' mean."""
        for gid in sorted(self._stale):
            g = self._stale[gid]
            members = [ch for ch in sorted_groups(g) if ch.wq > 0]
            total = sum(ch.wq for ch in members)
            want = {ch.name: ch.wq * len(members) / total for ch in members}
            if want != g.on_ring:
                self._reread[gid] = g
            for name in sorted(g.on_ring):
                if want.get(name) != g.on_ring[name]:
                    g.ring.remove_node(name)
                    del g.on_ring[name]
            for name, w in want.items():
                if name not in g.on_ring:
                    g.ring.add_node(name, w)
                    g.on_ring[name] = w
        self._stale.clear()
        for g in self._reread.values():
            g.idx = g.ring.index()
        self._reread.clear()

    def shares(self) -> dict[str, float]:
        """Each READY node's share of the hash space as the rings split it level by level (the
        product of its groups' and its own ownership of their parents' rings), by node id."""
        out: dict[str, float] = {}

        def down(g: Group, share: float) -> None:
            own = g.ring.ownership()
            for name in sorted(own):
                child = g.children[name]
                if isinstance(child, Slot):
                    out[name] = share * own[name]
                else:
                    down(child, share * own[name])

        down(self.root, 1.0)
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ internals

    def _cell_for(self, node: Node) -> Group:
        loc = node.location
        g = self.root
        for level, name in zip(LEVELS, (loc.zone, loc.region, loc.cell)):
            child = g.children.get(name)
            if child is None:
                gid = loc.at(level)
                child = Group(gid, name, level.value, g, self.vnodes)
                g.children[name] = child
                self.groups[gid] = child
                self._reread[gid] = child
            assert isinstance(child, Group)
            g = child
        return g

    def _account(self, slot: Slot, sign: int) -> None:
        """Add (+1) or take away (-1) the slot's share of every aggregate above it."""
        fc, fm, fp = slot.free_tuple()
        if slot.ready:
            w, p = slot.wq * sign, slot.used_packs * sign
        else:
            w = p = 0
        fc, fm, fp = fc * sign, fm * sign, fp * sign
        g: Group | None = slot.cell
        while g is not None:
            g.free_cpu += fc
            g.free_mem += fm
            g.free_packs += fp
            if w:
                g.wq += w
                # The ring of the parent weighs this group by its READY weight.
                if g.parent is not None:
                    self._stale[g.parent.id] = g.parent
            g.packs += p
            g = g.parent

    def _sync_cell_ring(self, slot: Slot) -> None:
        """A cell's ring holds its READY nodes at their own weight."""
        cell = slot.cell
        want = slot.node.weight if slot.ready else 0.0
        have = cell.on_ring.get(slot.id)
        if have == want:
            return
        self._reread[cell.id] = cell
        if have is not None:
            cell.ring.remove_node(slot.id)
            del cell.on_ring[slot.id]
        if want > 0.0:
            cell.ring.add_node(slot.id, want)
            cell.on_ring[slot.id] = want


__all__ = [
    "GROUP_VNODE_FACTOR",
    "LEVELS",
    "LEVEL_DEPTH",
    "WEIGHT_UNIT",
    "Fleet",
    "Group",
    "Hashes",
    "Slot",
    "ancestor_at",
    "hashes",
    "quantize",
    "slots_under",
    "sorted_groups",
]
