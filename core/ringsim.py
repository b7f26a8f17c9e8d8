"""The simulation behind ``canidae ring simulate``: made-up nodes and packs run through the real
scheduler, the way the replicated state machine runs them.

This module owns the simulated fleet and the three steps the command measures, each the same
calls ``core.state`` makes on the cluster's ``core.scheduler.Scheduler``:

* ``place``: the packs are created and placed (``CreatePacks``): one ``Scheduler.place`` call,
  in order;
* ``join``: nodes register (``RegisterNode``: ``add_node``), then an operator rebalances
  (``Rebalance``: ``rebalance_plan`` over every placed pack, newcomers by default);
* ``leave``: nodes are declared down one after another (``SetNodeState`` DOWN): each one's packs
  are released and placed again elsewhere, in the order the node received them, excluding it.

So what the command reports (balance, movement) is what the cluster would do with the same nodes
and pack names. The fleet: ``nodes`` nodes ``n0000``... of weight 1, dealt round-robin over
``zones`` zones ``z0``... (one region ``r0`` and one cell ``c0`` each); every node has room for
every pack, so the figures are those of the rings and the bounded loads, never of capacity.
Packs are named ``pack-<12 hex digits>`` drawn from ``seed``, of the default reservation.

Pure: the caller times the steps (core reads no clock); the seed is a local ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from canidae.core.errors import NoCapacity
from canidae.core.scheduler import Scheduler, require_placed
from canidae.core.types import Location, Migration, Node, NodeState, PackSpec, Resources

PACK = Resources(100, 64, 1)  # the default reservation of a pack


@dataclass(frozen=True, slots=True)
class RingSim:
    """The inputs of one simulation: the fleet, who joins, who leaves, and the packs."""

    nodes: tuple[Node, ...]
    joining: tuple[Node, ...]
    leaving: tuple[str, ...]
    specs: tuple[PackSpec, ...]
    load_factor: float
    vnodes: int

    @staticmethod
    def build(nodes: int, packs: int, vnodes: int, load_factor: float, zones: int = 1, add: int = 0,
              remove: int = 0, seed: int = 0) -> RingSim:
        """The fleet of ``nodes`` (+ ``add`` joining), ``packs`` pack names and ``remove``
        leaving nodes, all drawn from ``seed`` (see the module docstring)."""
        width = max(4, len(str(nodes + add - 1)))
        # Room for every pack on every node: capacity never decides.
        capacity = Resources(PACK.cpu * packs, PACK.mem * packs, packs)
        fleet = tuple(Node(f"n{i:0{width}d}", Location(f"z{i % zones}", "r0", "c0"), capacity)
                      for i in range(nodes + add))
        original = fleet[:nodes]
        names = [f"pack-{x:012x}" for x in random.Random(seed).sample(range(1 << 48), packs)]
        leaving = sorted(random.Random(seed).sample([n.id for n in original], remove))
        return RingSim(original, fleet[nodes:], tuple(leaving),
                       tuple(PackSpec(name, resources=PACK) for name in names), load_factor, vnodes)

    def scheduler(self) -> Scheduler:
        """A scheduler holding the original nodes, its rings laid out (the first ``place`` would)."""
        sched = Scheduler(load_factor=self.load_factor, vnodes=self.vnodes)
        for n in self.nodes:
            sched.add_node(n)
        sched.place([], seed=0)
        return sched

    def place(self, sched: Scheduler) -> dict[str, str]:
        """Place every pack: pack name -> node id, in placement order."""
        plan = require_placed(sched.place(self.specs, seed=0))
        return {p.pack: p.node for p in plan.placements}

    def join(self, sched: Scheduler, placed: dict[str, str]) -> list[Migration]:
        """The joining nodes register, then a rebalance moves packs onto them."""
        for n in self.joining:
            sched.add_node(n)
        if not self.joining:
            return []
        return sched.rebalance_plan(placed, {s.name: s for s in self.specs})

    def leave(self, sched: Scheduler, placed: dict[str, str]) -> dict[str, str]:
        """The leaving nodes go down one by one; returns where every pack is afterwards."""
        by_name = {s.name: s for s in self.specs}
        # What each node holds, in the order it received it (the order the cluster evacuates in).
        held: dict[str, dict[str, None]] = {n.id: {} for n in self.nodes}
        for name, node in placed.items():
            held[node][name] = None
        where = dict(placed)
        for node_id in self.leaving:
            n = sched.node(node_id)
            sched.update_node(Node(n.id, n.location, n.capacity, n.weight, NodeState.DOWN, n.role, n.address))
            orphans = [by_name[name] for name in held[node_id]]
            held[node_id] = {}
            for s in orphans:
                sched.release(node_id, s.resources, s)
            plan = sched.place(orphans, seed=0, exclude=frozenset({node_id}))
            if plan.unplaced:  # pragma: no cover - every node has room for every pack
                raise NoCapacity(f"pack {plan.unplaced[0].pack} fits nowhere: {plan.unplaced[0].reason}")
            for p in plan.placements:
                where[p.pack] = p.node
                held[p.node][p.pack] = None
        return where


__all__ = ["PACK", "RingSim"]
