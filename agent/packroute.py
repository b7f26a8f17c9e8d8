"""Routing a request about a pack to the node that runs it (logs, kill, status, yips).

Any agent takes these requests. It finds the pack's node — in its own replica (servers, a local
read) or by asking a server (client agents, cached for a second) — and passes the request to
that node's API with an ``x-canidae-hop`` header; a node that gets a hopped request for a pack it
does not hold answers ``NotFound`` instead of routing again, so a request is never bounced around.
This module owns that lookup and the hop; the handlers decide what the request means.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request

from canidae.core.errors import CanidaeError, NotFound, Unavailable, WrongState

if TYPE_CHECKING:
    from canidae.agent.daemon import Agent

HOP = "x-canidae-hop"
CACHE_S = 1.0


class PackRouter:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._cache: dict[str, tuple[float, str, str]] = {}  # pack -> (expires, node, address)
        self._nodes: dict[str, str] = {}  # node -> API address (client agents)

    @property
    def me(self) -> str:
        return self.agent.cfg.node_id

    def assigned_here(self, pack: str) -> bool:
        """The reconciler's view: the cluster assigns ``pack`` to this node."""
        p = self.agent.reconciler.desired.get(pack)
        return p is not None and p.get("state") in ("placed", "running", "stopping")

    async def locate(self, pack: str, fresh: bool = False) -> tuple[str, str]:
        """(node, API address) where ``pack`` is (or last was) placed."""
        agent = self.agent
        if agent.replica is not None:
            with agent.replica.lock:
                st = agent.replica.state
                rec = st.packs.get(pack)
                if rec is None:
                    raise NotFound(f"no pack {pack!r}")
                if rec.node is None:
                    raise WrongState(f"pack {pack} is not on any node ({rec.state.value})")
                node = st.nodes.get(rec.node)
                return rec.node, node.address if node is not None else ""
        hit = self._cache.get(pack)
        now = time.monotonic()
        if hit is not None and hit[0] > now and not fresh:
            return hit[1], hit[2]
        p = (await agent._call_servers("GET", f"/v1/packs/{pack}", params={"stale": 1}))["pack"]
        if p.get("node") is None:
            raise WrongState(f"pack {pack} is not on any node ({p.get('state')})")
        node_id = p["node"]
        addr = self._nodes.get(node_id)
        if addr is None or fresh:
            addr = (await agent._call_servers("GET", f"/v1/nodes/{node_id}", params={"stale": 1}))["node"]["address"]
            self._nodes[node_id] = addr
        self._cache[pack] = (now + CACHE_S, node_id, addr)
        return node_id, addr

    def forget(self, pack: str) -> None:
        self._cache.pop(pack, None)

    async def send(self, address: str, method: str, path: str, *, params: dict[str, Any] | None = None,
                   json: Any = None, auth: str | None = None, timeout: float | None = None) -> Any:
        """One hop to another agent; its error answers come back as the same typed errors."""
        assert self.agent.http is not None
        headers = {HOP: "1"}
        if auth is not None:
            headers["authorization"] = auth
        try:
            r = await self.agent.http.request(method, f"http://{address}{path}", params=params, json=json,
                                              headers=headers, timeout=timeout or self.agent.cfg.request_timeout_s)
        except httpx.HTTPError as e:
            raise Unavailable(f"node at {address} unreachable: {type(e).__name__}") from None
        try:
            data = r.json()
        except ValueError:
            raise Unavailable(f"node at {address} answered HTTP {r.status_code} without JSON") from None
        if r.status_code >= 400:
            raise CanidaeError.from_wire(data, r.status_code)
        return data

    async def route(self, request: Request, pack: str, local: Any, *, method: str, path: str,
                    params: dict[str, Any] | None = None, json: Any = None, auth: str | None = None,
                    timeout: float | None = None, here: bool | None = None) -> Any:
        """Serve with ``local()`` when the pack is here, else hop to its node (once more on a stale cache)."""
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
