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
import json
import logging
import os
import time
import uuid
from typing import Any, Awaitable, Callable

from canidae.agent.client.link import DEFAULT_KEEP_ALIVE_S, AgentHops, ServerLink, idle_s
from canidae.agent.config import AgentConfig
from canidae.agent.identity import revoked_message
from canidae.agent.keyring import ClusterKeys
from canidae.agent.node.drivers import VirtualDriver
from canidae.agent.node.exec_driver import ExecDriver
from canidae.agent.node.mailbox import MailboxStore
from canidae.agent.node.packroute import PackRouter
from canidae.agent.node.reconcile import Reconciler
from canidae.agent.node.usage import PackProcs, PackUsage, from_specs, reserved
from canidae.agent.telemetry import Reading
from canidae.core.errors import CanidaeError, InvalidInput, NotAuthenticated, NotFound
from canidae.core.metrics import (
    GAUGE_CPU_RESERVED,
    GAUGE_CPU_USED,
    GAUGE_MEM_RESERVED,
    GAUGE_MEM_USED,
    NodeSummary,
)
from canidae.core.sampling import check_rate, is_sampled, sample_packs, sample_rate
from canidae.core.sketch import Sketch
from canidae.core.types import NodeState

MIB = 1024 * 1024

log = logging.getLogger("canidae.node")

LocalAssignments = Callable[[str, int, float], Awaitable[dict[str, Any]]]
LocalResync = Callable[[str, dict[str, int]], Awaitable[dict[str, Any]]]
LocatePack = Callable[[str], tuple[str | None, str, str]]
LocalReports = Callable[[str, Any, str], Awaitable[dict[str, Any]]]
# What the composition root adds to the node's summary: counters and latency sketches of the agent
# itself (its API), taken once per heartbeat.
SummaryExtras = Callable[[], tuple[dict[str, int], dict[str, Sketch]]]

# A client agent's assignment long-poll waits this long at most: a server that was paused or cut
# off mid-poll holds the agent back no longer than this (the heartbeat loop also ends the poll
# early when it finds another leader).
POLL_WAIT_S = 3


