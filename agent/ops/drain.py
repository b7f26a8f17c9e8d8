"""Draining a node, and knowing when it is drained: the one way ``canidae node drain`` and the
fleet's upgrade and remove do it.

A drain is one replicated step (every pack of the node is moved in it, and the node takes no new
ones); the wait that follows counts the moved packs running on their new nodes, plus one for the
drained node's agent running nothing any more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from canidae.agent.client.calls import Client
from canidae.agent.ops.waiting import wait_until
from canidae.core.errors import NotFound


def drain_progress(c: Client, node: str, moved: list[dict[str, Any]]) -> Callable[[], tuple[int, int]]:
    """``() -> (done, total)`` for the drain of ``node`` that moved ``moved``."""
    names = [m["name"] for m in moved if m.get("node")]

    def progress() -> tuple[int, int]:
        running = sum(1 for n in names if c.pack(n, stale=True)["state"] == "running")
        here = c.node(node)
        left_here = here["packs"] + (here.get("running_here") or 0)
        return running + (1 if left_here == 0 else 0), len(names) + 1
    return progress


def drain_and_wait(c: Client, node: str, timeout: float) -> dict[str, Any]:
    """Drain ``node`` and wait (up to ``timeout`` s) until it is drained; the drain's answer."""
    result = c.drain(node)
    progress = drain_progress(c, node, result["moved"])

    def drained() -> bool:
        done, total = progress()
        return done >= total
    wait_until(drained, timeout, f"draining {node}", interval=0.1)
    return result


def stranded(c: Client, node: str) -> list[str]:
    """The packs a drain of ``node`` would leave with nowhere to go (pinned to it, or no room
    elsewhere): they would wait, pending, and run nowhere."""
    return [m["name"] for m in c.drain(node, plan=True)["moved"] if not m.get("node")]


def drain_if_known(c: Client, node: str, agent_runs: bool, timeout: float) -> bool:
    """Drain ``node`` before its agent is stopped for good or for an upgrade: and wait for it when
    its agent runs (one that does not cannot confirm it runs nothing). False when the cluster does
    not know the node (nothing to drain)."""
    try:
        c.node(node)
    except NotFound:
        return False
    if agent_runs:
        drain_and_wait(c, node, timeout)
    else:
        c.drain(node)
    return True


__all__ = ["drain_and_wait", "drain_if_known", "drain_progress", "stranded"]
