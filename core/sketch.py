"""A mergeable quantile sketch with a relative-error guarantee: DDSketch's log buckets, in core.

This module owns the distribution value that latencies travel as: an agent adds raw samples,
sends ``to_wire()`` with its heartbeat, and the leader merges sketches cell by cell up to the
cluster. Percentiles are read from a merged sketch, never averaged (an average of p99s is not the
p99 of anything). It does no I/O and keeps no global state.

Theory of operation (Masson, Rim, Lee, "DDSketch", VLDB 2019). With relative accuracy ``alpha``
let ``gamma = (1 + alpha) / (1 - alpha)``. A positive value ``x`` goes to bucket
``k = ceil(log_gamma(x))``, so ``gamma**(k-1) < x <= gamma**k``, and the bucket is represented by
``2 * gamma**k / (gamma + 1)``, which is within ``alpha`` of every value in the bucket. Buckets
are a sparse dict ``key -> count``; merging two sketches adds counts key by key, so merging is
exact, associative and commutative. Values too small to index (zero, subnormals) are counted in
a zero bucket.

Guarantee. The q-quantile of the added values is defined, as DDSketch defines it, as the value
of 0-based rank ``floor(q * (n - 1))`` in sorted order (the lower one, no interpolation).
``quantile(q)`` returns ``v`` with ``|v - x| <= alpha * x`` for that value ``x``, as long as
``x`` lies in a bucket that was never collapsed (below). The exact minimum and maximum are kept:
they answer the lowest and highest ranks, and clamp every other answer, which can only bring an
estimate closer.

Bounded size. A sketch keeps at most ``max_buckets`` buckets; past that the lowest buckets are
folded into the lowest kept one and ``floor`` remembers it, so low quantiles lose the guarantee
first (for latencies the high ones matter). With alpha = 0.01 and 2,048 buckets the kept range
spans a factor of about 10**17 (a nanosecond to three years), so real latencies never collapse.

Why not the ``ddsketch`` package. Its mapping and quantile rule are the ones above (the keys are
the same as its ``LogarithmicMapping`` at offset 0), but its only serialization is protobuf (an
extra dependency and a generated module), a compact JSON form would have to read its private
store fields, which differ between versions, and an agent's input still needs a bounded,
validating decoder we would write anyway. The sketch itself is the short part.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, islice
from typing import Any

from canidae.core.errors import InvalidInput

ALPHA = 0.01
MAX_BUCKETS = 2048
# Counts stay exact integers in JSON (doubles) and in merges up to this.
MAX_COUNT = 2**53


@dataclass(frozen=True, slots=True)
class _Mapping:
    """The constants of the key mapping for one relative accuracy."""

    gamma: float
    mult: float           # log_gamma(x) = log2(x) * mult, as ddsketch's LogarithmicMapping has it
    min_indexable: float  # below: no bucket (log would be -inf or lose all precision): zero bucket
    max_indexable: float  # above: the representative would overflow a double
    lowest_key: int
    highest_key: int


@lru_cache(maxsize=8)
def _mapping(alpha: float) -> _Mapping:
    # Cached: a leader builds thousands of sketches a round, all of the cluster's one accuracy.
    gamma = 1.0 + 2.0 * alpha / (1.0 - alpha)
    mult = math.log(2) / math.log1p(2.0 * alpha / (1.0 - alpha))
    lo, hi = sys.float_info.min * gamma, sys.float_info.max / gamma
    return _Mapping(gamma, mult, lo, hi, math.ceil(math.log2(lo) * mult), math.ceil(math.log2(hi) * mult))


def _real(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _count(what: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_COUNT:
        raise InvalidInput(f"{what} must be an integer {minimum}..2**53, got {value!r}")
    return value


class Sketch:
    """A DDSketch of non-negative values (latencies, sizes) with relative accuracy ``alpha``.

    ``add`` and ``merge`` mutate; every reader (``quantile``, ``to_wire``) does not.
    """

    __slots__ = ("_bins", "_count", "_floor", "_max", "_min", "_mult", "_sum", "_zero", "alpha",
                 "gamma", "max_buckets", "max_indexable", "min_indexable")

    def __init__(self, alpha: float = ALPHA, max_buckets: int = MAX_BUCKETS) -> None:
        alpha = _real("sketch relative accuracy", alpha)
        if not 0.0 < alpha < 0.5:
            raise InvalidInput(f"sketch relative accuracy must be in (0, 0.5), got {alpha}")
        if isinstance(max_buckets, bool) or not isinstance(max_buckets, int) or not 1 <= max_buckets <= 1 << 16:
            raise InvalidInput(f"sketch max_buckets must be an integer 1..65536, got {max_buckets!r}")
        m = _mapping(alpha)
        self.alpha = alpha
        self.gamma = m.gamma
        self.max_buckets = max_buckets
        self._mult = m.mult
        self.min_indexable = m.min_indexable
        self.max_indexable = m.max_indexable
        self._bins: dict[int, int] = {}
        self._zero = 0
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._floor: int | None = None

    # -- reading -------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    @property
    def min(self) -> float | None:
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        return self._max if self._count else None

    @property
    def floor(self) -> int | None:
        """The lowest kept key once buckets were collapsed (values below it are folded into it)."""
        return self._floor

    @property
    def buckets(self) -> int:
        return len(self._bins)

    def key(self, x: float) -> int:
        """The bucket of a value ``x >= min_indexable``."""
        return math.ceil(math.log2(x) * self._mult)

    def value(self, key: int) -> float:
        """The representative of bucket ``key``: within ``alpha`` of every value in the bucket."""
        return math.pow(2.0, key / self._mult) * (2.0 / (1.0 + self.gamma))

    def quantile(self, q: float) -> float | None:
        """The q-quantile (see the module docstring for the definition); ``None`` when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """Several quantiles in one walk over the buckets."""
        for q in qs:
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
                raise InvalidInput(f"a quantile must be a number in [0, 1], got {q!r}")
        if self._count == 0:
            return [None for _ in qs]
        order = sorted(range(len(qs)), key=lambda i: qs[i])
        out: list[float | None] = [None] * len(qs)
        keys = sorted(self._bins)
        bins = self._bins
        pos = -1  # index into keys of the bucket reached so far; -1 is the zero bucket
        cum = self._zero
        last = self._count - 1
        for i in order:
            rank = qs[i] * last
            # The lowest and highest ranks are the exact min and max, which are kept.
            if rank < 1.0:
                out[i] = self._min
                continue
            if rank >= last:
                out[i] = self._max
                continue
            while cum <= rank:
                pos += 1
                cum += bins[keys[pos]]
            v = 0.0 if pos < 0 else self.value(keys[pos])
            out[i] = min(max(v, self._min), self._max)
        return out

    # -- writing -------------------------------------------------------------------------------

    def add(self, x: float, count: int = 1) -> None:
        """Add ``count`` occurrences of ``x`` (finite, ``>= 0``)."""
        x = _real("a sketch value", x)
        if x < 0.0 or x > self.max_indexable:
            raise InvalidInput(f"a sketch value must be in [0, {self.max_indexable:.3g}], got {x!r}")
        _count("a sketch count", count, 1)
        if x < self.min_indexable:
            self._zero += count
        else:
            k = self.key(x)
            if self._floor is not None and k < self._floor:
                k = self._floor
            self._bins[k] = self._bins.get(k, 0) + count
            if len(self._bins) > self.max_buckets:
                self._collapse()
        self._count += count
        self._sum += x * count
        self._min = min(self._min, x)
        self._max = max(self._max, x)

    def add_many(self, xs: Iterable[float]) -> None:
        for x in xs:
            self.add(x)

    def merge(self, other: Sketch) -> None:
        """Add every value of ``other`` to this sketch (``other`` is left as it was)."""
        if not isinstance(other, Sketch):
            raise InvalidInput(f"can only merge a Sketch, got {type(other).__name__}")
        if other.alpha != self.alpha:
            raise InvalidInput(f"cannot merge sketches of relative accuracy {self.alpha} and {other.alpha}")
        if other._count == 0:
            return
        if other is self:
            other = self.copy()
        bins = self._bins
        get = bins.get
        for k, c in other._bins.items():
            bins[k] = get(k, 0) + c
        floors = [f for f in (self._floor, other._floor) if f is not None]
        if floors:
            self._fold_below(max(floors))
        if len(bins) > self.max_buckets:
            self._collapse()
        self._zero += other._zero
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def copy(self) -> Sketch:
        out = Sketch.__new__(Sketch)
        for name in Sketch.__slots__:
            setattr(out, name, getattr(self, name))
        out._bins = dict(self._bins)
        return out

    @staticmethod
    def merged(sketches: Iterable[Sketch], alpha: float = ALPHA) -> Sketch:
        """A new sketch holding every value of ``sketches`` (none of them is changed)."""
        out: Sketch | None = None
        for s in sketches:
            if out is None:
                out = s.copy()
            else:
                out.merge(s)
        return out if out is not None else Sketch(alpha)

    def _fold_below(self, floor: int) -> None:
        low = [k for k in self._bins if k < floor]
        if low:
            self._bins[floor] = self._bins.get(floor, 0) + sum(self._bins.pop(k) for k in low)
        self._floor = floor

    def _collapse(self) -> None:
        # Keeping the highest keys makes the result of any merge order the same: the kept set
        # is always the top ``max_buckets`` keys of the union, everything below folded in.
        keys = sorted(self._bins)
        self._fold_below(keys[len(keys) - self.max_buckets])

    # -- wire ----------------------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """Compact JSON-able form: keys as a first key then gaps, counts alongside.

        ``{"a": alpha, "z": zero count, "s": sum, "lo": min, "hi": max, "k": [k0, k1-k0, ...],
        "c": [c0, c1, ...]}``, plus ``"f": floor`` once collapsed; ``lo``/``hi`` only when not
        empty.
        """
        keys = sorted(self._bins)
        gaps = [keys[i] - keys[i - 1] if i else keys[0] for i in range(len(keys))]
        out: dict[str, Any] = {"a": self.alpha, "z": self._zero, "s": self._sum, "k": gaps,
                               "c": [self._bins[k] for k in keys]}
        if self._count:
            out["lo"] = self._min
            out["hi"] = self._max
        if self._floor is not None:
            out["f"] = self._floor
        return out

    @staticmethod
    def from_wire(d: Mapping[str, Any], alpha: float = ALPHA, max_buckets: int = MAX_BUCKETS) -> Sketch:
        """Rebuild a sketch sent by ``to_wire``; ``InvalidInput`` for anything malformed.

        The input comes from agents over the network: sizes are bounded by ``max_buckets``, and
        the relative accuracy must be ``alpha`` (the cluster's), so the leader can merge it.
        """
        if not isinstance(d, Mapping):
            raise InvalidInput("a sketch must be an object")
        extra = set(d) - {"a", "z", "s", "k", "c", "lo", "hi", "f"}
        if extra:
            raise InvalidInput(f"unknown sketch fields {sorted(map(str, extra))}")
        if d.get("a") != alpha:
            raise InvalidInput(f"sketch relative accuracy must be {alpha}, got {d.get('a')!r}")
        out = Sketch(alpha, max_buckets)
        gaps, counts = d.get("k"), d.get("c")
        if not isinstance(gaps, list) or not isinstance(counts, list) or len(gaps) != len(counts):
            raise InvalidInput("sketch buckets must be two lists of equal length")
        if len(gaps) > max_buckets:
            raise InvalidInput(f"a sketch may have at most {max_buckets} buckets, got {len(gaps)}")
        lowest, highest = _mapping(alpha).lowest_key, _mapping(alpha).highest_key
        # Checked a list at a time (map, min, sum run in C): a leader decodes thousands of
        # sketches of hundreds of buckets each round. type() is int also rules out bools.
        if not set(map(type, gaps)) <= {int} or not set(map(type, counts)) <= {int}:
            raise InvalidInput("sketch keys and counts must be integers")
        total = _count("sketch zero count", d.get("z"))
        if gaps:
            if len(gaps) > 1 and min(islice(gaps, 1, None)) < 1:
                raise InvalidInput("sketch keys must be in increasing order")
            keys = list(accumulate(gaps))
            if keys[0] < lowest or keys[-1] > highest:
                raise InvalidInput(f"sketch keys must be within [{lowest}, {highest}]")
            if min(counts) < 1:
                raise InvalidInput("sketch bucket counts must be at least 1")
            out._bins = dict(zip(keys, counts, strict=True))
            total += sum(counts)
        out._zero = d["z"]
        out._count = _count("sketch count", total)
        out._sum = _real("sketch sum", d.get("s"))
        if "f" in d:
            floor = d["f"]
            if isinstance(floor, bool) or not isinstance(floor, int) or not lowest <= floor <= highest:
                raise InvalidInput("sketch floor must be an integer key")
            if out._bins and floor > min(out._bins):
                raise InvalidInput("sketch floor is above its lowest key")
            out._floor = floor
        if total:
            lo, hi = _real("sketch min", d.get("lo")), _real("sketch max", d.get("hi"))
            if not 0.0 <= lo <= hi or out._sum < 0.0:
                raise InvalidInput("sketch min, max and sum must satisfy 0 <= min <= max and sum >= 0")
            out._min, out._max = lo, hi
        elif "lo" in d or "hi" in d or out._sum != 0.0:
            raise InvalidInput("an empty sketch has no min, max or sum")
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return (self.alpha, self._bins, self._zero, self._count, self._min, self._max, self._floor) == (
            other.alpha, other._bins, other._zero, other._count, other._min, other._max, other._floor
        ) and math.isclose(self._sum, other._sum, rel_tol=1e-9, abs_tol=1e-12)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Sketch(alpha={self.alpha}, count={self._count}, buckets={len(self._bins)})"


__all__ = ["ALPHA", "MAX_BUCKETS", "Sketch"]
