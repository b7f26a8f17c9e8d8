"""The wire of the blocking ``Client``: HTTP/1.1 over the standard library's ``http.client``.

HTTPS verified against the cluster CA (``canidae.agent.client.tls.client_context``) unless the
cluster speaks plain HTTP; an untrusted certificate is ``Untrusted`` (waiting does not help).
Kept-alive connections per agent address (a request holds one of its own: a ``Client`` may be
shared by threads), a connect timeout and a per-request read timeout.
A request sent on a kept connection that the agent had closed meanwhile (idle keep-alive) is
sent once more on a fresh one: writes carry request ids, so a repeat is safe.

Why not httpx here: importing it costs about 60 ms, more than a whole ``canidae pack list``
otherwise takes; the CLI pays it on every command. The agents' async ``ServerLink`` keeps httpx.
Errors come out typed: ``Timeout`` when the agent did not answer in time, ``Unavailable`` when it
could not be reached (both mean: try another agent).
"""

from __future__ import annotations

import http.client
import json as jsonlib
import socket
import ssl
from typing import Any
from urllib.parse import urlencode

from canidae.agent.client.tls import tls_problem
from canidae.core.errors import Timeout, Unavailable


class Untrusted(Unavailable):
    """The agent's TLS certificate was not trusted (or it does not speak TLS): waiting does not help."""


class Answer:
    """What an agent answered: the status, the headers (lower-case names) and the body (``json()``
    parses it)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, content: bytes, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers or {}

    def json(self) -> Any:
        return jsonlib.loads(self.content)


def _query(params: dict[str, Any] | None) -> str:
    if not params:
        return ""
    # As httpx encoded them: booleans as true/false, None left out.
    items = [(k, ("true" if v else "false") if isinstance(v, bool) else v) for k, v in params.items() if v is not None]
    return "?" + urlencode(items) if items else ""


class Connections:
    """Kept connections to agents, by ``host:port``: a request takes an idle one (or opens one)
    and puts it back when done, so threads sharing a ``Client`` never share a connection."""

    MAX_IDLE = 8  # kept connections per agent

    def __init__(self, headers: dict[str, str], timeout: float, connect_timeout: float = 2.0,
                 tls: ssl.SSLContext | None = None, ca_name: str = "") -> None:
        self.headers = headers
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.tls = tls  # None: plain HTTP (a loopback cluster made with --insecure-http)
        self.ca_name = ca_name
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}

    def close(self) -> None:
        for conns in list(self._idle.values()):
            while conns:
                conns.pop().close()

    def request(self, method: str, addr: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> Answer:
        body = None if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        headers = dict(self.headers)
        if body is not None:
            headers["content-type"] = "application/json"
        target = path + _query(params)
        read_timeout = self.timeout if timeout is None else timeout
        idle = self._idle.setdefault(addr, [])
        for attempt in (0, 1):
            try:
                conn: http.client.HTTPConnection | None = idle.pop()  # atomic: no two threads get one
            except IndexError:
                conn = None
            fresh = conn is None
            try:
                if conn is None:
                    conn = self._connect(addr)
                conn.sock.settimeout(read_timeout)  # type: ignore[union-attr]
                conn.request(method, target, body=body, headers=headers)
                r = conn.getresponse()
                content = r.read()
            except TimeoutError:
                if conn is not None:
                    conn.close()
                raise Timeout(f"agent {addr} did not answer in time") from None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                problem = tls_problem(e) if self.tls is not None else None
                if problem:
                    raise Untrusted(f"agent {addr}: {problem} (the cluster CA: {self.ca_name})") from None
                if fresh or attempt:
                    raise Unavailable(f"agent {addr} unreachable ({type(e).__name__})") from None
                continue  # a kept connection the agent had closed: once more, on a fresh one
            if r.will_close or len(idle) >= self.MAX_IDLE:
                conn.close()
            else:
                idle.append(conn)
            return Answer(r.status, content, {k.lower(): v for k, v in r.getheaders()})
        raise AssertionError("unreachable")

    def _connect(self, addr: str) -> http.client.HTTPConnection:
        host, _, port = addr.rpartition(":")
        name, number = host.strip("[]") or addr, int(port) if port.isdigit() else 80
        conn = (http.client.HTTPConnection(name, number, timeout=self.connect_timeout) if self.tls is None else
                http.client.HTTPSConnection(name, number, timeout=self.connect_timeout, context=self.tls))
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        return conn
