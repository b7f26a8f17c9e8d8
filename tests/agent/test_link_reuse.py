"""Kept-alive connections between agents: a request never fails because the peer closed a pooled
connection as the request went out (``AgentHops`` and ``ServerLink`` alike); connections idle
past the pool's limit are not reused; the keep-alive timeout comes from the config or ``CANIDAE_KEEP_ALIVE_S``.

The peer is a real HTTP/1.1 server on loopback that plays the keep-alive race on purpose: it
answers the first request of a connection and closes the connection, unanswered, when a second
request arrives on it (what a server does when its keep-alive timer fires as the request comes).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from canidae.agent.client.link import AgentHops, ServerLink, idle_s
from canidae.agent.identity import Identity
from canidae.agent.config import AgentConfig, ServerPeer, load_config, write_config
from canidae.core.errors import InvalidInput, Unavailable
from canidae.core.types import Role


class RacingPeer:
    """Counts connections and requests; a connection's second request is dropped with it."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []  # (connection number, body)
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me, served = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append((me, body))
                if served:
                    return  # the keep-alive timer fired as this request came: closed, unanswered
                served += 1
                out = json.dumps({"ok": True, "connection": me}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(out), out))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_a_hop_whose_pooled_connection_is_closed_as_it_goes_out_is_sent_again_on_a_new_one():
    async def scenario() -> None:
        peer = RacingPeer()
        address = await peer.start()
        hops = AgentHops("token")
        try:
            for i in range(4):
                got = await hops.send(address, "POST", "/v1/yips/p", json={"text": f"y{i}", "id": f"y{i}"})
                assert got["ok"] is True
        finally:
            hops.close()
            await peer.stop()
        # y0 opened connection 1; each later yip went out on the pooled connection, was dropped
        # with it, and was answered on a connection of its own.
        sent = [(conn, json.loads(body)["id"]) for conn, body in peer.requests]
        assert sent == [(1, "y0"), (1, "y1"), (2, "y1"), (2, "y2"), (3, "y2"), (3, "y3"), (4, "y3")]
    run(scenario())


def test_a_server_call_whose_pooled_connection_is_closed_as_it_goes_out_is_sent_again_on_a_new_one():
    async def scenario() -> None:
        peer = RacingPeer()
        address = await peer.start()
        link = ServerLink([address], "token", timeout_s=5.0)
        try:
            for i in range(4):
                got = await link.call("POST", "/v1/nodes/n1/reports", json={"request_id": f"r{i}"})
                assert got["ok"] is True
        finally:
            await link.close()
            await peer.stop()
        sent = [(conn, json.loads(body)["request_id"]) for conn, body in peer.requests]
        # r1 and r3 went out on a pooled connection, were dropped with it and answered on one of
        # their own (r2 found no pooled connection left: the peer had closed the only one).
        assert sent == [(1, "r0"), (1, "r1"), (2, "r1"), (3, "r2"), (3, "r3"), (4, "r3")]
    run(scenario())


def test_a_hop_never_reuses_a_connection_idle_longer_than_the_pool_allows():
    async def scenario() -> None:
        peer = RacingPeer()
        address = await peer.start()
        hops = AgentHops("token", idle=0.0)  # every pooled connection is already too old
        try:
            for i in range(3):
                await hops.send(address, "POST", "/v1/yips/p", json={"text": "x", "id": f"y{i}"})
        finally:
            hops.close()
            await peer.stop()
        assert [conn for conn, _ in peer.requests] == [1, 2, 3]  # nothing dropped, nothing resent
    run(scenario())


def test_a_hop_to_an_agent_that_is_not_listening_is_unavailable():
    async def scenario() -> None:
        peer = RacingPeer()
        address = await peer.start()
        await peer.stop()  # the port is closed now
        hops = AgentHops("token")
        with pytest.raises(Unavailable, match=f"node at {address} unreachable"):
            await hops.send(address, "POST", "/v1/yips/p", json={"text": "x"})
    run(scenario())


def test_the_keep_alive_timeout_comes_from_the_config_or_the_environment_and_the_pools_stay_below_it(tmp_path):
    path = str(tmp_path / "agent.toml")
    ident = Identity.new()
    write_config(AgentConfig(node_id="a1", role=Role.CLIENT, token=ident.node_credential("a1", Role.CLIENT),
                             identity_public_key=ident.public_key, admin_token_hash=ident.admin_hash,
                             servers=(ServerPeer("s1", "127.0.0.1:2", "127.0.0.1:3"),), insecure_http=True), path)
    assert load_config(path).keep_alive_s == 30.0
    assert load_config(path, env={"CANIDAE_KEEP_ALIVE_S": "1.5"}).keep_alive_s == 1.5
    assert idle_s(1.5) < 1.5
    for bad in ("0", "-1", "soon", "nan", "99999"):
        with pytest.raises(InvalidInput, match=r"keep_alive_s \(CANIDAE_KEEP_ALIVE_S\) must be a number of seconds"):
            load_config(path, env={"CANIDAE_KEEP_ALIVE_S": bad})
