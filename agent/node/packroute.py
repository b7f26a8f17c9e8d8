"""Routing a request about a pack to the node that runs it (logs, kill, status, yips).

Any agent takes these requests. It finds the pack's node — in its own replica (servers, a local
read) or by asking a server (client agents, cached for a second) — and passes the request to
that node's API with an ``x-canidae-hop`` header; a node that gets a hopped request for a pack it
does not hold answers ``NotFound`` instead of routing again, so a request is never bounced around.
This module owns that lookup; the hop itself travels on ``canidae.agent.client.link.AgentHops``
and the handlers decide what the request means.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from canidae.agent.client.link import HOP, AgentHops, ServerLink
from canidae.core.errors import NotFound, Unavailable, WrongState
from canidae.core.types import NodeState
from starlette.requests import Request

CACHE_S = 1.0


class PackRouter:
    """Finds a pack's node and hops requests there. ``locate_local`` answers from this agent's own
    replica on servers (None on client agents, which ask the servers through ``link``)."""

    def __init__(self, node_id: str, desired: Callable[[str], dict[str, Any] | None],
                 link: ServerLink, hops: AgentHops, timeout_s: float,
                 locate_local: Callable[[str], tuple[str | None, str, str]] | None = None) -> None:
        self.me = node_id
        self._desired = desired
        self.link = link
        self.hops = hops
        self.timeout_s = timeout_s
        self._locate_local = locate_local
        self._cache: dict[str, tuple[float, str, str]] = {}  # pack -> (expires, node, address)
        self._nodes: dict[str, str] = {}  # node -> API address (client agents)

    def assigned_here(self, pack: str) -> bool:
        """The reconciler's view: the cluster assigns ``pack`` to this node."""
        p = self._desired(pack)
        return p is not None and p.get("state") in ("placed", "running", "stopping")

    def generation_here(self, pack: str) -> int | None:
        """The generation of ``pack`` this node is assigned to run, None when it runs none here."""
        p = self._desired(pack)
        return p.get("generation") if p is not None and self.assigned_here(pack) else None

    async def locate(self, pack: str, fresh: bool = False) -> tuple[str, str]:
        """(node, API address) where ``pack`` is (or last was) placed."""
        if self._locate_local is not None:
            node, address, state = self._locate_local(pack)
            if node is None:
                raise WrongState(f"pack {pack} is not on any node ({state})")
            return node, address
        hit = self._cache.get(pack)
        now = time.monotonic()
        if hit is not None and hit[0] > now and not fresh:
            return hit[1], hit[2]
        p = (await self.link.call("GET", f"/v1/packs/{pack}", params={"stale": 1}))["pack"]
        if p.get("node") is None:
            raise WrongState(f"pack {pack} is not on any node ({p.get('state')})")
        node_id = p["node"]
        addr = self._nodes.get(node_id)
        if addr is None or fresh:
            addr = (await self.link.call("GET", f"/v1/nodes/{node_id}", params={"stale": 1}))["node"]["address"]
            self._nodes[node_id] = addr
        self._cache[pack] = (now + CACHE_S, node_id, addr)
        return node_id, addr

    async def node_down(self, node: str) -> bool:
        """The servers have declared ``node`` down (its packs are being moved)."""
        try:
            view = (await self.link.call("GET", f"/v1/nodes/{node}", params={"stale": 1}))["node"]
        except NotFound:
            return True  # gone from the cluster altogether
        return view.get("state") == NodeState.DOWN.value

    def forget(self, pack: str) -> None:
        self._cache.pop(pack, None)

    async def send(self, address: str, method: str, path: str, *, params: dict[str, Any] | None = None,
                   json: Any = None, auth: str | None = None, timeout: float | None = None) -> Any:
        """One hop to another agent; its error answers come back as the same typed errors."""
        return await self.hops.send(address, method, path, params=params, json=json, auth=auth,
                                    timeout=timeout or self.timeout_s)

    async def route(self, request: Request, pack: str, local: Any, *, method: str, path: str,
                    params: dict[str, Any] | None = None, json: Any = None, auth: str | None = None,
                    timeout: float | None = None, here: bool | None = None) -> Any:
        """Serve with ``local()`` when the pack is here, else hop to its node (once more on a stale
        cache) with the caller's own credential, for that node to judge (``auth`` overrides it)."""
        auth = auth or request.headers.get("authorization") or None
        if here is None:
            here = self.assigned_here(pack)
        if here or request.headers.get(HOP):
            return await local()
        for attempt in (0, 1):
            node, address = await self.locate(pack, fresh=attempt == 1)
            if node == self.me:
                return await local()
            if not address:
                raise Unavailable(f"node {node} of pack {pack} has no API address")
            try:
                return await self.send(address, method, path, params=params, json=json, auth=auth, timeout=timeout)
            except NotFound:
                self.forget(pack)
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")
