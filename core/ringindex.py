"""The ring index: a read-only snapshot of one consistent-hash ring, and every walk over it.

``core.ring.HashRing`` owns membership and the layout of points; ``HashRing.index()`` hands out
a ``RingIndex``, the layout frozen at that moment with a bucket index for fast positioning. Both
the scheduler (one index per group of the hierarchy) and the ring's own reads (``preference``,
the bounded-load walks) walk rings only through this type, so there is one walk, one wrap-around
rule and one tie order:

* ``owner(h)``: the member owning position ``h``, that of the first point at or clockwise after it;
* ``walk(h)``: every member once, in clockwise order from ``h`` (the key's preference list);
* ``first_with_room(h, room)``: the first member clockwise from ``h`` that still has room.

``LoadBound`` is the bounded-load rule (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing
with Bounded Loads") in exact integers, shared by the scheduler and ``core.ringbounded``.

Pure: no I/O, no clock; a snapshot never changes, so a walk in progress is never disturbed.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Collection, Iterator, Mapping
from fractions import Fraction
from itertools import accumulate, chain, repeat
from operator import rshift

from canidae.core.errors import InvalidInput, NoCapacity

HASH_BITS = 64


def _bucket_index(points: list[int]) -> tuple[array[int], int]:
    """Where each ``1 << shift`` slice of the circle starts in ``points`` (2 slices per point).

    ``tab[b]`` is the index of the first point at or after slice ``b``'s start, so the first
    point at or after ``h`` lies in ``[tab[b], tab[b + 1]]`` with ``b = h >> shift``: most
    lookups need no bisection, the rest bisect over a point or two. A bisection over the whole
    list costs a cache miss per step once there are a few hundred rings (the scheduler keeps one
    per group); this is its hot path.
    """
    size = len(points)
    if not size:
        return array("I", [0, 0]), HASH_BITS
    bits = max(1, (2 * size - 1).bit_length())
    shift = HASH_BITS - bits
    # Points per slice, then running sums: one pass over the points, no bisection per slice.
    per_slice = [0] * (1 << bits)
    for b in map(rshift, points, repeat(shift)):
        per_slice[b] += 1
    tab = array("I", [0])
    tab.extend(accumulate(per_slice))
    return tab, shift


class RingIndex:
    """A frozen ring layout: sorted points, their owners, and a bucket index over the circle.

    ``points`` are sorted by (position, member id); ``owners`` holds one more entry than
    ``points``, a copy of the first owner, so a position past the last point wraps to the first
    point without a modulo. Built by ``HashRing.index()``; the lists are shared with the ring,
    which replaces them on a change and never mutates them.
    """

    # ``members`` is a plain attribute, not a property: the scheduler reads it on its hot path.
    __slots__ = ("_owners", "_points", "_shift", "_tab", "members")

    def __init__(self, points: list[int], owners: list[str], members: int) -> None:
        if (len(owners) != len(points) + 1) if points else owners:
            raise InvalidInput("ring index: owners must be the points' owners plus the wrap-around one")
        self._points = points
        self._owners = owners
        self.members = members  # distinct members owning points (read only)
        self._tab, self._shift = _bucket_index(points)

    def __len__(self) -> int:
        """Number of points."""
        return len(self._points)

    def __repr__(self) -> str:
        return f"RingIndex(points={len(self._points)}, members={self.members})"

    def slot(self, h: int) -> int:
        """Index of the first point at or after position ``h`` (``len(self)`` past the last one)."""
        tab = self._tab
        b = h >> self._shift
        lo, hi = tab[b], tab[b + 1]
        return lo if lo == hi else bisect_left(self._points, h, lo, hi)

    def owner(self, h: int) -> str:
        """The member owning position ``h``: that of the first point at or clockwise after it."""
        tab = self._tab
        b = h >> self._shift
        lo, hi = tab[b], tab[b + 1]
        try:
            return self._owners[lo if lo == hi else bisect_left(self._points, h, lo, hi)]
        except IndexError:
            raise NoCapacity("the ring has no nodes") from None

    def walk(self, h: int) -> Iterator[str]:
        """Every member once, in clockwise order from position ``h`` (a preference list)."""
        owners = self._owners
        size = len(self._points)
        if not size:
            return
        distinct = self.members
        start = self.slot(h) % size
        seen: set[str] = set()
        for i in chain(range(start, size), range(start)):
            n = owners[i]
            if n not in seen:
                seen.add(n)
                yield n
                if len(seen) == distinct:
                    return

    def first_with_room(
        self, h: int, room: Mapping[str, int], allowed: Collection[str] | None = None
    ) -> str | None:
        """The first member clockwise from ``h`` with ``room[member] > 0`` (and in ``allowed``)."""
        for n in self.walk(h):
            if room[n] > 0 and (allowed is None or n in allowed):
                return n
        return None

    def met_before(self, h: int, stop: str, wanted: Collection[str]) -> list[str]:
        """Members of ``wanted`` met clockwise from ``h`` before ``stop``, in that order."""
        met: list[str] = []
        for n in self.walk(h):
            if n == stop:
                break
            if n in wanted:
                met.append(n)
        return met


class LoadBound:
    """The bounded-load rule: a member of weight ``w`` holds at most ``ceil(c * T * w / W)`` of ``T`` keys.

    ``c`` is the load factor, taken as the decimal it prints as (1.1 is 11/10, not the binary
    float just above it, with which ``ceil(1.1 * 100)`` would be 111), so every cap is an exact
    integer and no decision depends on the order float sums were made in.
    """

    __slots__ = ("den", "factor", "num")

    def __init__(self, load_factor: float) -> None:
        if isinstance(load_factor, bool) or not isinstance(load_factor, (int, float)):
            raise InvalidInput(f"load factor must be a number greater than 1, got {load_factor!r}")
        if not (math.isfinite(load_factor) and load_factor > 1):
            raise InvalidInput(f"load factor must be greater than 1, got {load_factor!r}")
        self.factor = Fraction(repr(float(load_factor)))
        self.num, self.den = self.factor.numerator, self.factor.denominator

    def cap(self, total: int, weight: Fraction | int, total_weight: Fraction | int) -> int:
        """``ceil(c * total * weight / total_weight)``."""
        return math.ceil(self.factor * total * weight / total_weight)

    def terms(self, total: int, total_weight: int) -> tuple[int, int]:
        """``(kn, kd)`` such that ``admits(used, w, kn, kd)`` is ``used < cap(total, w, total_weight)``.

        For an integer ``used``, ``used < ceil(x)`` is ``used < x``, and with ``x = c*T*w/W`` that
        is ``used * den * W < num * T * w``: integers only, for integer weights.
        """
        return self.num * total, self.den * total_weight

    @staticmethod
    def admits(used: int, weight: int, kn: int, kd: int) -> bool:
        """Whether a member holding ``used`` keys at (integer) ``weight`` is under the bound ``terms`` gave."""
        return used * kd < kn * weight


__all__ = ["LoadBound", "RingIndex"]
