"""The fleet's hierarchy, zone > region > cell > node, and its capacity at every level.

This module owns the *shape* of the fleet: which groups exist, which nodes sit in each, and
how much capacity is installed, used and free in each group given a usage map (node id ->
resources used). It is an immutable view built in one pass; the scheduler keeps its own
incrementally updated counters and hands out a ``Topology`` when asked for one.

Group ids are scoped by their parent, as ``Location.at`` writes them: zone ``z1``, region
``z1/r1``, cell ``z1/r1/c1``. So two zones may both have a region called ``r1`` without the two
being the same group.

Free capacity counts only READY nodes, because only they take new packs; installed capacity
and usage count every node. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from canidae.core.errors import InvalidInput, NotFound
from canidae.core.types import Level, Location, Node, NodeState, Resources

ZERO = Resources()


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Counts and capacity of one group (a zone, a region, a cell, or the whole fleet)."""

    level: str  # "fleet", "zone", "region" or "cell"
    id: str  # scoped id ("z1/r1" for a region); "" for the fleet
    nodes: int  # every node in the group, whatever its state
    ready: int  # nodes that take new packs
    capacity: Resources  # installed on every node
    used: Resources  # reserved on every node
    free: Resources  # left on READY nodes

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "nodes": self.nodes,
            "ready": self.ready,
            "capacity": self.capacity.to_dict(),
            "used": self.used.to_dict(),
            "free": self.free.to_dict(),
        }


class _Acc:
    """A mutable accumulator used while building; frozen into ``GroupStats`` at the end."""

    __slots__ = (
        "cap_cpu",
        "cap_mem",
        "cap_packs",
        "free_cpu",
        "free_mem",
        "free_packs",
        "nodes",
        "ready",
        "used_cpu",
        "used_mem",
        "used_packs",
    )

    def __init__(self) -> None:
        self.nodes = self.ready = 0
        self.cap_cpu = self.cap_mem = self.cap_packs = 0
        self.used_cpu = self.used_mem = self.used_packs = 0
        self.free_cpu = self.free_mem = self.free_packs = 0

    def add(self, node: Node, used: Resources) -> None:
        cap = node.capacity
        self.nodes += 1
        self.cap_cpu += cap.cpu
        self.cap_mem += cap.mem
        self.cap_packs += cap.packs
        self.used_cpu += used.cpu
        self.used_mem += used.mem
        self.used_packs += used.packs
        if node.state is NodeState.READY:
            self.ready += 1
            # A node may be over-committed after its capacity shrank; it then has nothing free,
            # and must not hide free capacity of its neighbours by counting negative.
            self.free_cpu += max(0, cap.cpu - used.cpu)
            self.free_mem += max(0, cap.mem - used.mem)
            self.free_packs += max(0, cap.packs - used.packs)

    def freeze(self, level: str, gid: str) -> GroupStats:
        return GroupStats(
            level,
            gid,
            self.nodes,
            self.ready,
            Resources(self.cap_cpu, self.cap_mem, self.cap_packs),
            Resources(self.used_cpu, self.used_mem, self.used_packs),
            Resources(self.free_cpu, self.free_mem, self.free_packs),
        )


