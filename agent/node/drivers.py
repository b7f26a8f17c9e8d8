"""Drivers run a pack's members on this node. The reconciler tells them what to start and stop.

A driver owns the processes (or, for ``virtual``, just the bookkeeping) of the packs it runs,
keyed by pack name and placement generation. It reports what happens to them through the
``report`` callback given at construction: ``report(name, generation, state, reason)`` with
state ``running``, ``stopped`` or ``failed``. ``start`` of a generation already running is a
no-op; ``stop`` of something not running reports ``stopped`` at once, so the cluster never
waits on a pack that is not there.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

Report = Callable[[str, int, str, str], Awaitable[None]]


class PackDriver(Protocol):
    name: str

    async def start(self, pack: str, generation: int, spec: dict[str, Any]) -> None: ...

    async def stop(self, pack: str, generation: int, reason: str) -> None: ...

    def running(self) -> dict[str, int]:
        """Packs this driver runs now: name -> generation."""
        ...

    async def forget(self, pack: str) -> None:
        """The pack was deleted from the cluster: remove what is left of it here (files, records),
        once whatever still runs of it has stopped."""
        ...

    async def close(self) -> None: ...


class VirtualDriver:
    """No process: a virtual pack is running once started. For tests, simulations and scale runs."""

    name = "virtual"

    def __init__(self, report: Report) -> None:
        self._report = report
        self._running: dict[str, int] = {}

    async def start(self, pack: str, generation: int, spec: dict[str, Any]) -> None:
        # Starting what already runs re-reports it: a lost report must not leave a pack "placed".
        self._running[pack] = generation
        await self._report(pack, generation, "running", "")

    async def stop(self, pack: str, generation: int, reason: str) -> None:
        self._running.pop(pack, None)
        await self._report(pack, generation, "stopped", reason)

    def running(self) -> dict[str, int]:
        return dict(self._running)

    async def forget(self, pack: str) -> None:
        self._running.pop(pack, None)

    async def close(self) -> None:
        self._running.clear()
