"""Bounded loads on a single ring: per-node caps, one-shot placement and sticky rebalancing.

Caps are ``ceil(load_factor * total * weight / total_weight)`` (``core.ringindex.LoadBound``,
after Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads"); a key whose
node is full walks clockwise (``RingIndex.first_with_room``) to the next node with room.

What uses what. ``bounded_caps`` is the cap the cluster shows per node (``ring show``). The
cluster *places* with ``core.scheduler``, which applies the same bound over its hierarchy of
rings, pack by pack, with capacity and constraints. ``place_bounded`` and ``rebalance`` are the
textbook algorithm over one flat ring, in bulk: they are the reference the ring's property tests
check bounded loads and minimal movement against, and the baseline ``bench/ring.py`` measures
the scheduler beside; ``canidae ring simulate`` does not use them, it drives the scheduler.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from fractions import Fraction
from itertools import compress

from canidae.core.errors import InvalidInput, NoCapacity
from canidae.core.ring import DEFAULT_LOAD_FACTOR, HashRing, key_hashes
from canidae.core.ringindex import LoadBound
from canidae.core.types import Migration

REASON_NODE_LEFT = "node-left"
REASON_REBALANCE = "rebalance"


def _exact_weights(ring: HashRing) -> tuple[dict[str, Fraction], Fraction]:
    # Weights as the decimals they print as, so caps are exact and independent of summation order.
    exact: dict[float, Fraction] = {}
    per_node: dict[str, Fraction] = {}
    for n in ring.nodes():
        w = ring.weight(n)
        f = exact.get(w)
        if f is None:
            f = exact[w] = Fraction(repr(w))
        per_node[n] = f
    total = sum((f * c for f, c in Counter(per_node.values()).items()), Fraction(0))
    return per_node, total


def bounded_caps(ring: HashRing, total: int, load_factor: float = DEFAULT_LOAD_FACTOR) -> dict[str, int]:
    """Per-node cap ``ceil(load_factor * total * weight / total_weight)``, by node id."""
    bound = LoadBound(load_factor)
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise InvalidInput(f"total must be a non-negative integer, got {total!r}")
    per_node, total_weight = _exact_weights(ring)
    by_weight: dict[Fraction, int] = {}
    caps: dict[str, int] = {}
    for n, w in per_node.items():
        cap = by_weight.get(w)
        if cap is None:
            cap = by_weight[w] = bound.cap(total, w, total_weight)
        caps[n] = cap
    return caps


def place_bounded(
    ring: HashRing,
    keys: Sequence[str],
    load_factor: float = DEFAULT_LOAD_FACTOR,
    loads: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Place distinct ``keys`` with consistent hashing and bounded loads (Mirrokni et al.).

    Caps are ``bounded_caps`` over the existing ``loads`` (of nodes on the ring) plus
    ``len(keys)``. Two rounds, both in the given key order: first every node accepts the keys
    whose first choice it is until it reaches its cap; then each key left over walks the ring
    clockwise (its preference list) and takes the first node still under its cap. Serving first
    choices before overflow keeps more keys on their first choice than a single pass would, and
    lets the bulk of the work run in C; the result is deterministic for a given key order.
    """
    keys = keys if isinstance(keys, list) else list(keys)
    if not keys:
        return {}
    idx = ring.index()
    if not len(idx):
        raise NoCapacity("the ring has no nodes")
    base: dict[str, int] = {}
    if loads:
        for n in ring.nodes():
            v = loads.get(n, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInput(f"load of node {n!r} must be a non-negative integer, got {v!r}")
            if v:
                base[n] = v
    caps = bounded_caps(ring, sum(base.values()) + len(keys), load_factor)
    room = {n: cap - base.get(n, 0) for n, cap in caps.items()}

    hashes = key_hashes(keys)
    chosen = ring.lookup_hashes(hashes)
    demand = Counter(chosen)
    full = {n for n, d in demand.items() if d > room[n]}
    if full:
        for n, d in demand.items():
            room[n] = max(0, room[n]) if n in full else room[n] - d
        spill: list[int] = []
        for i in compress(range(len(chosen)), map(full.__contains__, chosen)):
            n = chosen[i]
            if room[n] > 0:
                room[n] -= 1
            else:
                spill.append(i)
        for i in spill:
            target = idx.first_with_room(hashes[i], room)
            if target is None:  # pragma: no cover - caps sum to more than the keys, so a node has room
                raise NoCapacity("bounded loads left no room on the ring")
            room[target] -= 1
            chosen[i] = target
    placed = dict(zip(keys, chosen))
    if len(placed) != len(keys):
        raise InvalidInput("place_bounded: keys must be distinct")
    return placed


def rebalance(
    ring: HashRing,
    assignment: Mapping[str, str],
    load_factor: float = DEFAULT_LOAD_FACTOR,
    joined: Collection[str] | None = None,
) -> list[Migration]:
    """The sticky moves that bring ``assignment`` (key -> node) in line with ``ring``.

    * Keys on nodes no longer on the ring move (``node-left``), each to the first node clockwise
      from it with room under its cap.
    * Keys stay where they are unless their node is gone or over its new cap; a node over its cap
      sheds the excess (``rebalance``), keys whose first choice is now elsewhere first, to the
      first newcomer with room clockwise from each key.
    * Nodes that joined (``joined``; by default the ring's nodes holding no key) are brought up to
      their fair share ``floor(K * weight / total_weight)`` (``rebalance``), taking only keys
      whose preference now puts the newcomer before their current node, from the most loaded
      donors first. A newcomer whose arcs attract fewer keys stays below its share.

    Keys never move between two nodes that were there before and are still there, except when a
    node is over its cap and no newcomer has room. Caps are ``bounded_caps(ring, len(assignment),
    load_factor)``. Keys are considered in sorted order, so the result does not depend on the
    mapping's order; it is sorted by key and each key moves at most once.
    """
    caps = bounded_caps(ring, len(assignment), load_factor)
    if not assignment:
        return []
    idx = ring.index()
    if not len(idx):
        raise NoCapacity("the ring has no nodes")
    # Keys are handled by position in the mapping's order, which may be anything; wherever the
    # order matters (who moves first, who is taken), candidates are sorted by key.
    keys = list(assignment)
    by_key = keys.__getitem__
    current = list(assignment.values())
    hashes = key_hashes(keys)
    first = ring.lookup_hashes(hashes)
    everyone = range(len(keys))

    counted = Counter(current)
    loads = {n: counted.get(n, 0) for n in caps}
    room = {n: caps[n] - loads[n] for n in caps}
    if joined is None:
        newcomers = {n for n in caps if n not in counted}
    else:
        newcomers = {n for n in joined if n in caps}
    moves: dict[int, tuple[str, str, str]] = {}

    def move(i: int, target: str, reason: str) -> None:
        source = current[i]
        if source in room:
            room[source] += 1
            loads[source] -= 1
        room[target] -= 1
        loads[target] += 1
        moves[i] = (source, target, reason)
        current[i] = target

    def place(i: int, allowed: Collection[str] | None, reason: str) -> None:
        target = idx.first_with_room(hashes[i], room, allowed)
        if target is None:  # pragma: no cover - caps sum to more than the keys, so a node has room
            raise NoCapacity("bounded loads left no room on the ring")
        move(i, target, reason)

    # 1. Keys whose node left the ring.
    for i in sorted([i for i in everyone if current[i] not in caps], key=by_key):
        place(i, None, REASON_NODE_LEFT)

    # 2. Nodes over their (new) cap shed the excess, to a newcomer when one has room.
    over = sorted(n for n in caps if room[n] < 0)
    if over:
        held: dict[str, list[int]] = {n: [] for n in over}
        for i in compress(everyone, map(held.__contains__, current)):
            held[current[i]].append(i)
        for n in over:
            # Keys whose first choice is now another node go first; then by key.
            stays_first = [first[i] == n for i in held[n]]
            ranked = [i for _, _, i in sorted(zip(stays_first, map(by_key, held[n]), held[n]))]
            for i in ranked[: -room[n]]:
                fits = [m for m in newcomers if room[m] > 0]
                place(i, fits or None, REASON_REBALANCE)

    # 3. Newcomers up to their fair share, from keys that now prefer them.
    per_node, total_weight = _exact_weights(ring)
    need = {y: min(caps[y], math.floor(len(keys) * per_node[y] / total_weight)) - loads[y]
            for y in newcomers}
    hungry = {y for y, k in need.items() if k > 0}
    if hungry:
        # Tier 1: keys whose first choice is now the newcomer.
        tier1: dict[str, list[int]] = {y: [] for y in hungry}
        for i in compress(everyone, map(hungry.__contains__, first)):
            if i not in moves and current[i] not in newcomers:
                tier1[first[i]].append(i)
        for y in sorted(hungry):
            tier1[y].sort(key=by_key)
            need[y] -= _take(tier1[y], need[y], y, current, loads, moves, move)
        hungry = {y for y in hungry if need[y] > 0}
    if hungry:
        # Tier 2: keys that overflowed past their first choice and meet the newcomer before
        # the node they are on.
        tier2: dict[str, list[int]] = {y: [] for y in hungry}
        for i in compress(everyone, map(str.__ne__, current, first)):
            n = current[i]
            if i in moves or n in newcomers:
                continue
            for y in idx.met_before(hashes[i], n, hungry):
                tier2[y].append(i)
        for y in sorted(hungry):
            tier2[y].sort(key=by_key)
            _take(tier2[y], need[y], y, current, loads, moves, move)

    return [Migration(keys[i], *moves[i]) for i in sorted(moves, key=by_key)]


def _take(candidates: list[int], need: int, target: str, current: list[str], loads: Mapping[str, int],
          moves: Mapping[int, object], move: Callable[[int, str, str], None]) -> int:
    """Move up to ``need`` of ``candidates`` to ``target``, always from the most loaded donor."""
    by_donor: dict[str, list[int]] = {}
    for i in candidates:  # in key order, so each donor's list is too
        if i not in moves:
            by_donor.setdefault(current[i], []).append(i)
    heap = [(-loads[d], d, 0) for d in by_donor]
    heapq.heapify(heap)
    taken = 0
    while heap and taken < need:
        _, d, k = heapq.heappop(heap)
        move(by_donor[d][k], target, REASON_REBALANCE)
        taken += 1
        if k + 1 < len(by_donor[d]):
            heapq.heappush(heap, (-loads[d], d, k + 1))
    return taken


__all__ = ["REASON_NODE_LEFT", "REASON_REBALANCE", "bounded_caps", "place_bounded", "rebalance"]
