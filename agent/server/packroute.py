"""Routing a request about a pack to the node that runs it (logs, kill, status, yips).

Any agent takes these requests. It finds the pack's node — in its own replica (servers, a local
read) or by asking a server (client agents, cached for a second) — and passes the request to
that node's API with an ``x-canidae-hop`` header; a node that gets a hopped request for a pack it
does not hold answers ``NotFound`` instead of routing again, so a request is never bounced around.
This module owns that lookup and the hop; the handlers decide what the request means.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

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
        self.pool = HopPool()

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
        if params:
            path = f"{path}?{urlencode(params)}"
        body = b"" if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        try:
            status, raw = await self.pool.request(address, method, path, body,
                                                  auth or f"Bearer {self.agent.cfg.token}",
                                                  timeout or self.agent.cfg.request_timeout_s)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            raise Unavailable(f"node at {address} unreachable: {type(e).__name__}") from None
        try:
            data = jsonlib.loads(raw)
        except ValueError:
            raise Unavailable(f"node at {address} answered HTTP {status} without JSON") from None
        if status >= 400:
            raise CanidaeError.from_wire(data, status)
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


class HopPool:
    """Kept-alive HTTP/1.1 connections to other agents, for hops on the yip path.

    A hop is one small JSON request and answer; writing it on a pooled stream costs a fraction of
    a general-purpose client's overhead, which counts when a yip crosses two agents. A connection
    is used by one request at a time; one that fails while idle is replaced once.
    """

    MAX_IDLE = 16

    def __init__(self) -> None:
        self.idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def request(self, address: str, method: str, path: str, body: bytes, auth: str,
                      timeout: float) -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: {auth}\r\n{HOP}: 1\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        for attempt in (0, 1):
            pooled = self.idle.get(address)
            conn = pooled.pop() if pooled else None
            fresh = conn is None
            if conn is None:
                host, _, port = address.rpartition(":")
                conn = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
            reader, writer = conn
            try:
                writer.write(head + body)
                status, data, keep = await asyncio.wait_for(self._answer(reader), timeout)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                writer.close()
                if fresh or attempt:
                    raise
                continue  # a kept connection the other side had closed: once more on a new one
            except BaseException:
                writer.close()
                raise
            if keep and len(self.idle.setdefault(address, [])) < self.MAX_IDLE:
                self.idle[address].append(conn)
            else:
                writer.close()
            return status, data
        raise AssertionError("unreachable")

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, keep, chunked = 0, True, False
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value == b"close":
                keep = False
            elif name == b"transfer-encoding" and value == b"chunked":
                chunked = True
        if not chunked:
            return status, await reader.readexactly(length), keep
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return status, b"".join(p[:-2] for p in parts), keep
