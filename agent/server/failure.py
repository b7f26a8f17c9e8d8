"""Failure detection on the leader: a node silent for longer than its TTL is declared down.

Agents heartbeat to the leader every ``heartbeat_interval_s``; the leader keeps the time of each
node's last heartbeat in memory (``ControlPlane.last_seen``: not state). After
``heartbeat_ttl_s`` of silence it commits ``SetNodeState(DOWN)`` stamped with its term; apply
then re-places the node's packs, and rejects the command if it was stamped by a leader that has
since been deposed.

Silence counts only over time in which this leader was itself live: a new leader, or one whose
own loop stalled (a pause, a starved process), gives every node a full TTL again, because during
the stall it could not have heard their heartbeats. Time the replica spent applying entries
(a bulk spawn of 100,000 packs takes seconds) is not counted either, twice over: every server
applies the same entry at about the same time, and agents are busy with what it assigned them.
A leader never declares its own node down.

Two more guards keep a slow leader from mistaking its own slowness for failures elsewhere (the
idea of Lifeguard's local health awareness): time by which the leader's own loop ran late is not
counted as silence, and when half or more of the nodes it watches fall silent at once, which is
far likelier to be this leader (or the whole machine) struggling than that many independent
failures, it waits up to ``MASS_SILENCE_CAP_S`` before declaring any of them down. A single silent
node is always declared after its TTL.

Before declaring a node down the leader asks the node itself (``GET /v1/health``, at most
``PROBE_S``): a crashed agent refuses the connection at once and a paused or cut-off one does not
answer in time, so both are declared; an agent that answers is alive, only slow to heartbeat
(starved by a bulk start, say), and keeps its packs. This is SWIM's direct probe: the TTL raises
a suspicion, the probe confirms it.

The same loop runs the leader's anti-entropy check (``ControlPlane.check_convergence``): agents
send a digest of what they run with each heartbeat, and a node whose digest keeps disagreeing
with the state is told to resynchronise.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from canidae.agent.client.link import AgentHops
from canidae.agent.server.control import ControlPlane
from canidae.agent.telemetry import Reading
from canidae.core.commands import SetNodeState
from canidae.core.errors import CanidaeError
from canidae.core.types import NodeState

log = logging.getLogger("canidae.failure")

CONVERGENCE_EVERY_S = 1.0  # how often the leader compares agents' digests with the state
APPLY_GRACE_FROM_S = 0.05  # applies longer than this (between two checks) extend every node's TTL
PROBE_S = 1.5  # how long a silent node's own answer is waited for before it is declared down
MASS_SILENCE_CAP_S = 10.0  # the longest a mass silence is put down to this leader's own trouble
FOLLOWER_CHECK_S = 1.0  # a follower's detector wakes on a change of leader, or after this long


class FailureDetector:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.ttl = plane.cfg.heartbeat_ttl_s
        self.period = min(0.1, self.ttl / 5)
        self.was_leader = False
        self.in_flight: set[str] = set()
        self.stopping = False
        self._applied_s = 0.0
        self._mass_since: float | None = None
        self.hops = AgentHops(plane.cfg.token, ca=plane.cfg.peer_ca)
        self.kept_by_probe = 0  # silent nodes that answered the probe and so were not declared down

    async def run(self) -> None:
        last_tick = last_convergence = time.monotonic()
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        if self.plane.replica is not None:
            self.plane.replica.on_leader_change = lambda: loop.call_soon_threadsafe(changed.set)
        while not self.stopping:
            period = self.period
            if self.was_leader or self.plane.is_leader():
                await asyncio.sleep(period)
            else:
                # A follower has nothing to check until it leads: wait for a change of leader
                # (at most FOLLOWER_CHECK_S) instead of waking ten times a second for nothing.
                period = FOLLOWER_CHECK_S
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), FOLLOWER_CHECK_S)
                except TimeoutError:
                    pass
            now = time.monotonic()
            # Our own stall: the loop could not run (nor take heartbeats) for this long.
            stalled = now - last_tick > max(3 * period, self.plane.cfg.heartbeat_interval_s)
            late = now - last_tick - period
            last_tick = now
            try:
                self.check(now, stalled, late)
                if self.was_leader and now - last_convergence >= CONVERGENCE_EVERY_S:
                    last_convergence = now
                    self.plane.check_convergence()
            except Exception:
                log.exception("failure detector")

    def readings(self) -> list[Reading]:
        return [Reading("failure_nodes_kept_by_probe", "counter", "Silent nodes that answered the leader's "
                        "probe and so were not declared down.", self.kept_by_probe),
                Reading("failure_in_flight", "gauge", "Nodes being probed or declared down right now.",
                        len(self.in_flight))]

    def check(self, now: float, stalled: bool, late: float = 0.0) -> None:
        plane = self.plane
        leader = plane.is_leader()
        if not leader:
            self.was_leader = False
            return
        seen = plane.last_seen
        busy = plane.replica.apply_seconds if plane.replica is not None else 0.0
        applying, self._applied_s = busy - self._applied_s, busy
        if applying > APPLY_GRACE_FROM_S and self.was_leader and not stalled:
            for node_id in list(seen):
                seen[node_id] = min(now, seen[node_id] + 2 * applying)
        if late > self.period and self.was_leader and not stalled:
            # The loop ran late: heartbeats waiting in its sockets were not heard in that time.
            for node_id in list(seen):
                seen[node_id] = min(now, seen[node_id] + late)
        if not self.was_leader or stalled:
            # Grace: a new leader has no heartbeat history; a stalled one could not hear any.
            for node_id in list(seen):
                seen[node_id] = now
            # What agents said before the stall is as old as the stall: compare fresh digests only.
            plane.convergence.forget()
            if stalled:
                log.warning("leader loop stalled; every node gets a fresh heartbeat TTL")
        self.was_leader = True
        nodes = plane.state.nodes
        watched = 0
        silent: list[tuple[str, float]] = []
        for node_id, node in list(nodes.items()):
            if node.state is NodeState.DOWN or node_id == plane.cfg.node_id:
                continue
            watched += 1
            last = seen.setdefault(node_id, now)
            if now - last > self.ttl and node_id not in self.in_flight:
                silent.append((node_id, now - last))
        if self._mass_silence(now, len(silent), watched):
            return
        for node_id, silent_s in silent:
            self.in_flight.add(node_id)
            asyncio.ensure_future(self._declare_down(node_id, silent_s))

    def _mass_silence(self, now: float, silent: int, watched: int) -> bool:
        """True while declarations wait because half or more of the watched nodes went silent at once."""
        if silent < 2 or 2 * silent < watched:
            self._mass_since = None
            return False
        if self._mass_since is None:
            self._mass_since = now
            log.warning("%d of %d nodes silent at once: suspecting this leader, waiting up to %g s",
                        silent, watched, MASS_SILENCE_CAP_S)
        return now - self._mass_since < MASS_SILENCE_CAP_S

    async def _answers(self, node_id: str) -> bool:
        node = self.plane.state.nodes.get(node_id)
        if node is None or not node.address:
            return False
        try:
            await self.hops.send(node.address, "GET", "/v1/health", timeout=PROBE_S)
            return True
        except CanidaeError:
            return False

    async def _declare_down(self, node_id: str, silent_s: float) -> None:
        plane = self.plane
        try:
            if await self._answers(node_id):
                self.kept_by_probe += 1
                plane.last_seen[node_id] = time.monotonic()
                log.warning("node %s silent for %.2f s but answers: kept up", node_id, silent_s)
                return
            cmd = SetNodeState(id=f"down-{node_id}-{uuid.uuid4().hex[:12]}", **plane.stamp(), node_id=node_id,
                               state=NodeState.DOWN, reason=f"no heartbeat for {silent_s:.2f} s",
                               by=f"leader:{plane.cfg.node_id}")
            result = await plane.propose(cmd)
            log.warning("node %s declared down; %d packs moved", node_id, len(result.get("moved", [])))
        except CanidaeError as e:
            log.warning("could not declare %s down: %s", node_id, e.message)
        finally:
            self.in_flight.discard(node_id)
