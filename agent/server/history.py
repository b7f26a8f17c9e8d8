"""The event store inside a server agent: opening it, feeding it, reading it over the API.

The ``ControlPlane`` (``canidae.agent.server.control``) owns one ``EventStore`` per server
(under ``<data_dir>/events``) and calls into this module; what a route means lives here:

* ``open_store(data_dir, loop)`` before the Raft replica exists (pysyncobj may replay its
  journal at once);
* ``pack_history`` for ``GET /v1/packs/{name}/history?since=MS``;
* ``routes``: ``GET /v1/events`` (a long-poll: ``after``, ``last``, ``pack``, ``node``, ``type``,
  ``limit``, ``wait``), ``GET /v1/history/verify`` (``full``, ``pack``), ``GET /v1/history/stats``.

Reads that should see everything committed (pack history, verify) take the same read barrier as
other linearizable reads, then wait (bounded) until the store has made the events up to the
barrier's sequence number durable.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol

from canidae.agent.config import AgentConfig
from canidae.agent.server.eventstore import EventStore
from canidae.agent.server.replica import Replica
from canidae.core.errors import InvalidInput, NotFound, OperationFailed
from canidae.core.types import validate_name
from starlette.requests import Request
from starlette.routing import Route



class ControlPlane(Protocol):
    """What the history needs of the control plane (``canidae.agent.server.control``)."""

    cfg: AgentConfig
    replica: Replica | None
    store: EventStore | None

    async def read_state(self, stale: bool) -> Any: ...

DURABLE_WAIT_S = 2.0
MAX_WAIT_S = 30.0
MAX_LIMIT = 10_000


class _Waker:
    """Wakes long-polls on the event loop whenever the store's writer makes events durable."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def notify(self, seq: int) -> None:  # writer thread
        self.loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        self.event.set()
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.event.wait(), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            pass


_wakers: dict[int, _Waker] = {}


def open_store(data_dir: str, loop: asyncio.AbstractEventLoop) -> EventStore:
    """Open (recover) the server's event store; its writer wakes this agent's long-polls."""
    waker = _Waker(loop)
    # Events are derived from the Raft log (durable on its own, and the store is flushed before
    # a Raft snapshot replaces entries), so the store may gather 20 ms of them per sync instead
    # of adding a second disk sync to every commit.
    store = EventStore(os.path.join(data_dir, "events"), on_durable=waker.notify,
                       group_window_s=0.02)
    _wakers[id(store)] = waker
    return store


def close_store(store: EventStore) -> None:
    _wakers.pop(id(store), None)
    store.close()


def _store(plane: ControlPlane) -> EventStore:
    store: EventStore | None = plane.store
    if store is None:
        raise OperationFailed("this agent keeps no event history (not a server, or not started)")
    return store


async def _durable(store: EventStore, seq: int, timeout: float = DURABLE_WAIT_S) -> bool:
    """Wait on the loop (no thread) until events up to ``seq`` are durable, at most ``timeout``.

    Events the store was never handed (applied before it existed, inside a Raft snapshot) are not
    waited for: after a short grace for the tick thread's hand-over, the target drops to what the
    store has accepted.
    """
    deadline = time.monotonic() + timeout
    grace = time.monotonic() + min(timeout, 0.2)
    while store.accepted_seq() < seq and time.monotonic() < grace:
        await asyncio.sleep(0.01)
    seq = min(seq, store.accepted_seq())
    waker = _wakers.get(id(store))
    while store.last_seq() < seq:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if waker is None:
            return await asyncio.to_thread(store.wait_durable, seq, left)
        await waker.wait(min(left, 0.1))
    return True


async def _barrier_seq(plane: ControlPlane) -> tuple[Any, int]:
    """A linearizable read point: the state after a read barrier and its event sequence number."""
    st = await plane.read_state(False)
    assert plane.replica is not None
    with plane.replica.lock:
        return st, st.event_seq


async def pack_history(plane: ControlPlane, name: str, since_ms: int | None = None) -> dict[str, Any]:
    store = _store(plane)
    st, seq = await _barrier_seq(plane)
    await _durable(store, seq)
    assert plane.replica is not None
    with plane.replica.lock:
        exists = name in st.packs
    if not exists and not store.knows(name):
        raise NotFound(f"no pack {name!r}: the cluster has no record of it")
    events = store.pack_history(name, since_ms)
    return {"pack": name, "events": events, "node": plane.cfg.node_id, "last_seq": store.last_seq(),
            "retained_from": store.retained_from(), "gaps": store.gaps()}


