"""Real agents on loopback for integration tests: unique ports and dirs per test, always cleaned up."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from canidae.agent.ops import localcluster
from canidae.agent.client import Client, Target
from canidae.core.types import Resources


def pick_base_port(servers: int, clients: int) -> int:
    """Free ports for a layout, in a range of this xdist worker's own so workers never race."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    slot = int(worker[2:]) if worker[2:].isdigit() else 0
    return localcluster.find_base_port(servers, clients, lo=20_000 + slot * 1_500, hi=21_500 + slot * 1_500)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # conditions poll live agents; a failed poll just means "not yet"
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


@dataclass
class LocalCluster:
    data_dir: str
    servers: int = 3
    clients: int = 0
    capacity: Resources = Resources(1_000_000, 1_048_576, 50_000)
    info: dict[str, Any] = field(default_factory=dict)

    def up(self) -> LocalCluster:
        layout = localcluster.ClusterLayout(servers=self.servers, clients=self.clients,
                                            base_port=pick_base_port(self.servers, self.clients),
                                            capacity=self.capacity)
        self.info = localcluster.up(layout, self.data_dir, os.path.join(self.data_dir, "cli.toml"), timeout=30)
        return self

    @property
    def agents(self) -> list[dict[str, Any]]:
        return self.info["agents"]

    @property
    def token(self) -> str:
        return self.info.get("token") or localcluster.read_cluster_state(self.data_dir)["token"]

    def client(self, timeout: float = 10.0) -> Client:
        apis = tuple(a["api"] for a in self.agents if a["role"] == "server")
        return Client(Target(apis, self.token), timeout=timeout)

    def agent(self, ident: str) -> dict[str, Any]:
        return next(a for a in self.agents if a["id"] == ident)

    def pack_token(self, pack: str) -> str:
        """The token the agent of ``pack``'s node gives the members of its current run (signed with
        that agent's own credential, read from its config)."""
        import tomllib
        from canidae.core.packtoken import pack_token
        with self.client() as c:
            p = c.pack(pack)
        with open(self.agent(p["node"])["config"], "rb") as f:
            key = tomllib.load(f)["token"]
        return pack_token(key, pack, p["generation"], p["node"])

    def health(self, ident: str) -> dict[str, Any]:
        return httpx.get(f"http://{self.agent(ident)['api']}/v1/health", timeout=1.0,
                         headers={"authorization": f"Bearer {self.token}"}).json()

    def leader(self, timeout: float = 10.0) -> str:
        def find() -> str | None:
            for a in self.agents:
                if a["role"] != "server" or not localcluster._pid_alive(a["pid"], a["config"]):
                    continue
                try:
                    h = self.health(a["id"])
                except httpx.HTTPError:
                    continue
                if h.get("raft", {}).get("state") == "leader" and h["raft"].get("has_quorum"):
                    return str(a["id"])
            return None
        return wait_for(find, timeout, "a leader")

    def kill(self, ident: str, sig: int = signal.SIGKILL) -> None:
        a = self.agent(ident)
        os.kill(a["pid"], sig)
        if sig == signal.SIGKILL:
            wait_for(lambda: not localcluster._pid_alive(a["pid"], a["config"]), 5, f"{ident} to die")

    def restart(self, ident: str) -> None:
        localcluster.restart_agent(self.agent(ident))

    def down(self) -> None:
        st = localcluster.read_cluster_state(self.data_dir)
        if st is None:
            return
        # keep pids current (restarted agents), then stop everything we started
        st["agents"] = self.agents
        import json
        with open(os.path.join(self.data_dir, localcluster.STATE_FILE), "w") as f:
            json.dump(st, f)
        localcluster.down(self.data_dir, timeout=5)
