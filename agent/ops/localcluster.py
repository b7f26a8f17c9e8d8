"""Local clusters of agent processes: ``LocalCluster``, the one handle of ``cluster up|down``,
drills, soak, scale tests, benchmarks and tests.

Starting one makes the cluster's identity (``identity.toml`` in the data dir, mode 0600: the key
that issues node credentials, the Raft password, the admin token) and its TLS CA (``ca.pem``,
``ca.key`` 0600, both in the data dir; ``canidae.agent.certs``), issues each agent a certificate
for its address (in the agent's own dir: ``ca.pem``, ``agent.pem``, ``agent.key`` 0600), writes an agent.toml per agent
under the data dir (each with its own node credential, never the admin token), starts each agent as a
background daemon (its own session, pid file and log file), waits for a leader and for every
agent to register, and writes the CLI config (address list and admin token, mode 0600). The
agents and their pids are kept in ``cluster.json``, so that another command can ``open`` the
cluster and stop it. Stopping signals exactly the processes it started: a pid is signalled only
while its command line still names that agent's config, so a reused pid is never hit.

By default every agent binds 127.0.0.1. In network namespaces (``canidae.agent.ops.netns``) each
agent has an address of its own and a command prefix that starts it there (``AgentHost``);
restarts reuse the prefix.

``insecure_http=True`` starts the agents on plain HTTP instead (loopback only; the agents refuse
it elsewhere): for throwaway clusters. Every URL of an agent comes from ``url``, every check of
its certificate from ``verify``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import tomli_w
from canidae.agent import certs
from canidae.agent.client import Client, Target
from canidae.agent.client.tls import client_context
from canidae.agent.config import AgentConfig, ServerPeer, load_config, write_config
from canidae.agent.identity import Identity
from canidae.agent.ops import netns
from canidae.agent.ops.waiting import Abandon, wait_until
from canidae.agent.secretbox import Keyring, key_file
from canidae.core.errors import AlreadyExists, InvalidInput, NotFound, Timeout
from canidae.core.types import Resources, Role

STATE_FILE = "cluster.json"
IDENTITY_FILE = "identity.toml"


@dataclass(frozen=True)
class ClusterLayout:
    servers: int = 3
    clients: int = 0
    base_port: int | None = 7100  # None: a free range found when the cluster starts
    zones: int = 1
    capacity: Resources = Resources(1_000_000, 1_048_576, 50_000)

    def validate(self) -> None:
        if self.servers not in (1, 3, 5, 7):
            raise InvalidInput(f"--agents must be 1, 3, 5 or 7 servers (an odd Raft group), got {self.servers}")
        if not 0 <= self.clients <= 200:
            raise InvalidInput(f"--clients must be 0..200, got {self.clients}")
        if self.base_port is not None and not 1024 <= self.base_port <= 65535 - 500:
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


def pid_alive(pid: int, marker: str) -> bool:
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


def pid_gone(pid: int, marker: str) -> bool:
    """Whether the agent ``pid`` (its command line naming ``marker``) has certainly exited: gone,
    a zombie, or the pid now another program's. A command line that reads empty or cannot be read
    for an instant (the kernel gives nothing while the process's memory map is busy, e.g. forking
    its first members) is not taken for an exit: a start must not be abandoned, and the other
    agents stopped, on a misread."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ")[1].split()[0] == "Z":
                return True
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return bool(cmd.strip()) and marker not in cmd


def agent_ids(layout: ClusterLayout) -> list[str]:
    """The node ids of a layout's agents, servers first: s1.., then client agents c1..."""
    return [f"s{i + 1}" for i in range(layout.servers)] + [f"c{j + 1}" for j in range(layout.clients)]


def plan_configs(layout: ClusterLayout, data_dir: str, identity: Identity,
                 hosts: Mapping[str, str] | None = None) -> list[AgentConfig]:
    """One config per agent, each with its own credential; ``hosts`` (node id -> address) moves
    agents off 127.0.0.1."""
    layout.validate()
    assert layout.base_port is not None, "a layout's ports are chosen before its configs"
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
    return [a for a in st["agents"] if pid_alive(a["pid"], a["config"])]


