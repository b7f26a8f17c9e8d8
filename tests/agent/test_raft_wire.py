"""The Raft port binds its configured address (real replicas, real sockets)."""

from __future__ import annotations

import socket

import pytest
from raft_group import Group


@pytest.fixture
def group(tmp_path):
    with Group(str(tmp_path)) as g:
        yield g


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def test_the_raft_port_binds_only_its_configured_address(group):
    for rep, addr in zip(group.members, group.addrs):
        server = rep._SyncObj__transport._server._TcpServer__socket
        assert server.getsockname() == _host_port(addr)
    # Another loopback address of this host reaches a port bound to 0.0.0.0, not ours.
    _, port = _host_port(group.addrs[0])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5).close()