def _query_int(request: Request, key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = request.query_params.get(key)
    if v is None or v == "":
        return default
    if not (v.isascii() and v.isdigit()) or not lo <= int(v) <= hi:  # "²".isdigit() holds
        raise InvalidInput(f"query parameter {key} must be an integer {lo}..{hi}")
    return int(v)


def _query_float(request: Request, key: str, default: float, hi: float) -> float:
    v = request.query_params.get(key)
    if v is None or v == "":
        return default
    try:
        f = float(v)
    except ValueError:
        raise InvalidInput(f"query parameter {key} must be a number of seconds") from None
    if not 0 <= f <= hi:
        raise InvalidInput(f"query parameter {key} must be 0..{hi:g} seconds")
    return f


def _query_name(request: Request, key: str, kind: str) -> str | None:
    v = request.query_params.get(key)
    return None if v is None or v == "" else validate_name(kind, v)


async def events(plane: ControlPlane, request: Request) -> dict[str, Any]:
    """Durable events after ``after`` (or the ``last`` N) matching the filters; with ``wait``,
    waits up to that many seconds for the first match."""
    store = _store(plane)
    after = _query_int(request, "after", 0, 0, 1 << 62) or 0
    last = _query_int(request, "last", None, 1, MAX_LIMIT)
    limit = _query_int(request, "limit", 1000, 1, MAX_LIMIT) or 1000
    wait = _query_float(request, "wait", 0.0, MAX_WAIT_S)
    pack = _query_name(request, "pack", "pack")
    node = _query_name(request, "node", "node")
    kind = request.query_params.get("type") or None
    if kind is not None and not all(t.isalnum() for t in kind.split(",")):
        raise InvalidInput("type must be event type names, comma-separated (e.g. PackStarted,PackFailed)")
    deadline = time.monotonic() + wait
    waker = _wakers.get(id(store))
    while True:
        upto = store.last_seq()
        found = await asyncio.to_thread(store.tail, after, pack, node, kind, limit, last)
        if found or last is not None or time.monotonic() >= deadline:
            break
        # Nothing matches up to ``upto``: skip past it and sleep until more events are durable.
        after = max(after, upto)
        while store.last_seq() == upto and time.monotonic() < deadline:
            if waker is None:
                await asyncio.sleep(0.05)
            else:
                await waker.wait(min(0.5, deadline - time.monotonic()))
    if last is not None:  # the scan covered everything up to ``upto`` at least
        next_after = max(upto, found[-1]["seq"] if found else 0)
    elif found:  # perhaps cut by ``limit``: continue right after the last one
        next_after = found[-1]["seq"]
    else:
        next_after = max(after, upto)
    low = found[0]["seq"] - 1 if found else after
    return {"events": found, "next": next_after, "last_seq": store.last_seq(), "node": plane.cfg.node_id,
            "retained_from": store.retained_from(), "gaps": store.gaps(low, next_after)}


async def verify(plane: ControlPlane, full: bool, pack: str | None) -> dict[str, Any]:
    store = _store(plane)
    st, seq = await _barrier_seq(plane)
    assert plane.replica is not None
    with plane.replica.lock:
        if pack is not None:
            rec = st.packs.get(pack)
            live = {} if rec is None else {pack: {"state": rec.state.value, "node": rec.node}}
        else:
            live = {n: {"state": r.state.value, "node": r.node} for n, r in st.packs.items()}
        nodes = {n.id: n.state.value for n in st.nodes.values()}
    if pack is not None and not live and not store.knows(pack):
        raise NotFound(f"no pack {pack!r}: the cluster has no record of it")
    durable = await _durable(store, seq)
    report = await asyncio.to_thread(store.verify_report, live, nodes, seq, full, pack)
    if not durable:
        report["notes"].append(f"events up to seq {seq} were not all durable after {DURABLE_WAIT_S:g} s")
    report["node"] = plane.cfg.node_id
    return report


def routes(plane: ControlPlane | None, endpoint: Any) -> list[Route]:
    """The event store's API routes (``plane`` is None on a client agent: the edge forwards them)."""

    def server() -> ControlPlane:
        if plane is None:
            raise OperationFailed("this agent keeps no event history (not a server)")
        return plane

    async def list_events(request: Request) -> Any:
        return await events(server(), request)

    async def verify_route(request: Request) -> Any:
        full = request.query_params.get("full", "").lower() in ("1", "true", "yes")
        return await verify(server(), full, _query_name(request, "pack", "pack"))

    async def stats(request: Request) -> Any:
        return {"node": server().cfg.node_id, **_store(server()).stats()}

    return [
        Route("/v1/events", endpoint(list_events), methods=["GET"]),
        Route("/v1/history/verify", endpoint(verify_route), methods=["GET"]),
        Route("/v1/history/stats", endpoint(stats), methods=["GET"]),
    ]
