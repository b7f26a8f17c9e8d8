"""A local cluster on loopback: ``cluster up|down|status``.

``up`` makes the cluster's identity (``identity.toml`` in the data dir, mode 0600: the key that
issues node credentials, the Raft password, the admin token), writes one agent.toml per agent
under the data dir, each with its own node credential and never the admin token, starts each
agent as a background daemon (its own session, pid file and log file), waits for a leader and
for every agent to register, and writes the CLI config (address list and admin token, mode 0600). ``down`` stops
exactly the processes it started: a pid is signalled only while its command line still names
that agent's config, so a reused pid is never hit.

By default every agent binds 127.0.0.1. ``hosts`` places agents elsewhere on this machine: each
``AgentHost`` gives the address an agent binds and the command prefix that starts it there (a
network namespace of our own: ``canidae.agent.ops.netns``); restarts reuse the prefix.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import httpx
import tomli_w
from canidae.agent.config import AgentConfig, ServerPeer, write_config
from canidae.agent.identity import Identity
from canidae.core.errors import AlreadyExists, CanidaeError, InvalidInput, NotFound, Timeout
from canidae.core.types import Resources, Role

STATE_FILE = "cluster.json"
IDENTITY_FILE = "identity.toml"


@dataclass(frozen=True)
class ClusterLayout:
    servers: int = 3
    clients: int = 0
    base_port: int = 7100
    zones: int = 1
    capacity: Resources = Resources(1_000_000, 1_048_576, 50_000)

    def validate(self) -> None:
        if self.servers not in (1, 3, 5, 7):
            raise InvalidInput(f"--agents must be 1, 3, 5 or 7 servers (an odd Raft group), got {self.servers}")
        if not 0 <= self.clients <= 200:
            raise InvalidInput(f"--clients must be 0..200, got {self.clients}")
        if not 1024 <= self.base_port <= 65535 - 500:
            raise InvalidInput(f"--base-port must be 1024..65035, got {self.base_port}")


@dataclass(frozen=True)
class AgentHost:
    """Where one agent runs when not on loopback: the address it binds, and the command prefix that
    starts it there (``nsenter --net=... --``): prepended to ``python -m canidae agent run``."""

    address: str
    prefix: tuple[str, ...] = ()


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_base_port(servers: int, clients: int, lo: int = 10_000, hi: int = 20_000, seed: int | None = None) -> int:
    """A base port whose whole layout (API +i, Raft +100+i, clients +200+j) is free right now.

    The default range stays below Linux's ephemeral ports (32768 and up), which outgoing
    connections take at any moment, and below the ranges the test harness gives its workers.
    """
    import random
    rng = random.Random(seed if seed is not None else os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        base = rng.randrange(lo, hi - 400, 10)
        ports = [base + i for i in range(servers)] + [base + 100 + i for i in range(servers)] + \
                [base + 200 + j for j in range(clients)]
        if all(_port_free(p) for p in ports):
            return base
    raise AlreadyExists("no free port range on 127.0.0.1")


def _pid_alive(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if marker not in cmd:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def agent_ids(layout: ClusterLayout) -> list[str]:
    """The node ids of a layout's agents, servers first: s1.., then client agents c1..."""
    return [f"s{i + 1}" for i in range(layout.servers)] + [f"c{j + 1}" for j in range(layout.clients)]


