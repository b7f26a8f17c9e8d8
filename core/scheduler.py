"""The scheduler: where new packs go, kept up to date incrementally as the fleet changes.

Theory of operation. The replicated state machine holds one long-lived ``Scheduler`` and feeds
it every change (nodes joining, changing state or capacity, leaving; reservations restored
from a snapshot; packs released). ``place`` then answers for a batch of pack specs and
*reserves* what it hands out, so the next call sees those reservations. Because every replica
applies the same log to its own scheduler, every decision here is a pure function of the calls
made so far: no clock, no global random, no iteration over an unsorted set.

Placement is multi-level. Each group of the hierarchy (the fleet, a zone, a region, a cell)
owns a weighted consistent-hash ring over its children (``core.ring.HashRing``), weighted by
the READY weight beneath each child. A pack walks the preference list of its name at each
level, zone, then region, then cell, then node, and takes the first node that

* is READY and not excluded by the caller,
* has the cpu, memory and a pack slot free (aggregate free capacity per group is a quick filter
  that skips whole groups; the node check is the real one), and
* is under its *bounded load*: a node takes a pack only while its pack count is under
  ``ceil(c * (T + 1) * w / W)``, with ``c`` the load factor, ``T`` the packs on READY nodes and
  ``W`` the READY weight, both taken over the pack's scope (the whole fleet, or the zone /
  region / cell it is pinned to: a bound relative to the fleet means nothing to a pack that can
  only go to one zone). Groups are bounded the same way, which lets the walk skip a full group
  without visiting its nodes.

Weights are summed as integers (millionths), load factors are exact fractions and bounds are
compared by cross-multiplication, so no decision depends on the order float sums were made in:
a replica restored from a snapshot decides exactly as one that replayed the log. Group rings
weigh each child by its READY weight relative to its siblings' mean (a ring gives a member
``vnodes * weight`` points, so raw sums would blow up at the top); they are refreshed lazily,
once per ``place`` call, when a node below changed.

That first pass is the fast path. Only when it finds nothing does a second pass walk every
feasible node against the node bounds alone (a group at its bound may still hold a node under
its own), and only when *every* feasible node is at its bound does a third pass fall back past
the bound, to the least-loaded feasible node (ties by ring order). A pack that fits nowhere is
reported with the reason at each level: how many nodes of each zone were down, excluded, or
lacked cpu, memory or a slot.

Constraints: ``zone``/``region``/``cell``/``node`` pin the pack (region and cell names match
within the pinned parent, else anywhere). ``spread`` with a ``group`` spreads the packs of that
group across the groups of that level: the pack goes to the feasible group holding the fewest
packs of its spread group, ties by ring order, and within it by the usual walk.

Stickiness: ``place`` never moves a pack it did not get in this call. When a node goes down, the
caller releases that node's packs and places them again; nothing else moves, because nothing
else is asked. ``rebalance_plan`` is the one thing that moves packs, and only onto newcomers.

The ``seed`` of ``place`` is accepted for the interface's sake: the current policy is decided by
the ring and the loads alone (consistent hashing wants a pack's name, not a coin, to pick its
home), so two calls with different seeds place alike.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from itertools import accumulate, chain, repeat
from operator import rshift
from typing import Any

import xxhash
from canidae.core.errors import InvalidInput, NoCapacity, NotFound
from canidae.core.ring import HashRing, key_hash
from canidae.core.topology import Topology
from canidae.core.types import (
    NO_CONSTRAINTS,
    Constraints,
    Level,
    Migration,
    Node,
    NodeState,
    PackSpec,
    Placement,
    Plan,
    Resources,
    Unplaced,
)

WEIGHT_UNIT = 1_000_000  # node weights are summed in millionths: integer sums have no order
LEVELS = (Level.ZONE, Level.REGION, Level.CELL)
LEVEL_DEPTH = {"fleet": 0, "zone": 1, "region": 2, "cell": 3}
REASON_REBALANCE = "rebalance onto a new node"
# Group rings have few members (3 zones, 4 regions, 10 cells) and the error of each level's
# shares multiplies into the next: more points per member keep a node's overall share within
# a few percent of its weight's (with vnodes alone, 4 levels of ~8% error compound to ~18%).
GROUP_VNODE_FACTOR = 8

_ScopeKey = tuple[str | None, str | None, str | None]
_Hashes = tuple[int, int, int, int]
_xxh64 = xxhash.xxh64_intdigest


def _hashes(key: str) -> _Hashes:
    """The key's position on the ring of each depth: the fleet's, a zone's, a region's, a cell's.

    One independent hash per depth: with a single hash, the keys reaching a cell would be those
    in the intersection of three levels of arcs, a few large pieces of the circle, and the nodes
    of the cell would share them very unevenly.
    """
    b = key.encode()
    return (key_hash(key), _xxh64(b, seed=1), _xxh64(b, seed=2), _xxh64(b, seed=3))


def _quantize(weight: float) -> int:
    return max(1, round(weight * WEIGHT_UNIT))


class _Slot:
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

    def __init__(self, node: Node, cell: _Group) -> None:
        self.id = node.id
        self.node = node
        self.wq = _quantize(node.weight)
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


class _Group:
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
        "is_cell",
        "level",
        "name",
        "on_ring",
        "own",
        "packs",
        "parent",
        "pts",
        "ring",
        "shift",
        "size",
        "tab",
        "wq",
    )

    def __init__(self, gid: str, name: str, level: str, parent: _Group | None, vnodes: int) -> None:
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
        # The ring's sorted points and owners, read once per change rather than once per walk.
        self.pts: list[int] = []
        self.own: list[str] = []
        self.tab: array[int] = array("I")  # bucket index over pts, see _bucket_index
        self.shift = 64
        self.wq = 0
        self.packs = 0
        self.free_cpu = self.free_mem = self.free_packs = 0
        self.size = 0

    def chain(self) -> Iterator[_Group]:
        g: _Group | None = self
        while g is not None:
            yield g
            g = g.parent

    def path(self) -> list[_Group]:
        """Ancestors below the root, then this group: zone, region, cell."""
        out = [g for g in self.chain() if g.parent is not None]
        out.reverse()
        return out


def _bucket_index(points: list[int]) -> tuple[array[int], int]:
    """A table of where each ``1 << shift`` slice of the circle starts in ``points`` (2 slices per point).

    ``tab[b]`` is the index of the first point at or after slice ``b``'s start, so the first
    point at or after ``h`` lies in ``[tab[b], tab[b + 1]]`` with ``b = h >> shift``: most
    lookups need no bisection, the rest bisect over a point or two. A bisection over the whole
    list costs a cache miss per step once there are a few hundred rings; this is the hot path.
    """
    size = len(points)
    if not size:
        return array("I"), 64
    bits = max(1, (2 * size - 1).bit_length())
    shift = 64 - bits
    # Points per slice, then running sums: one pass over the points, no bisection per slice.
    per_slice = [0] * (1 << bits)
    for b in map(rshift, points, repeat(shift)):
        per_slice[b] += 1
    tab = array("I", [0])
    tab.extend(accumulate(per_slice))
    return tab, shift


def _slot_of(g: _Group, h: int) -> int:
    """Index of the first point of ``g``'s ring at or after ``h`` (``len`` wraps to the first)."""
    tab = g.tab
    b = h >> g.shift
    lo, hi = tab[b], tab[b + 1]
    return lo if lo == hi else bisect_left(g.pts, h, lo, hi)


