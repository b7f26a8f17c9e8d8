"""A throwaway etcd cluster on loopback, for benchmarks that compare against it.

Owns the etcd members' processes: starts N members of Debian's ``etcd-server`` (``/usr/bin/etcd``)
with etcd's default timings, each with a data dir of its own under a temporary root and ports
found free by the same search the local canidae cluster uses; finds the leader through the v3
HTTP/JSON gateway; SIGKILLs and restarts one member; closes (kills every member it started, by
pid, and removes the root).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from canidae.agent.ops.localcluster import find_base_port
from canidae.agent.ops.waiting import wait_until

INSTALL_HINT = "etcd is not installed: on Debian or Ubuntu, 'apt-get install etcd-server etcd-client'"


def etcd_binary() -> str | None:
    return shutil.which("etcd")


@dataclass
class EtcdMember:
    name: str
    client: str  # host:port of its client URL (and of the HTTP/JSON gateway)
    peer: str
    data_dir: str
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class EtcdCluster:
    root: str
    members: list[EtcdMember]
    initial_cluster: str
    token: str = field(default="canidae-bench")

    @classmethod
    def start(cls, size: int = 3, timeout: float = 30.0) -> EtcdCluster:
        binary = etcd_binary()
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        root = tempfile.mkdtemp(prefix="etcd-bench-")
        base = find_base_port(size, 0)
        members = [EtcdMember(f"e{i}", f"127.0.0.1:{base + i}", f"127.0.0.1:{base + 100 + i}",
                              os.path.join(root, f"e{i}")) for i in range(size)]
        cluster = cls(root, members, ",".join(f"{m.name}=http://{m.peer}" for m in members))
        try:
            for m in members:
                cluster._launch(m)
            wait_until(lambda: all(cluster.healthy(m) for m in members), timeout, "every etcd member healthy", 0.1)
            cluster.wait_leader(timeout)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _launch(self, m: EtcdMember) -> None:
        os.makedirs(m.data_dir, exist_ok=True)
        with open(os.path.join(self.root, f"{m.name}.log"), "ab") as log:
            m.proc = subprocess.Popen(
                [etcd_binary() or "etcd", "--name", m.name, "--data-dir", m.data_dir,
                 "--listen-client-urls", f"http://{m.client}", "--advertise-client-urls", f"http://{m.client}",
                 "--listen-peer-urls", f"http://{m.peer}", "--initial-advertise-peer-urls", f"http://{m.peer}",
                 "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", self.token, "--logger", "zap", "--log-level", "warn"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    # ------------------------------------------------------------------ look

    def alive(self, m: EtcdMember) -> bool:
        return m.proc is not None and m.proc.poll() is None

    def healthy(self, m: EtcdMember) -> bool:
        try:
            return bool(self.alive(m) and httpx.get(f"http://{m.client}/health", timeout=0.5).json()["health"] == "true")
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    def leader(self) -> int | None:
        """The index of the member that is leader right now, by its own status, if any."""
        for i, m in enumerate(self.members):
            if not self.alive(m):
                continue
            try:
                s = httpx.post(f"http://{m.client}/v3/maintenance/status", json={}, timeout=0.5).json()
            except (httpx.HTTPError, ValueError):
                continue
            if s.get("leader") and s.get("leader") == s.get("header", {}).get("member_id"):
                return i
        return None

    def wait_leader(self, timeout: float = 10.0) -> int:
        def found() -> tuple[int] | None:  # a tuple: member 0 is a leader too
            i = self.leader()
            return None if i is None else (i,)
        return wait_until(found, timeout, "an etcd leader", 0.05)[0]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ act

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` and reap it."""
        m = self.members[i]
        if m.proc is not None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start member ``i`` again on its data dir and wait until it is healthy."""
        m = self.members[i]
        self._launch(m)
        wait_until(lambda: self.healthy(m), timeout, f"{m.name} healthy again", 0.05)

    def close(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGKILL)
                m.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":  # a smoke check: start, show the leader, stop
    t0 = time.monotonic()
    with EtcdCluster.start() as c:
        print(f"3 members ready in {time.monotonic() - t0:.2f} s, leader {c.members[c.wait_leader()].name}")
