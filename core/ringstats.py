"""Figures about placements on the ring: load balance across nodes and movement between two
assignments. Pure arithmetic over plain mappings, shared by the ring's tests, its benchmark and
``canidae ring simulate`` so all three count the same way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Balance:
    """Node loads relative to the mean load (1.0 everywhere is perfect balance)."""

    max_over_mean: float
    min_over_mean: float
    stddev_over_mean: float

    def to_dict(self) -> dict[str, float]:
        return {"max_over_mean": self.max_over_mean, "min_over_mean": self.min_over_mean,
                "stddev_over_mean": self.stddev_over_mean}


@dataclass(frozen=True, slots=True)
class Movement:
    """Keys that changed node between two assignments, against the fewest that had to.

    ``ratio`` is ``moved / optimum`` (1.0 when both are 0, ``None`` when only ``optimum`` is);
    ``between_survivors`` counts keys moved between two nodes present before and after.
    """

    moved: int
    optimum: float
    between_survivors: int

    @property
    def ratio(self) -> float | None:
        if self.optimum > 0:
            return self.moved / self.optimum
        return 1.0 if self.moved == 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"moved": self.moved, "optimum": self.optimum, "ratio": self.ratio,
                "between_survivors": self.between_survivors}


def load_counts(assignment: Mapping[str, str], nodes: Iterable[str]) -> dict[str, int]:
    """Keys per node, for every node in ``nodes`` (0 for a node holding none), by node id."""
    counts = Counter(assignment.values())
    return {n: counts.get(n, 0) for n in sorted(nodes)}


def balance(loads: Mapping[str, int]) -> Balance:
    """Max, min and population standard deviation of ``loads`` over their mean."""
    if not loads:
        return Balance(0.0, 0.0, 0.0)
    values = [loads[n] for n in sorted(loads)]
    mean = math.fsum(values) / len(values)
    if mean == 0:
        return Balance(0.0, 0.0, 0.0)
    variance = math.fsum((v - mean) ** 2 for v in values) / len(values)
    return Balance(max(values) / mean, min(values) / mean, math.sqrt(variance) / mean)


def movement(before: Mapping[str, str], after: Mapping[str, str], survivors: Collection[str],
             optimum: float) -> Movement:
    """Compare two assignments of the same keys; ``survivors`` are nodes present in both."""
    moved = 0
    between = 0
    for key, old in before.items():
        new = after.get(key, old)
        if new != old:
            moved += 1
            if old in survivors and new in survivors:
                between += 1
    return Movement(moved, optimum, between)


__all__ = ["Balance", "Movement", "balance", "load_counts", "movement"]
