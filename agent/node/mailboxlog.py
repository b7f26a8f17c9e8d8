"""The on-disk log of one mailbox, and the group commit that makes sends durable.

Theory of operation. A mailbox's directory (``<data_dir>/mailboxes/<pack>/``, mode 0700) holds
one append-only file, ``yips.log`` (0600; a new directory and file are fsynced into their
parents before the first send is answered), a sequence of records::

    record  = length (4 bytes, big-endian) | crc32 of payload (4 bytes, big-endian) | payload
    payload = canonical JSON (sorted keys, no spaces, UTF-8) of exactly one of
              {"head": {"format": 1, "next_seq": N}}   first record of every file
              {"yip": {...}}                            a queued yip, as receivers see it
              {"ack": SEQ}                              every yip up to SEQ is acknowledged

Opening a log replays it (``Recovered``): the yips after the highest ack are the mailbox; the
next ``seq`` is past every seq and ack seen and the head's ``next_seq``, so seqs only grow. A
record that is cut short, fails its CRC or does not parse ends the log: it and everything after it
are cut off (a crash tears only the tail; a bad record in the middle means nothing after it can be
trusted to be framed right), and the file is truncated there before anything is appended.

Writes go to the page cache at once (``os.write`` on the event loop: microseconds). A send is
answered only after ``Syncer`` has made it durable: it runs fdatasync rounds on a thread of its
own, one round at a time; every send that arrives while a round runs waits for the next, which
syncs every log written meanwhile with one fdatasync each. So under load many sends share one
fdatasync, and a lone send costs one. Acks ride along: losing one in a crash only means
delivering its yips again, which at-least-once allows. If an fdatasync fails the log is
*broken*: the page cache can no longer be trusted to reach the disk, so its mailbox refuses
sends until the agent restarts and replays the file.

Compaction (``Journal.compact``): when acknowledged records are most of a file past
``COMPACT_MIN_BYTES``, the live yips (and a head with the next seq) are written to a new file,
fsynced, renamed over the old one, and the directory fsynced. It runs on the event loop: the
live part is small when receivers keep up, and a compaction happens once per that many bytes of
acknowledged traffic at most.

This module knows nothing of quotas, ids or waiting receivers (``canidae.agent.node.mailbox``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("canidae.mailbox")

LOG_NAME = "yips.log"
FORMAT = 1
HEADER = struct.Struct(">II")
MAX_RECORD = 1 << 20  # a yip holds at most 64 KiB of text; JSON escaping can grow it, not past this
COMPACT_MIN_BYTES = 64 * 1024


def encode(payload: dict[str, Any]) -> bytes:
    """One framed record of ``payload`` (canonical JSON)."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def decode_all(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records of a log's bytes, and the length of its good prefix (where a bad tail starts)."""
    out: list[dict[str, Any]] = []
    pos = 0
    while pos + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if length > MAX_RECORD or end > len(data):
            break
        body = data[pos + HEADER.size:end]
        if zlib.crc32(body) != crc:
            break
        try:
            rec = json.loads(body)
        except ValueError:
            break
        if not isinstance(rec, dict) or len(rec) != 1 or next(iter(rec)) not in ("head", "yip", "ack"):
            break
        out.append(rec)
        pos = end
    return out, pos


@dataclass
class Recovered:
    """What a log held: its unacknowledged yips in seq order, and the next seq to give."""

    yips: list[dict[str, Any]] = field(default_factory=list)
    next_seq: int = 1
    dropped_bytes: int = 0


def replay(records: list[dict[str, Any]]) -> Recovered:
    yips: list[dict[str, Any]] = []
    acked = 0
    top = 0
    for rec in records:
        if "head" in rec:
            head = rec["head"]
            if isinstance(head, dict) and isinstance(head.get("next_seq"), int):
                top = max(top, head["next_seq"] - 1)
        elif "ack" in rec:
            if isinstance(rec["ack"], int):
                acked = max(acked, rec["ack"])
                top = max(top, acked)
        else:
            y = rec["yip"]
            if isinstance(y, dict) and isinstance(y.get("seq"), int) and isinstance(y.get("id"), str):
                yips.append(y)
                top = max(top, y["seq"])
    live = sorted((y for y in yips if y["seq"] > acked), key=lambda y: y["seq"])
    return Recovered(live, top + 1)


