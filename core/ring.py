"""The consistent-hash ring of nodes: key hashing, the weighted virtual-node layout, lookups,
preference lists and zone-aware replicas.

This module owns where a key (a pack name) lands given only the set of node ids and their
weights. It knows nothing else about nodes: capacity, state and constraints are the scheduler's.

Layout. Every node owns ``vnode_count(node)`` points on a 64-bit circle; point ``i`` of node ``n``
sits at ``key_hash(f"{n}#{i}")``. A key belongs to the first point at or clockwise after
``key_hash(key)``, wrapping past the top of the circle to the first point. Points that collide
are ordered by node id, so the layout is a function of the membership alone (never of the
order nodes were added in, nor of PYTHONHASHSEED).

Representation. Two sorted parallel lists: ``_points`` (positions) and ``_owners`` (node ids,
plus one sentinel copy of the first owner at the end, so ``bisect_left`` returning
``len(points)`` wraps to the first point without a modulo on the hot path). Membership changes
are recorded at once and merged into the lists by the next read: one node is merged in
O(points) with slice copies (no full rebuild), and many nodes added in a row cost one sort. The
lists are replaced, never mutated in place, so a snapshot of them stays consistent.

Reads. ``index()`` hands out a ``core.ringindex.RingIndex``, the layout frozen with a bucket
index: every walk over the ring (``preference``, the scheduler's, the bounded-load walks of
``core.ringbounded``) goes through it. Bulk lookups (``lookup_many``, ``lookup_hashes``, and
``lookup`` once it exists) go through a second table tuned for ``map`` over many keys
(``HashRing._index``): built by the first bulk call, then patched by each merge rather than
rebuilt, which matters to a ring of 300,000 points changing one node at a time.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain, compress, repeat
from operator import add, is_, rshift

import xxhash
from canidae.core.errors import InvalidInput, NoCapacity, NotFound
from canidae.core.ringindex import RingIndex

HASH_BITS = 64
HASH_SPACE = 1 << HASH_BITS
DEFAULT_VNODES = 160
DEFAULT_LOAD_FACTOR = 1.25
# A guard against a typo in a weight turning into millions of points for one node.
MAX_VNODES_PER_NODE = 1 << 20

# Buckets of the bulk-lookup index per point, rounded up to a power of two (so 4 to 8): with
# more, fewer keys need a bisection but the table leaves the CPU caches.
_BUCKETS_PER_POINT = 4

_xxh64 = xxhash.xxh64_intdigest
_encode = str.encode


def key_hash(key: str) -> int:
    """The 64-bit position of ``key`` on the ring: xxh64 of its UTF-8 bytes, seed 0."""
    return _xxh64(key.encode())


def key_hashes(keys: Sequence[str]) -> list[int]:
    """``[key_hash(k) for k in keys]``, hashed in C by ``map``."""
    return list(map(_xxh64, map(_encode, keys)))


# b"#0", b"#1", ...: the decimal index after the last '#' makes the labels of different nodes
# distinct even when node ids themselves contain '#'. Kept and grown on demand, so building
# labels is one bytes concatenation each (the cache is the same for every ring and every run).
_SUFFIXES: list[bytes] = []


def _suffixes(count: int) -> list[bytes]:
    if len(_SUFFIXES) < count:
        _SUFFIXES.extend(f"#{i}".encode() for i in range(len(_SUFFIXES), count))
    return _SUFFIXES if len(_SUFFIXES) == count else _SUFFIXES[:count]


def vnode_positions(node_id: str, count: int) -> list[int]:
    """The ring positions of the first ``count`` virtual nodes of ``node_id``:
    ``key_hash(f"{node_id}#{i}")`` for ``i`` in ``range(count)``."""
    return list(map(_xxh64, map(node_id.encode().__add__, _suffixes(count))))


def _check_weight(node_id: str, weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise InvalidInput(f"node {node_id!r}: weight must be a positive number, got {weight!r}")
    w = float(weight)
    if not (w > 0 and math.isfinite(w)):
        raise InvalidInput(f"node {node_id!r}: weight must be a positive finite number, got {weight!r}")
    return w


class HashRing:
    """A consistent-hash ring of weighted nodes with ``vnodes`` points per unit of weight."""

    __slots__ = (
        "_counts",
        "_merged",
        "_owners",
        "_padded",
        "_padded_owners",
        "_pending",
        "_points",
        "_removed",
        "_shift",
        "_snapshot",
        "_span",
        "_stale",
        "_table",
        "_vnodes",
        "_weights",
    )

    def __init__(self, vnodes: int = DEFAULT_VNODES) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise InvalidInput(f"vnodes must be an integer >= 1, got {vnodes!r}")
        self._vnodes = vnodes
        self._weights: dict[str, float] = {}   # current membership
        self._counts: dict[str, int] = {}      # current vnode count per node
        self._merged: dict[str, int] = {}      # nodes present in the lists, with their point count
        self._pending: dict[str, int] = {}     # added since the last merge
        self._removed: set[str] = set()        # in the lists but no longer members
        self._stale = False
        self._points: list[int] = []
        self._owners: list[str] = []           # len(points) + 1 entries (sentinel) when not empty
        # The bucket index for lookups (see _index): built at the first bulk call, then patched
        # by each merge.
        self._table: list[str | int] | None = None
        self._shift = 64
        self._span = 0
        self._padded: list[int] = []           # the index's sorted runs of points, see _index
        self._padded_owners: list[str] = []    # their owners, aligned
        self._snapshot: RingIndex | None = None  # index() of the current lists, once asked for

    # -- membership -------------------------------------------------------------------------

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def add_node(self, node_id: str, weight: float = 1.0) -> None:
        """Add ``node_id`` with ``weight``; its points are merged in at the next read."""
        if not isinstance(node_id, str) or not node_id:
            raise InvalidInput(f"node id must be a non-empty string, got {node_id!r}")
        w = _check_weight(node_id, weight)
        if node_id in self._weights:
            raise InvalidInput(f"node {node_id!r} is already on the ring")
        count = max(1, round(self._vnodes * w))
        if count > MAX_VNODES_PER_NODE:
            raise InvalidInput(
                f"node {node_id!r}: weight {weight!r} needs {count} virtual nodes "
                f"(limit {MAX_VNODES_PER_NODE})"
            )
        self._weights[node_id] = w
        self._counts[node_id] = count
        self._pending[node_id] = count
        self._stale = True

    def remove_node(self, node_id: str) -> None:
        """Remove ``node_id``; its points leave the lists at the next read."""
        if not isinstance(node_id, str) or node_id not in self._weights:
            raise NotFound(f"node {node_id!r} is not on the ring")
        del self._weights[node_id]
        del self._counts[node_id]
        if node_id in self._pending:
            # Added and removed again between two reads: its points never reached the lists
            # (an older copy of it may have, and is then already in _removed).
            del self._pending[node_id]
        else:
            self._removed.add(node_id)
        self._stale = bool(self._pending or self._removed)

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, str) and node_id in self._weights

    def __repr__(self) -> str:
        return f"HashRing(nodes={len(self._weights)}, vnodes={self._vnodes})"

    def nodes(self) -> list[str]:
        """Node ids, sorted."""
        return sorted(self._weights)

    def weight(self, node_id: str) -> float:
        try:
            return self._weights[node_id]
        except (KeyError, TypeError):
            raise NotFound(f"node {node_id!r} is not on the ring") from None

    def vnode_count(self, node_id: str) -> int:
        """``round(vnodes * weight)``, at least 1."""
        try:
            return self._counts[node_id]
        except (KeyError, TypeError):
            raise NotFound(f"node {node_id!r} is not on the ring") from None

    def total_weight(self) -> float:
        # fsum is exact then rounded once, so the total does not depend on dict order.
        return math.fsum(self._weights.values())

    def point_count(self) -> int:
        """Number of virtual nodes on the ring."""
        return sum(self._counts.values())

    # -- the sorted lists -------------------------------------------------------------------

    def _arrays(self) -> tuple[list[int], list[str]]:
        """The merged ``(points, owners)``; ``owners`` carries the wrap-around sentinel.

        Both lists are sorted by (position, node id), ``len(owners) == len(points) + 1``, and
        they are replaced, never mutated, by a change. Outside this class, read them through
        ``index()``.
        """
        if self._stale:
            self._merge()
        return self._points, self._owners

    def _merge(self) -> None:
        points = self._points
        owners = self._owners[:-1]
        removed_points = sum(self._merged[n] for n in self._removed)
        pending_points = sum(self._pending.values())
        remaining = len(points) - removed_points
        changed: list[int] = []   # positions of points that left or arrived
        old_first = (points[0], owners[0]) if points else None
        if remaining == 0 or pending_points * 4 > remaining:
            # Many nodes at once (a build): one sort beats merging them in one by one.
            points, owners = self._build_all()
            self._table = None
        else:
            if self._removed:
                points, owners = self._without(points, owners, changed)
            if self._pending:
                points, owners = self._with_pending(points, owners, changed)
        for n in self._removed:
            del self._merged[n]
        self._merged.update(self._pending)
        self._pending.clear()
        self._removed.clear()
        if owners:
            owners.append(owners[0])
        self._points, self._owners = points, owners
        self._snapshot = None
        self._stale = False
        if self._table is not None and not self._patch(changed, old_first):
            self._table = None

    def _build_all(self) -> tuple[list[int], list[str]]:
        ids = sorted(self._counts)
        counts = [self._counts[n] for n in ids]
        labelled_owners = list(chain.from_iterable(map(repeat, ids, counts)))
        hashes = list(chain.from_iterable(map(vnode_positions, ids, counts)))
        # Sorting by float is about twice as fast as by 64-bit int, and exact when the floats are
        # distinct (float() is monotonic); else sort by the ints. Either sort is stable over input
        # ordered by node id, so colliding points end up ordered by id, as the merge orders them.
        floats = list(map(float, hashes))
        key = floats.__getitem__ if len(set(floats)) == len(floats) else hashes.__getitem__
        order = sorted(range(len(hashes)), key=key)
        points = list(map(hashes.__getitem__, order))
        return points, list(map(labelled_owners.__getitem__, order))

    def _index(self) -> list[str | int]:
        """The bucket index: one entry per ``1 << shift`` slice of the circle (4 to 8 per point).

        An entry is the owner's id when no point falls inside the slice (every key hashing there
        has that owner: the next point clockwise), else an offset into ``_padded``, a run of
        positions in which a bisection over ``_span`` entries finds the answer, whose owner sits
        at the same offset of ``_padded_owners``. Most keys are thus answered by one list access,
        the rest by a short bisection, all in C via ``map``.

        When built, ``_padded`` is the points (sharing their ints) and each entry the index of its slice's
        first point. A merge then patches only the slices whose points changed (and the slices
        around them), appending fresh runs for them to ``_padded``; see ``_patch``.
        """
        if self._table is not None:
            return self._table
        points, owners = self._points, self._owners
        size = len(points)
        shift = HASH_BITS - max(1, (_BUCKETS_PER_POINT * size - 1).bit_length())
        table: list[str | int] = []
        extend, append = table.extend, table.append
        prev = -1    # the last bucket holding a point
        first = 0    # the index of its first point
        span = 1
        for i, b in enumerate(map(rshift, points, repeat(shift))):
            if b == prev:
                continue
            span = max(span, i - first)
            # The empty buckets before b belong to b's first point; b's own entry is its index.
            if b - prev > 1:
                extend(repeat(owners[i], b - prev - 1))
            append(i)
            prev, first = b, i
        # One spare slot so that runs patched in later may grow by a point without a rebuild.
        span = max(span, size - first) + 1
        # Empty buckets past the last point wrap around to the first point.
        extend(repeat(owners[0], (1 << (HASH_BITS - shift)) - len(table)))
        # A bisection over [first, first + span) never needs a clamp: the padding is above every
        # hash, and its owner is the first point's (the wrap-around).
        self._padded = points + [HASH_SPACE] * (span + 1)
        self._padded_owners = owners[:size] + [owners[0]] * (span + 1)
        self._table, self._shift, self._span = table, shift, span
        return table

    def _patch(self, changed: list[int], old_first: tuple[int, str] | None) -> bool:
        """Bring the index up to date after a merge that added or removed ``changed`` points.

        False when a rebuild is due instead: the ring grew or shrank too far from the size the
        index was built for, a slice outgrew ``_span``, or patched runs have piled up.
        """
        table = self._table
        assert table is not None
        points, owners = self._points, self._owners
        size = len(points)
        if not size or not 2 * size <= len(table) <= 32 * size or len(self._padded) > 3 * size + 64:
            return False
        shift, span = self._shift, self._span
        padded, padded_owners = self._padded, self._padded_owners

        def run(b: int) -> tuple[int, int]:
            """Indices of bucket b's first point and of the first point after it."""
            i = bisect_left(points, b << shift)
            return i, bisect_left(points, (b + 1) << shift, i)

        def rewrite(b: int) -> bool:
            i, j = run(b)
            if j - i > span:
                return False
            if j > i:
                # A fresh run: the bucket's points, then padding owned by the next point.
                table[b] = len(padded)
                padded.extend(points[i:j])
                padded.extend(repeat(HASH_SPACE, span + 1 - (j - i)))
                padded_owners.extend(owners[i:j])
                padded_owners.extend(repeat(owners[j], span + 1 - (j - i)))
            else:
                table[b] = owners[i]  # empty now: the next point's (the sentinel past the end)
            return True

        buckets = {p >> shift for p in changed}
        for b in sorted(buckets):
            i, _ = run(b)
            # The empty buckets between the previous point's bucket and b now lead to point i.
            before = (points[i - 1] >> shift) if i else -1
            if b - before > 1:
                table[before + 1:b] = [owners[i]] * (b - before - 1)
            if not rewrite(b):
                return False
            # The previous non-empty bucket's run ends with the point after it, which may be new.
            if before >= 0 and before not in buckets and not rewrite(before):
                return False
        if (points[0], owners[0]) != old_first:
            # A new first point: the empty buckets past the last point and the last point's run
            # wrap around to it.
            last = points[-1] >> shift
            table[last + 1:] = [owners[0]] * (len(table) - last - 1)
            if not rewrite(last):
                return False
        return True

    def _owners_of(self, hashes: list[int]) -> list[str]:
        """The owner of each hash (a bulk ``lookup``); the ring must not be empty."""
        points, owners = self._points, self._owners
        table = self._table
        if table is None and len(hashes) * 4 < len(points):
            # Too few keys to pay for building the index: bisect the whole circle.
            return list(map(owners.__getitem__, map(bisect_left, repeat(points), hashes)))
        table = self._index()
        out: list = list(map(table.__getitem__, map(rshift, hashes, repeat(self._shift))))
        miss = list(compress(range(len(out)), map(is_, map(type, out), repeat(int))))
        if miss:
            los = list(map(out.__getitem__, miss))
            # A bucket holds at most _span points, so the answer lies in [first, first + span].
            his = map(add, los, repeat(self._span))
            found = map(self._padded_owners.__getitem__,
                        map(bisect_left, repeat(self._padded), map(hashes.__getitem__, miss), los, his))
            for i, owner in zip(miss, found):
                out[i] = owner
        return out

    def _without(self, points: list[int], owners: list[str],
                 changed: list[int]) -> tuple[list[int], list[str]]:
        drop: set[int] = set()
        for n in sorted(self._removed):
            for p in vnode_positions(n, self._merged[n]):
                i = bisect_left(points, p)
                # Colliding points (another node's, or this node's own) sit next to each other.
                while owners[i] != n or i in drop:
                    i += 1
                drop.add(i)
                changed.append(p)
        new_points: list[int] = []
        new_owners: list[str] = []
        start = 0
        for i in sorted(drop):
            new_points += points[start:i]
            new_owners += owners[start:i]
            start = i + 1
        new_points += points[start:]
        new_owners += owners[start:]
        return new_points, new_owners

    def _with_pending(self, points: list[int], owners: list[str],
                      changed: list[int]) -> tuple[list[int], list[str]]:
        incoming = sorted(
            (p, n) for n in sorted(self._pending) for p in vnode_positions(n, self._pending[n])
        )
        changed.extend(p for p, _ in incoming)
        new_points: list[int] = []
        new_owners: list[str] = []
        start = 0
        size = len(points)
        for p, n in incoming:
            i = bisect_left(points, p, start)
            while i < size and points[i] == p and owners[i] < n:
                i += 1
            new_points += points[start:i]
            new_owners += owners[start:i]
            new_points.append(p)
            new_owners.append(n)
            start = i
        new_points += points[start:]
        new_owners += owners[start:]
        return new_points, new_owners

    # -- reads ------------------------------------------------------------------------------

    def lookup(self, key: str) -> str:
        """The owner of the first point at or clockwise after ``key_hash(key)``."""
        if self._stale:
            self._merge()
        owners = self._owners
        if not owners:
            raise NoCapacity("the ring has no nodes")
        h = _xxh64(key.encode())
        table = self._table
        if table is not None:
            hit = table[h >> self._shift]
            if isinstance(hit, str):
                return hit
            return self._padded_owners[bisect_left(self._padded, h, hit, hit + self._span)]
        return owners[bisect_left(self._points, h)]

    def lookup_hash(self, h: int) -> str:
        """The owner of ring position ``h`` (``lookup`` of a key whose hash is known)."""
        return self.index().owner(h)

    def index(self) -> RingIndex:
        """The current layout as a ``RingIndex`` (kept until the membership next changes)."""
        points, owners = self._arrays()
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = RingIndex(points, owners, len(self._merged))
        return snap

    def lookup_many(self, keys: Sequence[str]) -> list[str]:
        """``[lookup(k) for k in keys]``, with hashing and bisection done in C by ``map``."""
        _, owners = self._arrays()
        if not owners:
            raise NoCapacity("the ring has no nodes")
        return self._owners_of(list(map(_xxh64, map(_encode, keys))))

    def lookup_hashes(self, hashes: list[int]) -> list[str]:
        """``[lookup_hash(h) for h in hashes]``, in bulk like ``lookup_many``."""
        _, owners = self._arrays()
        if not owners:
            raise NoCapacity("the ring has no nodes")
        return self._owners_of(hashes)

    def build_index(self) -> None:
        """Merge pending changes and build the bulk-lookup index now rather than at first use."""
        _, owners = self._arrays()
        if owners:
            self._index()

    def preference(self, key: str) -> Iterator[str]:
        """Distinct node ids in clockwise order from ``key``'s position, each once, all of them."""
        idx = self.index()
        if not len(idx):
            raise NoCapacity("the ring has no nodes")
        return idx.walk(key_hash(key))

    def ownership(self) -> dict[str, float]:
        """Each node's share of the hash space (the shares sum to 1), by node id."""
        points, owners = self._arrays()
        if not owners:
            return {}
        arcs: dict[str, int] = dict.fromkeys(sorted(self._merged), 0)
        prev = points[-1] - HASH_SPACE  # the first point also owns the arc wrapping past zero
        for p, n in zip(points, owners):
            arcs[n] += p - prev
            prev = p
        return {n: a / HASH_SPACE for n, a in arcs.items()}


# -- replicas ---------------------------------------------------------------------------------


def replicas(ring: HashRing, key: str, n: int, zone_of: Mapping[str, str]) -> list[str]:
    """Up to ``n`` nodes for ``key`` in preference order, at most one per zone."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidInput(f"replica count must be a non-negative integer, got {n!r}")
    chosen: list[str] = []
    if n == 0:
        return chosen
    used: set[str] = set()
    for node in ring.preference(key):
        zone = zone_of.get(node)
        if zone is None:
            raise InvalidInput(f"node {node!r} has no zone")
        if zone in used:
            continue
        used.add(zone)
        chosen.append(node)
        if len(chosen) == n:
            break
    return chosen


__all__ = [
    "DEFAULT_LOAD_FACTOR",
    "DEFAULT_VNODES",
    "HASH_BITS",
    "HASH_SPACE",
    "HashRing",
    "key_hash",
    "key_hashes",
    "replicas",
    "vnode_positions",
]
