"""How an agent reaches other agents: ``ServerLink`` (to the servers) and ``AgentHops`` (to one agent).

``ServerLink`` is the one way an agent talks to the control plane: node registration,
heartbeats, assignment long-polls and reports of its node runtime, reads a follower takes from
the leader, and requests a client agent passes on. It

* tries the server it believes leads first (every answer naming ``leader_api`` updates that),
  then the others;
* gives each attempt its own deadline (``attempt_s``, about one election timeout): a leader
  that is paused or cut off accepts connections but never answers, and waiting out the whole
  request timeout on it would stall every write for seconds. Writes carry request ids, so the
  next attempt on another server is safe: the state machine answers a repeated id once;
* retries once on a fresh connection when a kept-alive one turns out closed by the other side
  (the request never reached the server, or its answer was cut: either way safe to repeat);
* turns answers back into the typed errors of ``canidae.core.errors``; ``Unavailable`` from a
  server (no leader, unreachable) moves on to the next one;
* waits out a 429 (``Overloaded``) as its ``Retry-After`` says, with jitter, within the call's
  deadline and at most ``OVERLOAD_RETRIES`` times (agent-internal routes are never refused, so
  this concerns the reads and writes it makes for others). ``pass_on`` hands a 429 back to the
  caller unchanged: the caller waits, not the agent in the middle.

``AgentHops`` carries small JSON requests to one given agent (yips and exec calls routed to the
node that holds a pack) on kept-alive raw HTTP/1.1 streams, which cost a fraction of a general
client's overhead on the yip path.

Both speak TLS verified against the cluster CA (``ca``: its certificate file; see
``canidae.agent.client.tls``): an agent whose certificate the CA did not sign is not reached at
all. ``ca=None`` is plain HTTP, for a loopback cluster made with ``--insecure-http``.

Both reuse connections, and a peer closes a connection it has kept idle for its keep-alive
timeout (the agent config's ``keep_alive_s``, or ``CANIDAE_KEEP_ALIVE_S``; the same on every agent
of a cluster). A
request written in the instant the peer closes is lost with the connection: that was the
"unreachable: IncompleteReadError" of relayed yips under load. So, three guards:

* our pooled connections are dropped after ``idle_s`` (a third of the keep-alive timeout), well
  before the peer would close them;
* a pooled connection the peer has already closed (end of stream seen) is never used;
* a request that fails on a pooled connection is sent once more on a connection opened for it,
  never on another pooled one that may be just as stale. Every request an agent sends another is
  safe to repeat: writes carry request ids, yips carry ids and the receiver drops duplicates.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from canidae.agent.client.calls import OVERLOAD_RETRIES, decode_answer, overload_wait
from canidae.agent.client.tls import client_context, tls_problem
from canidae.core.errors import CanidaeError, Overloaded, Timeout, Unavailable

HOP = "x-canidae-hop"
DEFAULT_KEEP_ALIVE_S = 30.0  # agents' HTTP server keeps idle connections this long (config: keep_alive_s)


def idle_s(keep_alive: float) -> float:
    """How long our pooled connections may stay idle: a third of the peers' keep-alive timeout, so
    that a slow event loop or a late timer never lets us pick one the peer is closing."""
    return keep_alive / 3


class ServerLink:
    def __init__(self, servers: list[str], token: str, *, timeout_s: float = 5.0, attempt_s: float = 1.0,
                 ca: str | None = None, idle: float = idle_s(DEFAULT_KEEP_ALIVE_S)) -> None:
        self.servers = list(servers)
        self.timeout_s = timeout_s
        self.attempt_s = attempt_s
        self.scheme = "http" if ca is None else "https"
        verify = True if ca is None else client_context(ca)
        self.leader_hint: str | None = None
        timeouts = httpx.Timeout(timeout_s, connect=min(1.0, attempt_s))
        headers = {"authorization": f"Bearer {token}"}
        self.http = httpx.AsyncClient(
            timeout=timeouts, headers=headers, verify=verify,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=idle))
        # The second try of a request whose pooled connection failed: a connection of its own
        # (httpx would hand out another pooled one, which may be just as stale).
        self.fresh = httpx.AsyncClient(timeout=timeouts, headers=headers, verify=verify,
                                       limits=httpx.Limits(max_connections=64, max_keepalive_connections=0))

    async def close(self) -> None:
        await self.http.aclose()
        await self.fresh.aclose()

    def order(self, prefer: str | None = None) -> list[str]:
        first = prefer or self.leader_hint
        if first in self.servers:
            return [first] + [a for a in self.servers if a != first]  # type: ignore[list-item]
        return list(self.servers)

    async def _send(self, api: str, method: str, path: str, *, json: Any, params: dict[str, Any] | None,
                    timeout: float, headers: dict[str, str] | None = None) -> httpx.Response:
        url = f"{self.scheme}://{api}{path}"
        try:
            return await self.http.request(method, url, json=json, params=params, timeout=timeout,
                                           headers=headers)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            # A kept-alive connection closed under us: once more, on a new one.
            return await self.fresh.request(method, url, json=json, params=params, timeout=timeout,
                                            headers=headers)

    async def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                   timeout: float | None = None, attempt_s: float | None = None, prefer: str | None = None) -> Any:
        """Ask the servers (leader first) until one answers; typed errors for error answers.

        ``timeout`` bounds the whole call, ``attempt_s`` each try (long-polls pass their wait).
        """
        total = timeout if timeout is not None else self.timeout_s
        per_try = attempt_s if attempt_s is not None else min(total, self.attempt_s)
        deadline = time.monotonic() + total
        last: CanidaeError = Unavailable("no server reachable")
        refused = 0
        while True:
            for api in self.order(prefer):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise last
                try:
                    r = await self._send(api, method, path, json=json, params=params, timeout=min(per_try, left))
                except httpx.TimeoutException:
                    last = Timeout(f"server {api} did not answer within {min(per_try, left):.1f} s")
                    if self.leader_hint == api:
                        self.leader_hint = None
                    continue
                except httpx.HTTPError as e:
                    last = Unavailable(f"server {api} unreachable: {tls_problem(e) or type(e).__name__}")
                    if self.leader_hint == api:
                        self.leader_hint = None
                    continue
                try:
                    data = decode_answer(api, r)
                except Unavailable as e:
                    last = e
                    continue
                except Overloaded as e:
                    refused += 1
                    wait = overload_wait(e)
                    if refused > OVERLOAD_RETRIES or time.monotonic() + wait >= deadline:
                        raise
                    await asyncio.sleep(wait)
                    last = e
                    break
                if isinstance(data, dict) and isinstance(data.get("leader_api"), str):
                    self.leader_hint = data["leader_api"]
                return data
            if time.monotonic() + 0.05 >= deadline:
                raise last
            await asyncio.sleep(0.05)

    async def pass_on(self, method: str, path: str, *, params: dict[str, Any], body: Any, auth: str,
                      timeout: float | None = None) -> tuple[int, bytes, str | None]:
        """A request a client agent hands to a server unchanged, with the caller's ``auth`` header:
        (status, body, its ``X-Canidae-Index`` header) of the first server that answers with
        anything but 503 (no leader there)."""
        total = timeout if timeout is not None else self.timeout_s
        deadline = time.monotonic() + total
        last: CanidaeError = Unavailable("no server reachable")
        while True:
            for api in self.order():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    r = await self._send(api, method, path, json=body, params=params,
                                         timeout=min(left, max(self.attempt_s, total if method == "GET" else 0)),
                                         headers={"authorization": auth})
                except httpx.TimeoutException:
                    last = Timeout(f"server {api} did not answer in time")
                    continue
                except httpx.HTTPError as e:
                    last = Unavailable(f"server {api} unreachable: {tls_problem(e) or type(e).__name__}")
                    continue
                if r.status_code == 503:
                    continue
                return r.status_code, r.content, r.headers.get("x-canidae-index")
            if time.monotonic() + 0.05 >= deadline:
                raise last
            await asyncio.sleep(0.05)


class AgentHops:
    """Kept-alive HTTP/1.1 streams to other agents, one request at a time per stream."""

    MAX_IDLE = 16

    def __init__(self, token: str, idle: float = idle_s(DEFAULT_KEEP_ALIVE_S), ca: str | None = None) -> None:
        self.token = token
        self.ssl = None if ca is None else client_context(ca)
        self.idle_s = idle
        self.idle: dict[str, list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def send(self, address: str, method: str, path: str, *, params: dict[str, Any] | None = None,
                   json: Any = None, auth: str | None = None, timeout: float = 5.0) -> Any:
        """One hop to the agent at ``address``; its error answers come back as the same typed errors.

        ``Unavailable`` only when that agent cannot be reached on a fresh connection either.
        """
        if params:
            path = f"{path}?{urlencode(params)}"
        body = b"" if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        try:
            status, raw = await self.request(address, method, path, body, auth or f"Bearer {self.token}", timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"node at {address} did not answer within {timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            why = tls_problem(e) or f"{type(e).__name__}: {e}"
            raise Unavailable(f"node at {address} unreachable: {why}") from None
        try:
            data = jsonlib.loads(raw)
        except ValueError:
            raise Unavailable(f"node at {address} answered HTTP {status} without JSON") from None
        if status >= 400:
            raise CanidaeError.from_wire(data, status)
        return data

    def _take(self, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        pooled = self.idle.get(address)
        now = time.monotonic()
        while pooled:
            since, reader, writer = pooled.pop()
            if now - since < self.idle_s and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def request(self, address: str, method: str, path: str, body: bytes, auth: str,
                      timeout: float) -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: {auth}\r\n{HOP}: 1\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        conn = self._take(address)
        for fresh in (conn is None, True):
            if conn is None:
                host, _, port = address.rpartition(":")
                conn = await asyncio.wait_for(asyncio.open_connection(
                    host, int(port), ssl=self.ssl, server_hostname=host.strip("[]") if self.ssl else None), timeout)
            reader, writer = conn
            try:
                writer.write(head + body)
                status, data, keep = await asyncio.wait_for(self._answer(reader), timeout)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                writer.close()
                if fresh:
                    raise
                conn = None  # the pooled stream was closed by the other side: once more, on a new one
                continue
            except BaseException:
                writer.close()
                raise
            pool = self.idle.setdefault(address, [])
            if keep and len(pool) < self.MAX_IDLE:
                pool.append((time.monotonic(), reader, writer))
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

    def close(self) -> None:
        for pool in self.idle.values():
            for _, _, writer in pool:
                writer.close()
        self.idle.clear()
