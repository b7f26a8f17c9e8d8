"""``canidae place``: an offline dry run of the scheduler, showing where packs would land and why.

It builds a fleet in memory (from a TOML file, or a regular zones x regions x cells layout),
asks ``canidae.core.scheduler`` to place the packs described on the command line, and prints
the plan: a table per pack, a summary per zone, and the packs that fit nowhere with the reason
at each level. Nothing talks to a cluster. Reading the TOML file is the only I/O.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from canidae.cli.output import NODE_METAVAR, ZONE_METAVAR, JsonOption, console, emit
from canidae.cli.params import SpreadLevel
from canidae.core.errors import InvalidInput
from canidae.core.scheduler import Scheduler
from canidae.core.topology import build_nodes
from canidae.core.types import Constraints, Level, Location, Node, NodeState, PackSpec, Plan, Resources
from rich.table import Table

# "[[ node ]]" with spaces: valid TOML, and not taken for markup by rich when help is rendered.
TOPOLOGY_HELP = (
    """\
The topology file (--topology) lists one table per node:

    [[ node ]]
    id = "n1"            # node id
    zone = "z1"          # zone > region > cell
    region = "r1"
    cell = "c1"
    cpu = 16000          # millicores
    mem = 65536          # MiB
    max_packs = 110      # pack slots
    weight = 1.0         # optional, share of the ring (default 1.0)
    state = "ready"      # optional: ready, cordoned, draining or down

"""
    + (
        # One line on purpose: help keeps the text's line breaks, so wrapping is left to the terminal.
        "Without --topology, a regular fleet is made from --zones, --regions (per zone), "
        "--cells (per region) and --nodes, each node with --cpu, --mem and --max-packs."
    )
)

NODE_KEYS = {"id", "zone", "region", "cell", "cpu", "mem", "max_packs", "weight", "state"}
NODE_REQUIRED = ("id", "zone", "region", "cell", "cpu", "mem", "max_packs")
DEFAULT_SHAPE = {
    "zones": 3,
    "regions": 2,
    "cells": 2,
    "nodes": 12,
    "cpu": 16_000,
    "mem": 65_536,
    "max_packs": 110,
}
HUMAN_ROWS = 100  # placements shown in the human table; --json has them all

app = typer.Typer(add_completion=False)


def load_topology(path: Path) -> list[Node]:
    """Nodes from a topology TOML file (see ``TOPOLOGY_HELP``); ``InvalidInput`` for any mistake."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidInput(f"cannot read topology file {str(path)!r}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"topology file {str(path)!r} is not valid TOML: {e}") from None
    extra = sorted(set(data) - {"node"})
    if extra:
        raise InvalidInput(
            f"topology file {str(path)!r}: unknown table {extra[0]!r} (expected [[node]] tables)"
        )
    rows = data.get("node")
    if not isinstance(rows, list) or not rows:
        raise InvalidInput(
            f"topology file {str(path)!r} has no [[node]] tables: a topology needs at least one node"
        )
    nodes = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        where = f"topology file {str(path)!r}, node #{i}"
        if not isinstance(row, dict):
            raise InvalidInput(f"{where}: expected a [[node]] table")
        unknown = sorted(set(row) - NODE_KEYS)
        if unknown:
            raise InvalidInput(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(NODE_KEYS))})")
        missing = [k for k in NODE_REQUIRED if k not in row]
        if missing:
            raise InvalidInput(f"{where}: missing {', '.join(missing)}")
        try:
            state = NodeState(row.get("state", "ready"))
        except ValueError:
            raise InvalidInput(
                f"{where}: state must be one of {', '.join(s.value for s in NodeState)}"
            ) from None
        try:
            node = Node(
                row["id"],
                Location(row["zone"], row["region"], row["cell"]),
                Resources(row["cpu"], row["mem"], row["max_packs"]),
                weight=row.get("weight", 1.0),
                state=state,
            )
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e.message}") from None
        if node.id in seen:
            raise InvalidInput(f"{where}: duplicate node id {node.id!r}")
        seen.add(node.id)
        nodes.append(node)
    return nodes


