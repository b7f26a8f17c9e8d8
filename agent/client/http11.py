"""The wire of the blocking ``Client``: HTTP/1.1 over the standard library's ``http.client``.

One keep-alive connection per agent address, a connect timeout and a per-request read timeout.
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
from typing import Any
from urllib.parse import urlencode

from canidae.core.errors import Timeout, Unavailable


class Answer:
    """What an agent answered: the status and the body (``json()`` parses it)."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return jsonlib.loads(self.content)


def _query(params: dict[str, Any] | None) -> str:
    if not params:
        return ""
    # As httpx encoded them: booleans as true/false, None left out.
    items = [(k, ("true" if v else "false") if isinstance(v, bool) else v) for k, v in params.items() if v is not None]
    return "?" + urlencode(items) if items else ""


class Connections:
    """Kept connections to agents, by ``host:port``. Not thread-safe: one per ``Client``."""

    def __init__(self, headers: dict[str, str], timeout: float, connect_timeout: float = 2.0) -> None:
        self.headers = headers
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def request(self, method: str, addr: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> Answer:
        body = None if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        headers = dict(self.headers)
        if body is not None:
            headers["content-type"] = "application/json"
        target = path + _query(params)
        read_timeout = self.timeout if timeout is None else timeout
        for attempt in (0, 1):
            conn = self._conns.get(addr)
            fresh = conn is None
            try:
                if conn is None:
                    conn = self._conns[addr] = self._connect(addr)
                conn.sock.settimeout(read_timeout)  # type: ignore[union-attr]
                conn.request(method, target, body=body, headers=headers)
                r = conn.getresponse()
                content = r.read()
                if r.will_close:
                    self._drop(addr)
                return Answer(r.status, content)
            except TimeoutError:
                self._drop(addr)
                raise Timeout(f"agent {addr} did not answer in time") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop(addr)
                if fresh or attempt:
                    raise Unavailable(f"agent {addr} unreachable ({type(e).__name__})") from None
                # A kept connection the agent had closed: once more, on a fresh one.
        raise AssertionError("unreachable")

    def _connect(self, addr: str) -> http.client.HTTPConnection:
        host, _, port = addr.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]") or addr, int(port) if port.isdigit() else 80,
                                          timeout=self.connect_timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        return conn

    def _drop(self, addr: str) -> None:
        conn = self._conns.pop(addr, None)
        if conn is not None:
            conn.close()