def _prefer(g: _Group, h: int) -> Iterator[str]:
    """Distinct children on ``g``'s ring clockwise from position ``h`` (``HashRing.preference`` by hash)."""
    points, owners = g.pts, g.own
    size = len(points)
    if not size:
        return
    distinct = len(g.on_ring)
    start = _slot_of(g, h) % size
    seen: set[str] = set()
    for i in chain(range(start, size), range(start)):
        n = owners[i]
        if n not in seen:
            seen.add(n)
            yield n
            if len(seen) == distinct:
                return


class Scheduler:
    """Long-lived, incrementally updated placement over the fleet (see the module docstring)."""

    def __init__(self, load_factor: float = 1.25, vnodes: int = 160) -> None:
        if (
            isinstance(load_factor, bool)
            or not isinstance(load_factor, (int, float))
            or not math.isfinite(load_factor)
            or load_factor <= 1.0
        ):
            raise InvalidInput(f"load factor must be a number above 1.0, got {load_factor!r}")
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise InvalidInput(f"vnodes must be a positive integer, got {vnodes!r}")
        self.load_factor = float(load_factor)
        # The decimal the caller wrote (1.1 is 11/10), exactly, so bounds are exact integers.
        c = Fraction(repr(self.load_factor))
        self._cn, self._cd = c.numerator, c.denominator
        self.vnodes = vnodes
        self._root = _Group("", "", "fleet", None, vnodes)
        self._groups: dict[str, _Group] = {}  # scoped id -> zone, region or cell
        self._slots: dict[str, _Slot] = {}
        self._stale: dict[str, _Group] = {}  # groups whose ring lags their children's weights
        self._reread: dict[str, _Group] = {}  # groups whose ring changed since pts/own were read
        # Spread accounting: (spread level, spread group) -> level group id -> packs placed there.
        self._spread: dict[tuple[str, str], dict[str, int]] = {}

    # ------------------------------------------------------------------ fleet changes

    def add_node(self, node: Node) -> None:
        if node.id in self._slots:
            raise InvalidInput(f"node {node.id!r} is already known to the scheduler")
        cell = self._cell_for(node)
        slot = _Slot(node, cell)
        self._slots[node.id] = slot
        cell.children[node.id] = slot
        for g in cell.chain():
            g.size += 1
        self._account(slot, +1)
        self._sync_cell_ring(slot)

    def update_node(self, node: Node) -> None:
        """Apply a change of state, capacity, weight or location; the node's usage is kept.

        Only READY nodes take new packs; a node that is not READY keeps its usage (a cordoned
        node's packs stay put) but counts toward no ring, bound or free capacity. A node that
        moves to another location keeps its usage, but packs reserved on it with a spread
        ``spec`` stay counted in their old group until released.
        """
        slot = self._slot(node.id)
        if slot.node.location != node.location:
            used = Resources(slot.used_cpu, slot.used_mem, slot.used_packs)
            self.remove_node(node.id)
            self.add_node(node)
            self.reserve(node.id, used)
            return
        self._account(slot, -1)
        slot.node = node
        slot.wq = _quantize(node.weight)
        slot.ready = node.state is NodeState.READY
        slot.cap_cpu, slot.cap_mem, slot.cap_packs = node.capacity.cpu, node.capacity.mem, node.capacity.packs
        self._account(slot, +1)
        self._sync_cell_ring(slot)

    def remove_node(self, node_id: str) -> None:
        """Forget a node and its usage (its packs are the caller's to release or re-place)."""
        slot = self._slot(node_id)
        self._account(slot, -1)
        slot.ready = False
        self._sync_cell_ring(slot)
        cell = slot.cell
        del cell.children[node_id]
        del self._slots[node_id]
        for g in cell.chain():
            g.size -= 1
        # Drop groups left empty, so they stop showing up in rings, topologies and reasons.
        g = cell
        while g.parent is not None and not g.children:
            parent = g.parent
            del parent.children[g.name]
            del self._groups[g.id]
            self._stale.pop(g.id, None)
            self._reread.pop(g.id, None)
            self._stale[parent.id] = parent
            g = parent

    def reserve(self, node_id: str, res: Resources, spec: PackSpec | None = None) -> None:
        """Count ``res`` as used on the node (restoring packs already placed: capacity is not checked).

        With ``spec``, the pack also counts toward its spread group, if it has one.
        """
        slot = self._slot(node_id)
        self._use(slot, res.cpu, res.mem, res.packs)
        if spec is not None:
            self._count_spread(spec, slot, +1)

    def release(self, node_id: str, res: Resources, spec: PackSpec | None = None) -> None:
        """Stop counting ``res`` on the node (a pack stopped or moved away).

        Releasing more than the node uses is a bookkeeping error of the caller: ``InvalidInput``.
        """
        slot = self._slot(node_id)
        if res.cpu > slot.used_cpu or res.mem > slot.used_mem or res.packs > slot.used_packs:
            raise InvalidInput(
                f"release of cpu={res.cpu} mem={res.mem} packs={res.packs} on node {node_id!r} exceeds "
                f"its usage (cpu={slot.used_cpu} mem={slot.used_mem} packs={slot.used_packs})"
            )
        self._use(slot, -res.cpu, -res.mem, -res.packs)
        if spec is not None:
            self._count_spread(spec, slot, -1)

    # ------------------------------------------------------------------ reads

    def usage(self, node_id: str) -> Resources:
        s = self._slot(node_id)
        return Resources(s.used_cpu, s.used_mem, s.used_packs)

    def free(self, node_id: str) -> Resources:
        """What the node can still take: nothing unless it is READY."""
        return Resources(*self._slot(node_id).free_tuple())

    def node(self, node_id: str) -> Node:
        return self._slot(node_id).node

    def nodes(self) -> list[Node]:
        """Every known node, sorted by id."""
        return [self._slots[k].node for k in sorted(self._slots)]

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._slots

    def topology(self) -> Topology:
        """An immutable view of the fleet with the current usage (``InvalidInput`` with no nodes)."""
        return Topology(
            (s.node for s in self._slots.values()),
            {k: Resources(s.used_cpu, s.used_mem, s.used_packs) for k, s in self._slots.items()},
        )

    def spread_counts(self, level: Level, group: str | None) -> dict[str, int]:
        """Packs of a spread group per group of ``level`` (sorted ids), as reservations told us."""
        counts = self._spread.get((level.value, group or ""), {})
        return {k: counts[k] for k in sorted(counts) if counts[k]}

    # ------------------------------------------------------------------ placement

    def place(self, specs: Sequence[PackSpec], seed: int, exclude: frozenset[str] = frozenset()) -> Plan:
        """Place ``specs`` in order, reserving resources for every placement returned.

        Packs not in ``specs`` never move. ``exclude`` names nodes that must take none of these
        (a node being evacuated). See the module docstring for the policy.
        """
        self._refresh()
        placements: list[Placement] = []
        unplaced: list[Unplaced] = []
        # Within one call capacity only shrinks, so a shape that fit nowhere still fits nowhere:
        # remember it rather than walk the whole fleet again for each of its siblings.
        failed: dict[tuple[object, ...], tuple[str, ...]] = {}
        scopes: dict[_ScopeKey, list[_Group] | None] = {}
        root = self._root
        cn, cd = self._cn, self._cd
        for spec in specs:
            c = spec.constraints
            res = spec.resources
            cpu, mem = res.cpu, res.mem
            if failed:
                shape = (cpu, mem, c.zone, c.region, c.cell, c.node)
                if shape in failed:
                    unplaced.append(Unplaced(spec.name, failed[shape]))
                    continue
            if c is NO_CONSTRAINTS or (
                c.zone is None and c.region is None and c.cell is None and c.node is None and c.spread is None
            ):
                hs = _hashes(spec.name)
                slot = None
                if root.wq:
                    kn, kd = cn * (root.packs + 1), cd * root.wq
                    slot = self._first_choice(hs, cpu, mem, exclude, kn, kd)
                    if slot is None:
                        slot = self._choose_in(hs, cpu, mem, [root], exclude)
            else:
                slot = self._choose_constrained(spec, exclude, scopes)
            if slot is None:
                shape = (cpu, mem, c.zone, c.region, c.cell, c.node)
                failed[shape] = self._reasons(spec, exclude)
                unplaced.append(Unplaced(spec.name, failed[shape]))
                continue
            # The slot fits the pack (every path checked it), so free capacity drops by exactly
            # the reservation at every level.
            slot.used_cpu += cpu
            slot.used_mem += mem
            slot.used_packs += 1
            for g in slot.chain:
                g.free_cpu -= cpu
                g.free_mem -= mem
                g.free_packs -= 1
                g.packs += 1
            if c.spread is not None:
                self._count_spread(spec, slot, +1)
            placements.append(Placement(spec.name, slot.id))
        return Plan(tuple(placements), tuple(unplaced))

    def _first_choice(
        self, hs: _Hashes, cpu: int, mem: int, exclude: frozenset[str], kn: int, kd: int
    ) -> _Slot | None:
        """The fast path of the first pass: every level's first choice, if all of them qualify."""
        g = self._root
        for depth in (0, 1, 2):
            points = g.pts
            if not points:
                return None
            h = hs[depth]
            tab = g.tab
            b = h >> g.shift
            lo, hi = tab[b], tab[b + 1]
            child = g.children[g.own[lo if lo == hi else bisect_left(points, h, lo, hi)]]
            if (
                child.free_cpu < cpu
                or child.free_mem < mem
                or child.free_packs < 1
                or child.packs * kd >= kn * child.wq
            ):
                return None
            g = child
        points = g.pts
        if not points:
            return None
        h = hs[3]
        tab = g.tab
        b = h >> g.shift
        lo, hi = tab[b], tab[b + 1]
        s = g.children[g.own[lo if lo == hi else bisect_left(points, h, lo, hi)]]
        if (
            s.used_packs * kd < kn * s.wq
            and cpu <= s.cap_cpu - s.used_cpu
            and mem <= s.cap_mem - s.used_mem
            and s.used_packs < s.cap_packs
            and s.id not in exclude
        ):
            return s
        return None

    def _choose_constrained(
        self, spec: PackSpec, exclude: frozenset[str], scopes: dict[_ScopeKey, list[_Group] | None]
    ) -> _Slot | None:
        c = spec.constraints
        res = spec.resources
        if c.node is not None:
            slot = self._slots.get(c.node)
            if slot is None or not _fits(slot, res.cpu, res.mem, exclude) or not _in_scope(slot, c):
                return None
            return slot
        skey = (c.zone, c.region, c.cell)
        if skey not in scopes:
            scopes[skey] = self._scope(c)
        scope = scopes[skey]
        if scope is None:
            return None
        hs = _hashes(spec.name)
        if c.spread is not None:
            return self._choose_spread(spec, hs, scope, exclude)
        return self._choose_in(hs, res.cpu, res.mem, self._rank(scope, hs), exclude)

    def _choose_in(
        self, hs: _Hashes, cpu: int, mem: int, roots: list[_Group], exclude: frozenset[str]
    ) -> _Slot | None:
        """The three passes over ``roots`` (in ring order; see the module docstring)."""
        wq = 0
        packs = 0
        for g in roots:
            wq += g.wq
            packs += g.packs
        if wq == 0:
            return None
        # used < ceil(c * (T+1) * w / W)  <=>  used * cd * W < cn * (T+1) * w, for integer used.
        kn = self._cn * (packs + 1)
        kd = self._cd * wq
        walk = self._walk
        for g in roots:
            slot = walk(g, hs, cpu, mem, exclude, kn, kd, True)
            if slot is not None:
                return slot
        for g in roots:
            slot = walk(g, hs, cpu, mem, exclude, kn, kd, False)
            if slot is not None:
                return slot
        # Every feasible node is at its bound: only now go past it, to the least loaded one
        # (load = packs / weight, compared by cross-multiplication; ties keep ring order).
        best: _Slot | None = None
        for g in roots:
            for slot in self._feasible(g, hs, cpu, mem, exclude):
                if best is None or slot.used_packs * best.wq < best.used_packs * slot.wq:
                    best = slot
        return best

    def _walk(
        self,
        g: _Group,
        hs: _Hashes,
        cpu: int,
        mem: int,
        exclude: frozenset[str],
        kn: int,
        kd: int,
        group_bound: bool,
    ) -> _Slot | None:
        """The first node under ``g``, depth first in ring order, that fits and is under its bound."""
        points, owners = g.pts, g.own
        if not points:
            return None
        children = g.children
        first = owners[_slot_of(g, hs[g.depth])]
        if g.is_cell:
            # The common case: the first choice takes it. Only then is a preference walk built.
            s = children[first]
            if (
                s.used_packs * kd < kn * s.wq
                and cpu <= s.cap_cpu - s.used_cpu
                and mem <= s.cap_mem - s.used_mem
                and s.used_packs < s.cap_packs
                and s.id not in exclude
            ):
                return s
            for nid in _prefer(g, hs[g.depth]):
                s = children[nid]
                if (
                    s.used_packs * kd < kn * s.wq
                    and cpu <= s.cap_cpu - s.used_cpu
                    and mem <= s.cap_mem - s.used_mem
                    and s.used_packs < s.cap_packs
                    and s.id not in exclude
                ):
                    return s
            return None
        child = children[first]
        if (
            child.free_cpu >= cpu
            and child.free_mem >= mem
            and child.free_packs >= 1
            and (not group_bound or child.packs * kd < kn * child.wq)
        ):
            slot = self._walk(child, hs, cpu, mem, exclude, kn, kd, group_bound)
            if slot is not None:
                return slot
        for cid in _prefer(g, hs[g.depth]):
            if cid == first:
                continue
            child = children[cid]
            if (
                child.free_cpu < cpu
                or child.free_mem < mem
                or child.free_packs < 1
                or (group_bound and child.packs * kd >= kn * child.wq)
            ):
                continue
            slot = self._walk(child, hs, cpu, mem, exclude, kn, kd, group_bound)
            if slot is not None:
                return slot
        return None

    def _feasible(
        self, g: _Group, hs: _Hashes, cpu: int, mem: int, exclude: frozenset[str]
    ) -> Iterator[_Slot]:
        """Every node under ``g`` that fits, in ring order."""
        for cid in _prefer(g, hs[g.depth]):
            child = g.children[cid]
            if isinstance(child, _Slot):
                if _fits(child, cpu, mem, exclude):
                    yield child
            elif child.free_cpu >= cpu and child.free_mem >= mem and child.free_packs >= 1:
                yield from self._feasible(child, hs, cpu, mem, exclude)

    def _choose_spread(
        self, spec: PackSpec, hs: _Hashes, scope: list[_Group], exclude: frozenset[str]
    ) -> _Slot | None:
        c = spec.constraints
        assert c.spread is not None
        level = c.spread.value
        counts = self._spread.get((level, c.group or ""), {})
        # The groups of the spread level within the scope, in ring order...
        ranked: list[_Group] = []
        for g in self._rank(scope, hs):
            ranked.extend(self._groups_at(g, level, hs))
        # ...then the least loaded first (stable sort: ties keep ring order). A pack pinned below
        # its spread level (a cell, spread by zone) ranks its pinned groups by their ancestor's count.
        ranked.sort(key=lambda g: counts.get(_ancestor_at(g, level).id, 0))
        res = spec.resources
        for g in ranked:
            if g.free_cpu < res.cpu or g.free_mem < res.mem or g.free_packs < 1:
                continue
            slot = self._choose_in(hs, res.cpu, res.mem, [g], exclude)
            if slot is not None:
                return slot
        return None

    def _groups_at(self, g: _Group, level: str, hs: _Hashes) -> list[_Group]:
        """The groups of ``level`` at or under ``g``, in ring order (only those with READY nodes).

        ``g`` itself when it is at or below ``level``.
        """
        if g.depth >= LEVEL_DEPTH[level]:
            return [g]
        out: list[_Group] = []
        if g.is_cell:
            return out
        for cid in _prefer(g, hs[g.depth]):
            child = g.children[cid]
            assert isinstance(child, _Group)
            out.extend(self._groups_at(child, level, hs))
        return out

    def _rank(self, scope: list[_Group], hs: _Hashes) -> list[_Group]:
        """The groups of ``scope`` in the order a walk from the root meets them."""
        if len(scope) == 1:
            return scope
        orders: dict[str, dict[str, int]] = {}

        def rank_in(g: _Group) -> int:
            parent, name = g.parent, g.name
            assert parent is not None  # path() holds no root
            order = orders.get(parent.id)
            if order is None:
                order = orders[parent.id] = {
                    cid: i for i, cid in enumerate(_prefer(parent, hs[parent.depth]))
                }
            # A group with no READY node is on no ring: it goes last, it cannot take anything.
            return order.get(name, len(parent.children) + 1)

        return sorted(
            scope,
            key=lambda g: [rank_in(a) for a in g.path()],
        )

    def _scope(self, c: Constraints) -> list[_Group] | None:
        """The groups a pack is pinned under (``[root]`` when unpinned); None when none matches.

        Names are unscoped: ``region=r1`` matches the region ``r1`` of every zone (of the pinned
        zone only, when there is one).
        """
        if c.zone is None and c.region is None and c.cell is None:
            return [self._root]
        level = Level.CELL if c.cell is not None else Level.REGION if c.region is not None else Level.ZONE
        out: list[_Group] = []
        for z in _sorted_groups(self._root):
            if c.zone is not None and z.name != c.zone:
                continue
            if level is Level.ZONE:
                out.append(z)
                continue
            for r in _sorted_groups(z):
                if c.region is not None and r.name != c.region:
                    continue
                if level is Level.REGION:
                    out.append(r)
                    continue
                out.extend(cell for cell in _sorted_groups(r) if cell.name == c.cell)
        return out or None

    def scope_matches(self, c: Constraints) -> bool:
        """Whether some known zone, region or cell matches the pins of ``c`` (a typo does not)."""
        return self._scope(c) is not None

    # ------------------------------------------------------------------ reasons

    def _reasons(self, spec: PackSpec, exclude: frozenset[str]) -> tuple[str, ...]:
        """Why nothing fits, per zone: counts of nodes down, excluded, short of cpu, memory or slots."""
        c = spec.constraints
        res = spec.resources
        if not self._slots:
            return ("the cluster has no nodes",)
        if c.node is not None:
            slot = self._slots.get(c.node)
            if slot is None:
                return (f"no node matches node={c.node}",)
            if not _in_scope(slot, c):
                return (f"node {c.node} is in {slot.node.location.at(Level.CELL)}, outside {_pins(c)}",)
            lacks = _lack_list(slot, res.cpu, res.mem, exclude)
            return (
                f"node {c.node}: "
                + (", ".join(w.replace("were ", "is ") for w in lacks) if lacks else "has room"),
            )
        scope = self._scope(c)
        if scope is None:
            narrowest = "cell" if c.cell is not None else "region" if c.region is not None else "zone"
            return (f"no {narrowest} matches {_pins(c)}",)
        by_zone: dict[str, dict[str, int]] = {}
        for g in scope:
            for s in _slots_under(g):
                tally = by_zone.setdefault(s.node.location.zone, {})
                for why in _lack_list(s, res.cpu, res.mem, exclude):
                    tally[why] = tally.get(why, 0) + 1
        out: list[str] = []
        for zone in sorted(by_zone):
            tally = by_zone[zone]
            parts = [
                f"{n} {'node' if n == 1 else 'nodes'} {why}"
                for why, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))
            ]
            out.append(f"zone {zone}: " + (", ".join(parts) if parts else "every node had room"))
        return tuple(out)

    # ------------------------------------------------------------------ rebalancing

    def rebalance_plan(
        self,
        assignment: Mapping[str, str],
        specs: Mapping[str, PackSpec],
        newcomers: Iterable[str] | None = None,
    ) -> list[Migration]:
        """Moves that fill newcomers up to their fair share; nothing moves between other nodes.

        ``assignment`` maps pack name -> node id (packs holding a reservation), ``specs`` pack
        name -> spec. ``newcomers`` defaults to the READY nodes holding no pack of
        ``assignment``. A pack moves when the rings, which now include the newcomers, prefer a
        newcomer for it (the packs consistent hashing hands a newcomer anyway), the newcomer has
        room and is below its fair share ``floor(T * w / W)``, and the move keeps the pack's
        constraints (pinned-to-node packs stay; a spread pack only moves within its spread
        group). Like ``place``, the moves are applied to the scheduler's accounting. Sorted by
        pack name.
        """
        self._refresh()
        if newcomers is None:
            held = set(assignment.values())
            new_ids = [k for k in sorted(self._slots) if self._slots[k].ready and k not in held]
        else:
            new_ids = sorted(set(newcomers))
            for nid in new_ids:
                self._slot(nid)
        new = {nid for nid in new_ids if self._slots[nid].ready}
        if not new or self._root.wq == 0:
            return []
        total = sum(1 for nid in assignment.values() if nid in self._slots and self._slots[nid].ready)
        share = {nid: total * self._slots[nid].wq // self._root.wq for nid in sorted(new)}
        scopes: dict[_ScopeKey, list[_Group] | None] = {}
        moves: list[Migration] = []
        for name in sorted(assignment):
            source = assignment[name]
            if source in new:
                continue
            spec = specs.get(name)
            if spec is None:
                raise InvalidInput(f"rebalance: no spec for pack {name!r}")
            c = spec.constraints
            if c.node is not None:
                continue
            skey = (c.zone, c.region, c.cell)
            if skey not in scopes:
                scopes[skey] = self._scope(c)
            scope = scopes[skey]
            if scope is None:
                continue
            hs = _hashes(name)
            target = self._natural(self._rank(scope, hs)[0], hs)
            if target is None or target.id not in new or target.used_packs >= share[target.id]:
                continue
            if not _fits(target, spec.resources.cpu, spec.resources.mem, frozenset()):
                continue
            src = self._slots.get(source)
            if (
                c.spread is not None
                and src is not None
                and src.node.location.at(c.spread) != target.node.location.at(c.spread)
            ):
                continue
            if src is not None:
                self.release(source, spec.resources, spec)
            self.reserve(target.id, spec.resources, spec)
            moves.append(Migration(name, source, target.id, REASON_REBALANCE))
        return moves

    def _natural(self, g: _Group, hs: _Hashes) -> _Slot | None:
        """The node the rings prefer for the key hashed to ``hs`` under ``g``, loads aside."""
        while True:
            points, owners = g.pts, g.own
            if not points:
                return None
            child = g.children[owners[_slot_of(g, hs[g.depth])]]
            if isinstance(child, _Slot):
                return child
            g = child

    # ------------------------------------------------------------------ bookkeeping

    def _slot(self, node_id: str) -> _Slot:
        slot = self._slots.get(node_id)
        if slot is None:
            raise NotFound(f"no node {node_id!r} known to the scheduler")
        return slot

    def _cell_for(self, node: Node) -> _Group:
        loc = node.location
        g = self._root
        for level, name in zip(LEVELS, (loc.zone, loc.region, loc.cell)):
            child = g.children.get(name)
            if child is None:
                gid = loc.at(level)
                child = _Group(gid, name, level.value, g, self.vnodes)
                g.children[name] = child
                self._groups[gid] = child
                self._reread[gid] = child
            assert isinstance(child, _Group)
            g = child
        return g

    def _account(self, slot: _Slot, sign: int) -> None:
        """Add (+1) or take away (-1) the slot's share of every aggregate above it."""
        fc, fm, fp = slot.free_tuple()
        if slot.ready:
            w, p = slot.wq * sign, slot.used_packs * sign
        else:
            w = p = 0
        fc, fm, fp = fc * sign, fm * sign, fp * sign
        g: _Group | None = slot.cell
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

    def _use(self, slot: _Slot, cpu: int, mem: int, packs: int) -> None:
        """Change the slot's usage by the given amounts and carry the change up the tree."""
        if slot.ready:
            fc0, fm0, fp0 = slot.free_tuple()
            slot.used_cpu += cpu
            slot.used_mem += mem
            slot.used_packs += packs
            fc1, fm1, fp1 = slot.free_tuple()
            dc, dm, dp = fc1 - fc0, fm1 - fm0, fp1 - fp0
            g: _Group | None = slot.cell
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

    def _sync_cell_ring(self, slot: _Slot) -> None:
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

    def _refresh(self) -> None:
        """Bring group rings up to date: each child weighted by READY weight / the siblings' mean."""
        for gid in sorted(self._stale):
            g = self._stale[gid]
            members = [ch for ch in _sorted_groups(g) if ch.wq > 0]
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
            g.pts, g.own = g.ring._arrays()
            g.tab, g.shift = _bucket_index(g.pts)
        self._reread.clear()

    def _count_spread(self, spec: PackSpec, slot: _Slot, sign: int) -> None:
        c = spec.constraints
        if c.spread is None:
            return
        counts = self._spread.setdefault((c.spread.value, c.group or ""), {})
        gid = slot.node.location.at(c.spread)
        counts[gid] = counts.get(gid, 0) + sign


def _ancestor_at(g: _Group, level: str) -> _Group:
    """``g`` or its ancestor at ``level`` (``g`` itself when it is above it)."""
    a: _Group | None = g
    while a is not None and a.level != level:
        a = a.parent
    return a if a is not None else g


def _sorted_groups(g: _Group) -> list[_Group]:
    return [g.children[k] for k in sorted(g.children)]


def _slots_under(g: _Group) -> list[_Slot]:
    if g.is_cell:
        return [g.children[k] for k in sorted(g.children)]
    out: list[_Slot] = []
    for child in _sorted_groups(g):
        out.extend(_slots_under(child))
    return out


def _fits(s: _Slot, cpu: int, mem: int, exclude: frozenset[str]) -> bool:
    return (
        s.ready
        and cpu <= s.cap_cpu - s.used_cpu
        and mem <= s.cap_mem - s.used_mem
        and s.used_packs < s.cap_packs
        and s.id not in exclude
    )


def _in_scope(slot: _Slot, c: Constraints) -> bool:
    loc = slot.node.location
    return (
        (c.zone is None or loc.zone == c.zone)
        and (c.region is None or loc.region == c.region)
        and (c.cell is None or loc.cell == c.cell)
    )


def _lack_list(s: _Slot, cpu: int, mem: int, exclude: frozenset[str]) -> list[str]:
    if not s.ready:
        return [f"were {s.node.state.value}"]
    if s.id in exclude:
        return ["were excluded"]
    out = []
    if cpu > s.cap_cpu - s.used_cpu:
        out.append(f"lacked {cpu}m cpu")
    if mem > s.cap_mem - s.used_mem:
        out.append(f"lacked {mem} MiB memory")
    if s.used_packs >= s.cap_packs:
        out.append("had no free pack slot")
    return out


# What ``_reasons`` says, and the one word a metric counts it under (the reason text itself names
# nodes, zones and amounts: far too many values for a label).
_UNPLACED_KINDS = (("lacked", "cpu", " cpu"), ("lacked", "memory", " MiB memory"), ("had no free pack slot", "slots", ""),
                   ("were excluded", "excluded", ""), ("were ", "not_ready", ""), ("has no nodes", "no_nodes", ""),
                   ("no node matches", "constraints", ""), ("matches", "constraints", ""), ("outside", "constraints", ""))


UNPLACED_KINDS = ("cpu", "memory", "slots", "excluded", "not_ready", "no_nodes", "constraints", "other")


def unplaced_kind(reason: str) -> str:
    """The kind of a pending pack's reason: cpu, memory, slots, excluded, not_ready, no_nodes,
    constraints or other; of several, the one named first (``_reasons`` names the most common
    first)."""
    best, kind = len(reason) + 1, "other"
    for needle, name, tail in _UNPLACED_KINDS:
        at = reason.find(needle)
        while at >= 0 and tail and not reason[at:].split(",")[0].split(";")[0].endswith(tail):
            at = reason.find(needle, at + 1)
        if 0 <= at < best:
            best, kind = at, name
    return kind


def _pins(c: Constraints) -> str:
    return " ".join(
        f"{k}={v}" for k in ("zone", "region", "cell", "node") if (v := getattr(c, k)) is not None
    )


def require_placed(plan: Plan) -> Plan:
    """Return ``plan`` when every pack was placed, else raise ``NoCapacity`` with the reasons."""
    if plan.unplaced:
        first = plan.unplaced[0]
        more = f" (and {len(plan.unplaced) - 1} more)" if len(plan.unplaced) > 1 else ""
        raise NoCapacity(
            f"pack {first.pack} fits nowhere: {first.reason}{more}",
            {"levels": {u.pack: list(u.reasons) for u in plan.unplaced}},
        )
    return plan


__all__ = ["REASON_REBALANCE", "UNPLACED_KINDS", "WEIGHT_UNIT", "Scheduler", "require_placed", "unplaced_kind"]
