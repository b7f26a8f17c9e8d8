"""The node runtime of an agent: what runs on this host and the agent's heartbeat to the servers.

``NodeRuntime`` owns the reconcile loop (``canidae.agent.node.reconcile``) with its drivers
(virtual and exec), the mailboxes of the packs placed here, the router that takes requests about
a pack to the node that holds it, and the heartbeat loop: it registers this node, then heartbeats
to the leader every ``heartbeat_interval_s`` over the ``ServerLink``.

How it fetches its assignments is given by the composition root: a server reads them from its
own replica (``local_assignments``), a client agent long-polls the servers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any, Awaitable, Callable

from canidae.agent.client.link import DEFAULT_KEEP_ALIVE_S, AgentHops, ServerLink, idle_s
from canidae.agent.config import AgentConfig
from canidae.agent.node.drivers import VirtualDriver
from canidae.agent.node.exec_driver import ExecDriver
from canidae.agent.node.mailbox import MailboxStore
from canidae.agent.node.packroute import PackRouter
from canidae.agent.node.reconcile import Reconciler
from canidae.core.errors import CanidaeError, NotFound
from canidae.core.types import NodeState

log = logging.getLogger("canidae.node")

LocalAssignments = Callable[[str, int, float], Awaitable[dict[str, Any]]]
LocalResync = Callable[[str, dict[str, int]], Awaitable[dict[str, Any]]]
LocatePack = Callable[[str], tuple[str | None, str, str]]

# A client agent's assignment long-poll waits this long at most: a server that was paused or cut
# off mid-poll holds the agent back no longer than this (the heartbeat loop also ends the poll
# early when it finds another leader).
POLL_WAIT_S = 3


class NodeRuntime:
    def __init__(self, cfg: AgentConfig, link: ServerLink, *, hop_idle_s: float = idle_s(DEFAULT_KEEP_ALIVE_S),
                 local_assignments: LocalAssignments | None = None,
                 local_resync: LocalResync | None = None, locate_local: LocatePack | None = None) -> None:
        self.cfg = cfg
        self.link = link
        self.hops = AgentHops(cfg.token, hop_idle_s)
        self._local_assignments = local_assignments
        self._local_resync = local_resync
        self.reconciler = Reconciler(self._fetch_assignments, self._resync, self._send_reports)
        self.reconciler.add_driver(VirtualDriver(self.reconciler.report))
        self.exec_driver = ExecDriver(self.reconciler.report, data_dir=cfg.data_dir, node_id=cfg.node_id,
                                      token=cfg.token, api=cfg.api)
        self.reconciler.add_driver(self.exec_driver)
        self.mailboxes = MailboxStore(os.path.join(cfg.data_dir, "mailboxes"))
        self.router = PackRouter(cfg.node_id, lambda pack: self.reconciler.desired.get(pack), link, self.hops,
                                 cfg.request_timeout_s, locate_local=locate_local)
        self.stopping = False
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self.reconciler.run())]

    async def stop(self) -> None:
        self.stopping = True
        await self.reconciler.close()
        for t in self.tasks:
            t.cancel()
        self.hops.close()

    async def _heartbeat_loop(self) -> None:
        registered = False
        interval = self.cfg.heartbeat_interval_s
        while not self.stopping:
            try:
                if not registered:
                    await self.link.call("POST", "/v1/nodes", json={
                        "node": self.cfg.node().to_dict(),
                        "request_id": f"reg-{self.cfg.node_id}-{uuid.uuid4().hex[:8]}"})
                    registered = True
                    log.info("registered node %s", self.cfg.node_id)
                leader_before = self.link.leader_hint
                rec = self.reconciler
                count, digest = rec.summary()
                reply = await self.link.call("POST", f"/v1/nodes/{self.cfg.node_id}/heartbeat",
                                             json={"running": count, "digest": digest,
                                                   "corrected": rec.corrected},
                                             timeout=max(interval, 0.5), attempt_s=max(interval, 0.5))
                if self.link.leader_hint != leader_before and self._local_assignments is None:
                    rec.interrupt()  # a poll on the old leader may never end: ask the new one
                if reply.get("resync"):
                    log.warning("the leader ordered a resync of this node")
                    rec.request_resync()
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

    async def _fetch_assignments(self, after: int) -> dict[str, Any]:
        # A server holds a replica: it reads its own assignments from it instead of asking the
        # leader over HTTP.
        if self._local_assignments is not None:
            return await self._local_assignments(self.cfg.node_id, after, 10.0)
        return await self.link.call("GET", f"/v1/nodes/{self.cfg.node_id}/assignments",  # type: ignore[no-any-return]
                                    params={"after": after, "wait": POLL_WAIT_S},
                                    timeout=POLL_WAIT_S + 2.0, attempt_s=POLL_WAIT_S + 1.0)

    async def _resync(self, running: dict[str, int]) -> dict[str, Any]:
        if self._local_resync is not None:
            return await self._local_resync(self.cfg.node_id, running)
        return await self.link.call("POST", f"/v1/nodes/{self.cfg.node_id}/assignments",  # type: ignore[no-any-return]
                                    json={"running": running}, timeout=self.cfg.request_timeout_s + 5.0,
                                    attempt_s=self.cfg.request_timeout_s)

    async def _send_reports(self, reports: list[list[Any]]) -> None:
        # Through the leader's API even from a server: there the reports join the leader's group
        # commit, where a follower's own proposal would travel as a log entry of its own.
        rid = f"rep-{uuid.uuid4().hex}"
        await self.link.call("POST", f"/v1/nodes/{self.cfg.node_id}/reports",
                             json={"reports": reports, "request_id": rid})
