"""Network namespaces of our own (``canidae.agent.ops.netns``): made, reachable, cut, healed and
removed without a trace; stale runs of dead owners cleaned, live ones left alone. Root only, except
the choice of a subnet."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys

import pytest

from canidae.agent.ops import netns

needs_netns = pytest.mark.skipif(netns.unavailable_reason() is not None,
                                 reason=f"no network namespaces here: {netns.unavailable_reason()}")

SERVE_ONCE = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 7100))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""


def _connects(addr: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((addr, 7100), timeout=timeout) as c:
            return c.recv(2) == b"hi"
    except OSError:
        return False


def test_a_subnet_overlaps_no_route_and_no_other_run():
    taken = [ipaddress.IPv4Network("10.160.0.0/12"), ipaddress.IPv4Network("10.200.7.0/24")]
    for seed in range(200):
        net = netns._free_subnet(seed, taken)
        assert net.prefixlen == 24 and net.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))
        assert not any(net.overlaps(t) for t in taken)


@needs_netns
@pytest.mark.netns
def test_a_network_is_made_cut_healed_and_removed_without_a_trace():
    net = netns.NetnsNetwork()
    server = None
    try:
        net.create()
        addrs = net.add_nodes(["s1", "s2"])
        assert len(set(addrs.values())) == 2 and all(ipaddress.IPv4Address(a) in net.subnet for a in addrs.values())
        names = [n for n in netns._netns_names() if n.startswith(f"{netns.PREFIX}{net.run}-")]
        assert sorted(names) == sorted([net.hub, net.namespace("s1"), net.namespace("s2")])
        with open(net.registry_file) as f:
            assert json.load(f)["pid"] == os.getpid()

        # A program inside s1's namespace binds s1's address; the host reaches it through the bridge.
        server = subprocess.Popen([*net.prefix("s1"), sys.executable, "-c", SERVE_ONCE, addrs["s1"]],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert _connects(addrs["s1"])
        # So does another agent's namespace, until s1 is cut off; then again once healed.
        probe = [*net.prefix("s2"), sys.executable, "-c",
                 f"import socket; socket.create_connection(({addrs['s1']!r}, 7100), timeout=1)"]
        assert subprocess.run(probe, check=False, capture_output=True, timeout=10).returncode == 0
        net.cut("s1")
        assert not _connects(addrs["s1"], timeout=0.5)
        assert subprocess.run(probe, check=False, capture_output=True, timeout=10).returncode != 0
        net.heal("s1")
        assert _connects(addrs["s1"], timeout=2.0)
        assert net.cut_nodes == set()
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=5)
        problems = net.remove()
    assert problems == []
    assert net.leftovers() == []
    assert net.remove() == []  # idempotent


@needs_netns
@pytest.mark.netns
def test_stale_runs_of_dead_owners_are_removed_and_live_ones_kept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=False, capture_output=True,
                          text=True)
    dead_pid = int(dead.stdout)
    live = netns.NetnsNetwork()
    stale = netns.NetnsNetwork()
    try:
        live.create()
        stale.create()
        stale.add_node("s1")
        # Its owner dies without cleaning up: the registry now names a process that is gone.
        with open(stale.registry_file) as f:
            rec = json.load(f)
        rec["pid"] = dead_pid
        with open(stale.registry_file, "w") as f:
            json.dump(rec, f)
        removed = netns.remove_stale()
        assert stale.run in removed and live.run not in removed
        assert stale.leftovers() == []
        assert live.leftovers() != []
    finally:
        live.remove()
        stale.remove()
    assert live.leftovers() == [] and stale.leftovers() == []