def plan_configs(layout: ClusterLayout, data_dir: str, identity: Identity,
                 hosts: Mapping[str, str] | None = None) -> list[AgentConfig]:
    """One config per agent, each with its own credential; ``hosts`` (node id -> address) moves
    agents off 127.0.0.1."""
    layout.validate()
    p = layout.base_port

    def at(node_id: str, port: int) -> str:
        return f"{(hosts or {}).get(node_id, '127.0.0.1')}:{port}"
    servers = tuple(ServerPeer(f"s{i + 1}", at(f"s{i + 1}", p + i), at(f"s{i + 1}", p + 100 + i))
                    for i in range(layout.servers))
    cfgs = []
    for i, s in enumerate(servers):
        cfgs.append(AgentConfig(
            node_id=s.id, role=Role.SERVER, api=s.api, raft=s.raft, zone=f"z{i % layout.zones + 1}",
            region="r1", cell="c1", data_dir=os.path.join(data_dir, "agents", s.id),
            token=identity.node_credential(s.id, Role.SERVER), identity_public_key=identity.public_key,
            admin_token_hash=identity.admin_hash, cluster_password=identity.cluster_password,
            servers=servers, capacity=layout.capacity,
            log_file=os.path.join(data_dir, "agents", s.id, "agent.log")))
    for j in range(layout.clients):
        cid = f"c{j + 1}"
        cfgs.append(AgentConfig(
            node_id=cid, role=Role.CLIENT, api=at(cid, p + 200 + j),
            zone=f"z{(layout.servers + j) % layout.zones + 1}", region="r1", cell="c1",
            data_dir=os.path.join(data_dir, "agents", cid), token=identity.node_credential(cid, Role.CLIENT),
            identity_public_key=identity.public_key, admin_token_hash=identity.admin_hash, servers=servers,
            capacity=layout.capacity, log_file=os.path.join(data_dir, "agents", cid, "agent.log")))
    return cfgs


def _loopback_ports_of(cfg: AgentConfig) -> list[int]:
    """The ports an agent will bind on 127.0.0.1 (an agent on an address of its own cannot clash)."""
    return [int(a.rpartition(":")[2]) for a in (cfg.api, cfg.raft) if a.startswith("127.0.0.1:")]


def read_cluster_state(data_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(data_dir, STATE_FILE)) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


def running_agents(data_dir: str) -> list[dict[str, Any]]:
    st = read_cluster_state(data_dir)
    if not st:
        return []
    return [a for a in st["agents"] if _pid_alive(a["pid"], a["config"])]


def start_agent(cfg_path: str, log_path: str, env: dict[str, str] | None = None,
                prefix: Sequence[str] = ()) -> int:
    """Start one agent as a daemon of its own session; return its pid.

    A ``prefix`` must exec the agent in place (``nsenter`` does), so that the pid is the agent's.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    out = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "canidae", "agent", "run", "--config", cfg_path],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            env={**os.environ, **(env or {})}, close_fds=True)
    finally:
        out.close()
    if prefix:
        _wait_exec(proc, cfg_path)
    return proc.pid


def _wait_exec(proc: subprocess.Popen[bytes], cfg_path: str, timeout: float = 5.0) -> None:
    """Wait until a prefix has exec'd the agent in place. Until then the pid runs the prefix, and
    for an instant during the exec its command line reads empty: a liveness check in that
    instant would take the agent for dead and start a second one on the same data dir."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return
        if argv[0] == sys.executable.encode() and _pid_alive(proc.pid, cfg_path):
            return
        time.sleep(0.002)


