"""The reconcile loop: make what runs on this node match what the cluster assigns to it.

It long-polls this node's assignments (only what changed since the last revision it applied),
asks each pack's driver to start or stop, and sends the drivers' reports back in batches (one
``ReportPacks`` command for many packs).

The rules that keep an acknowledged pack running (the contract in the README):

* Only the replicated state decides what runs, and this agent stops a pack only on an explicit
  instruction: the pack no longer belongs to this node (``gone``), it was replaced by a newer
  placement generation, or it is stopping. Being absent from some list is never a reason.
* Revisions only move forward: an answer older than one already applied (a lagging server) is
  ignored. Revisions are cluster-wide, so this holds across agent restarts too.
* When the changes since its revision are not all known (a fresh start, or the agent fell far
  behind), the agent *resynchronises*: it sends what it runs and gets, read linearizably, every
  pack it holds plus an explicit instruction for each pack it runs but no longer holds. The
  leader orders the same resync when this agent's digest of what it runs keeps disagreeing
  with the state (anti-entropy); ``corrected`` counts what resyncs changed here.

Fencing: a pack running here under a placement generation the cluster no longer assigns to this
node is stopped before anything is started, so a node that comes back after being declared down
never runs a pack twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from canidae.agent.node.drivers import PackDriver
from canidae.core.errors import CanidaeError, NotFound
from canidae.core.state import DELETED_REASON, running_digest

SUMMARY_MAX_AGE_S = 5.0  # the longest a heartbeat's digest is reused without a fresh count

log = logging.getLogger("canidae.reconcile")

Fetch = Callable[[int], Awaitable[dict[str, Any]]]
Resync = Callable[[dict[str, int]], Awaitable[dict[str, Any]]]
Send = Callable[[list[list[Any]]], Awaitable[None]]

HOLD = ("placed", "running")
REPORT_WINDOW_S = 0.01


class Reconciler:
    def __init__(self, fetch: Fetch, resync: Resync, send: Send, retry_s: float = 0.3) -> None:
        self.fetch = fetch
        self.resync = resync
        self.send = send
        self.retry_s = retry_s
        self.drivers: dict[str, PackDriver] = {}
        self.desired: dict[str, dict[str, Any]] = {}
        self.rev = 0
        self.need_resync = True
        self.corrected = 0  # packs stopped or started because a resync showed they diverged
        self._outbox: list[list[Any]] = []
        self._outbox_ready = asyncio.Event()
        self._fetching: asyncio.Future[dict[str, Any]] | None = None
        self._interrupted = False
        self.stopping = False
        self._changes = 0  # bumped by every driver report: what runs here may have changed
        self._summary: tuple[int, float, int, str] | None = None  # (changes, at, count, digest)

    def add_driver(self, driver: PackDriver) -> None:
        self.drivers[driver.name] = driver

    async def report(self, pack: str, generation: int, state: str, reason: str) -> None:
        """Driver callback: queue a report; the sender batches everything queued."""
        self._outbox.append([pack, generation, state, reason])
        self._changes += 1
        self._outbox_ready.set()

    def running(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.drivers.values():
            out.update(d.running())
        return out

    def summary(self) -> tuple[int, str]:
        """How many packs run here and their digest, for heartbeats.

        Recomputed only after a driver reported a change (or every SUMMARY_MAX_AGE_S, in case a
        driver's set changed silently): digesting tens of thousands of packs on every heartbeat
        would itself delay the heartbeats under load.
        """
        now = time.monotonic()
        cached = self._summary
        if cached is None or cached[0] != self._changes or now - cached[1] > SUMMARY_MAX_AGE_S:
            running = self.running()
            cached = self._summary = (self._changes, now, len(running), running_digest(running.items()))
        return cached[2], cached[3]

    def request_resync(self) -> None:
        """Resynchronise at once (the leader saw this node diverge)."""
        self.need_resync = True
        self.interrupt()

    def interrupt(self) -> None:
        """End the assignment long-poll in flight (the leader changed: ask the new one)."""
        if self._fetching is not None and not self._fetching.done():
            self._interrupted = True
            self._fetching.cancel()

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            while not self.stopping:
                try:
                    if self.need_resync:
                        data = await self.resync(self.running())
                        await self.apply_resync(data)
                        continue
                    self._fetching = asyncio.ensure_future(self.fetch(self.rev))
                    try:
                        data = await self._fetching
                    except asyncio.CancelledError:
                        if self.stopping or not self._interrupted:
                            raise
                        self._interrupted = False
                        continue
                    finally:
                        self._fetching = None
                    if data.get("resync"):
                        self.need_resync = True
                        continue
                    await self.apply_changes(data)
                except NotFound:
                    await asyncio.sleep(self.retry_s)  # not registered yet
                except CanidaeError as e:
                    log.debug("assignments: %s", e.message)
                    await asyncio.sleep(0.1)
                except Exception:
                    # Nothing may end this loop but a stop: a node whose reconciler died would go
                    # on heartbeating, look healthy, and run nothing it is given. Start afresh.
                    log.exception("reconcile: unexpected error; resynchronising")
                    self.need_resync = True
                    await asyncio.sleep(self.retry_s)
        finally:
            sender.cancel()

    async def apply_changes(self, data: dict[str, Any]) -> None:
        """An incremental answer: only explicit changes since ``self.rev``."""
        if data["rev"] < self.rev:
            log.info("ignoring assignments at revision %d, older than %d", data["rev"], self.rev)
            return
        self.rev = data["rev"]
        for name in data["gone"]:
            self.desired.pop(name, None)
        self.desired.update((p["name"], p) for p in data["packs"])
        changed = set(data["gone"]) | {p["name"] for p in data["packs"]}
        deleted = set(data.get("deleted", ()))
        await self._converge(changed, {name: "deleted" if name in deleted else "no longer assigned here"
                                       for name in data["gone"]})
        await self._forget(deleted)

    async def apply_resync(self, data: dict[str, Any]) -> None:
        """Every pack this node holds, and why each pack it runs but does not hold must stop."""
        if data["rev"] < self.rev:
            log.info("ignoring a resync at revision %d, older than %d", data["rev"], self.rev)
            return
        self.rev = data["rev"]
        self.need_resync = False
        self.desired = {p["name"]: p for p in data["packs"]}
        gone = {g["name"]: g["reason"] for g in data["gone"]}
        running = self.running()
        unexplained = sorted(n for n in running if n not in self.desired and n not in gone)
        if unexplained:
            # Never stopped for being absent: the leader's anti-entropy will order another resync.
            log.warning("%d pack(s) run here without an instruction (e.g. %s); kept", len(unexplained),
                        unexplained[0])
        missing = sum(1 for n, p in self.desired.items() if p["state"] in HOLD and running.get(n) != p["generation"])
        self.corrected += len(gone) + missing
        if gone or missing:
            log.warning("resync: %d pack(s) to stop, %d to start", len(gone), missing)
        await self._converge(set(self.desired) | set(gone), gone)
        await self._forget({g["name"] for g in data["gone"] if g["reason"] == DELETED_REASON})

    async def stop_everything(self, reason: str) -> None:
        """Stop every pack this node runs, on the one instruction that covers them all: the servers
        refuse this node's own credential (``canidae node revoke``), so the node is down and its
        packs run elsewhere, and no other instruction can reach it any more."""
        self.desired = {}
        running = {name for d in self.drivers.values() for name in d.running()}
        if running:
            log.error("stopping %d pack(s): %s", len(running), reason)
        await self._converge(running, dict.fromkeys(running, reason))

    async def _forget(self, names: set[str]) -> None:
        """Deleted packs: each driver removes what is left of them here (after they stop)."""
        for name in sorted(names):
            if name in self.desired:  # created again since: it is a new pack, not the deleted one
                continue
            for d in self.drivers.values():
                await d.forget(name)

    async def _converge(self, changed: set[str], stop_reasons: dict[str, str]) -> None:
        # Fence first: stop whatever runs under a placement this node no longer holds.
        for d in self.drivers.values():
            for name, gen in d.running().items():
                if name not in changed:
                    continue
                p = self.desired.get(name)
                if p is None:
                    if name in stop_reasons:
                        await d.stop(name, gen, stop_reasons[name])
                elif p["generation"] != gen:
                    await d.stop(name, gen, f"replaced by generation {p['generation']}")
                elif p["state"] not in HOLD:
                    await d.stop(name, gen, "stopped on request")
        for name in sorted(changed):
            p = self.desired.get(name)
            if p is None:
                continue
            driver = self.drivers.get(p["driver"])
            if driver is None:
                await self.report(name, p["generation"], "failed", f"driver {p['driver']} not available here")
                continue
            if p["state"] in HOLD:
                if driver.running().get(name) != p["generation"] or p["state"] == "placed":
                    await driver.start(name, p["generation"], p.get("spec", {}))
            elif p["state"] == "stopping" and driver.running().get(name) is None:
                await self.report(name, p["generation"], "stopped", "stopped on request")

    async def _send_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            # A short window lets reports of a burst travel as one command (one Raft entry),
            # instead of one each competing with the requests that caused them.
            await asyncio.sleep(REPORT_WINDOW_S)
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                await self.send(batch)
            except Exception as e:  # noqa: BLE001 - reports are never dropped: keep them and retry
                if isinstance(e, CanidaeError):
                    log.warning("could not send %d report(s): %s; retrying", len(batch), e.message)
                else:
                    log.exception("could not send %d report(s); retrying", len(batch))
                self._outbox = batch + self._outbox
                await asyncio.sleep(self.retry_s)
                self._outbox_ready.set()

    async def close(self) -> None:
        self.stopping = True
        self.interrupt()
        for d in self.drivers.values():
            await d.close()
