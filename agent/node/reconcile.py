"""The reconcile loop: make what runs on this node match what the cluster assigns to it.

It long-polls this node's assignments (only what changed since the last rev it saw; a full list
after a restart or when it fell too far behind), asks each pack's driver to start or stop, and
sends the drivers' reports back in batches (one ``ReportPacks`` command for many packs).

Fencing: a pack running here under a placement generation the cluster no longer assigns to this
node is stopped before anything else, so a node that comes back after being declared down never
runs a pack twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from canidae.agent.node.drivers import PackDriver
from canidae.core.errors import CanidaeError, NotFound

log = logging.getLogger("canidae.reconcile")

Fetch = Callable[[int], Awaitable[dict[str, Any]]]
Send = Callable[[list[list[Any]]], Awaitable[None]]

HOLD = ("placed", "running")
REPORT_WINDOW_S = 0.01


class Reconciler:
    def __init__(self, fetch: Fetch, send: Send, retry_s: float = 0.3) -> None:
        self.fetch = fetch
        self.send = send
        self.retry_s = retry_s
        self.drivers: dict[str, PackDriver] = {}
        self.desired: dict[str, dict[str, Any]] = {}
        self.rev = 0
        self._outbox: list[list[Any]] = []
        self._outbox_ready = asyncio.Event()
        self.stopping = False

    def add_driver(self, driver: PackDriver) -> None:
        self.drivers[driver.name] = driver

    async def report(self, pack: str, generation: int, state: str, reason: str) -> None:
        """Driver callback: queue a report; the sender batches everything queued."""
        self._outbox.append([pack, generation, state, reason])
        self._outbox_ready.set()

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            while not self.stopping:
                try:
                    data = await self.fetch(self.rev)
                except NotFound:
                    await asyncio.sleep(self.retry_s)  # not registered yet
                    continue
                except CanidaeError as e:
                    log.debug("assignments: %s", e.message)
                    await asyncio.sleep(0.1)
                    continue
                await self.apply(data)
        finally:
            sender.cancel()

    async def apply(self, data: dict[str, Any]) -> None:
        self.rev = data["rev"]
        if data["full"]:
            self.desired = {p["name"]: p for p in data["packs"]}
            changed = set(self.desired)
            for d in self.drivers.values():
                changed.update(d.running())
        else:
            for name in data["gone"]:
                self.desired.pop(name, None)
            self.desired.update((p["name"], p) for p in data["packs"])
            changed = set(data["gone"]) | {p["name"] for p in data["packs"]}
        # Fence first: stop whatever runs under a placement this node no longer holds.
        for d in self.drivers.values():
            for name, gen in d.running().items():
                if name not in changed:
                    continue
                p = self.desired.get(name)
                if p is None or p["generation"] != gen or p["state"] not in HOLD:
                    await d.stop(name, gen, "no longer assigned here" if p is None or p["generation"] != gen
                                 else "stopped on request")
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
            except CanidaeError as e:
                log.warning("could not send %d report(s): %s; retrying", len(batch), e.message)
                self._outbox = batch + self._outbox
                await asyncio.sleep(self.retry_s)
                self._outbox_ready.set()

    async def close(self) -> None:
        self.stopping = True
        for d in self.drivers.values():
            await d.close()
