"""Raft reliability with real processes: SIGKILL, SIGSTOP, whole-cluster crash-restart, the Raft port.

Each test is bounded in time, uses loopback only, and stops every process it started.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import socket
import threading
import time
import uuid
import zlib

import httpx
import pytest

from canidae.agent.client import Client
from canidae.core.errors import AlreadyExists, CanidaeError
from harness import LocalCluster, local_cluster, wait_until


@pytest.fixture
def cluster(tmp_path):
    c = local_cluster(str(tmp_path / "cluster"), servers=3)
    try:
        yield c
    finally:
        c.close()


def _digests(cluster: LocalCluster, ids: list[str]) -> dict[str, tuple[int, str]]:
    out = {}
    for i in ids:
        a = cluster.agent(i)
        d = httpx.get(cluster.url(a, "/v1/digest"), headers={"authorization": f"Bearer {cluster.token}"},
                      timeout=5, verify=cluster.verify).json()
        out[i] = (d["applied"], d["digest"])
    return out


def _replicas_identical(cluster: LocalCluster, ids: list[str], timeout: float = 15.0) -> None:
    def same() -> bool:
        d = _digests(cluster, ids)
        return len(set(d.values())) == 1
    wait_until(same, timeout, "replicas to converge to one digest", interval=0.1)


def _spawn_all(cluster: LocalCluster, names: list[str], workers: int, acked: list[str], errors: list[str],
               started: threading.Event | None = None) -> None:
    lock = threading.Lock()
    queue = list(names)

    def worker() -> None:
        with cluster.client(timeout=3.0) as c:
            while True:
                with lock:
                    if not queue:
                        return
                    name = queue.pop()
                rid = uuid.uuid4().hex
                try:
                    c.create_packs([{"name": name}], request_id=rid, retry_for=20.0)
                except AlreadyExists:
                    errors.append(f"{name}: spawned twice (retry not deduplicated)")
                    continue
                except CanidaeError as e:
                    errors.append(f"{name}: {e.message}")
                    continue
                with lock:
                    acked.append(name)
                    if started is not None and len(acked) >= 150:
                        started.set()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


def test_sigkill_leader_during_1000_concurrent_spawns_loses_nothing(cluster):
    names = [f"p{i:04d}" for i in range(1000)]
    acked: list[str] = []
    errors: list[str] = []
    started = threading.Event()
    t = threading.Thread(target=_spawn_all, args=(cluster, names, 16, acked, errors, started))
    t.start()
    assert started.wait(60), "spawns did not start"
    victim = cluster.wait_leader()
    cluster.kill(victim)
    t.join(timeout=150)
    assert not t.is_alive()
    assert not errors, errors[:5]
    assert len(acked) == 1000
    survivors = [s for s in ("s1", "s2", "s3") if s != victim]
    cluster.restart(victim)
    _replicas_identical(cluster, ["s1", "s2", "s3"], timeout=30)
    for s in ("s1", "s2", "s3"):
        with Client(cluster.target([s])) as c:
            have = {p["name"]: p for p in c.iter_packs(stale=True)}
        missing = set(acked) - set(have)
        assert not missing, f"{s} lost {len(missing)} acknowledged spawns"
        assert len(have) == 1000
    del survivors


ROUNDS = int(os.environ.get("CANIDAE_CRASH_ROUNDS", "5"))


def test_whole_cluster_sigkill_and_restart_in_random_order_loses_nothing(cluster):
    rng = random.Random(7)
    acked: list[str] = []
    ids = ["s1", "s2", "s3"]
    for rnd in range(ROUNDS):
        errors: list[str] = []
        _spawn_all(cluster, [f"r{rnd}-{i}" for i in range(60)], 6, acked, errors)
        assert not errors, errors[:3]
        for i in ids:
            cluster.kill(i)
        order = ids[:]
        rng.shuffle(order)
        for i in order:
            cluster.restart(i)
            time.sleep(rng.uniform(0, 1.5))  # the staggered restart is the scenario, not a wait
        cluster.wait_leader(timeout=15)
    _replicas_identical(cluster, ids, timeout=30)
    with cluster.client() as c:
        have = {p["name"] for p in c.iter_packs()}
    assert set(acked) <= have, f"lost {len(set(acked) - have)} acknowledged writes"


def test_isolated_leader_acknowledges_nothing_and_steps_down(cluster):
    leader = cluster.wait_leader()
    followers = [s for s in ("s1", "s2", "s3") if s != leader]
    with cluster.client() as c:
        c.create_packs([{"name": "before"}])
    for f in followers:
        cluster.kill(f, signal.SIGSTOP)
    try:
        api = cluster.agent(leader)["api"]
        with Client(cluster.target(apis=[api]), timeout=3.0) as c:
            with pytest.raises(CanidaeError) as exc:
                c.create_packs([{"name": "during"}], retry_for=0)
            assert exc.value.exit_code == 3
        # A cut-off leader stops acting: it no longer calls itself leader.
        wait_until(lambda: cluster.health(leader)["raft"]["state"] != "leader", 5, "the old leader to step down")
    finally:
        for f in followers:
            os.kill(cluster.agent(f)["pid"], signal.SIGCONT)
    cluster.wait_leader(timeout=15)
    with cluster.client() as c:
        c.create_packs([{"name": "after"}], retry_for=10)
        assert c.pack("before")["name"] == "before"


def test_raft_port_without_password_runs_nothing_and_changes_nothing(cluster, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    raft = cluster.agent("s1")["raft"]
    host, _, port = raft.rpartition(":")
    payload = pickle.dumps(Evil())
    for blob in (payload, zlib.compress(payload), len(payload).to_bytes(4, "big") + payload,
                 len(payload).to_bytes(4, "little") + zlib.compress(payload)):
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.sendall(blob * 3)
            try:
                s.recv(100)
            except OSError:
                pass
    with cluster.client() as c:
        c.create_packs([{"name": "still-fine"}])
    assert not marker.exists()
    assert cluster.health("s1")["ok"]
    with cluster.client() as c:
        assert [p["name"] for p in c.iter_packs()] == ["still-fine"]
        assert sorted(n["id"] for n in c.nodes()) == ["s1", "s2", "s3"]
