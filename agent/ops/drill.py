"""Failover drills: deliberate faults against a local cluster, with measured recovery.

A drill spawns packs, injects a real fault (SIGKILL of the leader, of a node, of every agent of
a zone; SIGSTOP of a server to cut it off), and measures from outside, as a user would:

* ``leader_s``: time until a server other than the victim is leader with a quorum;
* ``write_s``: time until the next write is acknowledged (a probe pack, retried with one
  request id, so the retry is safe);
* ``packs_s``: time until every pack that ran on the victims runs elsewhere.

Afterwards it checks that nothing was lost (every pack still exists) and nothing runs twice
(each agent's own count of what it runs adds up to the number of running packs), restores the
victims, and keeps a timeline. Drills need the agents' pids, so they target a cluster started
by ``cluster up`` (its data dir), or a throwaway one they start and remove.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
from canidae.agent.client import Client, Target
from canidae.agent.ops import localcluster, netns
from canidae.core.errors import InvalidInput, NotFound, Timeout
from canidae.core.types import Resources


@dataclass
class DrillCluster:
    """The agents of a local cluster, from its data dir (``cluster.json``)."""

    data_dir: str
    agents: list[dict[str, Any]]
    token: str
    throwaway: bool = False
    network: netns.NetnsNetwork | None = None  # the agents' namespaces, when they run in some
    env: dict[str, str] | None = None  # added to the environment of every agent (re)started

    @staticmethod
    def open(data_dir: str) -> DrillCluster:
        st = localcluster.read_cluster_state(data_dir)
        if st is None:
            raise NotFound(f"no cluster started by 'cluster up' in {data_dir}")
        return DrillCluster(data_dir, st["agents"], st["token"])

    @staticmethod
    def throwaway_up(servers: int, clients: int, zones: int, base_port: int, *, namespaces: bool = False,
                     env: dict[str, str] | None = None, data_dir: str | None = None) -> DrillCluster:
        """Start a cluster in a new temporary dir (or ``data_dir``), removed by ``close``.

        ``namespaces``: every agent in a network namespace of its own, on an address of its own
        (ports then need not be free on loopback); the caller checks ``netns.unavailable_reason``.
        """
        tmp = data_dir or tempfile.mkdtemp(prefix="canidae-drill-")
        layout = localcluster.ClusterLayout(servers=servers, clients=clients, base_port=base_port, zones=zones,
                                            capacity=Resources(1_000_000, 1_048_576, 50_000))
        network = netns.NetnsNetwork() if namespaces else None
        try:
            hosts = None
            if network is not None:
                network.create()
                addrs = network.add_nodes(localcluster.agent_ids(layout))
                hosts = {n: localcluster.AgentHost(addr, network.prefix(n)) for n, addr in addrs.items()}
            info = localcluster.up(layout, tmp, os.path.join(tmp, "cli.toml"), env=env, hosts=hosts)
        except BaseException:
            if network is not None:
                network.remove()
            if data_dir is None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        st = localcluster.read_cluster_state(tmp)
        assert st is not None
        return DrillCluster(tmp, info["agents"], st["token"], throwaway=True, network=network, env=env)

    def save(self) -> None:
        st = localcluster.read_cluster_state(self.data_dir) or {}
        st.update(agents=self.agents, token=self.token, data_dir=self.data_dir)
        import json
        with open(os.path.join(self.data_dir, localcluster.STATE_FILE), "w") as f:
            json.dump(st, f, indent=1)

    def close(self, keep_dir: bool = False) -> None:
        """Save the agents' pids; a throwaway cluster is stopped and removed with its network."""
        self.save()
        if self.throwaway:
            try:
                if self.network is not None:
                    self.network.heal_all()  # a graceful stop needs the agents reachable
                localcluster.down(self.data_dir, timeout=10)
            finally:
                kill_pack_leftovers(self.data_dir)
                if self.network is not None:
                    self.network.remove()
                if not keep_dir:
                    shutil.rmtree(self.data_dir, ignore_errors=True)

    def client(self, timeout: float = 2.0) -> Client:
        return Client(Target(tuple(a["api"] for a in self.servers()), self.token), timeout=timeout)

    def servers(self) -> list[dict[str, Any]]:
        return [a for a in self.agents if a["role"] == "server"]

    def alive(self, a: dict[str, Any]) -> bool:
        return localcluster._pid_alive(a["pid"], a["config"])

    def health(self, a: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return httpx.get(f"http://{a['api']}/v1/health", timeout=0.5,  # type: ignore[no-any-return]
                             headers={"authorization": f"Bearer {self.token}"}).json()
        except (httpx.HTTPError, ValueError):
            return None

    def leader(self, exclude: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
        for a in self.servers():
            if a["id"] in exclude or not self.alive(a):
                continue
            h = self.health(a)
            if h and h.get("raft", {}).get("state") == "leader" and h["raft"].get("has_quorum"):
                return str(a["id"])
        return None

    def agent(self, ident: str) -> dict[str, Any]:
        for a in self.agents:
            if a["id"] == ident:
                return a
        raise NotFound(f"no agent {ident!r} in this cluster")

    def restart(self, ident: str) -> None:
        a = self.agent(ident)
        if not self.alive(a):
            localcluster.restart_agent(a, self.env)


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


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> float:
    return localcluster.wait_until(cond, timeout, f"drill: {what}", interval=0.01)


@dataclass
class DrillRound:
    round: int
    fault: str
    victims: list[str]
    affected_packs: int
    leader_before: str | None
    leader_after: str | None = None
    leader_s: float | None = None
    write_s: float | None = None
    packs_s: float | None = None
    lost: int = 0
    duplicated: int = 0
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def recovery_s(self) -> float:
        return max(x for x in (self.leader_s, self.write_s, self.packs_s, 0.0) if x is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "fault": self.fault, "victims": self.victims,
                "affected_packs": self.affected_packs, "leader_before": self.leader_before,
                "leader_after": self.leader_after, "leader_s": self.leader_s, "write_s": self.write_s,
                "packs_s": self.packs_s, "recovery_s": round(self.recovery_s, 3), "lost": self.lost,
                "duplicated": self.duplicated,
                "timeline": [{"t_s": round(t, 3), "event": e} for t, e in self.timeline]}


def ensure_packs(cluster: DrillCluster, n: int) -> list[str]:
    with cluster.client(timeout=30) as c:
        have = {p["name"] for p in c.iter_packs() if p["name"].startswith("drill-")}
        if len(have) < n:
            c.create_packs([{"name": f"drill-{uuid.uuid4().hex[:6]}"}], count=n - len(have), retry_for=10)
        _wait(lambda: c.packs(state="placed", limit=1)["packs"] == [], 60, "all drill packs running")
        return [p["name"] for p in c.iter_packs()]


def choose_victims(cluster: DrillCluster, kill: str, rng: random.Random, zone: str | None = None) -> list[str]:
    leader = cluster.leader()
    if kill == "leader":
        if leader is None:
            raise Timeout("no leader to kill")
        return [leader]
    if kill == "zone":
        with cluster.client() as c:
            ids = [n["id"] for n in c.nodes() if n["zone"] == zone]
        if not ids:
            raise InvalidInput(f"no agent in zone {zone!r}")
        servers = {a["id"] for a in cluster.servers()}
        if len(servers & set(ids)) * 2 >= len(servers):
            raise InvalidInput(f"zone {zone} holds a majority of the servers: killing it would stop the cluster")
        return ids
    if kill == "node":
        # The client agent running the most packs (a server that is not the leader when there is
        # no client): the drill is about moving packs, so hit where most of them are.
        clients = [a["id"] for a in cluster.agents if a["role"] == "client" and cluster.alive(a)]
        pool = clients or [a["id"] for a in cluster.servers() if a["id"] != leader and cluster.alive(a)]
        with cluster.client() as c:
            load = {n["id"]: n["packs"] for n in c.nodes()}
        return [max(sorted(pool), key=lambda i: load.get(i, 0))]
    if kill == "random":
        return [rng.choice(sorted(a["id"] for a in cluster.agents if cluster.alive(a)))]
    raise InvalidInput(f"unknown fault {kill!r}: leader, node, random or zone")


def run_round(cluster: DrillCluster, rnd: int, kill: str, rng: random.Random, zone: str | None = None,
              sig: int = signal.SIGKILL, timeout: float = 30.0, cut: bool = False) -> DrillRound:
    """One fault: signal the victims (``sig``), or, with ``cut``, take their links down (the
    cluster must run in namespaces); then measure, restore the victims and check."""
    if cut and cluster.network is None:
        raise InvalidInput("a real partition needs a cluster in network namespaces")
    victims = choose_victims(cluster, kill, rng, zone)
    with cluster.client(timeout=2.0) as c:
        packs = {p["name"]: p for p in c.iter_packs()}
    affected = [n for n, p in packs.items() if p["node"] in victims and p["state"] in ("placed", "running")]
    how = "link down" if cut else "SIGSTOP" if sig == signal.SIGSTOP else "SIGKILL"
    r = DrillRound(rnd, f"{how} {kill}", victims, len(affected), cluster.leader())
    t0 = time.monotonic()

    def mark(event: str) -> None:
        r.timeline.append((time.monotonic() - t0, event))

    for v in victims:
        if cut:
            assert cluster.network is not None
            cluster.network.cut(v)
        else:
            os.kill(cluster.agent(v)["pid"], sig)
    mark(f"{r.fault}: {', '.join(victims)}")
    try:
        survivors = set(victims)
        r.leader_s = round(_wait(lambda: cluster.leader(exclude=survivors) is not None, timeout, "a new leader"), 3)
        r.leader_after = cluster.leader(exclude=survivors)
        mark(f"leader {r.leader_after}")
        with cluster.client(timeout=1.0) as c:
            rid = uuid.uuid4().hex
            t1 = time.monotonic()
            c.create_packs([{"name": f"probe-{rid[:10]}"}], request_id=rid, retry_for=timeout)
            r.write_s = round(time.monotonic() - t0, 3)
            mark(f"write acknowledged ({(time.monotonic() - t1) * 1000:.0f} ms after the first try)")

            def moved() -> bool:
                page = {p["name"]: p for p in c.iter_packs(stale=True)}
                return all(page[n]["state"] == "running" and page[n]["node"] not in victims for n in affected)
            if affected:
                _wait(moved, timeout, "the victims' packs running elsewhere")
                r.packs_s = round(time.monotonic() - t0, 3)
                mark(f"{len(affected)} pack(s) running elsewhere")
            after = {p["name"]: p for p in c.iter_packs()}
            r.lost = len([n for n in packs if n not in after])
    finally:
        for v in victims:
            a = cluster.agent(v)
            if cut:
                assert cluster.network is not None
                cluster.network.heal(v)
            elif sig == signal.SIGSTOP:
                os.kill(a["pid"], signal.SIGCONT)
            else:
                cluster.restart(v)
        mark("victims restored")
    # Let the victims rejoin and fence, then count what runs where.
    with cluster.client(timeout=2.0) as c:
        def settled() -> bool:
            nodes = {n["id"]: n for n in c.nodes()}
            if any(nodes[v]["state"] != "ready" for v in victims if v in nodes):
                return False
            running = sum(1 for p in c.iter_packs() if p["state"] == "running")
            return sum(n.get("running_here") or 0 for n in nodes.values()) == running
        try:
            _wait(settled, timeout, "victims rejoined and fenced")
            mark("victims rejoined; every pack runs exactly once")
        except Timeout:
            nodes = c.nodes()
            running = sum(1 for p in c.iter_packs() if p["state"] == "running")
            r.duplicated = max(0, sum(n.get("running_here") or 0 for n in nodes) - running)
            mark(f"not settled: {r.duplicated} more running than the state says")
    return r


def run_drill(cluster: DrillCluster, kill: str, packs: int, rounds: int, seed: int, zone: str | None = None,
              sig: int = signal.SIGKILL, timeout: float = 30.0,
              progress: Callable[[DrillRound], None] | None = None, cut: bool = False) -> list[DrillRound]:
    rng = random.Random(seed)
    ensure_packs(cluster, packs)
    out = []
    for i in range(rounds):
        if i and kill == "node":
            # Packs do not move back on their own: rebalance so the next victim has packs to lose.
            with cluster.client(timeout=30) as c:
                c.rebalance()
                _wait(lambda: c.packs(state="placed", limit=1)["packs"] == [], 60, "rebalanced packs running")
        r = run_round(cluster, i + 1, kill, rng, zone, sig, timeout, cut=cut)
        out.append(r)
        if progress:
            progress(r)
    return out