class NodeRuntime:
    def __init__(self, cfg: AgentConfig, link: ServerLink, *, hop_idle_s: float = idle_s(DEFAULT_KEEP_ALIVE_S),
                 local_assignments: LocalAssignments | None = None,
                 local_resync: LocalResync | None = None, locate_local: LocatePack | None = None,
                 keys: ClusterKeys | None = None, local_reports: LocalReports | None = None,
                 leads: Callable[[], bool] | None = None) -> None:
        self.cfg = cfg
        self.link = link
        # The cluster's keys (pack tokens, pack secrets): the composition root's, kept current by it.
        self.keys = keys or ClusterKeys(cfg.data_dir, cfg.region, cfg.token)
        self.hops = AgentHops(cfg.token, hop_idle_s, ca=cfg.peer_ca)
        self._local_assignments = local_assignments
        self._local_resync = local_resync
        self._local_reports = local_reports
        self._leads = leads
        self.reconciler = Reconciler(self._fetch_assignments, self._resync, self._send_reports)
        self.reconciler.add_driver(VirtualDriver(self.reconciler.report))
        self.exec_driver = ExecDriver(self.reconciler.report, data_dir=cfg.data_dir, node_id=cfg.node_id,
                                      token=cfg.token, api=cfg.api, ca_pem=_read_text(cfg.peer_ca))
        self.exec_driver.keys = self.keys
        self.reconciler.add_driver(self.exec_driver)
        self.mailboxes = MailboxStore(os.path.join(cfg.data_dir, "mailboxes"))
        self.router = PackRouter(cfg.node_id, lambda pack: self.reconciler.desired.get(pack), link, self.hops,
                                 cfg.request_timeout_s, locate_local=locate_local)
        self.stopping = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.usage = PackUsage()
        self.summary_extras: SummaryExtras | None = None
        self.sample_rate: float | None = None  # handed out by the leader in each heartbeat reply
        # Client agents whose credentials are revoked, as of the last heartbeat reply: a client
        # agent (no replica of its own) refuses them on its own routes (yips, exec) from then on.
        self.revoked_nodes: frozenset[str] = frozenset()
        self.revoked = False  # this node's own credential: refused by the servers
        self.heartbeats = 0
        self._last_gauges: dict[str, float] = {}  # of the latest metrics summary, for /v1/metrics
        self.summary_seconds = 0.0  # CPU spent building metrics summaries (the cost of collection)
        self.summary_bytes = 0  # of the summaries sent with heartbeats
        self._heartbeat_ms = Sketch()  # round trips of this interval's heartbeats

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
                body: dict[str, Any] = {"running": count, "digest": digest, "corrected": rec.corrected}
                try:
                    t_sum = time.thread_time()  # CPU time: wall time would count waiting for the cores
                    body["metrics"] = self.metrics_summary().to_wire()
                    self.summary_seconds += time.thread_time() - t_sum
                    # The summary's size as sent (compact JSON), for the cost of metrics per heartbeat.
                    self.summary_bytes += len(json.dumps(body["metrics"], separators=(",", ":")))
                except Exception:  # metrics must never cost the heartbeat (and so the node's packs)
                    log.exception("metrics summary")
                t0 = time.perf_counter()
                try:
                    reply = await self._heartbeat(body, interval)
                except InvalidInput as e:
                    if "metrics" not in body:
                        raise
                    log.warning("the leader refused this node's metrics summary (%s): heartbeat without it",
                                e.message)
                    del body["metrics"]
                    reply = await self._heartbeat(body, interval)
                self.heartbeats += 1
                self._heartbeat_ms.add(max((time.perf_counter() - t0) * 1000.0, 0.001))
                revoked = reply.get("revoked")
                if isinstance(revoked, list) and all(isinstance(n, str) for n in revoked):
                    self.revoked_nodes = frozenset(revoked)
                rate = reply.get("sample_rate")
                if rate is not None:
                    try:
                        self.sample_rate = check_rate(rate)
                    except CanidaeError:
                        log.warning("the leader handed out an invalid sampling rate %r", rate)
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
            except NotAuthenticated as e:
                if e.message == revoked_message(self.cfg.node_id) and not self.revoked:
                    self.revoked = True
                    log.error("the servers refuse this node's credential: %s; its packs run elsewhere", e.message)
                    await self.reconciler.stop_everything("this node's credential is revoked")
                log.debug("heartbeat: %s", e.message)
            except CanidaeError as e:
                log.debug("heartbeat: %s", e.message)
            except Exception:
                log.exception("heartbeat loop")
            await asyncio.sleep(interval)

    async def _heartbeat(self, body: dict[str, Any], interval: float) -> dict[str, Any]:
        return await self.link.call("POST", f"/v1/nodes/{self.cfg.node_id}/heartbeat",  # type: ignore[no-any-return]
                                    json=body, timeout=max(interval, 0.5), attempt_s=max(interval, 0.5))

    # ------------------------------------------------------------------ metrics

    def _procs(self) -> list[PackProcs]:
        running = {}
        for name, run in self.exec_driver.runs.items():
            members = run.members
            running[name] = PackProcs(name, tuple(m.pid for m in members if m.alive and m.pid),
                                      run.state != "running" or all(m.alive for m in members),
                                      sum(m.restarts for m in members))
        return from_specs(self.reconciler.desired, running)

    def metrics_summary(self) -> NodeSummary:
        """What this node measured since its last heartbeat, sampled at the rate in force."""
        packs = self._procs()
        # Until the leader says, the rate this node's own pack count calls for (never below the
        # cluster's: the cluster holds at least these packs).
        rate = self.sample_rate or sample_rate(len(packs))
        # Only the readings sample_packs may keep: all-zero ones outside the sample are not built.
        readings, interval = self.usage.readings(packs, time.monotonic(), keep=lambda name: is_sampled(name, rate))
        cpu_res, mem_res = reserved(packs)
        cap = self.cfg.capacity
        yips = sum(r.yips for r in readings)
        gauges: dict[str, float] = {
            GAUGE_CPU_USED: sum(r.cpu_m for r in readings), GAUGE_CPU_RESERVED: float(cpu_res),
            GAUGE_MEM_USED: sum(r.mem_mib for r in readings), GAUGE_MEM_RESERVED: float(mem_res),
            "cpu_capacity_m": float(cap.cpu), "mem_capacity_mib": float(cap.mem),
            "yips_per_s": yips / interval if interval else 0.0,
        }
        self._last_gauges = gauges
        counters = {"yips_queued": self.usage.yips_queued, "yips_delivered": self.usage.yips_delivered,
                    "restarts": self.usage.restarts, "heartbeats": self.heartbeats}
        sketches: dict[str, Sketch] = {}
        if self._heartbeat_ms.count:
            sketches["heartbeat_ms"], self._heartbeat_ms = self._heartbeat_ms, Sketch()
        if self.summary_extras is not None:
            more_counters, more_sketches = self.summary_extras()
            counters.update(more_counters)
            sketches.update((k, v) for k, v in more_sketches.items() if v.count)
        return NodeSummary(node=self.cfg.node_id, location=self.cfg.location, at_ms=int(time.time() * 1000),
                           pack_count=len(packs), sample_rate=rate, counters=counters,
                           gauges=gauges, sketches=sketches, packs=tuple(sample_packs(readings, rate)))

    def readings(self) -> list[Reading]:
        """This node's packs and yips, for ``/v1/metrics``."""
        states: dict[str, int] = {}
        for a in self.reconciler.desired.values():
            states[a["state"]] = states.get(a["state"], 0) + 1
        out = [Reading("node_packs", "gauge", "Packs this node holds, by the state the cluster gives them.",
                       n, {"state": st}) for st, n in sorted(states.items())]
        boxes = [len(b.items) for b in self.mailboxes.boxes.values()]
        g = self._last_gauges
        cap = self.cfg.capacity
        return out + [
            Reading("yips_mailbox_depth", "gauge", "Unacknowledged yips in this node's open mailboxes.", sum(boxes)),
            Reading("yips_mailbox_depth_max", "gauge", "Unacknowledged yips in this node's fullest mailbox.",
                    max(boxes, default=0)),
            Reading("yips_mailbox_bytes", "gauge", "Payload bytes of the unacknowledged yips in this node's "
                    "mailboxes.", sum(b.size for b in self.mailboxes.boxes.values())),
            # Used: what the packs' member processes used over the last heartbeat interval (/proc).
            Reading("node_cpu_used_cores", "gauge", "CPU this node's packs used over the last interval.",
                    g.get(GAUGE_CPU_USED, 0.0) / 1000.0),
            Reading("node_cpu_reserved_cores", "gauge", "CPU this node's packs reserve.",
                    g.get(GAUGE_CPU_RESERVED, 0.0) / 1000.0),
            Reading("node_cpu_capacity_cores", "gauge", "CPU this node offers to packs.", cap.cpu / 1000.0),
            Reading("node_memory_used_bytes", "gauge", "Resident memory of this node's packs at the last reading.",
                    g.get(GAUGE_MEM_USED, 0.0) * MIB),
            Reading("node_memory_reserved_bytes", "gauge", "Memory this node's packs reserve.",
                    g.get(GAUGE_MEM_RESERVED, 0.0) * MIB),
            Reading("node_memory_capacity_bytes", "gauge", "Memory this node offers to packs.", cap.mem * MIB),
            Reading("node_packs_running", "gauge", "Packs this node's drivers run.", self.reconciler.summary()[0]),
            Reading("yips_queued", "counter", "Yips taken into this node's mailboxes.", self.usage.yips_queued),
            Reading("yips_delivered", "counter", "Yips handed to readers by this node's mailboxes.",
                    self.usage.yips_delivered),
            Reading("pack_restarts", "counter", "Member restarts seen on this node.", self.usage.restarts),
            Reading("heartbeats", "counter", "Heartbeats this node's leader acknowledged.", self.heartbeats),
            Reading("metrics_summary_seconds", "counter", "CPU time spent measuring and building the metrics "
                    "summaries sent with heartbeats.", self.summary_seconds),
            Reading("metrics_summary_bytes", "counter", "Bytes (compact JSON) of the metrics summaries sent with "
                    "heartbeats.", self.summary_bytes),
            Reading("metrics_sample_rate", "gauge", "Share of packs whose metrics this node sends.",
                    self.sample_rate or 1.0),
        ]

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
        if self._local_reports is not None and self._leads is not None and self._leads():
            # The leader's own agent: straight into its group commit, not an HTTP request to
            # itself (a client and a server request on the busiest process for every report).
            # A failure (leadership lost meanwhile) is retried like any other, then over HTTP.
            await self._local_reports(self.cfg.node_id, reports, rid)
            return
        await self.link.call("POST", f"/v1/nodes/{self.cfg.node_id}/reports",
                             json={"reports": reports, "request_id": rid})


def _read_text(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path) as f:
        return f.read()
