"""What ``canidae pack list`` reads, without the command tree: the filters it takes and the pages it
walks. ``canidae.cli.pack`` (the typer command) and ``canidae.cli.fastpath`` (the same command line
answered without loading typer or rich) both call :func:`list_packs`, so they answer alike.

Imports only ``canidae.agent.client`` and ``canidae.core``: nothing here may pull in typer, rich
or httpx (``tests/architecture`` checks it).
"""

from __future__ import annotations

from typing import Any

from canidae.agent.client import Client
from canidae.core.errors import NotFound

# What ``--state`` takes: a pack state, or ``crashlooping`` (running packs whose members keep failing).
STATES = ("created", "pending", "placed", "running", "crashlooping", "stopping", "stopped", "failed")
DEFAULT_LIMIT = 1000


def read_pages(c: Client, limit: int, after: str | None, stale: bool, **filters: Any
               ) -> tuple[list[dict[str, Any]], str | None, int]:
    """Up to ``limit`` packs after ``after`` (pages of at most 10,000), the cursor after them, and
    how many match the filters in all."""
    packs: list[dict[str, Any]] = []
    cursor, total = after, 0
    while len(packs) < limit:
        page = c.packs(after=cursor, limit=min(10_000, limit - len(packs)), stale=stale, total=cursor == after,
                       **filters)
        if page["total"] is not None:
            total = page["total"]
        packs.extend(page["packs"])
        cursor = page["next"]
        if not cursor:
            break
    return packs, cursor, total


def list_packs(c: Client, *, node: str | None = None, zone: str | None = None, state: str | None = None,
               limit: int = DEFAULT_LIMIT, after: str | None = None, stale: bool = False) -> dict[str, Any]:
    """``{"packs", "next", "total"}`` as ``pack list --json`` prints it. An unknown node or zone is
    ``NotFound`` (exit 5), not an empty list."""
    if zone:
        nodes = [n["id"] for n in c.nodes(stale=stale) if n["zone"] == zone]
        if not nodes:
            raise NotFound(f"no zone {zone!r}: no node is in it")
        if node and node not in nodes:
            raise NotFound(f"no node {node!r} in zone {zone!r}")
        packs: list[dict[str, Any]] = []
        total, more = 0, False
        for n in [node] if node else nodes:
            got, next_cursor, count = read_pages(c, limit, after, stale, node=n, state=state)
            packs.extend(got)
            total += count
            more = more or next_cursor is not None
        packs.sort(key=lambda p: p["name"])
        more = more or len(packs) > limit
        packs = packs[:limit]
        cursor = packs[-1]["name"] if more and packs else None
    else:
        if node:
            c.node(node, stale=True)  # an unknown node is an error (5), not an empty list
        packs, cursor, total = read_pages(c, limit, after, stale, node=node, state=state)
    return {"packs": packs, "next": cursor, "total": total}
