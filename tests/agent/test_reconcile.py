"""The reconcile loop's rules: only explicit instructions stop a pack, revisions only move forward,
a resync stops exactly what it names and starts what is missing, a poll can be interrupted."""

from __future__ import annotations

import asyncio
from typing import Any

from canidae.agent.node.drivers import VirtualDriver
from canidae.agent.node.reconcile import Reconciler


def pack(name: str, gen: int = 1, state: str = "running") -> dict[str, Any]:
    return {"name": name, "generation": gen, "state": state, "driver": "virtual", "spec": {"name": name}}


def rig() -> tuple[Reconciler, VirtualDriver, list[list[Any]]]:
    sent: list[list[Any]] = []

    async def never(*_: Any) -> dict[str, Any]:
        raise AssertionError("not used")

    async def send(batch: list[list[Any]]) -> None:
        sent.extend(batch)

    r = Reconciler(never, never, send)
    d = VirtualDriver(r.report)
    r.add_driver(d)
    return r, d, r._outbox


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_an_older_revision_is_never_applied():
    async def body() -> None:
        r, d, _ = rig()
        await r.apply_resync({"rev": 10, "packs": [pack("a"), pack("b")], "gone": []})
        assert d.running() == {"a": 1, "b": 1}
        # A lagging server answers from an older view in which neither pack is here.
        await r.apply_changes({"rev": 7, "packs": [], "gone": ["a", "b"]})
        await r.apply_resync({"rev": 8, "packs": [], "gone": [{"name": "a", "generation": 1, "reason": "x"}]})
        assert d.running() == {"a": 1, "b": 1} and r.rev == 10
    run(body())


def test_a_pack_absent_from_a_resync_without_an_instruction_keeps_running():
    async def body() -> None:
        r, d, _ = rig()
        await r.apply_resync({"rev": 5, "packs": [pack("a"), pack("b")], "gone": []})
        await r.apply_resync({"rev": 6, "packs": [pack("a")], "gone": []})
        assert d.running() == {"a": 1, "b": 1}
        await r.apply_resync({"rev": 7, "packs": [pack("a")],
                              "gone": [{"name": "b", "generation": 1, "reason": "moved to n2 (generation 2)"}]})
        assert d.running() == {"a": 1}
        assert r.corrected == 1 + 2  # b stopped, and a and b started by the first resync
    run(body())


def test_incremental_changes_stop_what_is_gone_or_replaced_and_start_what_is_new():
    async def body() -> None:
        r, d, outbox = rig()
        await r.apply_resync({"rev": 1, "packs": [pack("a"), pack("b"), pack("c")], "gone": []})
        await r.apply_changes({"rev": 2, "packs": [pack("b", gen=2), pack("c", state="stopping"), pack("d")],
                               "gone": ["a"]})
        assert d.running() == {"b": 2, "d": 1}
        stops = [(n, g, reason) for n, g, s, reason in outbox if s == "stopped"]
        assert ("a", 1, "no longer assigned here") in stops
        assert ("b", 1, "replaced by generation 2") in stops
        assert ("c", 1, "stopped on request") in stops
    run(body())


def test_an_interrupted_poll_is_asked_again_and_a_resync_request_is_honoured():
    async def body() -> None:
        calls: list[str] = []
        started = asyncio.Event()

        async def fetch(after: int) -> dict[str, Any]:
            calls.append(f"fetch {after}")
            started.set()
            await asyncio.sleep(30)
            raise AssertionError("a poll that should have been interrupted")

        async def resync(running: dict[str, int]) -> dict[str, Any]:
            calls.append("resync")
            return {"rev": 3, "packs": [pack("a")], "gone": []}

        async def send(batch: list[list[Any]]) -> None:
            pass

        r = Reconciler(fetch, resync, send)
        r.add_driver(VirtualDriver(r.report))
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(started.wait(), 5)
        started.clear()
        r.interrupt()
        await asyncio.wait_for(started.wait(), 5)
        started.clear()
        r.request_resync()
        await asyncio.wait_for(started.wait(), 5)
        await r.close()
        task.cancel()
        assert calls == ["resync", "fetch 3", "fetch 3", "resync", "fetch 3"]
    run(body())


def test_an_unexpected_error_does_not_end_the_loop_it_resynchronises():
    async def body() -> None:
        fetches = 0
        resynced = asyncio.Event()

        async def fetch(after: int) -> dict[str, Any]:
            nonlocal fetches
            fetches += 1
            if fetches == 1:
                raise KeyError("rev")  # an answer the loop did not expect
            await asyncio.sleep(30)
            raise AssertionError("not reached")

        async def resync(running: dict[str, int]) -> dict[str, Any]:
            resynced.set()
            return {"rev": 3, "packs": [pack("a")], "gone": []}

        async def send(batch: list[list[Any]]) -> None:
            return None

        r = Reconciler(fetch, resync, send, retry_s=0.01)
        d = VirtualDriver(r.report)
        r.add_driver(d)
        task = asyncio.create_task(r.run())
        await asyncio.wait_for(resynced.wait(), 5)
        for _ in range(100):
            if d.running() == {"a": 1}:
                break
            await asyncio.sleep(0.01)
        assert d.running() == {"a": 1} and not task.done()
        r.stopping = True
        task.cancel()
    run(body())
