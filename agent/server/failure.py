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

The same loop runs the leader's anti-entropy check (``ControlPlane.check_convergence``): agents
send a digest of what they run with each heartbeat, and a node whose digest keeps disagreeing
with the state is told to resynchronise.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from canidae.agent.server.control import ControlPlane
from canidae.core.commands import SetNodeState
from canidae.core.errors import CanidaeError
from canidae.core.types import NodeState

log = logging.getLogger("canidae.failure")

CONVERGENCE_EVERY_S = 1.0  # how often the leader compares agents' digests with the state
APPLY_GRACE_FROM_S = 0.05  # applies longer than this (between two checks) extend every node's TTL


class FailureDetector:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.ttl = plane.cfg.heartbeat_ttl_s
        self.period = min(0.1, self.ttl / 5)
        self.was_leader = False
        self.in_flight: set[str] = set()
        self.stopping = False
        self._applied_s = 0.0

    async def run(self) -> None:
        last_tick = last_convergence = time.monotonic()
        while not self.stopping:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            # Our own stall: the loop could not run (nor take heartbeats) for this long.
            stalled = now - last_tick > max(3 * self.period, self.plane.cfg.heartbeat_interval_s)
            last_tick = now
            try:
                self.check(now, stalled)
                if self.was_leader and now - last_convergence >= CONVERGENCE_EVERY_S:
                    last_convergence = now
                    self.plane.check_convergence()
            except Exception:
                log.exception("failure detector")

    def check(self, now: float, stalled: bool) -> None:
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
        for node_id, node in list(nodes.items()):
            if node.state is NodeState.DOWN or node_id == plane.cfg.node_id:
                continue
            last = seen.setdefault(node_id, now)
            if now - last > self.ttl and node_id not in self.in_flight:
                self.in_flight.add(node_id)
                asyncio.ensure_future(self._declare_down(node_id, now - last))

    async def _declare_down(self, node_id: str, silent_s: float) -> None:
        plane = self.plane
        try:
            cmd = SetNodeState(id=f"down-{node_id}-{uuid.uuid4().hex[:12]}", **plane.stamp(), node_id=node_id,
                               state=NodeState.DOWN, reason=f"no heartbeat for {silent_s:.2f} s",
                               by=f"leader:{plane.cfg.node_id}")
            result = await plane.propose(cmd)
            log.warning("node %s declared down; %d packs moved", node_id, len(result.get("moved", [])))
        except CanidaeError as e:
            log.warning("could not declare %s down: %s", node_id, e.message)
        finally:
            self.in_flight.discard(node_id)