def plan_document(nodes: list[Node], sched: Scheduler, plan: Plan) -> dict[str, Any]:
    """The ``--json`` document: placements, unplaced packs with reasons, and a summary."""
    by_id = {n.id: n for n in nodes}
    placements = []
    per_zone: dict[str, int] = {}
    for p in plan.placements:
        loc = by_id[p.node].location
        placements.append(
            {"pack": p.pack, "node": p.node, "zone": loc.zone, "region": loc.region, "cell": loc.cell}
        )
        per_zone[loc.zone] = per_zone.get(loc.zone, 0) + 1
    topo = sched.topology()
    zones = []
    for z in topo.zones():
        s = topo.stats(Level.ZONE, z)
        zones.append(
            {
                "zone": z,
                "nodes": s.nodes,
                "ready": s.ready,
                "placed": per_zone.get(z, 0),
                "free": s.free.to_dict(),
            }
        )
    counts: dict[str, int] = {}
    for p in plan.placements:
        counts[p.node] = counts.get(p.node, 0) + 1
    ready = [n for n in nodes if n.state is NodeState.READY]
    mean = len(plan.placements) / len(ready) if ready else 0.0
    return {
        "placements": placements,
        "unplaced": [{"pack": u.pack, "reasons": list(u.reasons)} for u in plan.unplaced],
        "summary": {
            "packs": len(plan.placements) + len(plan.unplaced),
            "placed": len(plan.placements),
            "unplaced": len(plan.unplaced),
            "nodes": len(nodes),
            "ready": len(ready),
            "nodes_used": len(counts),
            "max_per_node": max(counts.values(), default=0),
            "max_over_mean": round(max(counts.values(), default=0) / mean, 3) if mean else 0.0,
            "zones": zones,
        },
    }


def _render(doc: dict[str, Any]) -> None:
    placements = doc["placements"]
    if placements:
        table = Table(title="Placements", title_justify="left")
        for col in ("pack", "node", "zone", "region", "cell"):
            table.add_column(col)
        for p in placements[:HUMAN_ROWS]:
            table.add_row(p["pack"], p["node"], p["zone"], p["region"], p["cell"])
        console.print(table)
        if len(placements) > HUMAN_ROWS:
            console.print(f"... and {len(placements) - HUMAN_ROWS} more placements (--json lists them all)")
    s = doc["summary"]
    zt = Table(title="Per zone, after placement", title_justify="left")
    for col, justify in (
        ("zone", "left"),
        ("nodes", "right"),
        ("ready", "right"),
        ("placed", "right"),
        ("free cpu (m)", "right"),
        ("free mem (MiB)", "right"),
        ("free slots", "right"),
    ):
        zt.add_column(col, justify=justify)  # type: ignore[arg-type]
    for z in s["zones"]:
        zt.add_row(
            z["zone"],
            str(z["nodes"]),
            str(z["ready"]),
            str(z["placed"]),
            str(z["free"]["cpu"]),
            str(z["free"]["mem"]),
            str(z["free"]["packs"]),
        )
    console.print(zt)
    if doc["unplaced"]:
        ut = Table(title="Unplaced: no node could take these", title_justify="left")
        ut.add_column("pack")
        ut.add_column("why, per level")
        for u in doc["unplaced"][:HUMAN_ROWS]:
            ut.add_row(u["pack"], "\n".join(u["reasons"]))
        console.print(ut)
        if len(doc["unplaced"]) > HUMAN_ROWS:
            console.print(f"... and {len(doc['unplaced']) - HUMAN_ROWS} more unplaced packs")
    console.print(
        f"{s['placed']} of {s['packs']} packs placed on {s['nodes_used']} of {s['nodes']} nodes "
        f"(max {s['max_per_node']} per node, max/mean {s['max_over_mean']}); {s['unplaced']} unplaced."
    )


