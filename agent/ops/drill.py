"""Failover drills: deliberate faults against a local cluster, with measured recovery.

A drill spawns packs, injects a real fault (SIGKILL of the leader, of a node, of every agent of
a zone; SIGSTOP of a server to cut it off), and measures from outside, as a user would:

* ``leader_s``: time until a server other than the victim is leader with a quorum;
* ``write_s``: time until the next write is acknowledged (a probe pack, retried with one
  request id, so the retry is safe);
* ``packs_s``: time until every pack that ran on the victims runs elsewhere.

Afterwards it checks that nothing was lost (every pack still exists) and nothing runs twice
(each agent's own count of what it runs adds up to the number of running packs), restores the
victims, and keeps a timeline. Drills need the agents' pids, so they target a
``canidae.agent.ops.localcluster.LocalCluster``: one started by ``cluster up`` (opened from its
data dir), or a throwaway one they start and close.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from canidae.agent.ops.localcluster import LocalCluster
from canidae.agent.ops.waiting import seconds_until
from canidae.core.errors import CanidaeError, InvalidInput, Timeout


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> float:
    return seconds_until(cond, timeout, f"drill: {what}", interval=0.01)


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
    pinned: int = 0  # packs pinned to the victims: they cannot move, so they are not waited for
    probe: str = ""  # the probe pack this round created (removed when the drill ends)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def recovery_s(self) -> float:
        return max(x for x in (self.leader_s, self.write_s, self.packs_s, 0.0) if x is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "fault": self.fault, "victims": self.victims,
                "affected_packs": self.affected_packs, "leader_before": self.leader_before,
                "leader_after": self.leader_after, "leader_s": self.leader_s, "write_s": self.write_s,
                "packs_s": self.packs_s, "recovery_s": round(self.recovery_s, 3), "lost": self.lost,
                "duplicated": self.duplicated, "pinned": self.pinned,
                "timeline": [{"t_s": round(t, 3), "event": e} for t, e in self.timeline]}


def ensure_packs(cluster: LocalCluster, n: int) -> list[str]:
    """Make sure ``n`` drill packs run; returns the names of those this call created."""
    created: list[str] = []
    with cluster.client(timeout=30) as c:
        have = {p["name"] for p in c.iter_packs() if p["name"].startswith("drill-")}
        if len(have) < n:
            prefix = f"drill-{uuid.uuid4().hex[:6]}"
            res = c.create_packs([{"name": prefix}], count=n - len(have), retry_for=10)
            created = [p["name"] for p in res["placements"]]
        _wait(lambda: c.packs(state="placed", limit=1)["packs"] == [], 60, "all drill packs running")
        return created


def remove_packs(cluster: LocalCluster, names: list[str], timeout: float = 30.0) -> None:
    """Delete what a drill created (forced: their nodes stop them)."""
    if not names:
        return
    with cluster.client(timeout=timeout) as c:
        for i in range(0, len(names), 10_000):
            c.delete_packs(names[i:i + 10_000], force=True)


def _pinned_to(p: dict[str, Any], victims: list[str], zone: str | None) -> bool:
    """Whether a pack's constraints tie it to the victims, so it cannot run elsewhere."""
    pins = p.get("constraints") or {}
    return pins.get("node") in victims or (zone is not None and pins.get("zone") == zone)


def choose_victims(cluster: LocalCluster, kill: str, rng: random.Random, zone: str | None = None) -> list[str]:
    leader = cluster.leader()
    if kill == "leader":
        if leader is None:
            raise Timeout("no leader to kill")
        return [leader]
    if kill == "zone":
        with cluster.client(timeout=2.0) as c:
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
        with cluster.client(timeout=2.0) as c:
            load = {n["id"]: n["packs"] for n in c.nodes()}
        return [max(sorted(pool), key=lambda i: load.get(i, 0))]
    if kill == "random":
        return [rng.choice(sorted(a["id"] for a in cluster.agents if cluster.alive(a)))]
    raise InvalidInput(f"unknown fault {kill!r}: leader, node, random or zone")


def run_round(cluster: LocalCluster, rnd: int, kill: str, rng: random.Random, zone: str | None = None,
              sig: int = signal.SIGKILL, timeout: float = 30.0, cut: bool = False) -> DrillRound:
    """One fault: signal the victims (``sig``), or, with ``cut``, take their links down (the
    cluster must run in namespaces); then measure, restore the victims and check."""
    if cut and cluster.network is None:
        raise InvalidInput("a real partition needs a cluster in network namespaces")
    victims = choose_victims(cluster, kill, rng, zone)
    with cluster.client(timeout=2.0) as c:
        packs = {p["name"]: p for p in c.iter_packs()}
    hit = [n for n, p in packs.items() if p["node"] in victims and p["state"] in ("placed", "running")]
    pinned = [n for n in hit if _pinned_to(packs[n], victims, zone)]
    affected = [n for n in hit if n not in pinned]
    how = "link down" if cut else "SIGSTOP" if sig == signal.SIGSTOP else "SIGKILL"
    r = DrillRound(rnd, f"{how} {kill}", victims, len(affected), cluster.leader(), pinned=len(pinned))
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
    if pinned:
        mark(f"{len(pinned)} pack(s) pinned to the victims cannot move (e.g. {pinned[0]}): not waited for")
    try:
        survivors = set(victims)
        r.leader_s = round(_wait(lambda: cluster.leader(exclude=survivors) is not None, timeout, "a new leader"), 3)
        r.leader_after = cluster.leader(exclude=survivors)
        mark(f"leader {r.leader_after}")
        with cluster.client(timeout=1.0) as c:
            rid = uuid.uuid4().hex
            t1 = time.monotonic()
            c.create_packs([{"name": f"probe-{rid[:10]}"}], request_id=rid, retry_for=timeout)
            r.probe = f"probe-{rid[:10]}"
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
            # pinned packs wait (pending) for their node: still there, not lost
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


def run_drill(cluster: LocalCluster, kill: str, packs: int, rounds: int, seed: int, zone: str | None = None,
              sig: int = signal.SIGKILL, timeout: float = 30.0,
              progress: Callable[[DrillRound], None] | None = None, cut: bool = False) -> list[DrillRound]:
    rng = random.Random(seed)
    created = ensure_packs(cluster, packs)
    out: list[DrillRound] = []
    try:
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
    finally:
        # A drill leaves the cluster as it found it: its packs and probes go (their history stays).
        try:
            remove_packs(cluster, created + [r.probe for r in out if r.probe], timeout)
        except CanidaeError as e:
            if out:
                out[-1].timeline.append((0.0, f"could not remove the drill's packs: {e.message}"))
    return out
