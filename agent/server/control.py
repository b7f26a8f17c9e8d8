"""The control plane of a server agent: the replicated state and what the API asks of it.

``ControlPlane`` owns this server's Raft replica (``replica``), its group commit (``proposer``)
and its event store (``store``), and answers every cluster request the routes
(``canidae.agent.server.routes``) hand it: reads (linearizable through a read barrier unless
``stale``), writes (typed commands stamped here with ``at`` and the Raft ``term`` before they are
proposed: apply never reads a clock), node heartbeats and each node's assignments and reports.

Time is read here (wall clock for ``at`` stamps, monotonic clock for deadlines), never in core.
Failure detection (``canidae.agent.server.failure``) runs beside it on the leader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from canidae.agent.client.link import ServerLink
from canidae.agent.config import AgentConfig
from canidae.agent.keyring import ClusterKeys
from canidae.agent.server import history
from canidae.agent.server.eventstore import EventStore
from canidae.agent.server.proposer import Proposer
from canidae.agent.server.replica import Replica
from canidae.agent.telemetry import Reading
from canidae.core.commands import (
    Command,
    CreatePacks,
    DeletePacks,
    MigratePacks,
    PackReport,
    PlacePacks,
    Rebalance,
    RegisterNode,
    RemoveNode,
    ReportPacks,
    ReportState,
    RevokeNode,
    SetNodeState,
    StopPacks,
)
from canidae.core.errors import CanidaeError, InvalidInput, NoLeader, NotFound, WrongState
from canidae.core.metrics import NodeSummary, aggregate, render_rows
from canidae.core.ring import HashRing
from canidae.core.ringbounded import bounded_caps
from canidae.core.sampling import sample_rate
from canidae.core.scheduler import UNPLACED_KINDS, unplaced_kind
from canidae.core.state import HOLDING, ClusterState, PackRecord, running_digest
from canidae.core.types import Node, NodeState, PackSpec, PackState

log = logging.getLogger("canidae.server")

MAX_GENERATION = 2**62  # placements bump a pack's generation by one: never near this


def now_ms() -> int:
    return int(time.time() * 1000)


def raise_if_error(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise CanidaeError.from_wire(result)
    return result


class ControlPlane:
    def __init__(self, cfg: AgentConfig, link: ServerLink) -> None:
        self.cfg = cfg
        self.link = link
        self.replica: Replica | None = None
        self.proposer: Proposer | None = None
        self.store: EventStore | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.applied_signal: asyncio.Event | None = None
        # Heartbeat bookkeeping of the leader (in memory only: not state).
        self.last_seen: dict[str, float] = {}
        self.running_on: dict[str, int] = {}  # what each agent says it runs
        self.convergence = Convergence()
        self.summaries: dict[str, NodeSummary] = {}  # the latest metrics summary of each node
        # The cluster's keys (sealing secrets, hashing token secrets): given by the composition root.
        self.keys = ClusterKeys(cfg.data_dir, cfg.region, cfg.token, cfg.cluster_password)
        # Metric hooks the composition root may set before ``start`` (seconds; called off the loop).
        self.observe_commit: Callable[[float], None] | None = None  # Raft: propose to commit and apply
        self.observe_store_commit: Callable[[float], None] | None = None  # event store: write + fdatasync
        # What placement did in the entries this replica applied (every replica counts the same).
        self.placements = 0
        self.unplaced: dict[str, int] = {}
        self.blocked_reads = 0  # blocking pack reads parked right now, waiting for a change

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.applied_signal = asyncio.Event()
        os.makedirs(self.cfg.data_dir, exist_ok=True)
        self.store = history.open_store(self.cfg.data_dir, loop)  # before the replica: it may replay at once
        self.store.on_commit = self.observe_store_commit
        self.replica = Replica(
            self.cfg.raft, self.cfg.raft_peers(), os.path.join(self.cfg.data_dir, "raft"),
            self.cfg.cluster_password, self.cfg.raft_settings, ClusterState, self._on_applied,
            before_snapshot=lambda: self.store.flush(timeout=10.0) if self.store is not None else None)
        self.proposer = Proposer(self.replica, loop, timeout_s=self.cfg.request_timeout_s,
                                 on_commit=self.observe_commit)

    def stop(self) -> None:
        if self.replica is not None:
            self.replica.destroy()
        if self.store is not None:
            history.close_store(self.store)

    def _on_applied(self, events: list[dict[str, Any]]) -> None:
        # Tick thread: the store only buffers (its writer thread does the I/O); hand over to the loop.
        for ev in events:
            kind = ev.get("type")
            if kind == "PackPlaced":
                self.placements += 1
            elif kind == "PackPending":
                why = unplaced_kind(str((ev.get("detail") or {}).get("reason", "")))
                self.unplaced[why] = self.unplaced.get(why, 0) + 1
        if self.store is not None:
            self.store.append(events, live=self.live_view)
        if self.loop is not None and self.applied_signal is not None:
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        assert self.applied_signal is not None
        self.applied_signal.set()
        self.applied_signal = asyncio.Event()

    def live_view(self) -> dict[str, Any] | None:
        """The replicated state as the event store's projections see it (called on the tick thread)."""
        if self.replica is None:
            return None
        with self.replica.lock:
            st = self.replica.state
            return {"packs": {n: {"state": r.state.value, "node": r.node} for n, r in st.packs.items()},
                    "nodes": {n.id: n.state.value for n in st.nodes.values()}}

    # ------------------------------------------------------------------ proposing and reading

    @property
    def state(self) -> ClusterState:
        assert self.replica is not None
        return self.replica.state

    def is_leader(self) -> bool:
        return self.replica is not None and self.replica.is_leader()

    def leader_api(self) -> str | None:
        assert self.replica is not None
        return self.cfg.api_for_raft(self.replica.leader_address())

    def stamp(self) -> dict[str, Any]:
        return {"at": now_ms(), "term": self.replica.current_term() if self.replica else 0}

    async def propose(self, cmd: Command) -> dict[str, Any]:
        assert self.proposer is not None
        return raise_if_error(await self.proposer.submit(cmd))

    async def read_state(self, stale: bool) -> ClusterState:
        assert self.replica is not None and self.proposer is not None
        if not stale:
            await self.proposer.barrier(now_ms())
        return self.replica.state

    # ------------------------------------------------------------------ status

    def raft_health(self) -> dict[str, Any]:
        assert self.replica is not None
        st = self.replica.raft_status()
        return {"raft": {k: st[k] for k in ("state", "leader", "term", "commit_index", "has_quorum")},
                "leader_api": self.cfg.api_for_raft(st["leader"])}

    async def cluster_status(self) -> dict[str, Any]:
        assert self.replica is not None
        st = self.replica.raft_status()
        with self.replica.lock:
            state = self.replica.state
            counts = state.counts()
            n_nodes = len(state.nodes)
            down = sum(1 for n in state.nodes.values() if n.state is NodeState.DOWN)
        peers = []
        for s in self.cfg.servers:
            me = s.raft == self.cfg.raft
            peers.append({"id": s.id, "api": s.api, "raft": s.raft, "self": me,
                          "connected": True if me else st["peers"].get(s.raft, False)})
        return {"node": self.cfg.node_id, "leader": st["leader"], "leader_api": self.cfg.api_for_raft(st["leader"]),
                "raft_state": st["state"], "term": st["term"], "commit_index": st["commit_index"],
                "last_applied": st["last_applied"], "has_quorum": st["has_quorum"], "peers": peers,
                "nodes": n_nodes, "nodes_down": down, "packs": sum(counts.values()), "pack_states": counts,
                "group_commit": {"batches": self.proposer.batches if self.proposer else 0,
                                 "commands": self.proposer.commands if self.proposer else 0}}

    def readings(self) -> list[Reading]:
        """This server's Raft, group commit, replicated state and event store, for ``/v1/metrics``."""
        if self.replica is None:
            return []
        st = self.replica.raft_status()
        commit, applied = st["commit_index"] or 0, st["last_applied"] or 0
        out = [
            Reading("raft_term", "gauge", "Current Raft term of this server.", st["term"] or 0),
            Reading("raft_commit_index", "gauge", "Highest log index known committed.", commit),
            Reading("raft_applied_index", "gauge", "Highest log index applied to the state.", applied),
            Reading("raft_apply_lag_entries", "gauge", "Committed entries not yet applied.", max(0, commit - applied)),
            Reading("raft_leader", "gauge", "1 while this server is the Raft leader.", 1 if st["state"] == "leader" else 0),
            Reading("raft_has_quorum", "gauge", "1 while this server sees a quorum.", 1 if st["has_quorum"] else 0),
            Reading("raft_leader_changes", "counter", "Times the leader this server knows of changed.",
                    self.replica.leader_changes),
            Reading("raft_apply_seconds", "counter", "Time spent applying log entries to the state.",
                    self.replica.apply_seconds),
        ]
        out.append(Reading("blocking_reads_waiting", "gauge", "Blocking pack reads (?index=N&wait=S) parked "
                           "on this server, waiting for a change.", self.blocked_reads))
        if self.proposer is not None:
            out += [Reading("group_commit_batches", "counter", "Log entries proposed by group commit.",
                            self.proposer.batches),
                    Reading("group_commit_commands", "counter", "Commands proposed by group commit.",
                            self.proposer.commands)]
        out.append(Reading("scheduler_placements", "counter", "Packs placed on a node (new, moved or retried) "
                           "by the entries this server applied.", self.placements))
        for kind in UNPLACED_KINDS:
            out.append(Reading("scheduler_unplaced", "counter", "Packs left pending because nothing fitted, by "
                               "the kind of reason.", self.unplaced.get(kind, 0), {"reason": kind}))
        with self.replica.lock:
            state = self.replica.state
            packs = state.counts()
            nodes: dict[str, int] = {}
            for n in state.nodes.values():
                nodes[n.state.value] = nodes.get(n.state.value, 0) + 1
        for ps in PackState:
            out.append(Reading("cluster_packs", "gauge", "Packs in the replicated state, by state.",
                               packs.get(ps.value, 0), {"state": ps.value}))
        for ns in NodeState:
            out.append(Reading("cluster_nodes", "gauge", "Nodes in the replicated state, by state.",
                               nodes.get(ns.value, 0), {"state": ns.value}))
        if self.store is not None:
            out += [Reading("event_store_appends", "counter", "Events appended to this server's event store.",
                            self.store.appended),
                    Reading("event_store_syncs", "counter", "Group commits (fdatasync) of the event store.",
                            self.store.commits),
                    Reading("event_store_durable_seq", "gauge", "Last event sequence number on disk.",
                            self.store.durable_seq)]
        if self.is_leader():
            now = time.monotonic()
            for node_id, seen in sorted(self.last_seen.items()):
                out.append(Reading("heartbeat_age_seconds", "gauge", "Time since the leader last heard each "
                                   "node's heartbeat.", max(0.0, now - seen), {"node": node_id}))
        return out

    def state_digest(self) -> dict[str, Any]:
        assert self.replica is not None
        with self.replica.lock:
            st = self.replica.state
            return {"node": self.cfg.node_id, "digest": st.digest(), "applied": st.applied,
                    "packs": len(st.packs), "event_seq": st.event_seq}

    # ------------------------------------------------------------------ nodes

    def _node_view(self, state: ClusterState, node: Node) -> dict[str, Any]:
        used = state.node_usage(node.id)
        d = node.to_dict()
        seen = self.last_seen.get(node.id)
        d.update(used=used.to_dict(), packs=len([1 for r in state.packs_on(node.id) if r.state in HOLDING]),
                 last_heartbeat_s_ago=None if seen is None or not self.is_leader()
                 else round(time.monotonic() - seen, 3),
                 running_here=self.running_on.get(node.id),
                 resyncs=self.convergence.resyncs.get(node.id, 0),
                 corrected=self.convergence.corrected.get(node.id))
        return d

    async def _from_leader(self, path: str) -> dict[str, Any] | None:
        """Heartbeat times live on the leader only: node views are read there when possible."""
        if self.is_leader():
            return None
        leader = self.leader_api()
        if leader is None:
            return None
        try:
            return await self.link.call("GET", path, prefer=leader, timeout=2.0)  # type: ignore[no-any-return]
        except (NotFound, InvalidInput):
            raise
        except CanidaeError:
            return None

    async def list_nodes(self, stale: bool) -> dict[str, Any]:
        if not stale and (forwarded := await self._from_leader("/v1/nodes")) is not None:
            return forwarded
        state = await self.read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            return {"nodes": [self._node_view(state, n) for n in state.iter_nodes()]}

    async def show_node(self, node_id: str, stale: bool) -> dict[str, Any]:
        if not stale and (forwarded := await self._from_leader(f"/v1/nodes/{node_id}")) is not None:
            return forwarded
        state = await self.read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            return {"node": self._node_view(state, state.get_node(node_id))}

    async def register_node(self, node: Any, rid: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise InvalidInput("node must be an object")
        try:
            parsed = Node.from_dict(node)
        except KeyError as e:
            raise InvalidInput(f"node is missing {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"invalid node: {e}") from None
        return await self.propose(RegisterNode(id=rid, **self.stamp(), node=parsed))

    async def set_node_state(self, node_id: str, state: NodeState, reason: str, rid: str,
                             plan: bool = False, by: str = "operator") -> dict[str, Any]:
        cmd = SetNodeState(id=rid, **self.stamp(), node_id=node_id, state=state, reason=reason or "operator",
                           by=by)
        if plan:
            return await self._plan(cmd)
        return await self.propose(cmd)

    async def remove_node(self, node_id: str, rid: str, by: str = "operator") -> dict[str, Any]:
        """Forget a node that was drained or is down (its agent stopped first: a running agent
        whose node is removed would register again). Refused while it may still run packs."""
        st = await self.read_state(False)
        with self.replica.lock:  # type: ignore[union-attr]
            node = st.nodes.get(node_id)
            if node is None:
                raise NotFound(f"no node {node_id!r}")
            if node.state not in (NodeState.DRAINING, NodeState.DOWN):
                raise WrongState(f"node {node_id} is {node.state.value}: drain it (or let it be declared down) "
                                 "before removing it")
        return await self.propose(RemoveNode(id=rid, **self.stamp(), node_id=node_id, by=by))
    async def revoke_node(self, node_id: str, reason: str, rid: str, by: str = "operator") -> dict[str, Any]:
        """Refuse a client agent's node credential cluster-wide from the next request on."""
        return await self.propose(RevokeNode(id=rid, **self.stamp(), node_id=node_id, reason=reason, by=by))

    def is_revoked(self, node_id: str) -> bool:
        return self.replica is not None and node_id in self.replica.state.revoked_nodes

    async def _plan(self, cmd: Command) -> dict[str, Any]:
        """What ``cmd`` would do, computed by applying it to a copy of the current state."""
        st = await self.read_state(False)
        with self.replica.lock:  # type: ignore[union-attr]
            copy = ClusterState.from_snapshot(st.to_snapshot())
        return {**raise_if_error(copy.apply(cmd)), "plan": True}

    # ------------------------------------------------------------------ packs

    def seal_secrets(self, plain: dict[str, str]) -> dict[str, str]:
        """Seal a spec's secrets before they are proposed: the log never holds a plain one."""
        return self.keys.seal_all(plain)

    async def create_packs(self, specs: list[PackSpec], count: int, place: bool, rid: str,
                           keep_pending: bool = True, by: str = "api") -> dict[str, Any]:
        if count and len(specs) != 1:
            raise InvalidInput("count needs exactly one spec")
        t0 = time.perf_counter()
        cmd = CreatePacks(id=rid, **self.stamp(), specs=tuple(specs), place=place, count=count, by=by,
                          keep_pending=keep_pending)
        # The answer is the very dict the state machine keeps for idempotent retries: copy, never mutate.
        return {**await self.propose(cmd), "commit_ms": round((time.perf_counter() - t0) * 1000, 3)}

    async def list_packs(self, *, node: str | None, state: PackState | None, after: str | None, limit: int,
                         stale: bool, crashlooping: bool = False, count: bool = True,
                         index: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        """A page of packs; ``total`` counts every pack matching the filters, not only this page.

        A blocking read (``index`` given) answers once the list's modify index (``packs_index``)
        is above ``index``, or when ``wait`` seconds have passed (with the same index)."""
        await self.read_state(stale)
        deadline = time.monotonic() + wait
        while True:
            assert self.replica is not None
            with self.replica.lock:
                st = self.replica.state
                if index is None or st.packs_index > index or time.monotonic() >= deadline:
                    page, cursor, total = st.list_packs(node=node, state=state, after=after, limit=limit,
                                                        crashlooping=crashlooping, count=count)
                    return {"packs": [r.view() for r in page], "next": cursor, "total": total,
                            "index": st.packs_index}
            await self._parked(deadline)

    async def show_pack(self, name: str, stale: bool, index: int | None = None, wait: float = 0.0
                        ) -> dict[str, Any]:
        """One pack. A blocking read (``index`` given) answers once the pack's modify index is
        above ``index`` or ``wait`` seconds have passed; a pack deleted meanwhile is ``NotFound``."""
        await self.read_state(stale)
        deadline = time.monotonic() + wait
        while True:
            assert self.replica is not None
            with self.replica.lock:
                rec = self.replica.state.get_pack(name)
                if index is None or rec.index > index or time.monotonic() >= deadline:
                    return {"pack": rec.view(), "index": rec.index}
            await self._parked(deadline)

    async def _parked(self, deadline: float) -> None:
        """``_next_apply`` for a blocking pack read, counted in ``blocked_reads`` while it waits."""
        self.blocked_reads += 1
        try:
            await self._next_apply(deadline)
        finally:
            self.blocked_reads -= 1

    async def pack_action(self, name: str, action: str, rid: str, keep_pending: bool = True,
                          by: str = "api") -> dict[str, Any]:
        if action == "stop":
            return await self.propose(StopPacks(id=rid, **self.stamp(), names=(name,), by=by))
        return await self.propose(PlacePacks(id=rid, **self.stamp(), names=(name,), by=by,
                                             keep_pending=keep_pending))

    async def delete_packs(self, names: list[str], force: bool, rid: str, by: str = "api") -> dict[str, Any]:
        return await self.propose(DeletePacks(id=rid, **self.stamp(), names=tuple(names), force=force, by=by))

    async def migrate_pack(self, name: str, to: str | None, rid: str, by: str = "api") -> dict[str, Any]:
        return await self.propose(MigratePacks(id=rid, **self.stamp(), moves=((name, to),), by=by,
                                               reason=f"migrate to {to}" if to else "migrate"))

    async def rebalance(self, plan: bool, rid: str, by: str = "api") -> dict[str, Any]:
        cmd = Rebalance(id=rid, **self.stamp(), by=by)
        return await (self._plan(cmd) if plan else self.propose(cmd))

    async def pack_history(self, name: str, since_ms: int | None = None) -> dict[str, Any]:
        return await history.pack_history(self, name, since_ms)

    def locate_pack(self, pack: str) -> tuple[str | None, str, str]:
        """(node, its API address, the pack's state) from this replica (a local read)."""
        assert self.replica is not None
        with self.replica.lock:
            st = self.replica.state
            rec = st.packs.get(pack)
            if rec is None:
                raise NotFound(f"no pack {pack!r}")
            node = st.nodes.get(rec.node) if rec.node is not None else None
            return rec.node, node.address if node is not None else "", rec.state.value

    # ------------------------------------------------------------------ the ring

    async def ring_view(self, stale: bool) -> dict[str, Any]:
        st = await self.read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            return ring_view(st)

    async def ring_lookup(self, name: str, stale: bool) -> dict[str, Any]:
        st = await self.read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            placed = st.packs.get(name)
            first, pref = dry_place(st, name)
        return {"name": name, "ring_node": first, "preference": pref, "placed_on": placed.node if placed else None}

    # ------------------------------------------------------------------ agents: heartbeats, assignments, reports

    async def heartbeat(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.replica is not None
        if not self.is_leader():
            leader = self.leader_api()
            if leader is None:
                raise NoLeader("no leader to take heartbeats")
            return await self.link.call("POST", f"/v1/nodes/{node_id}/heartbeat", json=body,  # type: ignore[no-any-return]
                                        prefer=leader, timeout=self.cfg.heartbeat_interval_s + 0.5)
        summary = None
        if body.get("metrics") is not None:  # checked whole before anything of the heartbeat is taken
            summary = NodeSummary.from_wire(body["metrics"])
            if summary.node != node_id:
                raise InvalidInput(f"the metrics summary is of node {summary.node}, not {node_id}")
        st = self.replica.state  # dict reads only: a heartbeat never waits for the state's lock
        node = st.nodes.get(node_id)
        rev = st.node_rev.get(node_id, 0)
        if node is None:
            raise NotFound(f"no node {node_id!r}: register first")
        self.last_seen[node_id] = time.monotonic()
        if summary is not None:
            self.summaries[node_id] = summary
        if isinstance(body.get("running"), int):
            self.running_on[node_id] = body["running"]
        self.convergence.heard(node_id, body.get("digest"), body.get("corrected"))
        return {"state": node.state.value, "rev": rev, "leader_api": self.cfg.api,
                "resync": self.convergence.take_resync(node_id), "sample_rate": sample_rate(len(st.packs)),
                # What client agents refuse on their own routes (yips, exec) from now on.
                "revoked": sorted(st.revoked_nodes)}

    async def metrics_tree(self, params: dict[str, Any]) -> dict[str, Any]:
        """The latest summaries of live nodes merged into one tree (``canidae.core.metrics``), as
        the leader holds them; ``params`` are the checked query (see ``routes.metrics_query``)."""
        assert self.replica is not None
        if not self.is_leader():
            leader = self.leader_api()
            if leader is None:
                raise NoLeader("no leader holds the nodes' metrics")
            return await self.link.call("GET", "/v1/metrics/cluster", params=params,  # type: ignore[no-any-return]
                                        prefer=leader, timeout=self.cfg.request_timeout_s)
        st = self.replica.state
        zone, cell = params.get("zone"), params.get("cell")
        chosen = []
        for node_id, s in list(self.summaries.items()):
            node = st.nodes.get(node_id)
            if node is None or node.state is NodeState.DOWN:
                continue  # its packs moved: what it last said is no longer the cluster's
            loc = s.location
            if (zone and loc.zone != zone) or (cell and cell not in (loc.cell, f"{loc.zone}/{loc.region}/{loc.cell}")):
                continue
            chosen.append(s)
        tree = aggregate(chosen, by=params["by"])
        out: dict[str, Any] = {"by": params["by"], "sample_rate": sample_rate(len(st.packs)),
                               "rows": render_rows(tree), "tree": tree.to_dict()}
        most = params.get("packs", 0)
        if most:
            key = {"cpu": "cpu_m", "mem": "mem_mib"}.get(params.get("sort", "cpu"), params.get("sort", "cpu"))
            samples = [{"node": s.node, **_sample_view(p)} for s in chosen for p in s.packs]
            samples.sort(key=lambda p: (p["name"],) if key == "name" else (-p[key], p["name"]))
            out["packs"] = samples[:most]
            out["packs_sampled"] = len(samples)
        return out

    def check_convergence(self) -> None:
        """Leader only: order a resync of every node whose agent's digest has disagreed with the
        state for two checks in a row while neither side changed (anti-entropy)."""
        assert self.replica is not None
        wanted: dict[str, tuple[int, str]] = {}
        with self.replica.lock:
            st = self.replica.state
            for n in self.convergence.reported():
                if n not in st.nodes:
                    continue
                rev = st.node_rev.get(n, 0)
                digest = self.convergence.wanted_digest(n, rev)
                if digest is None:
                    # Digesting 100,000 packs is not free: do it once per revision, and only once
                    # the node's share has held still for a check (a moving share is not compared).
                    if not self.convergence.held_still(n, rev):
                        continue
                    digest = running_digest((r.spec.name, r.generation) for r in st.held_by(n))
                    self.convergence.remember_wanted(n, rev, digest)
                wanted[n] = (rev, digest)
        for node_id, (rev, digest) in wanted.items():
            if self.convergence.compare(node_id, rev, digest):
                log.warning("node %s runs something else than the state says: resync ordered", node_id)

    async def assignments(self, node_id: str, after: int, wait: float) -> dict[str, Any]:
        """A long-poll on what changed for ``node_id`` since revision ``after``.

        Never answered from a replica behind the agent (``after`` newer than its revision): that
        waits for a read barrier first. When the changes since ``after`` are not all known here,
        the answer asks the agent to resynchronise (``resync``) instead of handing it a full set.
        """
        assert self.replica is not None and self.applied_signal is not None
        if self.replica.leader_address() is None:
            raise NoLeader("this server knows no leader: ask another")
        with self.replica.lock:
            behind = self.replica.state.is_behind(node_id, after) if node_id in self.replica.state.nodes else False
        if behind:
            await self.read_state(False)
        deadline = time.monotonic() + wait
        while True:
            with self.replica.lock:
                st = self.replica.state
                rev = st.node_rev.get(node_id)
                if rev is None:
                    raise NotFound(f"no node {node_id!r}")
                if rev != after or time.monotonic() >= deadline:
                    resync, items = st.changes_since(node_id, after)
                    if resync:
                        return {"rev": rev, "resync": True, "node_state": st.nodes[node_id].state.value}
                    gone = [r for r in items if isinstance(r, str)]
                    return {"rev": rev, "resync": False, "node_state": st.nodes[node_id].state.value,
                            "packs": [assignment(r) for r in items if not isinstance(r, str)],
                            "gone": gone, "deleted": [n for n in gone if n not in st.packs]}
            await self._next_apply(deadline)

    async def _next_apply(self, deadline: float) -> None:
        """The wait of every long-poll (assignments, blocking pack reads): until the replica applies
        another entry (``_wake``), or ``deadline`` (monotonic) passes. No polling of the state."""
        assert self.replica is not None and self.applied_signal is not None
        signal = self.applied_signal
        try:
            # Wake at least every half second: a server that lost its leader ends the poll.
            await asyncio.wait_for(signal.wait(), timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        except TimeoutError:
            if self.replica.leader_address() is None:
                raise NoLeader("this server lost its leader: ask another") from None

    async def resync(self, node_id: str, running: Any) -> dict[str, Any]:
        """Everything ``node_id`` holds, read linearizably, and an explicit instruction for each pack
        its agent runs (``running``: name -> generation) that it no longer holds."""
        if not isinstance(running, dict) or len(running) > 1_000_000 or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in running.items()):
            raise InvalidInput("running must be an object of pack name -> generation")
        st = await self.read_state(False)
        with self.replica.lock:  # type: ignore[union-attr]
            held, gone = st.resync_view(node_id, running)
            return {"rev": st.node_rev[node_id], "resync": True, "node_state": st.nodes[node_id].state.value,
                    "packs": [assignment(r) for r in held], "gone": gone}

    async def report_packs(self, node_id: str, reports: list[tuple[str, int, str, str]], rid: str) -> dict[str, Any]:
        """``reports`` as decoded by the wire schema (``canidae.agent.client.schema.Reports``)."""
        parsed = [PackReport(name, generation, ReportState(state), reason) for name, generation, state, reason in reports]
        return await self.propose(ReportPacks(id=rid, **self.stamp(), node_id=node_id, reports=tuple(parsed),
                                              by=f"agent:{node_id}"))


def _sample_view(p: Any) -> dict[str, Any]:
    return {"name": p.name, "weight": p.weight, "cpu_m": p.cpu_m, "mem_mib": p.mem_mib, "restarts": p.restarts,
            "yips": p.yips, "error": p.error, "outlier": p.outlier}


def assignment(rec: PackRecord) -> dict[str, Any]:
    """One pack as its node's agent is told to hold it."""
    return {"name": rec.spec.name, "generation": rec.generation, "state": rec.state.value,
            "driver": rec.spec.driver.value, "spec": rec.spec.to_dict()}


class Convergence:
    """The leader's record of what agents say they run (digests), against the state (anti-entropy).

    A mismatch is only acted on when it persists over two checks in which neither the node's
    revision nor the agent's digest moved: a pack being started or stopped right now is not a
    divergence. The answer to a divergence is a resync order in the node's next heartbeat reply.
    """

    def __init__(self) -> None:
        self.digests: dict[str, str] = {}
        self.corrected: dict[str, int] = {}
        self.resyncs: dict[str, int] = {}
        self._suspect: dict[str, tuple[int, str]] = {}
        self._pending: set[str] = set()
        self._wanted: dict[str, tuple[int, str]] = {}  # node -> (revision, the state's digest at it)
        self._last_rev: dict[str, int] = {}  # node -> its revision at the previous check

    def held_still(self, node_id: str, rev: int) -> bool:
        """True when the node's revision is the same as at the previous check."""
        still = self._last_rev.get(node_id) == rev
        self._last_rev[node_id] = rev
        return still

    def wanted_digest(self, node_id: str, rev: int) -> str | None:
        cached = self._wanted.get(node_id)
        return cached[1] if cached is not None and cached[0] == rev else None

    def remember_wanted(self, node_id: str, rev: int, digest: str) -> None:
        self._wanted[node_id] = (rev, digest)

    def heard(self, node_id: str, digest: Any, corrected: Any) -> None:
        if isinstance(digest, str) and len(digest) <= 64:
            self.digests[node_id] = digest
        if isinstance(corrected, int):
            self.corrected[node_id] = corrected

    def reported(self) -> list[str]:
        return list(self.digests)

    def compare(self, node_id: str, rev: int, wanted: str) -> bool:
        """True when a resync is ordered now."""
        seen = self.digests.get(node_id)
        if seen is None or seen == wanted:
            self._suspect.pop(node_id, None)
            return False
        mark = (rev, seen)
        if self._suspect.get(node_id) != mark:
            self._suspect[node_id] = mark
            return False
        self._suspect.pop(node_id, None)
        self._pending.add(node_id)
        self.resyncs[node_id] = self.resyncs.get(node_id, 0) + 1
        return True

    def take_resync(self, node_id: str) -> bool:
        if node_id in self._pending:
            self._pending.discard(node_id)
            return True
        return False

    def forget(self) -> None:
        """A new term of leadership starts from what the agents say next."""
        self.digests.clear()
        self._suspect.clear()
        self._pending.clear()
        self._wanted.clear()
        self._last_rev.clear()


def live_ring(st: ClusterState) -> HashRing:
    """The READY nodes at their weights, for their virtual-node counts and bounded caps (shares
    and lookups come from the scheduler's own rings)."""
    ring = HashRing(vnodes=st.vnodes)
    for n in st.iter_nodes():
        if n.state is NodeState.READY:
            ring.add_node(n.id, n.weight)
    return ring


def ring_view(st: ClusterState) -> dict[str, Any]:
    """The ring of READY nodes: share of the hash space (as the scheduler's rings split it, level
    by level), virtual nodes, packs against the bounded cap."""
    ring = live_ring(st)
    total = sum(st.node_usage(n).packs for n in st.nodes)
    share = st.scheduler.shares()
    caps = bounded_caps(ring, max(total, 1), st.load_factor) if len(ring) else {}
    nodes = []
    for n in st.iter_nodes():
        nodes.append({"id": n.id, "zone": n.location.zone, "region": n.location.region, "cell": n.location.cell,
                      "state": n.state.value, "weight": n.weight,
                      "vnodes": ring.vnode_count(n.id) if n.id in ring else 0, "share": round(share.get(n.id, 0.0), 6),
                      "packs": st.node_usage(n.id).packs, "cap": caps.get(n.id), "max_packs": n.capacity.packs})
    return {"nodes": nodes, "packs": total, "load_factor": st.load_factor, "vnodes_per_weight": st.vnodes}


def dry_place(st: ClusterState, name: str) -> tuple[str | None, list[str]]:
    """Where the scheduler's rings send an unpinned pack called ``name`` (loads and capacity
    aside), and the first ten READY nodes in the order its placement walk would try them."""
    pref = st.scheduler.preference(name, limit=10)
    return (pref[0] if pref else None), pref


__all__ = ["ControlPlane", "dry_place", "now_ms", "ring_view"]
