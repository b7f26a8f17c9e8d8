"""Spread: packs of one spread group kept apart across the zones, regions or cells of the fleet.

This module owns the ``spread`` constraint, in the manner of nomad's ``spread.go``. A pack with
``spread=<level>`` and a ``group`` goes to the feasible group of that level holding the fewest
packs of its spread group, ties by ring order (``scheduler_rank.rank``), and within it by the
usual walk (``scheduler_rank.choose_in``). ``SpreadCounts`` is the accounting: packs per spread
group per group of the level, as reservations and releases told it. Pure.
"""

from __future__ import annotations

from canidae.core.ringindex import LoadBound
from canidae.core.scheduler_rank import choose_in, rank
from canidae.core.scheduler_tree import LEVEL_DEPTH, Group, Hashes, Slot, ancestor_at
from canidae.core.types import Level, PackSpec


class SpreadCounts:
    """(spread level, spread group) -> group id of that level -> packs placed there."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], dict[str, int]] = {}

    def count(self, spec: PackSpec, slot: Slot, sign: int) -> None:
        """Count (+1) or uncount (-1) ``spec`` on ``slot``, when it has a spread constraint."""
        c = spec.constraints
        if c.spread is None:
            return
        counts = self._counts.setdefault((c.spread.value, c.group or ""), {})
        gid = slot.node.location.at(c.spread)
        counts[gid] = counts.get(gid, 0) + sign

    def of(self, level: Level | str, group: str | None) -> dict[str, int]:
        """The live counts of one spread group (not a copy: read, do not change)."""
        key = level.value if isinstance(level, Level) else level
        return self._counts.get((key, group or ""), {})

    def nonzero(self, level: Level, group: str | None) -> dict[str, int]:
        """Packs of a spread group per group of ``level`` (sorted ids, zeros left out)."""
        counts = self.of(level, group)
        return {k: counts[k] for k in sorted(counts) if counts[k]}


def choose_spread(
    bound: LoadBound,
    spread: SpreadCounts,
    spec: PackSpec,
    hs: Hashes,
    scope: list[Group],
    exclude: frozenset[str],
) -> Slot | None:
    """The node for a pack with a spread constraint: least-loaded group of the level first."""
    c = spec.constraints
    assert c.spread is not None
    level = c.spread.value
    counts = spread.of(level, c.group)
    # The groups of the spread level within the scope, in ring order...
    ranked: list[Group] = []
    for g in rank(scope, hs):
        ranked.extend(groups_at(g, level, hs))
    # ...then the least loaded first (stable sort: ties keep ring order). A pack pinned below
    # its spread level (a cell, spread by zone) ranks its pinned groups by their ancestor's count.
    ranked.sort(key=lambda g: counts.get(ancestor_at(g, level).id, 0))
    res = spec.resources
    for g in ranked:
        if g.free_cpu < res.cpu or g.free_mem < res.mem or g.free_packs < 1:
            continue
        slot = choose_in(bound, hs, res.cpu, res.mem, [g], exclude)
        if slot is not None:
            return slot
    return None


def groups_at(g: Group, level: str, hs: Hashes) -> list[Group]:
    """The groups of ``level`` at or under ``g``, in ring order (only those with READY nodes).

    ``g`` itself when it is at or below ``level``.
    """
    if g.depth >= LEVEL_DEPTH[level]:
        return [g]
    out: list[Group] = []
    if g.is_cell:
        return out
    for cid in g.idx.walk(hs[g.depth]):
        child = g.children[cid]
        assert isinstance(child, Group)
        out.extend(groups_at(child, level, hs))
    return out


__all__ = ["SpreadCounts", "choose_spread", "groups_at"]
