"""Adaptive sampling of per-pack metrics, and totals estimated from the samples.

This module owns which packs' metrics travel in a heartbeat, with what weight, and how totals
are estimated back from them with a stated error. It does no I/O and draws no random numbers:
the choice is a hash of the pack's name, so the same packs are sampled every interval, on every
agent, in every replay.

Rates. ``sample_rate(pack_count)`` follows the seed's tiers: every pack up to 100 packs, 10% up
to 1,000, 1% up to 10,000, 0.1% beyond. The count that matters is the cluster's (the leader
knows it and hands the rate to agents); a node that ran on its own count would sample
everything at 50 packs a node however large the cluster grew.

Choice. ``is_sampled(name, rate)`` is ``xxh64(name, seed=SAMPLING_SEED) < rate * 2**64``. The
seed differs from the ring's (0) and the scheduler's (1..3): with the ring's own hash the sample
would be one arc of the ring, the packs of the few virtual nodes on it, so which packs and nodes
report would follow the ring's layout (and a node with few points would rarely report at all)
instead of being a draw independent of placement. The sampled set at a lower rate is a subset of
the set at a higher one, so a rate change keeps the series of the packs that stay.

Weights, Honeycomb style. Every kept sample carries its weight, the number of packs it stands
for. The packs form two strata: packs in error or outliers are always kept, with weight 1; every
other pack is kept when its hash says so, with weight ``1 / rate``. A kept-because-error pack is
never also counted in the hashed stratum, so each pack is counted once, with certainty or with
probability ``rate``.

Estimates. ``estimate_total`` is the Horvitz-Thompson estimator ``sum(w * y)`` over the kept
samples: unbiased when the hash behaves as a uniform draw per pack (Poisson sampling). Its
variance ``sum over all packs of (1 - p) / p * y**2`` is estimated without bias by
``sum over kept samples of (w**2 - w) * y**2``; the stated error ``bound`` is ``ERROR_Z = 3``
standard errors. Under the normal approximation that covers the truth 99.7% of the time; the
standard error is itself estimated from the sample, so with few hashed samples it is rough: in
simulated fleets of 10,000 packs at 1% (about 100 hashed samples) the bound covered the truth in
92-100% of fleets, the least for a value few packs have (restarts), and a value no sampled pack
has gets a bound of 0. ``Estimate.samples`` says how many samples an estimate rests on.
Weight-1 samples add no variance: at rate 1 the estimate is exact. Estimates of disjoint groups
of packs add, value and variance alike, which is how the leader rolls them up the hierarchy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash
from canidae.core.errors import InvalidInput
from canidae.core.types import validate_name

# (most packs, rate) from the seed's configure_sampling; beyond the last tier, FLOOR_RATE.
RATE_TIERS: tuple[tuple[int, float], ...] = ((100, 1.0), (1_000, 0.1), (10_000, 0.01))
FLOOR_RATE = 0.001
SAMPLING_SEED = 0x70636B73  # independent of the ring's seed 0 and the scheduler's 1..3
ERROR_Z = 3.0
# The largest weight a sample may claim (a rate of one in a million).
MAX_WEIGHT = 1_000_000.0

FIELDS: tuple[str, ...] = ("packs", "cpu_m", "mem_mib", "restarts", "yips")
FLAG_ERROR = 1
FLAG_OUTLIER = 2

_HASH_SPACE = 1 << 64
_xxh64 = xxhash.xxh64_intdigest


def sample_rate(pack_count: int) -> float:
    """The share of packs whose metrics are sampled when the cluster runs ``pack_count`` packs."""
    if isinstance(pack_count, bool) or not isinstance(pack_count, int) or pack_count < 0:
        raise InvalidInput(f"pack count must be a non-negative integer, got {pack_count!r}")
    for most, rate in RATE_TIERS:
        if pack_count <= most:
            return rate
    return FLOOR_RATE


def check_rate(rate: object) -> float:
    """Return ``rate`` if it is a sampling rate, a number in ``[1 / MAX_WEIGHT, 1]``."""
    if (isinstance(rate, bool) or not isinstance(rate, (int, float))
            or not 1.0 / MAX_WEIGHT <= rate <= 1.0):
        raise InvalidInput(f"a sampling rate must be a number in [{1.0 / MAX_WEIGHT}, 1], got {rate!r}")
    return float(rate)


def is_sampled(pack_name: str, rate: float) -> bool:
    """Whether the pack named ``pack_name`` is in the hashed sample at ``rate``."""
    # int() of a float is exact, and rate 1.0 gives 2**64, above every hash.
    return _xxh64(pack_name.encode(), seed=SAMPLING_SEED) < int(check_rate(rate) * _HASH_SPACE)


def _number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise InvalidInput(f"{what} must be an integer 0..2**53, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class PackReading:
    """One pack's metrics over the last interval, as its node measured them.

    ``error``: the pack failed, is restarting or reported errors. ``outlier``: the node judged it
    unusual (over its reservation, say). Either way it is always kept.
    """

    name: str
    cpu_m: float = 0.0       # millicores used
    mem_mib: float = 0.0     # MiB resident
    restarts: int = 0        # member restarts in the interval
    yips: int = 0            # yips handled in the interval
    error: bool = False
    outlier: bool = False


@dataclass(frozen=True, slots=True)
class PackSample:
    """A kept pack reading with its weight: how many packs it stands for (1 or ``1 / rate``)."""

    name: str
    weight: float
    cpu_m: float = 0.0
    mem_mib: float = 0.0
    restarts: int = 0
    yips: int = 0
    error: bool = False
    outlier: bool = False

    def __post_init__(self) -> None:
        validate_name("pack", self.name)
        w = _number("sample weight", self.weight)
        if not 1.0 <= w <= MAX_WEIGHT:
            raise InvalidInput(f"sample weight must be in [1, {MAX_WEIGHT:g}], got {w!r}")
        if (self.error or self.outlier) and w != 1.0:
            raise InvalidInput(f"pack {self.name}: an error or outlier sample has weight 1, got {w!r}")
        _number("cpu (millicores)", self.cpu_m)
        _number("memory (MiB)", self.mem_mib)
        _int("restarts", self.restarts)
        _int("yips", self.yips)
        if not isinstance(self.error, bool) or not isinstance(self.outlier, bool):
            raise InvalidInput("sample error and outlier flags must be booleans")

    @property
    def always_kept(self) -> bool:
        return self.error or self.outlier

    def field(self, name: str) -> float:
        """The value of ``name`` (one of ``FIELDS``) for this pack; ``packs`` is 1."""
        if name == "packs":
            return 1.0
        if name not in FIELDS:
            raise InvalidInput(f"unknown pack field {name!r}: one of {', '.join(FIELDS)}")
        return float(getattr(self, name))

    def to_wire(self) -> list[Any]:
        """``[name, weight, cpu_m, mem_mib, restarts, yips, flags]``, flags 1 error, 2 outlier."""
        flags = (FLAG_ERROR if self.error else 0) | (FLAG_OUTLIER if self.outlier else 0)
        return [self.name, self.weight, self.cpu_m, self.mem_mib, self.restarts, self.yips, flags]

    @staticmethod
    def from_wire(row: object) -> PackSample:
        if not isinstance(row, list) or len(row) != 7:
            raise InvalidInput("a pack sample must be a list of 7 values")
        name, weight, cpu, mem, restarts, yips, flags = row
        if isinstance(flags, bool) or not isinstance(flags, int) or not 0 <= flags <= 3:
            raise InvalidInput(f"pack sample flags must be an integer 0..3, got {flags!r}")
        return PackSample(name, weight, cpu, mem, restarts, yips,
                          bool(flags & FLAG_ERROR), bool(flags & FLAG_OUTLIER))


def sample_packs(readings: Iterable[PackReading], rate: float) -> list[PackSample]:
    """The readings to send at ``rate``: every error and outlier (weight 1), and the hashed
    sample of the others (weight ``1 / rate``), in the order given."""
    rate = check_rate(rate)
    threshold = int(rate * _HASH_SPACE)
    weight = 1.0 / rate
    out = []
    for r in readings:
        if r.error or r.outlier:
            w = 1.0
        elif _xxh64(r.name.encode(), seed=SAMPLING_SEED) < threshold:
            w = weight
        else:
            continue
        out.append(PackSample(r.name, w, r.cpu_m, r.mem_mib, r.restarts, r.yips, r.error, r.outlier))
    return out


@dataclass(frozen=True, slots=True)
class Estimate:
    """An estimated total with its variance; ``bound`` is the stated error (``ERROR_Z`` sigma)."""

    value: float = 0.0
    variance: float = 0.0
    samples: int = 0

    @property
    def stderr(self) -> float:
        return math.sqrt(self.variance)

    @property
    def bound(self) -> float:
        return ERROR_Z * self.stderr

    def __add__(self, other: Estimate) -> Estimate:
        # Disjoint groups of packs are sampled independently, so variances add.
        return Estimate(self.value + other.value, self.variance + other.variance,
                        self.samples + other.samples)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "bound": self.bound, "samples": self.samples}


def estimate_total(samples: Iterable[PackSample], field: str) -> Estimate:
    """The Horvitz-Thompson estimate of the total of ``field`` over all packs sampled from."""
    return estimate_totals(samples, (field,))[field]


def estimate_totals(samples: Iterable[PackSample], fields: Sequence[str] = FIELDS) -> dict[str, Estimate]:
    """``estimate_total`` for several fields in one pass over ``samples``."""
    for f in fields:
        if f not in FIELDS:
            raise InvalidInput(f"unknown pack field {f!r}: one of {', '.join(FIELDS)}")
    value = dict.fromkeys(fields, 0.0)
    var = dict.fromkeys(fields, 0.0)
    n = 0
    for s in samples:
        n += 1
        w = s.weight
        spread = w * w - w
        for f in fields:
            y = 1.0 if f == "packs" else float(getattr(s, f))
            value[f] += w * y
            var[f] += spread * y * y
    return {f: Estimate(value[f], var[f], n) for f in fields}


__all__ = [
    "ERROR_Z", "FIELDS", "FLOOR_RATE", "MAX_WEIGHT", "RATE_TIERS", "SAMPLING_SEED", "Estimate",
    "PackReading", "PackSample", "check_rate", "estimate_total", "estimate_totals", "is_sampled",
    "sample_packs", "sample_rate",
]
