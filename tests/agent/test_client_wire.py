"""The blocking client's wire (``canidae.agent.client.http11``) against a real HTTP server on
loopback: kept connections the server dropped are retried on a fresh one, an answer that does
not come in time is ``Timeout``, a closed port ``Unavailable``, and threads sharing one client
never share a connection."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from canidae.agent.client import Client, Target
from canidae.agent.client.http11 import Connections
from canidae.core.errors import NotFound, Timeout, Unavailable

RELEASE = threading.Event()  # what a /hold request waits for


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/hold"):
            RELEASE.wait(10)
        if self.path.startswith("/missing"):
            self._answer(404, {"error": {"code": "not_found", "message": "no such thing"}})
            return
        self._answer(200, {"path": self.path, "auth": self.headers.get("authorization")})
        if self.path.startswith("/drop"):
            self.close_connection = True  # without saying so: the client still thinks it is kept

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self._answer(200, {"echo": body})

    def _answer(self, status: int, doc: object) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    RELEASE.clear()
    yield f"127.0.0.1:{srv.server_address[1]}"
    RELEASE.set()
    srv.shutdown()
    srv.server_close()


def test_requests_carry_the_token_query_and_body(server: str) -> None:
    with Client(Target((server,), "tok", insecure_http=True)) as c:
        got = c.request("GET", "/x", params={"a": 1, "b": True, "skip": None})
        assert got == {"path": "/x?a=1&b=true", "auth": "Bearer tok"}
        assert c.request("POST", "/y", json={"k": [1, "é"]}) == {"echo": {"k": [1, "é"]}}
        with pytest.raises(NotFound, match="no such thing"):
            c.request("GET", "/missing")


def test_a_kept_connection_the_server_dropped_is_retried_on_a_fresh_one(server: str) -> None:
    conns = Connections({}, timeout=5.0)
    try:
        assert conns.request("GET", server, "/drop").json()["path"] == "/drop"
        assert conns.request("GET", server, "/after").json()["path"] == "/after"
    finally:
        conns.close()


def test_an_answer_that_does_not_come_in_time_is_a_timeout(server: str) -> None:
    with Client(Target((server,), "t", insecure_http=True)) as c:
        with pytest.raises(Timeout):
            c.request("GET", "/hold", timeout=0.3)
        RELEASE.set()
        assert c.request("GET", "/next")["path"] == "/next"  # the client goes on


def test_a_closed_port_is_unavailable() -> None:
    with Client(Target(("127.0.0.1:1",), "t", insecure_http=True)) as c, pytest.raises(Unavailable):
        c.request("GET", "/x")


def test_threads_sharing_a_client_never_share_a_connection(server: str) -> None:
    errors: list[BaseException] = []
    with Client(Target((server,), "t", insecure_http=True)) as c:
        def work(i: int) -> None:
            try:
                for j in range(20):
                    assert c.request("GET", f"/t{i}-{j}")["path"] == f"/t{i}-{j}"
            except BaseException as e:  # noqa: BLE001 - handed to the test
                errors.append(e)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