class Topology:
    """An immutable view of the fleet's hierarchy with per-group counts and capacity.

    Build it from nodes and, optionally, a usage map; nodes missing from the map use nothing.
    Raises ``InvalidInput`` for no nodes or a duplicate node id.
    """

    __slots__ = ("_children", "_fleet", "_members", "_nodes", "_stats", "_used")

    def __init__(self, nodes: Iterable[Node], usage: Mapping[str, Resources] | None = None) -> None:
        usage = usage or {}
        by_id: dict[str, Node] = {}
        for node in nodes:
            if node.id in by_id:
                raise InvalidInput(f"duplicate node id {node.id!r} in the topology")
            by_id[node.id] = node
        if not by_id:
            raise InvalidInput("a topology needs at least one node")
        # Sorted ids everywhere: the view must not depend on the order nodes were given in.
        self._nodes: dict[str, Node] = {k: by_id[k] for k in sorted(by_id)}
        self._used: dict[str, Resources] = {k: usage.get(k, ZERO) for k in self._nodes}
        children: dict[str, set[str]] = {"": set()}
        members: dict[str, list[str]] = {"": []}
        accs: dict[tuple[str, str], _Acc] = {}
        fleet = _Acc()
        for nid, node in self._nodes.items():
            loc = node.location
            zone, region, cell = loc.at(Level.ZONE), loc.at(Level.REGION), loc.at(Level.CELL)
            children[""].add(zone)
            children.setdefault(zone, set()).add(region)
            children.setdefault(region, set()).add(cell)
            members[""].append(nid)
            for level, gid in ((Level.ZONE, zone), (Level.REGION, region), (Level.CELL, cell)):
                members.setdefault(gid, []).append(nid)
                acc = accs.get((level.value, gid))
                if acc is None:
                    acc = accs[(level.value, gid)] = _Acc()
                acc.add(node, self._used[nid])
            fleet.add(node, self._used[nid])
        self._children = {k: sorted(v) for k, v in children.items()}
        self._members = members
        self._stats = {key: acc.freeze(key[0], key[1]) for key, acc in sorted(accs.items())}
        self._fleet = fleet.freeze("fleet", "")

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def node(self, node_id: str) -> Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r} in the topology")
        return node

    def nodes(self) -> list[Node]:
        """Every node, sorted by id."""
        return list(self._nodes.values())

    def used(self, node_id: str) -> Resources:
        self.node(node_id)
        return self._used[node_id]

    def free(self, node_id: str) -> Resources:
        """What the node can still take: nothing unless it is READY."""
        node = self.node(node_id)
        if node.state is not NodeState.READY:
            return ZERO
        return node.capacity - self._used[node_id]

    def zones(self) -> list[str]:
        return list(self._children[""])

    def regions(self, zone: str | None = None) -> list[str]:
        """Scoped region ids (``z1/r1``), of one zone or of the whole fleet."""
        if zone is None:
            return [r for z in self._children[""] for r in self._children[z]]
        self._require(Level.ZONE, zone)
        return list(self._children[zone])

    def cells(self, region: str | None = None) -> list[str]:
        """Scoped cell ids (``z1/r1/c1``), of one region (scoped id) or of the whole fleet."""
        if region is None:
            return [c for r in self.regions() for c in self._children[r]]
        self._require(Level.REGION, region)
        return list(self._children[region])

    def node_ids(self, level: Level | None = None, group: str = "") -> list[str]:
        """Ids of the nodes in a group (sorted), or of the whole fleet when ``level`` is None."""
        if level is None:
            return list(self._members[""])
        if level is Level.NODE:
            self.node(group)
            return [group]
        self._require(level, group)
        return list(self._members[group])

    def stats(self, level: Level | None = None, group: str = "") -> GroupStats:
        """Counts and capacity of a group, or of the whole fleet when ``level`` is None."""
        if level is None:
            return self._fleet
        if level is Level.NODE:
            node = self.node(group)
            used = self._used[group]
            ready = node.state is NodeState.READY
            return GroupStats(
                "node", group, 1, int(ready), node.capacity, used, node.capacity - used if ready else ZERO
            )
        self._require(level, group)
        return self._stats[(level.value, group)]

    def match(
        self, level: Level, zone: str | None = None, region: str | None = None, cell: str | None = None
    ) -> list[str]:
        """Scoped ids of the groups at ``level`` that lie under the given (unscoped) names.

        ``match(Level.CELL, region="r1")`` finds every cell of every region called ``r1``, in
        whatever zone. Unknown names are not an error here: the answer is then empty.
        """
        out: list[str] = []
        for z in self._children[""]:
            if zone is not None and z != zone:
                continue
            if level is Level.ZONE:
                out.append(z)
                continue
            for r in self._children[z]:
                if region is not None and r.rsplit("/", 1)[1] != region:
                    continue
                if level is Level.REGION:
                    out.append(r)
                    continue
                for c in self._children[r]:
                    if cell is not None and c.rsplit("/", 1)[1] != cell:
                        continue
                    out.append(c)
        return out

    def _require(self, level: Level, group: str) -> None:
        if (level.value, group) not in self._stats:
            hint = ""
            if level is not Level.ZONE and "/" not in group:
                hint = " (region and cell ids are scoped by their parent, e.g. z1/r1/c1)"
            raise NotFound(f"no {level.value} {group!r} in the topology{hint}")

    # ------------------------------------------------------------------ summary

    def summary(self, cells: bool = True) -> dict[str, Any]:
        """A JSON-able tree: fleet totals, then each zone with its regions (and their cells)."""
        zones: list[dict[str, Any]] = []
        for z in self._children[""]:
            regions: list[dict[str, Any]] = []
            for r in self._children[z]:
                rd: dict[str, Any] = {**self._stats[("region", r)].to_dict(), "cells": len(self._children[r])}
                if cells:
                    rd["cell_list"] = [self._stats[("cell", c)].to_dict() for c in self._children[r]]
                regions.append(rd)
            zones.append(
                {
                    **self._stats[("zone", z)].to_dict(),
                    "regions": len(self._children[z]),
                    "cells": sum(len(self._children[r]) for r in self._children[z]),
                    "region_list": regions,
                }
            )
        return {
            "zones": len(self._children[""]),
            "regions": sum(len(self._children[z]) for z in self._children[""]),
            "cells": sum(len(self._children[r]) for z in self._children[""] for r in self._children[z]),
            "nodes": self._fleet.nodes,
            "ready": self._fleet.ready,
            "capacity": self._fleet.capacity.to_dict(),
            "used": self._fleet.used.to_dict(),
            "free": self._fleet.free.to_dict(),
            "zone_list": zones,
        }


def build_nodes(
    zones: int, regions: int, cells: int, nodes: int, capacity: Resources, prefix: str = "n"
) -> list[Node]:
    """A regular fleet: ``nodes`` nodes dealt round-robin over zones x regions x cells.

    Zone ``z{i}``, region ``r{j}``, cell ``c{k}`` (1-based), node ids zero-padded so they sort
    in creation order. Used by the simulator, the benchmarks and ``canidae place``.
    """
    for what, n in (("zones", zones), ("regions", regions), ("cells", cells)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInput(f"{what} must be a positive integer, got {n!r}")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise InvalidInput(f"a topology needs at least one node, got nodes={nodes!r}")
    groups = [
        Location(f"z{z}", f"r{r}", f"c{c}")
        for z in range(1, zones + 1)
        for r in range(1, regions + 1)
        for c in range(1, cells + 1)
    ]
    width = len(str(nodes))
    # Deal zone-first so that every zone gets a share even when nodes < zones x regions x cells.
    order = sorted(range(len(groups)), key=lambda i: (i % (regions * cells), i // (regions * cells)))
    return [
        Node(f"{prefix}{i + 1:0{width}d}", groups[order[i % len(groups)]], capacity) for i in range(nodes)
    ]


__all__ = ["GroupStats", "Topology", "build_nodes"]
