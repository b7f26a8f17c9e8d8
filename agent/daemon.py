"""The agent daemon: wires config, the Raft replica, the HTTP API and the agent's loops.

Every agent runs the same process. A *server* also holds a ``Replica`` (a Raft voter) and a
``Proposer`` (group commit); a *client* forwards cluster requests to the servers. Loops:

* registration, then a heartbeat every ``heartbeat_interval_s`` to the leader. The leader keeps
  heartbeat times in memory only (they are not state) and, after ``heartbeat_ttl_s`` without
  one, commits ``SetNodeState(DOWN)`` stamped with its term; apply then reschedules the node's
  packs. A new leader gives every node a full TTL of grace before judging it.
* reconcile (``canidae.agent.node.reconcile``): a long-poll on this node's assignments, woken by
  every applied change; drivers bring actual state to desired state and the agent reports it.

Time is read here (wall clock for ``at`` stamps, monotonic clock for deadlines), never in core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from canidae.agent.server import history
from canidae.agent.server.api import build_app
from canidae.agent.client import decode_answer
from canidae.agent.config import AgentConfig
from canidae.agent.node.drivers import VirtualDriver
from canidae.agent.server.eventstore import EventStore
from canidae.agent.server.proposer import Proposer
from canidae.agent.node.reconcile import Reconciler
from canidae.agent.server.replica import Replica
from canidae.core.commands import Command, CreatePacks, MigratePacks, PackReport, PlacePacks, Rebalance, \
    RegisterNode, ReportPacks, SetNodeState, StopPacks
from canidae.core.errors import CanidaeError, InvalidInput, NoLeader, NotFound, OperationFailed, Unavailable
from canidae.core.state import HOLDING, ClusterState
from canidae.core.types import Node, NodeState, PackSpec, PackState, Role

log = logging.getLogger("canidae.agent")


def now_ms() -> int:
    return int(time.time() * 1000)


def _raise_if_error(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise CanidaeError.from_wire(result)
    return result


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self.replica: Replica | None = None
        self.proposer: Proposer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.http: httpx.AsyncClient | None = None
        self.last_seen: dict[str, float] = {}
        self.running_on: dict[str, int] = {}  # what each agent says it runs (from heartbeats)
        self.was_leader = False
        self.down_in_flight: set[str] = set()
        self.store: EventStore | None = None  # servers: the cluster's event history (canidae.agent.server.history)
        self.applied_signal: asyncio.Event | None = None
        self.leader_hint: str | None = None
        # Modules that add API routes: callables (agent, endpoint) -> list of starlette Routes.
        self.route_providers: list[Any] = []
        # Every agent serves the event store's routes: a client agent forwards them to a server.
        self.route_providers.append(history.routes)
        self.reconciler = Reconciler(self._fetch_assignments, self._send_reports)
        self.reconciler.add_driver(VirtualDriver(self.reconciler.report))
        # Real processes (exec driver), their API and the mailboxes of the packs on this node.
        from canidae.agent.server import exec_api
        from canidae.agent.server import yips
        from canidae.agent.node.exec_driver import ExecDriver
        from canidae.agent.node.mailbox import MailboxStore
        self.exec_driver = ExecDriver(self.reconciler.report, data_dir=cfg.data_dir, node_id=cfg.node_id,
                                      token=cfg.token, api=cfg.api)
        self.reconciler.add_driver(self.exec_driver)
        self.mailboxes = MailboxStore()
        self.route_providers += [exec_api.routes, yips.routes]
        self.stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.applied_signal = asyncio.Event()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.cfg.request_timeout_s, connect=1.0),
            headers={"authorization": f"Bearer {self.cfg.token}"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
        if self.cfg.role is Role.SERVER:
            os.makedirs(self.cfg.data_dir, exist_ok=True)
            self.store = history.open_store(self)  # before the replica: it may replay its journal at once
            self.replica = Replica(
                self.cfg.raft, self.cfg.raft_peers(), os.path.join(self.cfg.data_dir, "raft"),
                self.cfg.cluster_password, self.cfg.raft_settings, ClusterState, self._on_applied,
                before_snapshot=lambda: self.store.flush(timeout=10.0) if self.store is not None else None)
            self.proposer = Proposer(self.replica, self.loop, timeout_s=self.cfg.request_timeout_s)
        self.tasks = [asyncio.create_task(self._heartbeat_loop()),
                      asyncio.create_task(self.reconciler.run())]
        if self.replica is not None:
            self.tasks.append(asyncio.create_task(self._failure_detector_loop()))

    async def stop(self) -> None:
        self.stopping = True
        await self.reconciler.close()
        for t in getattr(self, "tasks", []):
            t.cancel()
        if self.http is not None:
            await self.http.aclose()
        if self.replica is not None:
            self.replica.destroy()
        if self.store is not None:
            history.close_store(self.store)

    def extra_routes(self, endpoint: Any) -> list[Any]:
        """Routes contributed by other agent modules (exec driver, mailboxes, event store)."""
        routes: list[Any] = []
        for contribute in self.route_providers:
            routes.extend(contribute(self, endpoint))
        return routes

    def _on_applied(self, events: list[dict[str, Any]]) -> None:
        # Tick thread: the store only buffers (its writer thread does the I/O); hand over to the loop.
        if self.store is not None:
            self.store.append(events, live=lambda: history.live_view(self))
        if self.loop is not None and self.applied_signal is not None:
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        assert self.applied_signal is not None
        self.applied_signal.set()
        self.applied_signal = asyncio.Event()

    # ------------------------------------------------------------------ proposing and reading

    def _stamp(self) -> dict[str, Any]:
        return {"at": now_ms(), "term": self.replica.current_term() if self.replica else 0}

    async def propose(self, cmd: Command) -> dict[str, Any]:
        if self.proposer is None:
            raise OperationFailed("this agent is not a server")
        return _raise_if_error(await self.proposer.submit(cmd))

    async def _read_state(self, stale: bool) -> ClusterState:
        assert self.replica is not None and self.proposer is not None
        if not stale:
            await self.proposer.barrier(now_ms())
        return self.replica.state

    # ------------------------------------------------------------------ API operations

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": True, "node": self.cfg.node_id, "role": self.cfg.role.value,
                               "api": self.cfg.api, "uptime_s": round(time.monotonic() - self.started, 3),
                               "pid": os.getpid()}
        if self.replica is not None:
            st = self.replica.raft_status()
            out["raft"] = {k: st[k] for k in ("state", "leader", "term", "commit_index", "has_quorum")}
            out["leader_api"] = self.cfg.api_for_raft(st["leader"])
        return out

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
            if s.raft == self.cfg.raft:
                peers.append({"id": s.id, "api": s.api, "raft": s.raft, "connected": True, "self": True})
            else:
                peers.append({"id": s.id, "api": s.api, "raft": s.raft,
                              "connected": st["peers"].get(s.raft, False), "self": False})
        return {"node": self.cfg.node_id, "leader": st["leader"], "leader_api": self.cfg.api_for_raft(st["leader"]),
                "raft_state": st["state"], "term": st["term"], "commit_index": st["commit_index"],
                "last_applied": st["last_applied"], "has_quorum": st["has_quorum"], "peers": peers,
                "nodes": n_nodes, "nodes_down": down, "packs": sum(counts.values()), "pack_states": counts,
                "group_commit": {"batches": self.proposer.batches if self.proposer else 0,
                                 "commands": self.proposer.commands if self.proposer else 0}}

    def state_digest(self) -> dict[str, Any]:
        if self.replica is None:
            raise NotFound("a client agent holds no replicated state")
        with self.replica.lock:
            st = self.replica.state
            return {"node": self.cfg.node_id, "digest": st.digest(), "applied": st.applied,
                    "packs": len(st.packs), "event_seq": st.event_seq}

    def _node_view(self, state: ClusterState, node: Node) -> dict[str, Any]:
        used = state.node_usage(node.id)
        d = node.to_dict()
        seen = self.last_seen.get(node.id)
        d.update(used=used.to_dict(), packs=len([1 for r in state.packs_on(node.id) if r.state in HOLDING]),
                 last_heartbeat_s_ago=None if seen is None or not self.replica or not self.replica.is_leader()
                 else round(time.monotonic() - seen, 3),
                 running_here=self.running_on.get(node.id))
        return d

    async def _from_leader(self, path: str) -> dict[str, Any] | None:
        """Heartbeat times live on the leader only: node views are read there when possible."""
        assert self.replica is not None and self.http is not None
        if self.replica.is_leader():
            return None
        leader = self.cfg.api_for_raft(self.replica.leader_address())
        if leader is None:
            return None
        try:
            r = await self.http.get(f"http://{leader}{path}", timeout=2.0)
        except httpx.HTTPError:
            return None
        if r.status_code >= 400:
            raise CanidaeError.from_wire(r.json(), r.status_code)
        return r.json()  # type: ignore[no-any-return]

    async def list_nodes(self, stale: bool) -> dict[str, Any]:
        if not stale and (forwarded := await self._from_leader("/v1/nodes")) is not None:
            return forwarded
        state = await self._read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            return {"nodes": [self._node_view(state, n) for n in state.iter_nodes()]}

    async def show_node(self, node_id: str, stale: bool) -> dict[str, Any]:
        if not stale and (forwarded := await self._from_leader(f"/v1/nodes/{node_id}")) is not None:
            return forwarded
        state = await self._read_state(stale)
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
        return await self.propose(RegisterNode(id=rid, **self._stamp(), node=parsed))

    async def set_node_state(self, node_id: str, state: NodeState, reason: str, rid: str,
                             plan: bool = False) -> dict[str, Any]:
        cmd = SetNodeState(id=rid, **self._stamp(), node_id=node_id, state=state, reason=reason or "operator",
                           by="operator")
        if plan:
            return await self._plan(cmd)
        return await self.propose(cmd)

    async def _plan(self, cmd: Command) -> dict[str, Any]:
        """What ``cmd`` would do, computed by applying it to a copy of the current state."""
        st = await self._read_state(False)
        with self.replica.lock:  # type: ignore[union-attr]
            copy = ClusterState.from_snapshot(st.to_snapshot())
        return {**_raise_if_error(copy.apply(cmd)), "plan": True}

    async def create_packs(self, specs: list[PackSpec], count: int, place: bool, rid: str) -> dict[str, Any]:
        if count and len(specs) != 1:
            raise InvalidInput("count needs exactly one spec")
        t0 = time.perf_counter()
        cmd = CreatePacks(id=rid, **self._stamp(), specs=tuple(specs), place=place, count=count, by="api")
        # The answer is the very dict the state machine keeps for idempotent retries: copy, never mutate.
        result = {**await self.propose(cmd), "commit_ms": round((time.perf_counter() - t0) * 1000, 3)}
        return result

    async def list_packs(self, *, node: str | None, state: PackState | None, after: str | None, limit: int,
                         stale: bool) -> dict[str, Any]:
        st = await self._read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            page, cursor = st.list_packs(node=node, state=state, after=after, limit=limit)
            return {"packs": [r.view() for r in page], "next": cursor, "total": len(st.packs)}

    async def show_pack(self, name: str, stale: bool) -> dict[str, Any]:
        st = await self._read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            return {"pack": st.get_pack(name).view()}

    async def pack_action(self, name: str, action: str, rid: str) -> dict[str, Any]:
        if action == "stop":
            return await self.propose(StopPacks(id=rid, **self._stamp(), names=(name,), by="api"))
        return await self.propose(PlacePacks(id=rid, **self._stamp(), names=(name,), by="api"))

    async def migrate_pack(self, name: str, to: str | None, rid: str) -> dict[str, Any]:
        return await self.propose(MigratePacks(id=rid, **self._stamp(), moves=((name, to),), by="api",
                                               reason=f"migrate to {to}" if to else "migrate"))

    async def rebalance(self, plan: bool, rid: str) -> dict[str, Any]:
        cmd = Rebalance(id=rid, **self._stamp(), by="api")
        return await (self._plan(cmd) if plan else self.propose(cmd))

    async def pack_history(self, name: str, since_ms: int | None = None) -> dict[str, Any]:
        return await history.pack_history(self, name, since_ms)

    async def ring_view(self, stale: bool) -> dict[str, Any]:
        st = await self._read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            return _ring_view(st)

    async def ring_lookup(self, name: str, stale: bool) -> dict[str, Any]:
        st = await self._read_state(stale)
        with self.replica.lock:  # type: ignore[union-attr]
            placed = st.packs.get(name)
            first, pref = _dry_place(st, name)
        return {"name": name, "ring_node": first, "preference": pref, "placed_on": placed.node if placed else None}

    # ------------------------------------------------------------------ heartbeats and failure detection

    async def heartbeat(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.replica is not None
        if not self.replica.is_leader():
            leader = self.cfg.api_for_raft(self.replica.leader_address())
            if leader is None:
                raise NoLeader("no leader to take heartbeats")
            return await self._post(leader, f"/v1/nodes/{node_id}/heartbeat", body)
        with self.replica.lock:
            node = self.replica.state.nodes.get(node_id)
            rev = self.replica.state.node_rev.get(node_id, 0)
        if node is None:
            raise NotFound(f"no node {node_id!r}: register first")
        self.last_seen[node_id] = time.monotonic()
        if isinstance(body.get("running"), int):
            self.running_on[node_id] = body["running"]
        return {"state": node.state.value, "rev": rev, "leader_api": self.cfg.api}

    async def _failure_detector_loop(self) -> None:
        assert self.replica is not None
        ttl = self.cfg.heartbeat_ttl_s
        while not self.stopping:
            await asyncio.sleep(min(0.1, ttl / 5))
            try:
                leader = self.replica.is_leader()
                now = time.monotonic()
                if leader and not self.was_leader:
                    # Grace: a new leader has no heartbeat history yet.
                    self.last_seen = {}
                self.was_leader = leader
                if not leader:
                    continue
                with self.replica.lock:
                    live = [n.id for n in self.replica.state.nodes.values() if n.state is not NodeState.DOWN]
                for node_id in live:
                    seen = self.last_seen.setdefault(node_id, now)
                    if now - seen > ttl and node_id not in self.down_in_flight:
                        self.down_in_flight.add(node_id)
                        asyncio.create_task(self._declare_down(node_id, now - seen))
            except Exception:
                log.exception("failure detector")

    async def _declare_down(self, node_id: str, silent_s: float) -> None:
        try:
            cmd = SetNodeState(id=f"down-{node_id}-{uuid.uuid4().hex[:12]}", **self._stamp(), node_id=node_id,
                               state=NodeState.DOWN, reason=f"no heartbeat for {silent_s:.2f} s",
                               by=f"leader:{self.cfg.node_id}")
            result = await self.propose(cmd)
            log.warning("node %s declared down; %d packs moved", node_id, len(result.get("moved", [])))
        except CanidaeError as e:
            log.warning("could not declare %s down: %s", node_id, e.message)
        finally:
            self.down_in_flight.discard(node_id)

    # ------------------------------------------------------------------ talking to servers (as any agent)

    def _server_order(self) -> list[str]:
        apis = self.cfg.server_apis
        if self.leader_hint in apis:
            apis = [self.leader_hint] + [a for a in apis if a != self.leader_hint]
        return apis

    async def _post(self, api: str, path: str, body: Any) -> dict[str, Any]:
        assert self.http is not None
        try:
            r = await self.http.post(f"http://{api}{path}", json=body)
        except httpx.HTTPError as e:
            raise Unavailable(f"agent {api} unreachable: {type(e).__name__}") from None
        data = r.json()
        if r.status_code >= 400:
            raise CanidaeError.from_wire(data, r.status_code)
        return data  # type: ignore[no-any-return]

    async def _call_servers(self, method: str, path: str, body: Any = None,
                            params: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Ask the servers (leader hint first); move on when one is unreachable or has no leader."""
        assert self.http is not None
        last: CanidaeError = Unavailable("no server reachable")
        for api in self._server_order():
            try:
                r = await self.http.request(method, f"http://{api}{path}", json=body, params=params,
                                            timeout=timeout or self.cfg.request_timeout_s)
            except httpx.HTTPError as e:
                last = Unavailable(f"server {api} unreachable: {type(e).__name__}")
                continue
            try:
                data = decode_answer(api, r)
            except Unavailable as e:
                last = e
                continue
            if isinstance(data, dict) and data.get("leader_api"):
                self.leader_hint = data["leader_api"]
            return data  # type: ignore[no-any-return]
        raise last

    async def forward(self, request: Request, limit: int) -> Response:
        """A client agent passes cluster requests on to a server, unchanged."""
        from canidae.agent.server.api import read_json
        body = await read_json(request, limit) if request.method == "POST" else None
        assert self.http is not None
        last: CanidaeError = Unavailable("no server reachable")
        for api in self._server_order():
            try:
                r = await self.http.request(request.method, f"http://{api}{request.url.path}",
                                            params=dict(request.query_params), json=body)
            except httpx.HTTPError as e:
                last = Unavailable(f"server {api} unreachable: {type(e).__name__}")
                continue
            if r.status_code == 503:
                continue
            return Response(r.content, status_code=r.status_code, media_type="application/json")
        from canidae.agent.server.api import error_response
        return error_response(last)

    async def _heartbeat_loop(self) -> None:
        registered = False
        interval = self.cfg.heartbeat_interval_s
        while not self.stopping:
            try:
                if not registered:
                    await self._call_servers("POST", "/v1/nodes", {"node": self.cfg.node().to_dict(),
                                                                   "request_id": f"reg-{self.cfg.node_id}-{uuid.uuid4().hex[:8]}"})
                    registered = True
                    log.info("registered node %s", self.cfg.node_id)
                running = sum(len(d.running()) for d in self.reconciler.drivers.values())
                reply = await self._call_servers("POST", f"/v1/nodes/{self.cfg.node_id}/heartbeat",
                                                 {"running": running},
                                                 timeout=max(interval, 0.5))
                if reply.get("state") == NodeState.DOWN.value:
                    log.warning("this node was declared down; re-registering")
                    registered = False
                    continue
            except NotFound:
                registered = False
                continue
            except CanidaeError as e:
                log.debug("heartbeat: %s", e.message)
            except Exception:
                log.exception("heartbeat loop")
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ reconcile (virtual driver)

    async def assignments(self, node_id: str, after: int, wait: float) -> dict[str, Any]:
        assert self.replica is not None
        deadline = time.monotonic() + wait
        while True:
            with self.replica.lock:
                st = self.replica.state
                rev = st.node_rev.get(node_id)
                if rev is None:
                    raise NotFound(f"no node {node_id!r}")
                if rev != after or time.monotonic() >= deadline:
                    full, items = st.changes_since(node_id, after)
                    packs = [{"name": r.spec.name, "generation": r.generation, "state": r.state.value,
                              "driver": r.spec.driver.value, "spec": r.spec.to_dict()}
                             for r in items if not isinstance(r, str)]
                    gone = [r for r in items if isinstance(r, str)]
                    return {"rev": rev, "full": full, "node_state": st.nodes[node_id].state.value,
                            "packs": packs, "gone": gone}
            assert self.applied_signal is not None
            try:
                await asyncio.wait_for(self.applied_signal.wait(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass

    async def report_packs(self, node_id: str, reports: Any, rid: str) -> dict[str, Any]:
        if not isinstance(reports, list) or not reports or len(reports) > 100_000:
            raise InvalidInput("reports must be a non-empty list")
        parsed = []
        for r in reports:
            if not isinstance(r, list) or len(r) != 4:
                raise InvalidInput("each report is [name, generation, state, reason]")
            try:
                parsed.append(PackReport(r[0], int(r[1]), PackState(r[2]), str(r[3])))
            except (ValueError, TypeError) as e:
                raise InvalidInput(f"invalid report: {e}") from None
        return await self.propose(ReportPacks(id=rid, **self._stamp(), node_id=node_id, reports=tuple(parsed),
                                              by=f"agent:{node_id}"))

    async def _fetch_assignments(self, after: int) -> dict[str, Any]:
        # A server holds a replica: it reads its own assignments from it instead of asking the
        # leader over HTTP (a follower may lag by a moment; generations keep that safe).
        if self.replica is not None:
            return await self.assignments(self.cfg.node_id, after, 10.0)
        return await self._call_servers("GET", f"/v1/nodes/{self.cfg.node_id}/assignments",
                                        params={"after": after, "wait": 10}, timeout=15.0)

    async def _send_reports(self, reports: list[list[Any]]) -> None:
        # Through the leader's API even from a server: there the reports join the leader's group
        # commit, where a follower's own proposal would travel as a log entry of its own.
        rid = f"rep-{uuid.uuid4().hex}"
        await self._call_servers("POST", f"/v1/nodes/{self.cfg.node_id}/reports",
                                 {"reports": reports, "request_id": rid})


def _live_ring(st: ClusterState) -> Any:
    from canidae.core.ring import HashRing
    ring = HashRing(vnodes=st.vnodes)
    for n in st.iter_nodes():
        if n.state is NodeState.READY:
            ring.add_node(n.id, n.weight)
    return ring


def _ring_view(st: ClusterState) -> dict[str, Any]:
    """The ring of READY nodes: share of the hash space, virtual nodes, packs against the bounded cap."""
    from canidae.core.ring import bounded_caps
    ring = _live_ring(st)
    total = sum(st.node_usage(n).packs for n in st.nodes)
    share = ring.ownership() if len(ring) else {}
    caps = bounded_caps(ring, max(total, 1), st.load_factor) if len(ring) else {}
    nodes = []
    for n in st.iter_nodes():
        nodes.append({"id": n.id, "zone": n.location.zone, "region": n.location.region, "cell": n.location.cell,
                      "state": n.state.value, "weight": n.weight,
                      "vnodes": ring.vnode_count(n.id) if n.id in ring else 0, "share": round(share.get(n.id, 0.0), 6),
                      "packs": st.node_usage(n.id).packs, "cap": caps.get(n.id), "max_packs": n.capacity.packs})
    return {"nodes": nodes, "packs": total, "load_factor": st.load_factor, "vnodes_per_weight": st.vnodes}


def _dry_place(st: ClusterState, name: str) -> tuple[str | None, list[str]]:
    ring = _live_ring(st)
    if not len(ring):
        return None, []
    pref = []
    for node in ring.preference(name):
        pref.append(node)
        if len(pref) >= 10:
            break
    return ring.lookup(name), pref


def _setup_logging(cfg: AgentConfig) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if cfg.log_file:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(cfg.log_file))
    logging.basicConfig(level=os.environ.get("CANIDAE_LOG_LEVEL", "INFO"), handlers=handlers, force=True,
                        format=f"%(asctime)s {cfg.node_id} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run_agent(cfg: AgentConfig) -> int:
    """Run in the foreground until SIGTERM/SIGINT; returns the process exit code."""
    _setup_logging(cfg)
    # The API's event loop and pysyncobj's tick thread share the GIL. With the default 5 ms switch
    # interval every hand-over between them can cost up to 5 ms of request latency; 0.5 ms keeps
    # the ping-pong cheap (measured: see the README's figures).
    sys.setswitchinterval(0.0005)
    # The replicated state is hundreds of thousands of long-lived objects; the default young-
    # generation threshold (700) makes the collector walk them far too often under load.
    import gc
    gc.set_threshold(50_000, 20, 50)
    host, _, port = cfg.api.rpartition(":")
    agent = Agent(cfg)

    async def main() -> None:
        app = build_app(agent, agent.extra_routes)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=int(port), log_level="warning",
                                               access_log=False, lifespan="off", loop="asyncio",
                                               timeout_graceful_shutdown=2))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.start()
        serve = asyncio.create_task(server.serve())
        log.info("agent %s (%s) serving the API on %s", cfg.node_id, cfg.role.value, cfg.api)
        done, _ = await asyncio.wait([serve, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if serve in done and serve.exception() is not None:
            raise serve.exception()  # type: ignore[misc]
        server.should_exit = True
        await agent.stop()
        await serve
        log.info("agent %s stopped", cfg.node_id)

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return 0