def make_private_dir(path: str) -> None:
    """Create ``path`` (mode 0700) if missing, durably: its parent is fsynced after the creation."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        os.chmod(path, 0o700)
        return
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The log file of one mailbox: append records, know what is durable, compact, remove.

    ``written`` counts the records written; ``synced`` how many of them are known durable. A
    send waits (``Syncer.flush``) until ``synced`` reaches what ``written`` was after its records.
    """

    def __init__(self, directory: str, syncer: Syncer) -> None:
        self.dir = directory
        self.path = os.path.join(directory, LOG_NAME)
        self.syncer = syncer
        self.fd = -1
        self.size = 0
        self.written = 0
        self.synced = 0
        self.broken: str | None = None
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []

    def open(self) -> Recovered:
        """Open (or create) the log and replay it; a bad tail is cut off first."""
        make_private_dir(self.dir)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
            records, good = decode_all(data)
            got = replay(records)
            got.dropped_bytes = len(data) - good
            if got.dropped_bytes:
                log.warning("mailbox log %s: dropped a torn or corrupt tail of %d bytes", self.path,
                            got.dropped_bytes)
                os.ftruncate(fd, good)
                os.fsync(fd)
            if not records or "head" not in records[0]:
                # A new file, or one whose head never reached the disk: start it over with a head.
                os.ftruncate(fd, 0)
                os.write(fd, encode({"head": {"format": FORMAT, "next_seq": got.next_seq}})
                         + b"".join(encode({"yip": y}) for y in got.yips))
                os.fsync(fd)
                _fsync_dir(self.dir)
            self.size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return got

    def append(self, records: list[dict[str, Any]]) -> list[int]:
        """Write records at the end of the log (not yet durable: see ``Syncer.flush``); their sizes.

        One write for the lot; if it fails or falls short, the file is cut back to where it was, so
        a failed send leaves no half record for the next one to follow.
        """
        if self.broken is not None:
            raise OSError(f"the mailbox log failed earlier ({self.broken})")
        framed = [encode(r) for r in records]
        data = b"".join(framed)
        try:
            n = os.write(self.fd, data)
            if n != len(data):
                raise OSError(f"short write ({n} of {len(data)} bytes)")
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError as e:
                self.broken = f"cannot cut back a failed write: {e}"
            raise
        self.size += len(data)
        self.written += 1
        self.syncer.mark(self)
        return [len(f) for f in framed]

    def compact(self, next_seq: int, live: list[dict[str, Any]]) -> None:
        """Rewrite the log as a head and the ``live`` yips: new file, fsync, rename, fsync the dir."""
        tmp = self.path + ".new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            data = (encode({"head": {"format": FORMAT, "next_seq": next_seq}})
                    + b"".join(encode({"yip": y}) for y in live))
            os.write(fd, data)
            os.fsync(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.dir)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.syncer.retire(self.fd)
        self.fd, self.size = fd, len(data)
        # Every live record is durable in the new file: sends waiting on the old one are done.
        self.synced = self.written
        self.syncer.settle(self)

    def remove(self) -> None:
        """Close and delete the log and its directory (the pack is no longer on this node)."""
        if self.fd >= 0:
            self.syncer.retire(self.fd)
            self.fd = -1
        self.broken = self.broken or "removed"
        self.syncer.settle(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        if self.fd >= 0:
            self.syncer.retire(self.fd)
            self.fd = -1


class Syncer:
    """Group commit of the journals of one store: one fdatasync round at a time, on one thread.

    ``flush(journal)`` resolves once everything the journal held when it was called is durable.
    Rounds start on the event loop's next turn after a flush asks for one, so every send handled
    in the same turn shares it; sends that come while a round runs share the next one.
    """

    def __init__(self) -> None:
        self.dirty: dict[int, Journal] = {}
        self.running = False
        self.scheduled = False
        self.rounds = 0
        self._retired: list[int] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def mark(self, journal: Journal) -> None:
        self.dirty[id(journal)] = journal

    async def flush(self, journal: Journal) -> None:
        if journal.broken is not None:
            raise OSError(journal.broken)
        target = journal.written
        if journal.synced >= target:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        journal.waiters.append((target, fut))
        self._schedule()
        await fut

    def _schedule(self) -> None:
        if not self.running and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._start_round)

    def _start_round(self) -> None:
        self.scheduled = False
        if self.running or not self.dirty:
            return
        batch = [(j, j.fd, j.written) for j in self.dirty.values() if j.fd >= 0 and j.broken is None]
        self.dirty.clear()
        if not batch:
            return
        self.running = True
        self.rounds += 1
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mailbox-sync")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, _sync_all, [fd for _, fd, _ in batch])
        fut.add_done_callback(lambda f: self._end_round(batch, f))

    def _end_round(self, batch: list[tuple[Journal, int, int]],
                   done: asyncio.Future[list[str | None]]) -> None:
        self.running = False
        for fd in self._retired:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._retired.clear()
        errors = done.result() if done.exception() is None else [str(done.exception())] * len(batch)
        for (j, _, written), err in zip(batch, errors):
            if err is None:
                j.synced = max(j.synced, written)
            elif j.broken is None:
                log.error("mailbox log %s: fdatasync failed (%s); its mailbox refuses sends until the agent "
                          "restarts", j.path, err)
                j.broken = f"fdatasync failed: {err}"
            self.settle(j)
        if any(j.waiters for j in self.dirty.values()):
            self._schedule()

    def settle(self, journal: Journal) -> None:
        """Answer the journal's waiters that are durable now (or can never be)."""
        keep = []
        for target, fut in journal.waiters:
            if fut.done():
                continue
            if journal.synced >= target:
                fut.set_result(None)
            elif journal.broken is not None:
                fut.set_exception(OSError(journal.broken))
            else:
                keep.append((target, fut))
        journal.waiters = keep

    def retire(self, fd: int) -> None:
        """Close ``fd`` once no round can be using it."""
        if self.running:
            self._retired.append(fd)
        else:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for fd in self._retired:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._retired.clear()


def _sync_all(fds: list[int]) -> list[str | None]:
    out: list[str | None] = []
    for fd in fds:
        try:
            os.fdatasync(fd)
            out.append(None)
        except OSError as e:
            out.append(e.strerror or str(e))
    return out
