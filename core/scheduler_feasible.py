"""Feasibility: which nodes and groups may take a pack at all, before any ranking.

This module owns the hard filters, in the manner of nomad's ``feasible.go``:

* a node is feasible for a pack when it is READY, not excluded by the caller, and has the cpu,
  memory and a pack slot free (``fits``); ``lacks`` says which of these failed, for reasons;
* a pack's pins (``zone``/``region``/``cell``/``node``) narrow the fleet to a *scope*, the
  groups it may go under (``scope``; region and cell names match within the pinned parent,
  else anywhere), and ``in_scope`` tells whether a node lies inside them.

Group aggregates (free cpu, memory, slots) are a quick filter the walks of ``scheduler_rank``
apply inline; the node check here is the real one. Pure reads of ``scheduler_tree``.
"""

from __future__ import annotations

from canidae.core.scheduler_tree import Fleet, Group, Slot, sorted_groups
from canidae.core.types import Constraints, Level

ScopeKey = tuple[str | None, str | None, str | None]


def fits(s: Slot, cpu: int, mem: int, exclude: frozenset[str]) -> bool:
    """Whether the node can take a pack of ``cpu`` and ``mem`` now (loads aside)."""
    return (
        s.ready
        and cpu <= s.cap_cpu - s.used_cpu
        and mem <= s.cap_mem - s.used_mem
        and s.used_packs < s.cap_packs
        and s.id not in exclude
    )


def lacks(s: Slot, cpu: int, mem: int, exclude: frozenset[str]) -> list[str]:
    """Why ``fits`` is false, as phrases counted into reasons ("were down", "lacked 100m cpu")."""
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


def in_scope(slot: Slot, c: Constraints) -> bool:
    """Whether the node lies inside the zone, region and cell pins of ``c``."""
    loc = slot.node.location
    return (
        (c.zone is None or loc.zone == c.zone)
        and (c.region is None or loc.region == c.region)
        and (c.cell is None or loc.cell == c.cell)
    )


def scope_key(c: Constraints) -> ScopeKey:
    """What ``scope`` depends on, to cache it per call."""
    return (c.zone, c.region, c.cell)


def scope(fleet: Fleet, c: Constraints) -> list[Group] | None:
    """The groups a pack is pinned under (``[root]`` when unpinned); None when none matches.

    Names are unscoped: ``region=r1`` matches the region ``r1`` of every zone (of the pinned
    zone only, when there is one). Sorted by group id.
    """
    if c.zone is None and c.region is None and c.cell is None:
        return [fleet.root]
    level = Level.CELL if c.cell is not None else Level.REGION if c.region is not None else Level.ZONE
    out: list[Group] = []
    for z in sorted_groups(fleet.root):
        if c.zone is not None and z.name != c.zone:
            continue
        if level is Level.ZONE:
            out.append(z)
            continue
        for r in sorted_groups(z):
            if c.region is not None and r.name != c.region:
                continue
            if level is Level.REGION:
                out.append(r)
                continue
            out.extend(cell for cell in sorted_groups(r) if cell.name == c.cell)
    return out or None


__all__ = ["ScopeKey", "fits", "in_scope", "lacks", "scope", "scope_key"]
