"""Explanation: why a pack fits nowhere, in words an operator can act on.

This module owns the reasons of an unplaced pack (``Unplaced.reasons``) and the error raised
when a caller needs every pack placed (``require_placed``). The reasons are counted per zone:
how many nodes were down, excluded, or lacked cpu, memory or a pack slot
(``scheduler_feasible.lacks``), or, for a pinned pack, which pin matched nothing. Like nomad's
placement metrics, they are computed only for packs that failed, never on the hot path. Pure.
"""

from __future__ import annotations

from canidae.core.errors import NoCapacity
from canidae.core.scheduler_feasible import in_scope, lacks, scope
from canidae.core.scheduler_tree import Fleet, slots_under
from canidae.core.types import Constraints, Level, PackSpec, Plan


def reasons(fleet: Fleet, spec: PackSpec, exclude: frozenset[str]) -> tuple[str, ...]:
    """Why nothing fits, per zone: counts of nodes down, excluded, short of cpu, memory or slots."""
    c = spec.constraints
    res = spec.resources
    if not fleet.slots:
        return ("the cluster has no nodes",)
    if c.node is not None:
        slot = fleet.slots.get(c.node)
        if slot is None:
            return (f"no node matches node={c.node}",)
        if not in_scope(slot, c):
            return (f"node {c.node} is in {slot.node.location.at(Level.CELL)}, outside {pins(c)}",)
        lack = lacks(slot, res.cpu, res.mem, exclude)
        return (
            f"node {c.node}: "
            + (", ".join(w.replace("were ", "is ") for w in lack) if lack else "has room"),
        )
    groups = scope(fleet, c)
    if groups is None:
        narrowest = "cell" if c.cell is not None else "region" if c.region is not None else "zone"
        return (f"no {narrowest} matches {pins(c)}",)
    by_zone: dict[str, dict[str, int]] = {}
    for g in groups:
        for s in slots_under(g):
            tally = by_zone.setdefault(s.node.location.zone, {})
            for why in lacks(s, res.cpu, res.mem, exclude):
                tally[why] = tally.get(why, 0) + 1
    out: list[str] = []
    for zone in sorted(by_zone):
        tally = by_zone[zone]
        parts = [
            f"{n} {'node' if n == 1 else 'nodes'} {why}"
            for why, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        out.append(f"zone {zone}: " + (", ".join(parts) if parts else "every node had room"))
    return tuple(out)


def pins(c: Constraints) -> str:
    """The pins of ``c`` as ``zone=z1 cell=c2``."""
    return " ".join(
        f"{k}={v}" for k in ("zone", "region", "cell", "node") if (v := getattr(c, k)) is not None
    )


def require_placed(plan: Plan) -> Plan:
    """Return ``plan`` when every pack was placed, else raise ``NoCapacity`` with the reasons."""
    if plan.unplaced:
        first = plan.unplaced[0]
        more = f" (and {len(plan.unplaced) - 1} more)" if len(plan.unplaced) > 1 else ""
        raise NoCapacity(
            f"pack {first.pack} fits nowhere: {first.reason}{more}",
            {"levels": {u.pack: list(u.reasons) for u in plan.unplaced}},
        )
    return plan


# What ``reasons`` says, and the one word a metric counts it under (the reason text itself names
# nodes, zones and amounts: far too many values for a label).
_UNPLACED_KINDS = (("lacked", "cpu", " cpu"), ("lacked", "memory", " MiB memory"), ("had no free pack slot", "slots", ""),
                   ("were excluded", "excluded", ""), ("were ", "not_ready", ""), ("has no nodes", "no_nodes", ""),
                   ("no node matches", "constraints", ""), ("matches", "constraints", ""), ("outside", "constraints", ""))


UNPLACED_KINDS = ("cpu", "memory", "slots", "excluded", "not_ready", "no_nodes", "constraints", "other")


def unplaced_kind(reason: str) -> str:
    """The kind of a pending pack's reason: cpu, memory, slots, excluded, not_ready, no_nodes,
    constraints or other; of several, the one named first (``reasons`` names the most common
    first)."""
    best, kind = len(reason) + 1, "other"
    for needle, name, tail in _UNPLACED_KINDS:
        at = reason.find(needle)
        while at >= 0 and tail and not reason[at:].split(",")[0].split(";")[0].endswith(tail):
            at = reason.find(needle, at + 1)
        if 0 <= at < best:
            best, kind = at, name
    return kind


__all__ = ["UNPLACED_KINDS", "pins", "reasons", "require_placed", "unplaced_kind"]