def place(
    topology: Annotated[
        Path | None,
        typer.Option(
            "--topology",
            metavar="FILE.toml",
            help=(
                "Read the fleet from a TOML file: one [[ node ]] table per node with id, zone, region, "
                "cell, cpu, mem, max_packs and optionally weight and state (example in this command's help)."
            ),
            show_default=False,
        ),
    ] = None,
    zones: Annotated[
        int | None,
        typer.Option("--zones", metavar="Z", min=1, help="Zones of a made-up fleet.", show_default="3"),
    ] = None,
    regions: Annotated[
        int | None, typer.Option("--regions", metavar="R", min=1, help="Regions per zone.", show_default="2")
    ] = None,
    cells: Annotated[
        int | None, typer.Option("--cells", metavar="C", min=1, help="Cells per region.", show_default="2")
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option("--nodes", metavar="N", min=1, help="Nodes, dealt over the cells.", show_default="12"),
    ] = None,
    cpu: Annotated[
        int | None,
        typer.Option(
            "--cpu", metavar="MILLICORES", min=1, help="CPU of each made-up node.", show_default="16000"
        ),
    ] = None,
    mem: Annotated[
        int | None,
        typer.Option(
            "--mem", metavar="MIB", min=1, help="Memory of each made-up node.", show_default="65536"
        ),
    ] = None,
    max_packs: Annotated[
        int | None,
        typer.Option(
            "--max-packs", metavar="N", min=1, help="Pack slots of each made-up node.", show_default="110"
        ),
    ] = None,
    pack: Annotated[
        list[str] | None,
        typer.Option(
            "--pack", metavar="NAME", help="A pack to place, by name (repeatable).", show_default=False
        ),
    ] = None,
    count: Annotated[
        int,
        typer.Option("--count", metavar="K", min=0, help="Also place K packs named PREFIX-1 ... PREFIX-K."),
    ] = 0,
    prefix: Annotated[
        str, typer.Option("--prefix", metavar="P", help="Name prefix for --count packs.")
    ] = "pack",
    cpu_per_pack: Annotated[
        int, typer.Option("--cpu-per-pack", metavar="MILLICORES", min=0, help="CPU reserved by each pack.")
    ] = 100,
    mem_per_pack: Annotated[
        int,
        typer.Option("--mem-per-pack", metavar="MIB", min=0, help="Memory reserved by each pack, in MiB."),
    ] = 64,
    zone: Annotated[
        str | None,
        typer.Option("--zone", metavar=ZONE_METAVAR, help="Pin the packs to this zone.", show_default=False),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            metavar="REGION",
            help="Pin to regions of this name (within --zone, if given).",
            show_default=False,
        ),
    ] = None,
    cell: Annotated[
        str | None,
        typer.Option(
            "--cell",
            metavar="CELL",
            help="Pin to cells of this name (within --zone/--region, if given).",
            show_default=False,
        ),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option("--node", metavar=NODE_METAVAR, help="Pin the packs to this node.", show_default=False),
    ] = None,
    spread: Annotated[
        SpreadLevel | None,
        typer.Option(
            "--spread", help="Spread the packs evenly across the zones, regions or cells.", show_default=False
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", metavar="G", help="Spread group of the packs.", show_default="the prefix"),
    ] = None,
    load_factor: Annotated[
        float,
        typer.Option(
            "--load-factor", metavar="C", help="Bounded-load factor: no node above C times the mean."
        ),
    ] = 1.25,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Seed handed to the scheduler.")] = 0,
    json: JsonOption = False,
) -> None:
    """Dry-run the scheduler offline: show where packs would land, and why the others fit nowhere.

    Exits 0 even when some packs fit nowhere: they are listed with the reason at each level.
    """
    sizes = {
        "zones": zones,
        "regions": regions,
        "cells": cells,
        "nodes": nodes,
        "cpu": cpu,
        "mem": mem,
        "max_packs": max_packs,
    }
    if topology is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in sizes.items() if v is not None]
        if given:
            raise InvalidInput(f"use --topology or {', '.join(given)}, not both")
        fleet = load_topology(topology)
    else:
        shape = {k: v if v is not None else DEFAULT_SHAPE[k] for k, v in sizes.items()}
        fleet = build_nodes(
            shape["zones"],
            shape["regions"],
            shape["cells"],
            shape["nodes"],
            Resources(shape["cpu"], shape["mem"], shape["max_packs"]),
        )
    if group is not None and spread is None:
        raise InvalidInput("--group only means something with --spread")
    names = list(pack or [])
    width = len(str(count))
    names.extend(f"{prefix}-{i:0{width}d}" for i in range(1, count + 1))
    if not names:
        raise InvalidInput("nothing to place: name packs with --pack NAME or ask for --count K")
    dupes = sorted(n for n, c in _counts(names).items() if c > 1)
    if dupes:
        raise InvalidInput(f"pack {dupes[0]!r} is named twice")
    constraints = Constraints(
        zone=zone,
        region=region,
        cell=cell,
        node=node,
        spread=Level(spread.value) if spread is not None else None,
        group=(group or prefix) if spread is not None else None,
    )
    res = Resources(cpu_per_pack, mem_per_pack, 1)
    specs = [PackSpec(n, resources=res, constraints=constraints) for n in names]
    sched = Scheduler(load_factor=load_factor)
    for n in fleet:
        sched.add_node(n)
    plan = sched.place(specs, seed=seed)
    doc = plan_document(fleet, sched, plan)
    emit(doc, json, lambda: _render(doc))


def _counts(names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return out


place.__doc__ = (place.__doc__ or "") + "\n\n" + TOPOLOGY_HELP

app.command(
    epilog="Examples: canidae place --count 1000 --spread zone;  "
    "canidae place --topology fleet.toml --pack web --pack db --zone z2 --json",
)(place)

__all__ = ["app", "load_topology", "place", "plan_document"]
