"""A bare exec driver on a data dir of its own, with the reports it made: real processes, no
cluster. Shared by the driver's tests and the node's security tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from packprocs import kill_leftovers

from canidae.agent.node import packlogs
from canidae.agent.node.exec_driver import ExecDriver, ExecSettings

TOKEN = "driver-test-token"
FAST = dict(backoff_s=0.02, backoff_cap_s=0.1, max_restarts=3, grace_s=2.0, close_grace_s=1.0, log_check_s=0.05)


class Rig:
    """One driver on a data dir of its own, with the reports it made."""

    def __init__(self, data: Path, **settings: Any) -> None:
        self.data = data
        self.reports: list[tuple[str, int, str, str]] = []
        self.driver = ExecDriver(self._report, data_dir=str(data), node_id="n1", token=TOKEN, api="127.0.0.1:9",
                                 settings=ExecSettings(**{**FAST, **settings}))

    async def _report(self, pack: str, generation: int, state: str, reason: str) -> None:
        self.reports.append((pack, generation, state, reason))

    def states(self, pack: str) -> list[str]:
        return [r[2] for r in self.reports if r[0] == pack]

    async def report(self, pack: str, state: str, timeout: float = 15.0) -> str:
        async def seen() -> tuple[str] | None:
            return next(((r[3],) for r in self.reports if r[0] == pack and r[2] == state), None)
        found = await until(seen, timeout, f"{pack} reported {state} (reports: {self.reports})")
        return str(found[0])

    async def start(self, pack: str, command: list[str], **spec: Any) -> None:
        await self.driver.start(pack, 1, {"name": pack, "driver": "exec", "command": command, "members": 1,
                                          "cpu": 0, "mem": 0, "restart": "on-failure", **spec})


async def until(cond: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = await cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def run(tmp_path: Path, body: Callable[[Rig], Awaitable[None]], **settings: Any) -> None:
    """Run ``body`` against a fresh driver; close it and make sure no process outlives the test."""
    data = tmp_path / "data"

    async def main() -> None:
        rig = Rig(data, **settings)
        try:
            await body(rig)
        finally:
            await rig.driver.close()
    try:
        asyncio.run(main())
    finally:
        left = kill_leftovers(str(data))
    assert not left, f"processes left behind: {left}"


def log_text(rig: Rig, pack: str, member: int = 0) -> str:
    return packlogs.read(rig.driver.logs_dir(pack), member)["text"]


async def log_has(rig: Rig, pack: str, needle: str, member: int = 0, timeout: float = 10.0) -> str:
    async def check() -> str | None:
        text = log_text(rig, pack, member)
        return text if needle in text else None
    return await until(check, timeout, f"{needle!r} in the log of {pack}/{member}")
