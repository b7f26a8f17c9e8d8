"""``canidae metrics``: the cluster's metrics merged by the leader, cell -> region -> zone -> cluster.

Every node sends a compact summary with its heartbeat (``canidae.core.metrics``); the leader keeps
the latest of each and merges them on request (``GET /v1/metrics/cluster``). This module prints
that tree, with the sampling rate of per-pack metrics in force. It also owns ``node_leaves``,
the nodes of a tree with their place in it, which ``canidae top`` shows.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.cli.connect import client
from canidae.cli.output import JsonOption, console, emit
from canidae.cli.params import ZoneOpt

CellOpt = Annotated[str | None, typer.Option("--cell", help="Only this cell (c1, or z1/r1/c1).")]


class MetricsLevel(str, Enum):
    ZONE = "zone"
    REGION = "region"
    CELL = "cell"
    NODE = "node"


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) and v != int(v) else f"{int(v):,}"


def _rate(doc: dict[str, Any]) -> str:
    return f"{doc['sample_rate'] * 100:.6g}%"


def node_leaves(tree: dict[str, Any], path: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Each node of a tree grouped ``by=node``: its id, location, packs, gauges and counters."""
    if tree["level"] == "node":
        g = tree["gauges"]

        def gauge(name: str) -> float | None:
            v = g.get(name)
            return None if v is None else v.get("sum", v["mean"])
        return [{"node": tree["key"], "location": path[-1] if path else "", "packs": tree["packs"],
                 "cpu_used_m": gauge("cpu_used_m"), "cpu_reserved_m": gauge("cpu_reserved_m"),
                 "mem_used_mib": gauge("mem_used_mib"), "mem_reserved_mib": gauge("mem_reserved_mib"),
                 "restarts": tree["counters"].get("restarts", 0), "yips_per_s": gauge("yips_per_s"),
                 "sample_rates": tree["sample_rates"], "at_ms": tree["at_ms"]["newest"]}]
    out = []
    for child in tree["children"]:
        out += node_leaves(child, (*path, child["key"]) if child["level"] != "node" else path)
    return out


def metrics(
    by: Annotated[MetricsLevel, typer.Option("--by", help="Deepest level of the tree shown.")] = MetricsLevel.CELL,
    zone: ZoneOpt = None,
    cell: CellOpt = None,
    json: JsonOption = False,
) -> None:
    """Print cluster metrics merged by the leader from every node's heartbeat summary: nodes, packs,
    CPU and memory used and reserved, latency percentiles (from merged sketches, never averaged) and
    counters, by zone, region, cell or node, with the sampling rate of per-pack metrics in force."""
    with client() as c:
        doc = c.metrics_cluster(by.value, zone=zone, cell=cell)

    def human() -> None:
        rows = doc["rows"]
        sketches = sorted({k.rsplit(".", 1)[0] for r in rows for k in r if k.endswith(".p99")})
        t = Table("group", "nodes", "packs", "cpu used/res (m)", "mem used/res (MiB)", "sampled at",
                  *[f"{s} p50/p99" for s in sketches])
        for r in rows:
            t.add_row("  " * r["depth"] + f"{r['name']}", str(r["nodes"]), f"{r['packs']:,}",
                      f"{_fmt(r['cpu_used_m'], 0)}/{_fmt(r['cpu_reserved_m'], 0)}",
                      f"{_fmt(r['mem_used_mib'], 0)}/{_fmt(r['mem_reserved_mib'], 0)}", r["sample_rate"] or "-",
                      *[f"{_fmt(r.get(s + '.p50'), 2)}/{_fmt(r.get(s + '.p99'), 2)}" for s in sketches])
        console.print(t)
        console.print(f"per-pack metrics sampled at {_rate(doc)} (the rate for the cluster's pack count); "
                      "latencies in ms")
    emit(doc, json, human)
