"""Group commit: many concurrent requests become one Raft log entry.

Requests arrive on the agent's asyncio loop and wait in ``pending``. A flush takes everything
pending (up to ``max_batch`` commands) into one canonical batch and hands it to pysyncobj. At
most ``max_in_flight`` batches are outstanding; while they are, new requests accumulate, so the
batch size grows with load by itself: one command per entry (about 1 ms) when idle, thousands
per entry under a burst.

pysyncobj's callbacks can be lost under leader churn and have no timeout, so every batch has a
deadline of our own; a request that passes it fails with ``Timeout`` (exit 3). Its outcome is
then unknown, which is why every command carries a request id: retrying with the same id is
safe, the state machine answers the first outcome again.

Entries stay small. A batch whose encoded entry exceeds ``split_bytes`` (RaftSettings'
``entry_split_bytes``) becomes several entries: commands are independent, so any split applies
the same. Small entries travel whole in one append-entries and keep every frame far under the
Raft port's cap. A single command larger than ``split_bytes`` goes as an entry of its own; one
larger than the replica's ``max_entry_bytes`` is refused with ``InvalidInput`` before anything
is proposed.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from pysyncobj import FAIL_REASON

from canidae.agent.server.replica import Replica, encode_entry
from canidae.core.commands import Command, Noop, encode_batch
from canidae.core.errors import CanidaeError, InvalidInput, NoLeader, Timeout, Unavailable

WATCH_S = 0.05  # how often in-flight batches are checked against the current leader

_FAIL_MESSAGES = {
    FAIL_REASON.QUEUE_FULL: "the Raft queue is full",
    FAIL_REASON.MISSING_LEADER: "no Raft leader",
    FAIL_REASON.DISCARDED: "the command was discarded by a leader change",
    FAIL_REASON.NOT_LEADER: "this agent lost leadership",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the command committed",
    FAIL_REASON.REQUEST_DENIED: "the request was denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "the outcome is unknown",
}


class Proposer:
    def __init__(self, replica: Replica, loop: asyncio.AbstractEventLoop, *, max_in_flight: int = 4,
                 max_batch: int = 4000, timeout_s: float = 5.0, split_bytes: int | None = None,
                 on_commit: Callable[[float], None] | None = None) -> None:
        self.replica = replica
        # Told the seconds from proposing each entry to its commit and apply here (a metric);
        # called on pysyncobj's tick thread.
        self.on_commit = on_commit
        self.loop = loop
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.split_bytes = split_bytes or replica.settings.entry_split_bytes
        self.max_entry_bytes = replica.max_entry_bytes
        self.pending: list[tuple[Command, asyncio.Future[dict[str, Any]]]] = []
        self.in_flight: dict[int, list[asyncio.Future[dict[str, Any]]]] = {}
        # Who led when each batch went out: a batch outlives no change of leader (see _watch).
        self._proposed_under: dict[int, tuple[str | None, int]] = {}
        self._watching = False
        self._ids = itertools.count(1)
        self._flush_scheduled = False
        self.batches = 0
        self.commands = 0

    async def submit(self, cmd: Command) -> dict[str, Any]:
        """Propose one command and wait for its answer (raises on Raft-level failure)."""
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.pending.append((cmd, fut))
        self._schedule_flush()
        return await fut

    async def submit_many(self, cmds: Sequence[Command]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.submit(c) for c in cmds)))

    async def barrier(self, at: int) -> None:
        """Wait until everything committed before now is applied locally (linearizable reads)."""
        await self.submit(Noop(id=f"barrier-{next(self._ids)}", at=at))

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and len(self.in_flight) < self.max_in_flight:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self.pending and len(self.in_flight) < self.max_in_flight:
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch:]
            try:
                entries = self._entries(batch)
            except Exception as e:  # cannot happen for validated commands; never leave callers hanging
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(Unavailable(f"could not encode the batch: {e}"))
                continue
            # A split batch may put a few more entries than max_in_flight on the wire at once.
            for part, data in entries:
                self._propose(part, data)

    def _entries(self, batch: list[tuple[Command, asyncio.Future[dict[str, Any]]]]
                 ) -> list[tuple[list[tuple[Command, asyncio.Future[dict[str, Any]]]], bytes]]:
        """The batch as log entries of at most ``split_bytes`` each (see the module docstring).

        Cut into as many parts as the size says, each encoded and cut again if still too large:
        the compressed size of a part is known only once encoded.
        """
        data = encode_entry(encode_batch([c for c, _ in batch]))
        if len(data) <= self.split_bytes:
            return [(batch, data)]
        if len(batch) == 1:
            cmd, fut = batch[0]
            if len(data) > self.max_entry_bytes:
                fut.set_exception(InvalidInput(
                    f"{cmd.TYPE} {cmd.id} encodes to {len(data)} bytes, more than the {self.max_entry_bytes} "
                    "one Raft log entry may carry: send it as several smaller commands"))
                return []
            return [(batch, data)]
        parts = min(len(batch), math.ceil(len(data) / self.split_bytes))
        size = math.ceil(len(batch) / parts)
        out = []
        for i in range(0, len(batch), size):
            out.extend(self._entries(batch[i:i + size]))
        return out

    def _propose(self, batch: list[tuple[Command, asyncio.Future[dict[str, Any]]]], data: bytes) -> None:
        batch_id = next(self._ids)
        self.in_flight[batch_id] = [f for _, f in batch]
        self.batches += 1
        self.commands += len(batch)
        handle = self.loop.call_later(self.timeout_s, self._expire, batch_id)
        self._proposed_under[batch_id] = (self.replica.leader_address(), self.replica.current_term())
        if not self._watching:
            self._watching = True
            self.loop.call_later(WATCH_S, self._watch)

        proposed_at = time.monotonic()

        def callback(result: Any, error: int) -> None:
            # Runs on pysyncobj's tick thread.
            if error == FAIL_REASON.SUCCESS and self.on_commit is not None:
                self.on_commit(time.monotonic() - proposed_at)
            self.loop.call_soon_threadsafe(self._on_done, batch_id, handle, result, error)

        self.replica.apply_entry(data, callback=callback)

    def _on_done(self, batch_id: int, handle: asyncio.TimerHandle, result: Any, error: int) -> None:
        handle.cancel()
        if error == FAIL_REASON.SUCCESS:
            self._finish(batch_id, result, None)
        elif error == FAIL_REASON.MISSING_LEADER:
            self._finish(batch_id, None, NoLeader("no Raft leader: the cluster has no quorum"))
        else:
            self._finish(batch_id, None, Unavailable(
                f"{_FAIL_MESSAGES.get(error, 'Raft failure')}; retrying with the same request id is safe"))

    def _watch(self) -> None:
        """Fail batches proposed under a leader that is no longer the leader, at once.

        pysyncobj may never answer them (callbacks are lost when a leader dies or is cut off), and
        waiting out ``timeout_s`` would stall every write for seconds after a failover. Their
        outcome is unknown (the old leader may have committed them): the caller retries with the
        same request id on the new leader, and the state machine answers a repeated id once.
        """
        now = (self.replica.leader_address(), self.replica.current_term())
        for batch_id, under in list(self._proposed_under.items()):
            if under != now and batch_id in self.in_flight:
                self._finish(batch_id, None, Unavailable(
                    "the leader changed while the command was in flight; its outcome is unknown, "
                    "retrying with the same request id is safe"))
        self._watching = bool(self.in_flight)
        if self._watching:
            self.loop.call_later(WATCH_S, self._watch)

    def _expire(self, batch_id: int) -> None:
        self._finish(batch_id, None, Timeout(
            f"no commit within {self.timeout_s:g} s; the outcome is unknown, retrying with the same "
            "request id is safe"))

    def _finish(self, batch_id: int, results: Any, error: BaseException | None) -> None:
        futs = self.in_flight.pop(batch_id, None)
        self._proposed_under.pop(batch_id, None)
        if futs is None:
            return  # already expired; a late callback changes nothing for the caller
        for i, fut in enumerate(futs):
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error if isinstance(error, CanidaeError) else Unavailable(str(error)))
            elif not isinstance(results, list) or i >= len(results):
                fut.set_exception(Unavailable("malformed answer from the state machine"))
            else:
                fut.set_result(results[i])
        if self.pending:
            self._schedule_flush()