def up(layout: ClusterLayout, data_dir: str, cli_config: str, timeout: float = 30.0,
       env: dict[str, str] | None = None, *, hosts: Mapping[str, AgentHost] | None = None) -> dict[str, Any]:
    data_dir = os.path.abspath(data_dir)
    if running_agents(data_dir):
        raise AlreadyExists(f"a cluster is already running from {data_dir} (stop it with 'canidae cluster down')")
    identity = Identity.new()
    token = identity.admin_token
    hosts = hosts or {}
    cfgs = plan_configs(layout, data_dir, identity, {n: h.address for n, h in hosts.items()})
    busy = [port for c in cfgs for port in _loopback_ports_of(c) if not _port_free(port)]
    if busy:
        raise AlreadyExists(f"port {busy[0]} on 127.0.0.1 is busy; choose another --base-port")
    identity.write(os.path.join(data_dir, IDENTITY_FILE))
    agents = []
    for c in cfgs:
        os.makedirs(c.data_dir, exist_ok=True)
        path = os.path.join(c.data_dir, "agent.toml")
        write_config(c, path)
        prefix = hosts[c.node_id].prefix if c.node_id in hosts else ()
        pid = start_agent(path, os.path.join(c.data_dir, "stdout.log"), env, prefix)
        with open(os.path.join(c.data_dir, "agent.pid"), "w") as f:
            f.write(f"{pid}\n")
        agent = {"id": c.node_id, "role": c.role.value, "api": c.api, "raft": c.raft, "pid": pid,
                 "config": path, "log": c.log_file}
        if prefix:
            agent["prefix"] = list(prefix)
        agents.append(agent)
    state = {"data_dir": data_dir, "agents": agents, "token": token}
    fd = os.open(os.path.join(data_dir, STATE_FILE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1)
    t0 = time.monotonic()
    try:
        leader = wait_ready(agents, token, len(cfgs), timeout)
    except Timeout:
        down(data_dir)
        raise
    write_cli_config(cli_config, [a["api"] for a in agents if a["role"] == "server"], token, data_dir)
    return {"data_dir": data_dir, "agents": agents, "leader": leader, "config": cli_config,
            "ready_s": round(time.monotonic() - t0, 3)}


def wait_ready(agents: list[dict[str, Any]], token: str, n_nodes: int, timeout: float) -> str:
    """Wait until a leader has quorum and every agent has registered; return the leader's id."""
    deadline = time.monotonic() + timeout
    headers = {"authorization": f"Bearer {token}"}
    servers = [a for a in agents if a["role"] == "server"]
    with httpx.Client(timeout=1.0, headers=headers) as http:
        while time.monotonic() < deadline:
            for a in agents:
                if not _pid_alive(a["pid"], a["config"]):
                    raise Timeout(f"agent {a['id']} exited during start; see {a['log']}")
            for s in servers:
                try:
                    st = http.get(f"http://{s['api']}/v1/status", params={"stale": 1}).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if st.get("raft_state") == "leader" and st.get("has_quorum"):
                    if st.get("nodes", 0) >= n_nodes:
                        return str(st["node"])
            time.sleep(0.05)
    raise Timeout(f"the cluster did not become ready within {timeout:g} s")


def write_cli_config(path: str, addrs: list[str], token: str, data_dir: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump({"addr": addrs, "token": token, "data_dir": data_dir}, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def down(data_dir: str, timeout: float = 10.0) -> dict[str, Any]:
    data_dir = os.path.abspath(data_dir)
    st = read_cluster_state(data_dir)
    if st is None:
        raise NotFound(f"no cluster in {data_dir}")
    stopped, killed = [], []
    alive = [a for a in st["agents"] if _pid_alive(a["pid"], a["config"])]
    for a in alive:
        try:
            os.kill(a["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for a in alive:
        while _pid_alive(a["pid"], a["config"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _pid_alive(a["pid"], a["config"]):
            try:
                os.killpg(a["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.append(a["id"])
        else:
            stopped.append(a["id"])
    os.replace(os.path.join(data_dir, STATE_FILE), os.path.join(data_dir, STATE_FILE + ".stopped"))
    return {"data_dir": data_dir, "stopped": stopped, "killed": killed,
            "not_running": [a["id"] for a in st["agents"] if a not in alive]}


def restart_agent(agent: dict[str, Any], env: dict[str, str] | None = None) -> None:
    """Start a stopped agent of a local cluster again from its config (its pid is updated), where
    it ran before (its command prefix), with ``env`` added to this process's environment."""
    agent["pid"] = start_agent(agent["config"], os.path.join(os.path.dirname(agent["config"]), "stdout.log"),
                               env, agent.get("prefix", ()))


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll ``cond`` until it is true; return the seconds it took, or raise ``Timeout(what)``.

    A condition that fails with a cluster error or an HTTP error is "not yet": drills and scale
    tests poll clusters that are recovering on purpose.
    """
    t0 = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - t0
        except (CanidaeError, httpx.HTTPError):
            pass
        if time.monotonic() - t0 > timeout:
            raise Timeout(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


def default_data_dir() -> str:
    return os.path.expanduser(os.path.join("~", ".local", "share", "canidae", "local"))


__all__ = ["AgentHost", "ClusterLayout", "agent_ids", "up", "down", "running_agents", "read_cluster_state", "default_data_dir",
           "plan_configs", "start_agent", "restart_agent", "wait_ready", "wait_until", "write_cli_config"]
