"""Hierarchical metrics: what a node sends with its heartbeat and how the leader rolls it up.

This module owns ``NodeSummary`` (a node's counters, gauges, latency sketches and sampled pack
metrics, with its validated wire form) and ``aggregate``, which merges summaries cell -> region
-> zone -> cluster into a ``MetricsTree`` that ``canidae metrics`` prints. It does no I/O and
reads no clock: ``at_ms`` is stamped by the agent.

How each kind of value merges (the same at every level, so any grouping gives the same root):

- counters: monotonic totals since the agent started; they add. Rates need two trees and the
  time between them, which is the caller's business.
- gauges: every gauge keeps sum, min, max and the number of nodes reporting it, which all merge
  exactly. Only the additive gauges (``ADDITIVE_GAUGES``: CPU and memory used, reserved and
  installed) have a meaningful sum; the others (a load average, a ratio, a lag) are shown as
  min / mean / max and never summed.
- sketches: merged bucket by bucket (``canidae.core.sketch``). Percentiles at any level are read
  from the merged sketch of that level, never averaged from the levels below.
- packs: the exact count adds; sampled pack metrics become per-field ``Estimate`` values (value
  and variance add across disjoint nodes, ``canidae.core.sampling``). The sampling rates in
  force below a group are kept with it, so the tree shows which rate its estimates rest on.

Group keys are scoped as ``Location.at`` writes them (``z1``, ``z1/r1``, ``z1/r1/c1``); nodes are
keyed by their id. Children are ordered by key, so equal inputs give equal trees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from canidae.core.errors import InvalidInput
from canidae.core.sampling import (
    FIELDS,
    Estimate,
    PackSample,
    check_rate,
    estimate_totals,
)
from canidae.core.sketch import ALPHA, Sketch
from canidae.core.types import Level, Location, validate_name

WIRE_VERSION = 1
LEVELS: tuple[str, ...] = ("cluster", "zone", "region", "cell", "node")

GAUGE_CPU_USED = "cpu_used_m"
GAUGE_CPU_RESERVED = "cpu_reserved_m"
GAUGE_MEM_USED = "mem_used_mib"
GAUGE_MEM_RESERVED = "mem_reserved_mib"
ADDITIVE_GAUGES = frozenset({
    GAUGE_CPU_USED, GAUGE_CPU_RESERVED, "cpu_capacity_m",
    GAUGE_MEM_USED, GAUGE_MEM_RESERVED, "mem_capacity_mib",
})

METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
# Bounds on what one agent may send; a summary arrives over the network.
MAX_COUNTERS = 256
MAX_GAUGES = 256
MAX_SKETCHES = 32
MAX_PACK_SAMPLES = 20_000
MAX_COUNTER = 2**63 - 1

_SUMMARY_FIELDS = frozenset({"v", "node", "zone", "region", "cell", "at_ms", "pack_count", "sample_rate",
                             "counters", "gauges", "sketches", "packs"})


def _metric_name(value: object) -> str:
    if not isinstance(value, str) or not METRIC_NAME_RE.match(value):
        raise InvalidInput(f"invalid metric name {str(value)[:40]!r}: lowercase letters, digits, '_' "
                           "or '.', starting with a letter, at most 64 characters")
    return value


def _checked_map(what: str, value: object, most: int) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be an object")
    if len(value) > most:
        raise InvalidInput(f"at most {most} {what}, got {len(value)}")
    for name in value:
        _metric_name(name)
    return value


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """What one node reports with a heartbeat: totals, current gauges, sketches, sampled packs.

    ``pack_count`` is every pack on the node; ``packs`` holds the samples kept at
    ``sample_rate`` (the rate the leader handed out, see ``canidae.core.sampling``).
    """

    node: str
    location: Location
    at_ms: int
    pack_count: int = 0
    sample_rate: float = 1.0
    counters: Mapping[str, int] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)
    sketches: Mapping[str, Sketch] = field(default_factory=dict)
    packs: tuple[PackSample, ...] = ()

    def __post_init__(self) -> None:
        validate_name("node", self.node)
        if not isinstance(self.location, Location):
            raise InvalidInput("a node summary needs a Location")
        for what, v in (("at_ms", self.at_ms), ("pack_count", self.pack_count)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNTER:
                raise InvalidInput(f"{what} must be an integer 0..2**63-1, got {v!r}")
        rate = check_rate(self.sample_rate)
        for name, c in _checked_map("counters", self.counters, MAX_COUNTERS).items():
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_COUNTER:
                raise InvalidInput(f"counter {name} must be an integer 0..2**63-1, got {c!r}")
        for name, g in _checked_map("gauges", self.gauges, MAX_GAUGES).items():
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
                raise InvalidInput(f"gauge {name} must be a finite number, got {g!r}")
        for name, s in _checked_map("sketches", self.sketches, MAX_SKETCHES).items():
            if not isinstance(s, Sketch) or s.alpha != ALPHA:
                raise InvalidInput(f"sketch {name} must be a Sketch of relative accuracy {ALPHA}")
        if not isinstance(self.packs, tuple) or len(self.packs) > min(self.pack_count, MAX_PACK_SAMPLES):
            raise InvalidInput(f"at most min(pack_count, {MAX_PACK_SAMPLES}) pack samples in a tuple")
        hashed = 1.0 / rate
        seen: set[str] = set()
        for p in self.packs:
            if not isinstance(p, PackSample):
                raise InvalidInput("pack samples must be PackSample values")
            if not p.always_kept and p.weight != hashed:
                raise InvalidInput(f"pack {p.name}: weight {p.weight} does not match the rate {rate}")
            if p.name in seen:
                raise InvalidInput(f"pack {p.name} sampled twice")
            seen.add(p.name)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": WIRE_VERSION, "node": self.node, **self.location.to_dict(), "at_ms": self.at_ms,
            "pack_count": self.pack_count, "sample_rate": self.sample_rate,
            "counters": dict(self.counters), "gauges": dict(self.gauges),
            "sketches": {name: s.to_wire() for name, s in self.sketches.items()},
            "packs": [p.to_wire() for p in self.packs],
        }

    @staticmethod
    def from_wire(d: object) -> NodeSummary:
        """Decode and validate a summary sent by an agent; ``InvalidInput`` for anything off."""
        if not isinstance(d, Mapping):
            raise InvalidInput("a node summary must be an object")
        extra = set(d) - _SUMMARY_FIELDS
        if extra:
            raise InvalidInput(f"unknown node summary fields {sorted(map(str, extra))[:5]}")
        if d.get("v") != WIRE_VERSION:
            raise InvalidInput(f"node summary version must be {WIRE_VERSION}, got {d.get('v')!r}")
        sketches = _checked_map("sketches", d.get("sketches", {}), MAX_SKETCHES)
        packs = d.get("packs", [])
        if not isinstance(packs, list) or len(packs) > MAX_PACK_SAMPLES:
            raise InvalidInput(f"packs must be a list of at most {MAX_PACK_SAMPLES} samples")
        return NodeSummary(
            node=d.get("node"),  # type: ignore[arg-type]  # validated when built
            location=Location(d.get("zone"), d.get("region"), d.get("cell")),  # type: ignore[arg-type]
            at_ms=d.get("at_ms"),  # type: ignore[arg-type]
            pack_count=d.get("pack_count", 0),
            sample_rate=d.get("sample_rate", 1.0),
            counters=dict(_checked_map("counters", d.get("counters", {}), MAX_COUNTERS)),
            gauges=dict(_checked_map("gauges", d.get("gauges", {}), MAX_GAUGES)),
            sketches={name: Sketch.from_wire(s) for name, s in sketches.items()},
            packs=tuple(PackSample.from_wire(p) for p in packs),
        )


@dataclass(frozen=True, slots=True)
class GaugeStats:
    """One gauge over a group of nodes: the sum, min and max of their values and how many."""

    sum: float
    min: float
    max: float
    n: int

    @property
    def mean(self) -> float:
        return self.sum / self.n

    def __add__(self, other: GaugeStats) -> GaugeStats:
        return GaugeStats(self.sum + other.sum, min(self.min, other.min), max(self.max, other.max),
                          self.n + other.n)

    def to_dict(self, additive: bool) -> dict[str, float]:
        out = {"min": self.min, "mean": self.mean, "max": self.max}
        return {"sum": self.sum, **out} if additive else out


@dataclass(frozen=True, slots=True, eq=False)
class MetricsTree:
    """A group of the hierarchy (or one node) with its merged metrics and its child groups.

    The sketches belong to the tree (a leaf shares its summary's): read them, do not add to them.
    """

    level: str
    key: str
    children: tuple[MetricsTree, ...]
    nodes: int
    packs: int
    counters: Mapping[str, int]
    gauges: Mapping[str, GaugeStats]
    sketches: Mapping[str, Sketch]
    estimates: Mapping[str, Estimate]
    sample_rates: tuple[float, ...]
    oldest_ms: int
    newest_ms: int

    def gauge(self, name: str) -> float | None:
        """The gauge as one number: the sum for an additive gauge, else the mean over nodes."""
        g = self.gauges.get(name)
        if g is None:
            return None
        return g.sum if name in ADDITIVE_GAUGES else g.mean

    def quantile(self, sketch: str, q: float) -> float | None:
        s = self.sketches.get(sketch)
        return s.quantile(q) if s is not None else None

    def walk(self, depth: int = 0) -> Iterator[tuple[int, MetricsTree]]:
        """This tree and every group below it, depth first, with its depth (the root is 0)."""
        yield depth, self
        for c in self.children:
            yield from c.walk(depth + 1)

    def to_dict(self, quantiles: Sequence[float] = (0.5, 0.9, 0.99)) -> dict[str, Any]:
        """The JSON form of ``canidae metrics --json``: percentiles of every sketch, all levels."""
        sketches: dict[str, Any] = {}
        for name, s in sorted(self.sketches.items()):
            qs = s.quantiles(quantiles)
            sketches[name] = {"count": s.count, "sum": s.sum, "min": s.min, "max": s.max,
                              **{_qname(q): v for q, v in zip(quantiles, qs, strict=True)}}
        return {
            "level": self.level, "key": self.key, "nodes": self.nodes, "packs": self.packs,
            "sample_rates": list(self.sample_rates),
            "at_ms": {"oldest": self.oldest_ms, "newest": self.newest_ms},
            "counters": dict(sorted(self.counters.items())),
            "gauges": {n: g.to_dict(n in ADDITIVE_GAUGES) for n, g in sorted(self.gauges.items())},
            "sketches": sketches,
            "pack_estimates": {f: e.to_dict() for f, e in self.estimates.items()},
            "children": [c.to_dict(quantiles) for c in self.children],
        }


def _qname(q: float) -> str:
    return "p" + f"{q * 100:.10g}".replace(".", "_")


class _Acc:
    """Merges summaries or child trees into one group; the inputs are never changed."""

    __slots__ = ("counters", "estimates", "gauges", "newest", "nodes", "oldest", "packs", "rates",
                 "sketches")

    def __init__(self) -> None:
        self.nodes = self.packs = 0
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, GaugeStats] = {}
        self.sketches: dict[str, Sketch] = {}
        self.estimates: dict[str, Estimate] = {}
        self.rates: set[float] = set()
        self.oldest = math.inf
        self.newest = -math.inf

    def _sketch(self, name: str, s: Sketch) -> None:
        mine = self.sketches.get(name)
        if mine is None:
            self.sketches[name] = s.copy()
        else:
            mine.merge(s)

    def add_tree(self, t: MetricsTree) -> None:
        self.nodes += t.nodes
        self.packs += t.packs
        for name, c in t.counters.items():
            self.counters[name] = self.counters.get(name, 0) + c
        for name, g in t.gauges.items():
            mine = self.gauges.get(name)
            self.gauges[name] = g if mine is None else mine + g
        for name, s in t.sketches.items():
            self._sketch(name, s)
        for f, e in t.estimates.items():
            mine_e = self.estimates.get(f)
            self.estimates[f] = e if mine_e is None else mine_e + e
        self.rates.update(t.sample_rates)
        self.oldest = min(self.oldest, t.oldest_ms)
        self.newest = max(self.newest, t.newest_ms)

    def freeze(self, level: str, key: str, children: tuple[MetricsTree, ...]) -> MetricsTree:
        empty = self.nodes == 0  # only a cluster with no summaries at all
        return MetricsTree(level, key, children, self.nodes, self.packs, self.counters, self.gauges,
                           self.sketches, self.estimates, tuple(sorted(self.rates)),
                           0 if empty else int(self.oldest), 0 if empty else int(self.newest))


def node_tree(s: NodeSummary) -> MetricsTree:
    """The leaf of one node: its own values (sketches shared with the summary, not copied)."""
    return MetricsTree(
        level="node", key=s.node, children=(), nodes=1, packs=s.pack_count,
        counters=dict(s.counters),
        gauges={n: GaugeStats(float(g), float(g), float(g), 1) for n, g in s.gauges.items()},
        sketches=dict(s.sketches), estimates=estimate_totals(s.packs, FIELDS),
        sample_rates=(float(s.sample_rate),), oldest_ms=s.at_ms, newest_ms=s.at_ms,
    )


def _roll_up(groups: Mapping[str, list[MetricsTree]], level: str, keep_children: bool) -> list[MetricsTree]:
    out = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda t: t.key)
        acc = _Acc()
        for t in members:
            acc.add_tree(t)
        out.append(acc.freeze(level, key, tuple(members) if keep_children else ()))
    return out


def aggregate(summaries: Iterable[NodeSummary], by: str = "cell") -> MetricsTree:
    """Merge node summaries into a tree from the cluster down to ``by`` (its deepest level).

    Always merged level by level, node -> cell -> region -> zone -> cluster; ``by`` only says
    how deep the returned tree goes. One summary per node (``InvalidInput`` on a repeat).
    """
    if by not in LEVELS:
        raise InvalidInput(f"metrics can be grouped by {', '.join(LEVELS)}; got {by!r}")
    depth = LEVELS.index(by)
    seen: set[str] = set()
    cells: dict[str, list[MetricsTree]] = {}
    parent: dict[str, str] = {}  # scoped key -> its parent's key
    for s in summaries:
        if s.node in seen:
            raise InvalidInput(f"two summaries for node {s.node}")
        seen.add(s.node)
        loc = s.location
        cell, region = loc.at(Level.CELL), loc.at(Level.REGION)
        cells.setdefault(cell, []).append(node_tree(s))
        parent[cell], parent[region], parent[loc.zone] = region, loc.zone, ""
    level_groups: list[MetricsTree] = []
    groups: Mapping[str, list[MetricsTree]] = cells
    for i, level in ((3, "cell"), (2, "region"), (1, "zone")):
        level_groups = _roll_up(groups, level, keep_children=depth > i)
        up: dict[str, list[MetricsTree]] = {}
        for t in level_groups:
            up.setdefault(parent[t.key], []).append(t)
        groups = up
    members = list(groups.get("", []))
    acc = _Acc()
    for t in members:
        acc.add_tree(t)
    return acc.freeze("cluster", "", tuple(members) if depth > 0 else ())


def format_rate(rate: float) -> str:
    """A sampling rate as a percentage: 1.0 -> '100%', 0.001 -> '0.1%'."""
    return f"{rate * 100:.6g}%"


def render_rows(tree: MetricsTree, sketches: Sequence[str] | None = None,
                quantiles: Sequence[float] = (0.5, 0.99)) -> list[dict[str, Any]]:
    """Flat rows for a table, one per group depth first, all with the same keys in order.

    Fixed columns (``level``, ``name``, ``depth``, ``nodes``, ``packs``, CPU and memory used and
    reserved, ``sample_rate``), then ``<sketch>.p50`` / ``<sketch>.p99`` for each of
    ``sketches`` (default: every sketch in the tree) and ``<counter>.total`` for every counter.
    A value a group lacks is ``None``. Percentiles come from each group's merged sketch.
    """
    names = sorted(tree.sketches) if sketches is None else list(sketches)
    counters = sorted(tree.counters)
    rows = []
    for depth, t in tree.walk():
        row: dict[str, Any] = {
            "level": t.level, "name": t.key or "cluster", "depth": depth, "nodes": t.nodes,
            "packs": t.packs,
            "cpu_used_m": t.gauge(GAUGE_CPU_USED), "cpu_reserved_m": t.gauge(GAUGE_CPU_RESERVED),
            "mem_used_mib": t.gauge(GAUGE_MEM_USED), "mem_reserved_mib": t.gauge(GAUGE_MEM_RESERVED),
            "sample_rate": ",".join(format_rate(r) for r in t.sample_rates),
        }
        for name in names:
            s = t.sketches.get(name)
            values = s.quantiles(quantiles) if s is not None else [None] * len(quantiles)
            for q, v in zip(quantiles, values, strict=True):
                row[f"{name}.{_qname(q)}"] = v
        for name in counters:
            row[f"{name}.total"] = t.counters.get(name)
        rows.append(row)
    return rows


__all__ = [
    "ADDITIVE_GAUGES", "GAUGE_CPU_RESERVED", "GAUGE_CPU_USED", "GAUGE_MEM_RESERVED", "GAUGE_MEM_USED",
    "LEVELS", "MAX_COUNTERS", "MAX_GAUGES", "MAX_PACK_SAMPLES", "MAX_SKETCHES", "WIRE_VERSION",
    "GaugeStats", "MetricsTree", "NodeSummary", "aggregate", "format_rate", "node_tree", "render_rows",
]