def start_agent(cfg_path: str, log_path: str, env: dict[str, str] | None = None,
                prefix: Sequence[str] = ()) -> int:
    """Start one agent as a daemon of its own session; return its pid.

    A ``prefix`` must exec the agent in place (``nsenter`` does), so that the pid is the agent's.
    """
    os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
    # An agent's output is as private as its data dir (it may name packs, paths, addresses).
    out = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
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
    def in_place() -> bool:
        if proc.poll() is not None:
            return True  # it exited: whoever looks next sees that
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return True
        return argv[0] == sys.executable.encode() and pid_alive(proc.pid, cfg_path)
    wait_until(in_place, timeout, f"the agent of {cfg_path} started in place", interval=0.002)


def wait_ready(agents: list[dict[str, Any]], token: str, n_nodes: int, timeout: float, ca: str | None = None) -> str:
    """Wait until a leader has quorum and every agent has registered; return the leader's id.
    ``ca``: the cluster CA the agents' certificates are checked with (None: plain HTTP)."""
    servers = [a for a in agents if a["role"] == "server"]
    scheme = "http" if ca is None else "https"
    with httpx.Client(timeout=1.0, headers={"authorization": f"Bearer {token}"},
                      verify=True if ca is None else client_context(ca)) as http:
        def leader() -> str | None:
            for a in agents:
                if pid_gone(a["pid"], a["config"]):
                    raise Abandon(Timeout(f"agent {a['id']} exited during start; see {a['log']}"))
            for s in servers:
                try:
                    st = http.get(f"{scheme}://{s['api']}/v1/status", params={"stale": 1}).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if st.get("raft_state") == "leader" and st.get("has_quorum") and st.get("nodes", 0) >= n_nodes:
                    return str(st["node"])
            return None
        return wait_until(leader, timeout, "the cluster ready (a leader, every agent registered)",  # type: ignore[no-any-return]
                          interval=0.05)


