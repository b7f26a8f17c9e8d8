"""The scheduler: where new packs go, kept up to date incrementally as the fleet changes.

Theory of operation. The replicated state machine holds one long-lived ``Scheduler`` and feeds
it every change (nodes joining, changing state or capacity, leaving; reservations restored
from a snapshot; packs released). ``place`` then answers for a batch of pack specs and
*reserves* what it hands out, so the next call sees those reservations. Because every replica
applies the same log to its own scheduler, every decision here is a pure function of the calls
made so far: no clock, no global random, no iteration over an unsorted set.

This module is the facade; the policy lives beside it, one concern per module, after nomad's
``scheduler/`` package:

* ``scheduler_tree``: the fleet as a tree (fleet, zones, regions, cells, nodes), each group with
  a weighted consistent-hash ring over its children (``core.ring.HashRing``, walked through its
  ``core.ringindex.RingIndex``) and aggregates of READY weight, packs and free capacity;
* ``scheduler_feasible``: which nodes may take a pack at all (READY, not excluded, room for its
  cpu, memory and a slot) and which groups its pins allow;
* ``scheduler_rank``: among those, the one it goes to: the first in ring order, level by level,
  under its bounded load ``ceil(c * (T + 1) * w / W)`` (``core.ringindex.LoadBound``);
* ``scheduler_spread``: ``spread`` with a ``group``, the least-loaded group of the level first;
* ``scheduler_explain``: for a pack that fits nowhere, the reasons at each level;
* ``scheduler_rebalance``: the one thing that moves packs, and only onto newcomers.

Stickiness: ``place`` never moves a pack it did not get in this call. When a node goes down, the
caller releases that node's packs and places them again; nothing else moves, because nothing
else is asked. ``rebalance_plan`` is the one thing that moves packs, and only onto newcomers.

The ``seed`` of ``place`` is accepted for the interface's sake: the current policy is decided by
the ring and the loads alone (consistent hashing wants a pack's name, not a coin, to pick its
home), so two calls with different seeds place alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from canidae.core.errors import InvalidInput
from canidae.core.ringindex import LoadBound
from canidae.core.scheduler_explain import UNPLACED_KINDS, reasons, require_placed, unplaced_kind
from canidae.core.scheduler_feasible import ScopeKey, fits, in_scope, scope, scope_key
from canidae.core.scheduler_rank import choose_in, first_choice, preference, rank
from canidae.core.scheduler_rebalance import REASON_REBALANCE
from canidae.core.scheduler_rebalance import plan as rebalance_moves
from canidae.core.scheduler_spread import SpreadCounts, choose_spread
from canidae.core.scheduler_tree import WEIGHT_UNIT, Fleet, Group, Slot, hashes
from canidae.core.topology import Topology
from canidae.core.types import (
    NO_CONSTRAINTS,
    Constraints,
    Level,
    Migration,
    Node,
    PackSpec,
    Placement,
    Plan,
    Resources,
    Unplaced,
)


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
        self._bound = LoadBound(self.load_factor)
        self.vnodes = vnodes
        self._fleet = Fleet(vnodes)
        self._spread = SpreadCounts()

    # ------------------------------------------------------------------ fleet changes

    def add_node(self, node: Node) -> None:
        self._fleet.add(node)

    def update_node(self, node: Node) -> None:
        """Apply a change of state, capacity, weight or location; the node's usage is kept.

        Only READY nodes take new packs; a node that is not READY keeps its usage (a cordoned
        node's packs stay put) but counts toward no ring, bound or free capacity. A node that
        moves to another location keeps its usage, but packs reserved on it with a spread
        ``spec`` stay counted in their old group until released.
        """
        slot = self._fleet.slot(node.id)
        if slot.node.location != node.location:
            used = Resources(slot.used_cpu, slot.used_mem, slot.used_packs)
            self.remove_node(node.id)
            self.add_node(node)
            self.reserve(node.id, used)
            return
        self._fleet.update(slot, node)

    def remove_node(self, node_id: str) -> None:
        """Forget a node and its usage (its packs are the caller's to release or re-place)."""
        self._fleet.remove(node_id)

    def reserve(self, node_id: str, res: Resources, spec: PackSpec | None = None) -> None:
        """Count ``res`` as used on the node (restoring packs already placed: capacity is not checked).

        With ``spec``, the pack also counts toward its spread group, if it has one.
        """
        slot = self._fleet.slot(node_id)
        self._fleet.use(slot, res.cpu, res.mem, res.packs)
        if spec is not None:
            self._spread.count(spec, slot, +1)

    def release(self, node_id: str, res: Resources, spec: PackSpec | None = None) -> None:
        """Stop counting ``res`` on the node (a pack stopped or moved away).

        Releasing more than the node uses is a bookkeeping error of the caller: ``InvalidInput``.
        """
        slot = self._fleet.slot(node_id)
        if res.cpu > slot.used_cpu or res.mem > slot.used_mem or res.packs > slot.used_packs:
            raise InvalidInput(
                f"release of cpu={res.cpu} mem={res.mem} packs={res.packs} on node {node_id!r} exceeds "
                f"its usage (cpu={slot.used_cpu} mem={slot.used_mem} packs={slot.used_packs})"
            )
        self._fleet.use(slot, -res.cpu, -res.mem, -res.packs)
        if spec is not None:
            self._spread.count(spec, slot, -1)

    # ------------------------------------------------------------------ reads

    def usage(self, node_id: str) -> Resources:
        s = self._fleet.slot(node_id)
        return Resources(s.used_cpu, s.used_mem, s.used_packs)

    def free(self, node_id: str) -> Resources:
        """What the node can still take: nothing unless it is READY."""
        return Resources(*self._fleet.slot(node_id).free_tuple())

    def node(self, node_id: str) -> Node:
        return self._fleet.slot(node_id).node

    def nodes(self) -> list[Node]:
        """Every known node, sorted by id."""
        slots = self._fleet.slots
        return [slots[k].node for k in sorted(slots)]

    def __len__(self) -> int:
        return len(self._fleet.slots)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._fleet.slots

    def topology(self) -> Topology:
        """An immutable view of the fleet with the current usage (``InvalidInput`` with no nodes)."""
        slots = self._fleet.slots
        return Topology(
            (s.node for s in slots.values()),
            {k: Resources(s.used_cpu, s.used_mem, s.used_packs) for k, s in slots.items()},
        )

    def spread_counts(self, level: Level, group: str | None) -> dict[str, int]:
        """Packs of a spread group per group of ``level`` (sorted ids), as reservations told us."""
        return self._spread.nonzero(level, group)

    def preference(self, name: str, limit: int | None = None) -> list[str]:
        """READY node ids in the order ``place`` walks them for an unpinned pack called ``name``,
        loads and capacity aside (at most ``limit``): the first is where the rings send it."""
        self._fleet.refresh()
        out: list[str] = []
        for s in preference(self._fleet.root, hashes(name)):
            out.append(s.id)
            if limit is not None and len(out) >= limit:
                break
        return out

    def shares(self) -> dict[str, float]:
        """Each READY node's share of unpinned packs' first choices: its part of the hash space
        as the fleet's, zone's, region's and cell's rings split it (sums to 1), by node id."""
        self._fleet.refresh()
        return self._fleet.shares()

    def scope_matches(self, c: Constraints) -> bool:
        """Whether some known zone, region or cell matches the pins of ``c`` (a typo does not)."""
        return scope(self._fleet, c) is not None

    # ------------------------------------------------------------------ placement

    def place(self, specs: Sequence[PackSpec], seed: int, exclude: frozenset[str] = frozenset()) -> Plan:
        """Place ``specs`` in order, reserving resources for every placement returned.

        Packs not in ``specs`` never move. ``exclude`` names nodes that must take none of these
        (a node being evacuated). See the module docstring for the policy.
        """
        fleet = self._fleet
        fleet.refresh()
        placements: list[Placement] = []
        unplaced: list[Unplaced] = []
        # Within one call capacity only shrinks, so a shape that fit nowhere still fits nowhere:
        # remember it rather than walk the whole fleet again for each of its siblings.
        failed: dict[tuple[object, ...], tuple[str, ...]] = {}
        scopes: dict[ScopeKey, list[Group] | None] = {}
        root = fleet.root
        bound = self._bound
        take = fleet.take
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
                hs = hashes(spec.name)
                slot = None
                if root.wq:
                    kn, kd = bound.terms(root.packs + 1, root.wq)
                    slot = first_choice(root, hs, cpu, mem, exclude, kn, kd)
                    if slot is None:
                        slot = choose_in(bound, hs, cpu, mem, [root], exclude)
            else:
                slot = self._choose_constrained(spec, exclude, scopes)
            if slot is None:
                shape = (cpu, mem, c.zone, c.region, c.cell, c.node)
                failed[shape] = reasons(fleet, spec, exclude)
                unplaced.append(Unplaced(spec.name, failed[shape]))
                continue
            # The slot fits the pack (every path checked it).
            take(slot, cpu, mem)
            if c.spread is not None:
                self._spread.count(spec, slot, +1)
            placements.append(Placement(spec.name, slot.id))
        return Plan(tuple(placements), tuple(unplaced))

    def _choose_constrained(
        self, spec: PackSpec, exclude: frozenset[str], scopes: dict[ScopeKey, list[Group] | None]
    ) -> Slot | None:
        """A pinned or spread pack: the pinned node, else a walk over the groups its pins allow."""
        c = spec.constraints
        res = spec.resources
        if c.node is not None:
            slot = self._fleet.slots.get(c.node)
            if slot is None or not fits(slot, res.cpu, res.mem, exclude) or not in_scope(slot, c):
                return None
            return slot
        skey = scope_key(c)
        if skey not in scopes:
            scopes[skey] = scope(self._fleet, c)
        groups = scopes[skey]
        if groups is None:
            return None
        hs = hashes(spec.name)
        if c.spread is not None:
            return choose_spread(self._bound, self._spread, spec, hs, groups, exclude)
        return choose_in(self._bound, hs, res.cpu, res.mem, rank(groups, hs), exclude)

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
        self._fleet.refresh()
        return rebalance_moves(self._fleet, assignment, specs, newcomers, self.reserve, self.release)


__all__ = ["REASON_REBALANCE", "UNPLACED_KINDS", "WEIGHT_UNIT", "Scheduler", "require_placed", "unplaced_kind"]
