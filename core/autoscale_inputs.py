"""The autoscaler's inputs read from a live cluster: node views and the leader's metrics tree -> ``Metrics``.

This module owns ``cluster_inputs``, which turns what the API answers (the node list of
``GET /v1/nodes``, the tree of ``GET /v1/metrics/cluster?by=node`` and the count of pending packs)
into the one ``Metrics`` value a decision reads, plus the per-node rows it was summed from so an
operator can check the sum. It is pure: wire dicts in, values out, no clock (``now_ms`` comes in),
no I/O.

How the sums are taken:

* Nodes: ``nodes_ready`` counts nodes in state ``ready``; cordoned and draining nodes take no new
  packs, so they are not capacity, and down nodes are gone. No node is ever "starting" here (no
  provider adds nodes yet).
* Packs: the packs held by every node that is not down (placed or running there: what the
  packs-per-node check divides), and the pending ones, which found no node.
* Capacity: the CPU and memory of the ready nodes.
* Used, by ``usage``: ``measured`` sums the CPU and memory the nodes measured in their packs'
  cgroups (the summaries they send with their heartbeats) over every node that is not down, since
  the packs of a draining node land on the ready ones; ``reserved`` sums what the packs reserve,
  from the replicated state. In ``measured`` mode only ready nodes that sent a summary count as
  capacity (a node that has not reported is neither load nor capacity), and ``at_ms`` is the time
  of the oldest summary counted, so stale summaries make the decision hold. In ``reserved`` mode
  the state is read now, so ``at_ms`` is ``now_ms``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from canidae.core.autoscale_checks import Metrics
from canidae.core.errors import InvalidInput


class Usage(StrEnum):
    MEASURED = "measured"  # cgroup usage the nodes report with their heartbeats
    RESERVED = "reserved"  # what the packs reserve (cpu, mem of their specs)


@dataclass(frozen=True, slots=True)
class NodeInput:
    """One node's share of the inputs: its state, packs, capacity and use (None: no summary)."""

    node: str
    state: str
    packs: int
    cpu_capacity_m: int
    mem_capacity_mib: int
    cpu_used_m: int | None
    mem_used_mib: int | None
    counted: bool  # whether its capacity is in the totals

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "state": self.state, "packs": self.packs,
                "cpu_capacity_m": self.cpu_capacity_m, "mem_capacity_mib": self.mem_capacity_mib,
                "cpu_used_m": self.cpu_used_m, "mem_used_mib": self.mem_used_mib, "counted": self.counted}


@dataclass(frozen=True, slots=True)
class ClusterInputs:
    """The metrics a decision reads (None when nothing can be measured) and where they came from."""

    metrics: Metrics | None
    usage: Usage
    nodes: tuple[NodeInput, ...]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"usage": self.usage.value, "note": self.note, "nodes": [n.to_dict() for n in self.nodes],
                "metrics": self.metrics.to_dict() if self.metrics is not None else None}


def _leaves(tree: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if tree.get("level") == "node":
        yield tree
        return
    for child in tree.get("children", ()):
        yield from _leaves(child)


def _gauge(leaf: Mapping[str, Any], name: str) -> int | None:
    g = leaf.get("gauges", {}).get(name)
    if g is None:
        return None
    return round(float(g.get("sum", g.get("mean", 0.0))))


def _int(d: Mapping[str, Any], key: str, what: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidInput(f"{what}: {key} must be a non-negative integer, got {v!r}")
    return v


def cluster_inputs(nodes: Sequence[Mapping[str, Any]], tree: Mapping[str, Any], packs_pending: int,
                   usage: Usage, now_ms: int) -> ClusterInputs:
    """Sum the node views and the ``by=node`` metrics tree into the inputs of one decision."""
    leaves = {str(leaf["key"]): leaf for leaf in _leaves(tree)}
    rows: list[NodeInput] = []
    oldest: int | None = None
    for n in sorted(nodes, key=lambda n: str(n.get("id"))):
        node_id, state = str(n.get("id")), str(n.get("state"))
        if state == "down":
            continue
        cap = n.get("capacity") or {}
        what = f"node {node_id}"
        cpu_cap, mem_cap = _int(cap, "cpu", what), _int(cap, "mem", what)
        leaf = leaves.get(node_id)
        cpu_used: int | None
        mem_used: int | None
        if usage is Usage.RESERVED:
            used = n.get("used") or {}
            cpu_used, mem_used = _int(used, "cpu", what), _int(used, "mem", what)
        elif leaf is not None:
            cpu_used, mem_used = _gauge(leaf, "cpu_used_m"), _gauge(leaf, "mem_used_mib")
            at = leaf.get("at_ms", {}).get("oldest")
            if isinstance(at, int):
                oldest = at if oldest is None else min(oldest, at)
        else:
            cpu_used = mem_used = None
        capacity = state == "ready" and (usage is Usage.RESERVED or leaf is not None)
        rows.append(NodeInput(node_id, state, _int(n, "packs", what), cpu_cap, mem_cap, cpu_used, mem_used,
                              capacity))
    ready = [r for r in rows if r.state == "ready"]
    silent = [r.node for r in ready if not r.counted]
    note = f"no metrics summary yet from {', '.join(silent)}: not counted as capacity" if silent else ""
    if usage is Usage.MEASURED and oldest is None:
        return ClusterInputs(None, usage, tuple(rows), note or "no node has sent a metrics summary")
    counted = [r for r in rows if r.counted]
    metrics = Metrics(
        at_ms=now_ms if usage is Usage.RESERVED else oldest or 0,
        nodes_ready=len(ready),
        cpu_total_m=sum(r.cpu_capacity_m for r in counted),
        cpu_used_m=sum(r.cpu_used_m or 0 for r in rows),
        mem_total_mib=sum(r.mem_capacity_mib for r in counted),
        mem_used_mib=sum(r.mem_used_mib or 0 for r in rows),
        packs=sum(r.packs for r in rows),
        packs_pending=packs_pending,
    )
    return ClusterInputs(metrics, usage, tuple(rows), note)


__all__ = ["ClusterInputs", "NodeInput", "Usage", "cluster_inputs"]
