"""``canidae node list|show|cordon|uncordon|drain|revoke``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.ops.drain import drain_progress
from canidae.cli.connect import client
from canidae.cli.output import JsonOption, StaleOption, WaitOption, console, emit
from canidae.cli.params import NodeArg, ZoneOpt
from canidae.cli.plans import PlanOption, YesOption, confirm, moves_table, predict_seconds, wait_until

app = typer.Typer(help="List and inspect nodes; drain or cordon them for maintenance.", no_args_is_help=True,
                  add_completion=False)


def _row(n: dict[str, Any]) -> list[str]:
    cap, used = n["capacity"], n["used"]
    hb = n.get("last_heartbeat_s_ago")
    state = n["state"] if n["state"] == "ready" else f"[yellow]{n['state']}[/]"
    return [n["id"], n["role"], f"{n['zone']}/{n['region']}/{n['cell']}", state,
            f"{used['cpu']}/{cap['cpu']}", f"{used['mem']}/{cap['mem']}", f"{n['packs']}/{cap['packs']}",
            "-" if hb is None else f"{hb:.1f}s ago"]


@app.command("list")
def node_list(zone: ZoneOpt = None, stale: StaleOption = False, json: JsonOption = False) -> None:
    """List nodes: id, role, zone/region/cell, state, cpu and memory used/capacity, packs, last heartbeat."""
    with client() as c:
        nodes = [n for n in c.nodes(stale=stale) if zone is None or n["zone"] == zone]

    def human() -> None:
        t = Table("node", "role", "location", "state", "cpu (m)", "mem (MiB)", "packs", "heartbeat")
        for n in nodes:
            t.add_row(*_row(n))
        console.print(t)
    emit({"nodes": nodes}, json, human)


@app.command("show")
def node_show(node_name: NodeArg, stale: StaleOption = False, json: JsonOption = False) -> None:
    """Show one node and the packs it runs."""
    with client() as c:
        n = c.node(node_name, stale=stale)
        packs = list(c.iter_packs(node=node_name, stale=stale))
    n["pack_names"] = [p["name"] for p in packs if p["state"] in ("placed", "running", "stopping")]

    def human() -> None:
        t = Table("node", "role", "location", "state", "cpu (m)", "mem (MiB)", "packs", "heartbeat")
        t.add_row(*_row(n))
        console.print(t)
        shown = n["pack_names"][:50]
        more = len(n["pack_names"]) - len(shown)
        console.print("packs: " + (", ".join(shown) or "none") + (f" and {more} more" if more > 0 else ""))
    emit({"node": n}, json, human)


def _set_state(node_name: str, state: str, json: bool) -> None:
    with client() as c:
        result = c.set_node_state(node_name, state)
    emit(result, json, lambda: console.print(f"node {node_name} is {result['node']['state']}"))


@app.command("cordon")
def node_cordon(node_name: NodeArg, json: JsonOption = False) -> None:
    """Stop placing new packs on a node; its packs keep running."""
    _set_state(node_name, "cordoned", json)


@app.command("uncordon")
def node_uncordon(node_name: NodeArg, json: JsonOption = False) -> None:
    """Let a cordoned node take new packs again."""
    _set_state(node_name, "ready", json)


@app.command("revoke")
def node_revoke(node_name: NodeArg,
                reason: Annotated[str, typer.Option("--reason", metavar="TEXT",
                                                    help="Why (kept with the node's NodeDown event).")] = "",
                yes: YesOption = False, json: JsonOption = False) -> None:
    """Revoke a client agent's node credential (a stolen or lost agent config): from the next
    request every server refuses it, and client agents from their next heartbeat (half a second);
    the node is declared down and its packs move.

    For good: the node id is retired; bring the host back with 'agent init' under a new name.
    A server's credential cannot be revoked (exit 6). Needs the admin token (exit 4 otherwise).
    """
    confirm(f"Revoke the credential of node {node_name} and declare it down, for good?", yes)
    with client() as c:
        result = c.revoke_node(node_name, reason)
    emit(result, json, lambda: console.print(
        f"node {node_name}: credential revoked; {len(result['moved'])} pack(s) moved"))


@app.command("drain")
def node_drain(node_name: NodeArg, wait: WaitOption = True,
               deadline: Annotated[float, typer.Option("--deadline", "--timeout", metavar="SECONDS", min=0,
                                                       help="Give up waiting after this many seconds.")] = 60.0,
               plan: PlanOption = False, yes: YesOption = False, json: JsonOption = False) -> None:
    """Move every pack off a node and stop placing new ones there.

    The moves are decided in one replicated step (they survive a leader change); agents start
    their share in parallel. With --wait (default) it returns only when every moved pack runs on
    its new node and the drained node's agent runs nothing.
    """
    with client() as c:
        preview = c.drain(node_name, plan=True)
        moves = [m for m in preview["moved"]]
        predicted = predict_seconds(moves)
        if plan:
            emit({"node": node_name, "moves": moves, "predicted_s": predicted}, json, lambda: (
                console.print(moves_table(moves)),
                console.print(f"drain {node_name}: {len(moves)} move(s), predicted {predicted:.2f} s")))
            return
        confirm(f"Drain node {node_name}: move {len(moves)} pack(s)?", yes)
        result = c.drain(node_name)
        moved = result["moved"]
        took = None
        if wait:
            took = wait_until(drain_progress(c, node_name, moved), deadline, f"draining {node_name}")
    out = {"node": node_name, "moved": moved, "pending": [m["name"] for m in moved if not m.get("node")],
           "seconds": None if took is None else round(took, 3)}
    emit(out, json, lambda: console.print(
        f"node {node_name} drained: {len(moved)} pack(s) moved" + (f" in {took:.2f} s" if took else "")
        + (f", {len(out['pending'])} pending" if out["pending"] else "")))