def write_cli_config(path: str, addrs: list[str], token: str, data_dir: str, ca: str | None = None) -> None:
    """The CLI's config (0600): where the agents are, the admin token, and the CA their
    certificates are checked with (``ca=None``: the cluster speaks plain HTTP)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    doc: dict[str, Any] = {"addr": addrs, "token": token, "data_dir": data_dir}
    doc.update({"insecure_http": True} if ca is None else {"ca": ca})
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(doc, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class LocalCluster:
    """The handle of a local cluster of agent processes: start or open it, look at and act on its
    agents (kill, restart, find the leader), stop it.

    ``cluster up`` starts one that outlives the command (``stop`` with ``cluster down``); drills,
    soak, scale tests, benchmarks and tests start one and ``close`` it, which stops what it
    started (and removes a temporary data dir and the network namespaces it made). ``open``
    takes over a cluster started before, from its ``cluster.json``; closing that only saves
    the agents' current pids.
    """

    data_dir: str
    agents: list[dict[str, Any]]
    token: str
    info: dict[str, Any] = field(default_factory=dict)  # what start found: leader, ready_s, config
    env: dict[str, str] | None = None  # added to the environment of every agent (re)started
    network: netns.NetnsNetwork | None = None  # the agents' namespaces, when they run in some
    started_here: bool = False
    temporary: bool = False  # its data dir is ours to remove
    ca: str | None = None  # the cluster CA's certificate file; None: the agents speak plain HTTP

    # ------------------------------------------------------------------ start, open, stop

    @classmethod
    def start(cls, layout: ClusterLayout, data_dir: str | None = None, *, cli_config: str | None = None,
              timeout: float = 30.0, env: dict[str, str] | None = None, namespaces: bool = False,
              configure: Callable[[AgentConfig], AgentConfig] | None = None,
              insecure_http: bool = False) -> LocalCluster:
        """Start ``layout``'s agents as daemons in ``data_dir`` (None: a new temporary dir), wait
        for a leader and every agent, and write the CLI config (``cli_config``, else in the dir).

        ``namespaces``: every agent in a network namespace of its own, on an address of its own
        (the caller checks ``netns.unavailable_reason``). ``configure`` may change each agent's
        config before it is written (tests: a longer heartbeat TTL). ``env`` is added to the
        agents' environment. ``insecure_http``: plain HTTP instead of TLS (loopback only). On
        failure, whatever was started is stopped again.
        """
        layout.validate()
        if data_dir is not None and running_agents(os.path.abspath(data_dir)):
            raise AlreadyExists(f"a cluster is already running from {os.path.abspath(data_dir)} "
                                f"(stop it with 'canidae cluster down')")
        if layout.base_port is None:
            layout = replace(layout, base_port=find_base_port(layout.servers, layout.clients))
        temporary = data_dir is None
        root = os.path.abspath(data_dir or tempfile.mkdtemp(prefix="canidae-cluster-"))
        network = netns.NetnsNetwork() if namespaces else None
        cluster: LocalCluster | None = None
        try:
            hosts: dict[str, AgentHost] = {}
            if network is not None:
                network.create()
                addrs = network.add_nodes(agent_ids(layout))
                hosts = {n: AgentHost(addr, network.prefix(n)) for n, addr in addrs.items()}
            cluster = cls._launch(layout, root, env, hosts, configure, insecure_http)
            cluster.network, cluster.temporary, cluster.env = network, temporary, env
            t0 = time.monotonic()
            leader = wait_ready(cluster.agents, cluster.token, len(cluster.agents), timeout, cluster.ca)
            config = cli_config or os.path.join(root, "cli.toml")
            write_cli_config(config, [a["api"] for a in cluster.servers()], cluster.token, root, cluster.ca)
            cluster.info = {"data_dir": root, "agents": cluster.agents, "leader": leader, "config": config,
                            "ready_s": round(time.monotonic() - t0, 3), "tls": cluster.ca is not None,
                            "ca": cluster.ca}
            return cluster
        except BaseException:
            if cluster is not None:
                cluster.close()
            else:
                if network is not None:
                    network.remove()
                if temporary:
                    shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def _launch(cls, layout: ClusterLayout, root: str, env: dict[str, str] | None, hosts: Mapping[str, AgentHost],
                configure: Callable[[AgentConfig], AgentConfig] | None, insecure_http: bool = False) -> LocalCluster:
        identity = Identity.new()
        token = identity.admin_token
        cfgs = plan_configs(layout, root, identity, {n: h.address for n, h in hosts.items()})
        cfgs = [with_tls(c, None) for c in cfgs] if insecure_http else \
            [with_tls(c, certs.AgentTLS.in_dir(c.data_dir)) for c in cfgs]
        if configure is not None:
            cfgs = [configure(c) for c in cfgs]
        busy = [port for c in cfgs for port in _loopback_ports_of(c) if not _port_free(port)]
        if busy:
            raise AlreadyExists(f"port {busy[0]} on 127.0.0.1 is busy; choose another --base-port")
        os.makedirs(root, mode=0o700, exist_ok=True)
        identity.write(os.path.join(root, IDENTITY_FILE))  # the operator's: the admin token is in it
        ca, authority = None, None
        if not insecure_http:  # a new CA with each new identity; its key stays in the data dir
            authority = certs.ClusterCA.new()
            authority.write(root)
            ca = os.path.join(root, certs.CA_CERT)
        cluster = cls(root, [], token, env=env, started_here=True, ca=ca)
        ring = _cluster_keyring([c.data_dir for c in cfgs])
        for c in cfgs:
            os.makedirs(c.data_dir, mode=0o700, exist_ok=True)
            os.chmod(c.data_dir, 0o700)
            if authority is not None and not c.insecure_http:
                certs.write_agent_files(authority, c.node_id, certs.names_for(c.api), c.data_dir)
            path = os.path.join(c.data_dir, "agent.toml")
            write_config(c, path)
            ring.save(key_file(c.data_dir))
            prefix = hosts[c.node_id].prefix if c.node_id in hosts else ()
            agent: dict[str, Any] = {"id": c.node_id, "role": c.role.value, "api": c.api, "raft": c.raft,
                                     "pid": 0, "config": path, "log": c.log_file}
            if prefix:
                agent["prefix"] = list(prefix)
            cluster.agents.append(agent)
            agent["pid"] = start_agent(path, os.path.join(c.data_dir, "stdout.log"), env, prefix)
            with open(os.path.join(c.data_dir, "agent.pid"), "w") as f:
                f.write(f"{agent['pid']}\n")
            cluster.save()  # at every step: whatever happens next, 'cluster down' finds what runs
        return cluster

    @classmethod
    def open(cls, data_dir: str) -> LocalCluster:
        """The cluster started before in ``data_dir`` (its ``cluster.json``)."""
        root = os.path.abspath(data_dir)
        st = read_cluster_state(root)
        if st is None:
            raise NotFound(f"no cluster started by 'cluster up' in {root}")
        return cls(root, st["agents"], st["token"], ca=st.get("ca"))

    def save(self) -> None:
        """Write ``cluster.json`` (mode 0600: it holds the token) with the agents' current pids and
        the CA file their certificates are checked with (null: plain HTTP)."""
        path = os.path.join(self.data_dir, STATE_FILE)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"data_dir": self.data_dir, "agents": self.agents, "token": self.token, "ca": self.ca,
                       "insecure_http": self.ca is None}, f, indent=1)
        os.replace(path + ".tmp", path)

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop every agent: SIGTERM, then SIGKILL of its process group after ``timeout``. A pid is
        signalled only while its command line still names that agent's config (never a reused pid)."""
        stopped, killed = [], []
        alive = [a for a in self.agents if self.alive(a)]
        for a in alive:
            try:
                os.kill(a["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for a in alive:
            try:
                wait_until(lambda a=a: not self.alive(a), max(0.0, deadline - time.monotonic()),
                           f"agent {a['id']} stopped")
                stopped.append(a["id"])
            except Timeout:
                try:
                    os.killpg(a["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed.append(a["id"])
        path = os.path.join(self.data_dir, STATE_FILE)
        if os.path.exists(path):
            os.replace(path, path + ".stopped")
        return {"data_dir": self.data_dir, "stopped": stopped, "killed": killed,
                "not_running": [a["id"] for a in self.agents if a not in alive]}

    def close(self, keep_dir: bool = False) -> list[int]:
        """Save the agents' pids; a cluster started here is stopped, with its packs' leftover
        processes and its network, and a temporary data dir is removed (unless ``keep_dir``).

        Returns the pids of pack processes still running after their agents stopped (killed
        here): a graceful stop leaves none, which tests check."""
        if not self.started_here:
            if read_cluster_state(self.data_dir) is not None:
                self.save()
            return []
        try:
            if self.network is not None:
                self.network.heal_all()  # a graceful stop needs the agents reachable
            self.stop(timeout=10)
        finally:
            left = kill_pack_leftovers(self.data_dir)
            if self.network is not None:
                self.network.remove()
            if self.temporary and not keep_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)
        return left

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the agents

    def agent(self, ident: str) -> dict[str, Any]:
        for a in self.agents:
            if a["id"] == ident:
                return a
        raise NotFound(f"no agent {ident!r} in this cluster")

    def _get(self, agent: str | dict[str, Any]) -> dict[str, Any]:
        return self.agent(agent) if isinstance(agent, str) else agent

    def servers(self) -> list[dict[str, Any]]:
        return [a for a in self.agents if a["role"] == "server"]

    def clients(self) -> list[dict[str, Any]]:
        return [a for a in self.agents if a["role"] == "client"]

    def alive(self, agent: str | dict[str, Any]) -> bool:
        a = self._get(agent)
        return pid_alive(a["pid"], a["config"])

    def pids(self) -> dict[str, int]:
        return {a["id"]: a["pid"] for a in self.agents if self.alive(a)}

    def target(self, agents: Sequence[str] | None = None, *, apis: Sequence[str] | None = None,
               token: str | None = None) -> Target:
        """Where a ``Client`` reaches this cluster, checking its CA: the servers, or the agents
        named (``agents``) or at ``apis``; with the admin token unless ``token``."""
        if apis is None:
            apis = [self.agent(a)["api"] for a in agents] if agents else [a["api"] for a in self.servers()]
        return Target(tuple(apis), token or self.token, ca=self.ca or "", insecure_http=self.ca is None)

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.target(), timeout=timeout)

    @property
    def scheme(self) -> str:
        return "http" if self.ca is None else "https"

    @property
    def verify(self) -> Any:
        """What an httpx client checks the agents' certificates with (``httpx.get(..., verify=...)``)."""
        return True if self.ca is None else client_context(self.ca)

    def url(self, agent: str | dict[str, Any], path: str = "") -> str:
        """``path`` on one agent's API, with the cluster's scheme."""
        return f"{self.scheme}://{self._get(agent)['api']}{path}"

    def pack_token(self, pack: str, timeout: float = 10.0) -> str:
        """A token for the members of ``pack``'s current run, as the agent of its node signs one
        (its own credential and region from its config, the cluster's current keyrings): for tests
        and benchmarks that act as a pack. Waits until that agent holds those keyrings itself (it
        keeps them in its data dir): a token under keys it has not fetched yet would be refused."""
        from canidae.agent.config import load_config
        from canidae.agent.keyring import ClusterKeys
        from canidae.core.keyring import Keyrings
        with self.client() as c:
            p = c.pack(pack)
            rings = c.request("GET", "/v1/keys/sealed")
        cfg = load_config(self.agent(p["node"])["config"])
        version = Keyrings.from_dict(rings).version
        wait_until(lambda: ClusterKeys(cfg.data_dir, cfg.region, cfg.token).rings.version >= version, timeout,
                   f"the agent of {p['node']} holding the cluster's keyrings")
        keys = ClusterKeys(cfg.data_dir, cfg.region, cfg.token)
        keys.update(rings, keep=False)
        return keys.pack_token(pack, p["generation"], p["node"])

    def health(self, agent: str | dict[str, Any]) -> dict[str, Any] | None:
        """An agent's ``/v1/health``, or None when it does not answer."""
        try:
            return httpx.get(self.url(agent, "/v1/health"), timeout=0.5, verify=self.verify,  # type: ignore[no-any-return]
                             headers={"authorization": f"Bearer {self.token}"}).json()
        except (httpx.HTTPError, ValueError):
            return None

    def leader(self, exclude: Collection[str] = ()) -> str | None:
        """The server that leads with a quorum right now (not one of ``exclude``), if any."""
        for a in self.servers():
            if a["id"] in exclude or not self.alive(a):
                continue
            h = self.health(a)
            if h and h.get("raft", {}).get("state") == "leader" and h["raft"].get("has_quorum"):
                return str(a["id"])
        return None

    def wait_leader(self, timeout: float = 10.0) -> str:
        return wait_until(self.leader, timeout, "a leader with a quorum")  # type: ignore[no-any-return]

    def leader_api(self) -> str | None:
        leader = self.leader()
        return self.agent(leader)["api"] if leader else None  # type: ignore[no-any-return]

    def kill(self, ident: str, sig: int = signal.SIGKILL) -> None:
        """Signal one agent; after a SIGKILL, wait until it is gone."""
        a = self.agent(ident)
        os.kill(a["pid"], sig)
        if sig == signal.SIGKILL:
            wait_until(lambda: not self.alive(a), 5, f"{ident} gone after SIGKILL")

    def restart(self, agent: str | dict[str, Any]) -> None:
        """Start a stopped agent again from its config, where it ran before (its command prefix),
        with the cluster's ``env``; its new pid is saved."""
        a = self._get(agent)
        if self.alive(a):
            return
        a["pid"] = start_agent(a["config"], os.path.join(os.path.dirname(a["config"]), "stdout.log"),
                               self.env, a.get("prefix", ()))
        self.save()

    # ------------------------------------------------------------------ growing and shrinking

    def add_client(self, timeout: float = 30.0, capacity: Resources | None = None) -> str:
        """Start one more client agent on 127.0.0.1 (the next free ``cN``), configured like the
        existing agents (same servers, identity, keys, capacity unless given), and wait until its
        node is registered. Returns its node id. For autoscaling demos and tests."""
        identity = Identity.load(os.path.join(self.data_dir, IDENTITY_FILE))
        template = load_config(self.agents[-1]["config"])
        taken = {a["id"] for a in self.agents} | set(os.listdir(os.path.join(self.data_dir, "agents")))
        n = 1
        while f"c{n}" in taken:
            n += 1
        cid = f"c{n}"
        # The next free port above the cluster's own: a cluster's ports were chosen as one block
        # (tests give each worker a range of its own), so a new agent stays in its cluster's block.
        above = max(int(a["api"].rpartition(":")[2]) for a in self.agents) + 1
        port = next(p for p in range(above, 65_536) if _port_free(p))
        zones = sorted({load_config(a["config"]).zone for a in self.agents})
        data = os.path.join(self.data_dir, "agents", cid)
        cfg = replace(template, node_id=cid, role=Role.CLIENT, api=f"127.0.0.1:{port}", raft="",
                      zone=zones[n % len(zones)], data_dir=data, token=identity.node_credential(cid, Role.CLIENT),
                      cluster_password="", capacity=capacity or template.capacity,
                      log_file=os.path.join(data, "agent.log"))
        os.makedirs(data, mode=0o700, exist_ok=True)
        if self.ca is not None:  # the cluster speaks TLS: a certificate from its CA, as at start
            authority = certs.ClusterCA.load(self.ca, os.path.join(self.data_dir, certs.CA_KEY))
            certs.write_agent_files(authority, cid, certs.names_for(cfg.api), data)
            cfg = with_tls(cfg, certs.AgentTLS.in_dir(data))
        path = os.path.join(data, "agent.toml")
        write_config(cfg, path)
        _cluster_keyring([load_config(a["config"]).data_dir for a in self.agents]).save(key_file(data))
        agent: dict[str, Any] = {"id": cid, "role": "client", "api": cfg.api, "raft": "", "pid": 0,
                                 "config": path, "log": cfg.log_file}
        self.agents.append(agent)
        agent["pid"] = start_agent(path, os.path.join(data, "stdout.log"), self.env)
        self.save()
        with self.client() as c:
            def registered() -> bool:
                if pid_gone(agent["pid"], agent["config"]):
                    raise Abandon(Timeout(f"agent {cid} exited during start; see {cfg.log_file}"))
                try:
                    return c.node(cid, stale=True)["state"] == "ready"
                except NotFound:
                    return False
            wait_until(registered, timeout, f"new client agent {cid} registered")
        return cid

    def stop_agent(self, ident: str, timeout: float = 10.0) -> None:
        """Stop one agent gracefully (SIGTERM, then SIGKILL of its group after ``timeout``) and drop
        it from this handle; its data dir stays (its logs are worth reading)."""
        a = self.agent(ident)
        if self.alive(a):
            os.kill(a["pid"], signal.SIGTERM)
            try:
                wait_until(lambda: not self.alive(a), timeout, f"agent {ident} stopped")
            except Timeout:
                os.killpg(a["pid"], signal.SIGKILL)
                wait_until(lambda: not self.alive(a), 5, f"agent {ident} gone after SIGKILL")
        self.agents.remove(a)
        self.save()


def with_tls(cfg: AgentConfig, files: certs.AgentTLS | None) -> AgentConfig:
    """``cfg`` serving TLS with ``files``, or plain HTTP (``None``)."""
    if files is None:
        return replace(cfg, insecure_http=True, tls_ca="", tls_cert="", tls_key="")
    return replace(cfg, insecure_http=False, tls_ca=files.ca, tls_cert=files.cert, tls_key=files.key)


def _cluster_keyring(data_dirs: list[str]) -> Keyring:
    """The cluster's secret keys: those of an earlier run from these data dirs (its journal holds
    values sealed with them), else new ones. Every agent gets the same file."""
    for d in data_dirs:
        if os.path.exists(key_file(d)):
            return Keyring.load(key_file(d))
    return Keyring.new()


def kill_pack_leftovers(data_dir: str) -> list[int]:
    """SIGKILL the exec pack processes still running under ``data_dir`` (found by their working
    directory): what an agent that had to be SIGKILLed could not stop. Returns their pids."""
    root = os.path.realpath(data_dir) + os.sep
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd.startswith(root) and f"{os.sep}exec{os.sep}packs{os.sep}" in cwd[len(root):]:
            try:
                os.kill(int(entry), signal.SIGKILL)
                found.append(int(entry))
            except ProcessLookupError:
                pass
    return found


def default_data_dir() -> str:
    return os.path.expanduser(os.path.join("~", ".local", "share", "canidae", "local"))


__all__ = ["AgentHost", "ClusterLayout", "LocalCluster", "agent_ids", "default_data_dir", "find_base_port",
           "kill_pack_leftovers", "pid_alive", "plan_configs", "read_cluster_state", "running_agents", "start_agent",
           "wait_ready", "with_tls", "write_cli_config"]
