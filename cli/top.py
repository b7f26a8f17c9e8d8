"""``canidae top``: nodes (and a sample of packs) by CPU, memory, restarts and yip rate, live.

It reads the leader's merged view of the nodes' heartbeat summaries (``GET /v1/metrics/cluster``,
``by=node``), never every pack, so a refresh costs the same at 10,000 packs as at 10. Packs shown
are the sampled ones (every pack in error or over its reservation is always sampled); each row says
how many packs it stands for. ``--once`` and ``--json`` print one screen for scripts.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from canidae.cli.connect import client
from canidae.cli.metrics import CellOpt, node_leaves
from canidae.cli.output import JsonOption, console, emit, wants_json
from canidae.cli.params import TopSort, ZoneOpt

PACK_ROWS = 20
_NODE_KEYS = {TopSort.CPU: "cpu_used_m", TopSort.MEM: "mem_used_mib", TopSort.PACKS: "packs",
              TopSort.RESTARTS: "restarts", TopSort.YIPS: "yips_per_s"}
_PACK_SORT = {TopSort.CPU: "cpu", TopSort.MEM: "mem", TopSort.PACKS: "cpu", TopSort.RESTARTS: "restarts",
              TopSort.YIPS: "yips", TopSort.NAME: "name"}


def snapshot(c: Any, sort: TopSort, zone: str | None, cell: str | None) -> dict[str, Any]:
    """One screen's data: nodes in ``sort`` order and the top sampled packs."""
    doc = c.metrics_cluster("node", zone=zone, cell=cell, packs=PACK_ROWS, sort=_PACK_SORT[sort])
    nodes = node_leaves(doc["tree"])
    if sort is TopSort.NAME:
        nodes.sort(key=lambda n: n["node"])
    else:
        key = _NODE_KEYS[sort]
        nodes.sort(key=lambda n: (-(n[key] or 0), n["node"]))
    root = doc["tree"]
    return {"sort": sort.value, "sample_rate": doc["sample_rate"], "nodes_total": root["nodes"],
            "packs_total": root["packs"], "nodes": nodes, "packs": doc.get("packs", []),
            "packs_sampled": doc.get("packs_sampled", 0)}


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 10 else f"{v:,.1f}"


def render(snap: dict[str, Any]) -> Group:
    head = (f"{snap['nodes_total']} nodes, {snap['packs_total']:,} packs; pack metrics sampled at "
            f"{snap['sample_rate'] * 100:.6g}%; sorted by {snap['sort']}")
    nodes = Table("node", "location", "packs", "cpu used/res (m)", "mem used/res (MiB)", "restarts", "yips/s",
                  title="nodes", title_justify="left")
    for n in snap["nodes"]:
        nodes.add_row(n["node"], n["location"], f"{n['packs']:,}",
                      f"{_num(n['cpu_used_m'])}/{_num(n['cpu_reserved_m'])}",
                      f"{_num(n['mem_used_mib'])}/{_num(n['mem_reserved_mib'])}", str(n["restarts"]),
                      _num(n["yips_per_s"]))
    packs = Table("pack", "node", "cpu (m)", "mem (MiB)", "restarts", "yips", "stands for", "flags",
                  title=f"sampled packs (top {len(snap['packs'])} of {snap['packs_sampled']})", title_justify="left")
    for p in snap["packs"]:
        flags = ",".join(f for f in ("error", "outlier") if p[f])
        packs.add_row(p["name"], p["node"], _num(p["cpu_m"]), _num(p["mem_mib"]), str(p["restarts"]),
                      str(p["yips"]), f"{p['weight']:g}", flags or "-")
    return Group(head, nodes, packs)


def top(
    interval: Annotated[
        float, typer.Option("--interval", metavar="SECONDS", min=0.1, help="Refresh period.")
    ] = 2.0,
    sort: Annotated[TopSort, typer.Option("--sort", help="Order of the rows.")] = TopSort.CPU,
    zone: ZoneOpt = None,
    cell: CellOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Print one screen and exit.")] = False,
    json: JsonOption = False,
) -> None:
    """Show nodes and sampled packs by CPU, memory, restarts and yip rate, refreshed live (Ctrl-C ends).

    Reads the leader's merged view of the nodes' heartbeat summaries, not every pack.
    With --once, or --json (one document), it prints one screen and exits."""
    with client() as c:
        if once or wants_json(json):
            snap = snapshot(c, sort, zone, cell)
            emit(snap, json, lambda: console.print(render(snap)))
            return
        try:
            with Live(render(snapshot(c, sort, zone, cell)), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)  # the refresh period the user asked for
                    live.update(render(snapshot(c, sort, zone, cell)), refresh=True)
        except KeyboardInterrupt:
            return  # Ctrl-C is how a live view ends
