"""Ranking: among the feasible nodes, which one a pack goes to: ring order under bounded loads.

This module owns the walk, in the manner of nomad's ``rank.go`` (there, bin-packing scores;
here, consistent hashing). A pack walks the preference list of its name (``RingIndex.walk``)
at each level of the tree, zone, then region, then cell, then node, and takes the first node
that is feasible (``scheduler_feasible.fits``) and under its *bounded load*: a node takes a pack
only while its pack count is under ``ceil(c * (T + 1) * w / W)``, with ``c`` the load factor,
``T`` the packs on READY nodes and ``W`` the READY weight, both taken over the pack's scope (the
whole fleet, or the zone / region / cell it is pinned to: a bound relative to the fleet means
nothing to a pack that can only go to one zone). Groups are bounded the same way, which lets the
walk skip a full group without visiting its nodes. The bound is ``core.ringindex.LoadBound``,
compared by cross-multiplication of integers (``kn``, ``kd`` from ``LoadBound.terms``); the hot
paths below inline ``LoadBound.admits`` because they run a few times per pack.

That first pass is the fast path (``first_choice``: every level's first choice, if all of them
qualify). Only when it finds nothing does a second pass walk every feasible node against the
node bounds alone (a group at its bound may still hold a node under its own), and only when
*every* feasible node is at its bound does a third pass fall back past the bound, to the
least-loaded feasible node (ties by ring order).

Rings are read only through each group's ``RingIndex``. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator

from canidae.core.ringindex import LoadBound
from canidae.core.scheduler_feasible import fits
from canidae.core.scheduler_tree import Group, Hashes, Slot


def first_choice(
    root: Group, hs: Hashes, cpu: int, mem: int, exclude: frozenset[str], kn: int, kd: int
) -> Slot | None:
    """The fast path of the first pass: every level's first choice, if all of them qualify."""
    g = root
    for depth in (0, 1, 2):
        idx = g.idx
        if not idx.members:
            return None
        child = g.children[idx.owner(hs[depth])]
        if (
            child.free_cpu < cpu
            or child.free_mem < mem
            or child.free_packs < 1
            or child.packs * kd >= kn * child.wq
        ):
            return None
        g = child
    idx = g.idx
    if not idx.members:
        return None
    s = g.children[idx.owner(hs[3])]
    if (
        s.used_packs * kd < kn * s.wq
        and cpu <= s.cap_cpu - s.used_cpu
        and mem <= s.cap_mem - s.used_mem
        and s.used_packs < s.cap_packs
        and s.id not in exclude
    ):
        return s
    return None


def choose_in(
    bound: LoadBound, hs: Hashes, cpu: int, mem: int, roots: list[Group], exclude: frozenset[str]
) -> Slot | None:
    """The three passes over ``roots`` (in ring order; see the module docstring)."""
    wq = 0
    packs = 0
    for g in roots:
        wq += g.wq
        packs += g.packs
    if wq == 0:
        return None
    kn, kd = bound.terms(packs + 1, wq)
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
    best: Slot | None = None
    for g in roots:
        for slot in feasible(g, hs, cpu, mem, exclude):
            if best is None or slot.used_packs * best.wq < best.used_packs * slot.wq:
                best = slot
    return best


def walk(
    g: Group,
    hs: Hashes,
    cpu: int,
    mem: int,
    exclude: frozenset[str],
    kn: int,
    kd: int,
    group_bound: bool,
) -> Slot | None:
    """The first node under ``g``, depth first in ring order, that fits and is under its bound."""
    idx = g.idx
    if not idx.members:
        return None
    children = g.children
    h = hs[g.depth]
    first = idx.owner(h)
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
        for nid in idx.walk(h):
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
        slot = walk(child, hs, cpu, mem, exclude, kn, kd, group_bound)
        if slot is not None:
            return slot
    for cid in idx.walk(h):
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
        slot = walk(child, hs, cpu, mem, exclude, kn, kd, group_bound)
        if slot is not None:
            return slot
    return None


def feasible(g: Group, hs: Hashes, cpu: int, mem: int, exclude: frozenset[str]) -> Iterator[Slot]:
    """Every node under ``g`` that fits, in ring order."""
    for cid in g.idx.walk(hs[g.depth]):
        child = g.children[cid]
        if isinstance(child, Slot):
            if fits(child, cpu, mem, exclude):
                yield child
        elif child.free_cpu >= cpu and child.free_mem >= mem and child.free_packs >= 1:
            yield from feasible(child, hs, cpu, mem, exclude)


def preference(g: Group, hs: Hashes) -> Iterator[Slot]:
    """Every READY node under ``g`` in the order the walk meets them, loads and capacity aside."""
    for cid in g.idx.walk(hs[g.depth]):
        child = g.children[cid]
        if isinstance(child, Slot):
            yield child
        else:
            yield from preference(child, hs)


def rank(scope: list[Group], hs: Hashes) -> list[Group]:
    """The groups of ``scope`` in the order a walk from the root meets them."""
    if len(scope) == 1:
        return scope
    orders: dict[str, dict[str, int]] = {}

    def rank_in(g: Group) -> int:
        parent, name = g.parent, g.name
        assert parent is not None  # path() holds no root
        order = orders.get(parent.id)
        if order is None:
            order = orders[parent.id] = {cid: i for i, cid in enumerate(parent.idx.walk(hs[parent.depth]))}
        # A group with no READY node is on no ring: it goes last, it cannot take anything.
        return order.get(name, len(parent.children) + 1)

    return sorted(scope, key=lambda g: [rank_in(a) for a in g.path()])


def natural(g: Group, hs: Hashes) -> Slot | None:
    """The node the rings prefer for the key hashed to ``hs`` under ``g``, loads aside."""
    while True:
        idx = g.idx
        if not idx.members:
            return None
        child = g.children[idx.owner(hs[g.depth])]
        if isinstance(child, Slot):
            return child
        g = child


__all__ = ["choose_in", "feasible", "first_choice", "natural", "preference", "rank", "walk"]
