"""The pysyncobj replica for real (three members in one process, real sockets, real files):
forked zstd snapshots, restart from snapshot + journal, a wiped member rebuilt by snapshot."""

import os
import shutil
import socket

import pytest

from canidae.agent.config import RaftSettings
from canidae.agent.ops.waiting import wait_until
from canidae.agent.server.replica import Replica, encode_entry
from canidae.core.commands import CreatePacks, RegisterNode, encode_batch
from canidae.core.state import ClusterState
from canidae.core.types import Location, Node, PackSpec, Resources


def _ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return [f"127.0.0.1:{p}" for p in ports]


def _bindable(addr):
    host, _, port = addr.rpartition(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


SETTINGS = RaftSettings(compaction_min_entries=40, compaction_min_time_s=3600.0)


def _start(addrs, root, i):
    return Replica(addrs[i], [a for a in addrs if a != addrs[i]], os.path.join(root, f"r{i}"), "secret",
                   SETTINGS, ClusterState)


def _leader(reps):
    wait_until(lambda: any(r.is_leader() for r in reps), 10, "a leader")
    return next(r for r in reps if r.is_leader())


def _write(rep, k):
    cmds = [CreatePacks(id=f"c{k}", at=k, specs=(PackSpec(f"p{k}"),))]
    rep.apply_entry(encode_entry(encode_batch(cmds)), sync=True, timeout=5)


@pytest.fixture
def cluster(tmp_path):
    addrs = _ports(3)
    reps = [_start(addrs, str(tmp_path), i) for i in range(3)]
    yield addrs, reps, str(tmp_path)
    for r in reps:
        r.destroy()


def test_snapshot_restart_and_rebuild_of_a_wiped_member(cluster):
    addrs, reps, root = cluster
    leader = _leader(reps)
    node = Node("n1", Location("z1", "r1", "c1"), Resources(100_000, 100_000, 10_000))
    leader.apply_entry(encode_entry(encode_batch([RegisterNode(id="reg", at=0, node=node)])), sync=True, timeout=5)
    for k in range(120):
        _write(leader, k)
    for r in reps:
        r.forceLogCompaction()
    wait_until(lambda: all(os.path.exists(os.path.join(root, f"r{i}", "raft.snapshot")) for i in range(3)), 15,
          "snapshots written by forked children")
    with open(os.path.join(root, "r0", "raft.snapshot"), "rb") as f:
        assert f.read(8) == b"CNDSNAP1"
    wait_until(lambda: len({r.state.digest() for r in reps}) == 1, 10, "equal replicas")
    digest = reps[0].state.digest()
    # whole group restarts from snapshot + journal
    for r in reps:
        r.destroy()
    wait_until(lambda: all(_bindable(a) for a in addrs), 10, "the old members' ports to be free")
    reps[:] = [_start(addrs, root, i) for i in range(3)]
    leader = _leader(reps)
    # A generous deadline: on a loaded machine three members replay journals and elect at once.
    wait_until(lambda: all(len(r.state.packs) == 120 for r in reps), 60, "state restored")
    assert {r.state.digest() for r in reps} == {digest}
    # a member loses its disk: it comes back from the leader's snapshot
    victim = next(i for i, r in enumerate(reps) if r is not leader)
    reps[victim].destroy()
    shutil.rmtree(os.path.join(root, f"r{victim}"))
    for k in range(120, 130):
        _write(leader, k)
    reps[victim] = _start(addrs, root, victim)
    wait_until(lambda: len(reps[victim].state.packs) == 130, 20, "wiped member rebuilt")
    wait_until(lambda: len({r.state.digest() for r in reps}) == 1, 10, "equal replicas after rebuild")
