"""The event store: every server agent's durable, indexed history of the cluster's events.

Applying the Raft log yields events (``ClusterState.drain_events``), numbered by a replicated
sequence, so every server records the same events under the same numbers. This module keeps
them on disk, answers "what happened to pack P" without scanning, streams them to followers and
keeps two projections (the state of every pack, the packs of every node) that can be rebuilt
from the log and compared with the live replicated state.

Theory of operation
-------------------
``append(events)`` runs on pysyncobj's tick thread and only buffers: a writer thread takes
everything buffered, encodes it, writes it with one ``write`` per segment and one ``fdatasync``
(group commit), then publishes it to readers (index, projections, ``durable_seq``). ``flush()``
and ``wait_durable(seq)`` wait for that. Sealing, snapshots and retention run on a maintenance
thread, so compressing a segment never delays an acknowledgment; ``settle()`` waits for them.
Events numbered at or below the last one accepted are ignored: after a restart pysyncobj
replays its journal from its last snapshot and the state machine emits the same events again.
A jump in the numbers (a Raft snapshot was installed, or the store was wiped) is recorded as a
*gap*, never filled with made-up events; when the caller can supply the live state at that
point (``append(events, live=...)``) the projections are re-based on it and a snapshot marks
the re-base.

On disk (one directory)::

    seg-00000007.log     the active segment, or one left unsealed by a crash: records
    seg-00000006.zst     a sealed segment: the same bytes as its .log, cut at record boundaries
                         into ~64 KiB blocks, each one independent zstd frame with a checksum
                         (``zstd -d`` turns it back into the .log)
    seg-00000006.idx     its index: one zstd frame of canonical JSON: seq and time range, the
                         block table [raw offset, first seq, compressed offset, length], gaps,
                         and for every pack the raw offsets of its records
    snap-<seq 20 digits>.zst   projections as of seq (zstd JSON); the two newest are kept

A record is ``u32 length | u32 crc32(payload) | payload`` (little endian), the payload being
the event as canonical JSON (sorted keys, no spaces, ASCII). A segment is sealed when it
reaches ``segment_bytes``: the .zst and .idx are written to temporary names, fsync'ed,
renamed, the directory fsync'ed, and only then the .log removed. On start a .log always wins
over a .zst/.idx of the same number (an interrupted seal), a .log that is not the newest is
sealed, and the newest .log is read record by record: the first torn or corrupt record (short
header, length past the end, checksum mismatch, unparsable JSON, sequence not increasing) and
everything after it is cut off with ``ftruncate``. Nothing acknowledged is lost that way: the
writer acknowledges (``durable_seq``) only what was fsync'ed, and whatever was cut is replayed
by Raft anyway.

The per-pack index maps a pack name to the positions (segment number << 32 | raw offset) of its
records, in order. It lives in memory, is persisted per sealed segment in the .idx files and
rebuilt on start from them plus a scan of the active segment only. A position never changes
when its segment is sealed: reading it means one ``pread`` in the active segment, or one block
decompression (cached) in a sealed one.

Projections are folded from events with the same transitions as ``canidae.core.state``; a
snapshot is written every ``snapshot_every`` events (or every as many events as there are
packs, when that is more: a snapshot's cost grows with the packs) and on close, and on start
the projections are the newest readable snapshot plus the events after it. Retention removes whole sealed
segments, oldest first, older than ``retain_ms`` or while the store is over ``retain_bytes``;
the active segment is never removed, and a snapshot at or after the last removed event is
written first, so the projections can always be rebuilt.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from array import array
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator

import zstandard

log = logging.getLogger("canidae.eventstore")

HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
MAX_RECORD = 16 << 20
BLOCK_BYTES = 64 << 10
OFFSET_BITS = 32
OFFSET_MASK = (1 << OFFSET_BITS) - 1
SEG_RE = re.compile(r"^seg-(\d{8})\.(log|zst|idx)$")
SNAP_RE = re.compile(r"^snap-(\d{20})\.zst$")
SNAPSHOTS_KEPT = 2
BLOCK_CACHE = 64
MAX_GROUP = 20_000  # events per group commit at most

HOLDING = frozenset({"placed", "running", "stopping"})

# Event type -> the pack state it leaves behind, and whether the event's node becomes the pack's
# node (True), the node is cleared (None) or kept (False). Mirrors canidae.core.state.
PACK_TRANSITIONS: dict[str, tuple[str, bool | None]] = {
    "PackCreated": ("created", None),
    "PackPending": ("pending", None),
    "PackPlaced": ("placed", True),
    "PackMigrating": ("placed", True),
    "PackStarted": ("running", True),
    "PackMigrated": ("running", True),
    "PackStopping": ("stopping", False),
    "PackStopped": ("stopped", False),
    "PackFailed": ("failed", False),
}
NODE_TRANSITIONS: dict[str, str] = {
    "NodeJoined": "ready", "NodeReturned": "ready", "NodeDown": "down", "NodeDraining": "draining",
}

_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
try:
    # JSONEncoder.encode builds a new C encoder on every call; that alone was half the writer's time.
    from json.encoder import c_make_encoder as _c_make_encoder
    from json.encoder import encode_basestring_ascii as _ascii

    _c_encode = _c_make_encoder(None, _encoder.default, _ascii, None, ":", ",", True, False, True)

    def _dumps(event: dict[str, Any]) -> str:
        return "".join(_c_encode(event, 0))
except (ImportError, TypeError):  # no C accelerator: the pure-Python encoder gives the same text
    _dumps = _encoder.encode


class CorruptRecord(Exception):
    """A record that fails its checks; ``offset`` is where it starts."""

    def __init__(self, offset: int, why: str) -> None:
        super().__init__(f"{why} at offset {offset}")
        self.offset = offset
        self.why = why


SLICE = 2000


def encode_big(doc: dict[str, Any]) -> bytes:
    """JSON of ``doc`` with its large lists and dicts encoded in slices (and not sorted as a
    whole): one C call over a 100,000-entry document holds the GIL for tens of milliseconds, and
    the writer thread needs the GIL to acknowledge events. Snapshots and segment indexes are
    local files, so only their value matters, not a canonical byte order."""
    parts = []
    for key in sorted(doc):
        v = doc[key]
        if isinstance(v, list) and len(v) > SLICE:
            text = "[" + ",".join(_dumps(v[i:i + SLICE])[1:-1] for i in range(0, len(v), SLICE)) + "]"
        elif isinstance(v, dict) and len(v) > SLICE:
            items = list(v.items())
            text = "{" + ",".join(_dumps(dict(items[i:i + SLICE]))[1:-1]
                                  for i in range(0, len(items), SLICE)) + "}"
        else:
            text = _dumps(v)
        parts.append(_dumps(key) + ":" + text)
    return ("{" + ",".join(parts) + "}").encode()


def encode_record(event: dict[str, Any]) -> bytes:
    payload = _dumps(event).encode()
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_record(buf: bytes | memoryview, pos: int) -> tuple[dict[str, Any], int]:
    """The event at ``pos`` in ``buf`` and where the next record starts; ``CorruptRecord`` if bad."""
    if pos + HEADER.size > len(buf):
        raise CorruptRecord(pos, "torn header")
    n, crc = HEADER.unpack_from(buf, pos)
    end = pos + HEADER.size + n
    if n > MAX_RECORD or end > len(buf):
        raise CorruptRecord(pos, "torn record")
    payload = bytes(buf[pos + HEADER.size:end])
    if zlib.crc32(payload) != crc:
        raise CorruptRecord(pos, "checksum mismatch")
    try:
        ev = json.loads(payload)
    except ValueError:
        raise CorruptRecord(pos, "unparsable record") from None
    if not isinstance(ev, dict) or not isinstance(ev.get("seq"), int):
        raise CorruptRecord(pos, "record without a sequence number")
    return ev, end


def iter_records(buf: bytes | memoryview, pos: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, event) for every record of ``buf`` from ``pos``; raises ``CorruptRecord`` at a bad one."""
    while pos < len(buf):
        ev, nxt = decode_record(buf, pos)
        yield pos, ev
        pos = nxt


# ------------------------------------------------------------------------------------- projections


class Projections:
    """The state and node of every pack, the state of every node, as of event ``seq``."""

    __slots__ = ("seq", "packs", "on_node", "nodes")

    def __init__(self) -> None:
        self.seq = 0
        # Records are immutable tuples, replaced on change: a snapshot needs only a shallow copy
        # of the dict under the store's lock, never a walk over every pack.
        self.packs: dict[str, tuple[str, str | None]] = {}  # name -> (state, node)
        self.on_node: dict[str, dict[str, None]] = {}       # node -> packs whose node it is (any state)
        self.nodes: dict[str, str] = {}                     # node -> state

    def _move(self, name: str, old: str | None, new: str | None) -> None:
        if old is not None:
            names = self.on_node.get(old)
            if names is not None:
                names.pop(name, None)
                if not names:
                    del self.on_node[old]
        if new is not None:
            self.on_node.setdefault(new, {})[name] = None

    def apply(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        pack = ev.get("pack")
        self.seq = ev["seq"]
        if pack is not None:
            if kind == "PackDeleted":
                old = self.packs.pop(pack, None)
                if old is not None:
                    self._move(pack, old[1], None)
                return
            tr = PACK_TRANSITIONS.get(kind)  # type: ignore[arg-type]
            if tr is None:
                return
            old = self.packs.get(pack)
            old_node = old[1] if old is not None else None
            if tr[1] is None:
                node = None
            elif tr[1] and ev.get("node") is not None:
                node = ev["node"]
            else:
                node = old_node
            self.packs[pack] = (tr[0], node)
            if node != old_node:
                self._move(pack, old_node, node)
            return
        node = ev.get("node")
        if node is None:
            return
        if kind in NODE_TRANSITIONS:
            self.nodes[node] = NODE_TRANSITIONS[kind]  # type: ignore[index]
        elif kind == "NodeStateChanged":
            state = (ev.get("detail") or {}).get("state")
            if isinstance(state, str):
                self.nodes[node] = state
        elif kind == "NodeRemoved":
            # The state machine detaches the packs left on a removed node without a pack event.
            self.nodes.pop(node, None)
            for name in list(self.on_node.get(node, ())):
                self.packs[name] = (self.packs[name][0], None)
                self._move(name, node, None)

    def view(self, pack: str | None = None) -> dict[str, Any]:
        names = [pack] if pack is not None else sorted(self.packs)
        packs = {n: {"state": self.packs[n][0], "node": self.packs[n][1]} for n in names if n in self.packs}
        per_node = {n: sorted(p for p in names_ if self.packs[p][0] in HOLDING)
                    for n, names_ in sorted(self.on_node.items())}
        return {"seq": self.seq, "packs": packs,
                "nodes": {n: {"state": self.nodes.get(n), "packs": per_node.get(n, [])}
                          for n in sorted(set(self.nodes) | set(per_node))}}

    def to_doc(self) -> dict[str, Any]:
        return _doc(self.seq, self.packs, self.nodes)

    @staticmethod
    def from_doc(doc: dict[str, Any]) -> Projections:
        if doc.get("version") != 1:
            raise ValueError(f"unsupported snapshot version {doc.get('version')!r}")
        p = Projections()
        p.seq = int(doc["seq"])
        for name, state, node in doc["packs"]:
            p.packs[name] = (state, node)
            p._move(name, None, node)
        p.nodes = {n: s for n, s in doc["nodes"]}
        return p

    @staticmethod
    def from_live(seq: int, packs: dict[str, dict[str, Any]], nodes: dict[str, str]) -> Projections:
        return Projections.from_doc({"version": 1, "seq": seq,
                                     "packs": [[n, v["state"], v.get("node")] for n, v in packs.items()],
                                     "nodes": list(nodes.items())})


def _doc(seq: int, packs: dict[str, tuple[str, str | None]], nodes: dict[str, str]) -> dict[str, Any]:
    # Not sorted: one sort of 100,000 names is a single long hold of the GIL (see encode_big).
    return {"version": 1, "seq": seq, "packs": [[n, r[0], r[1]] for n, r in packs.items()],
            "nodes": [[n, s] for n, s in nodes.items()]}


# ------------------------------------------------------------------------------------- segments


class _Segment:
    """One segment's metadata and open files. Changed only under the store's lock."""

    __slots__ = ("no", "sealed", "full", "size", "disk_bytes", "first_seq", "last_seq", "first_at",
                 "last_at", "count", "block_raw", "block_seq", "block_comp", "packs", "gaps", "rfd", "wfd")

    def __init__(self, no: int) -> None:
        self.no = no
        self.sealed = False
        self.full = False        # the writer moved on and published its last record: it may be sealed
        self.size = 0            # raw bytes of records (durable)
        self.disk_bytes = 0      # bytes on disk (the .zst and .idx once sealed)
        self.first_seq = 0
        self.last_seq = 0
        self.first_at = 0
        self.last_at = 0
        self.count = 0
        self.block_raw: list[int] = []   # raw offset where each block starts
        self.block_seq: list[int] = []   # first seq of each block
        self.block_comp: list[tuple[int, int]] = []  # sealed: (offset, length) of each zstd frame
        self.packs: dict[str, list[int]] | None = {}  # active: pack -> raw offsets (for the .idx)
        self.gaps: list[list[int]] = []
        self.rfd = -1
        self.wfd = -1

    def meta(self) -> dict[str, Any]:
        return {"no": self.no, "sealed": self.sealed, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "first_at": self.first_at, "last_at": self.last_at, "events": self.count,
                "raw_bytes": self.size, "disk_bytes": self.disk_bytes}


class _Rebase:
    __slots__ = ("seq", "view")

    def __init__(self, seq: int, view: dict[str, Any]) -> None:
        self.seq = seq
        self.view = view


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: temporary name, fsync, rename (the caller fsyncs the dir)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _frames(data: bytes, dctx: zstandard.ZstdDecompressor) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length, decompressed bytes) of each zstd frame in ``data``."""
    pos = 0
    while pos < len(data):
        obj = dctx.decompressobj()
        out = obj.decompress(data[pos:])
        if not obj.eof:
            raise CorruptRecord(pos, "truncated zstd frame")
        length = len(data) - pos - len(obj.unused_data)
        yield pos, length, out
        pos += length


class EventStore:
    """A segmented, checksummed, indexed event log with projections. Thread-safe.

    ``on_durable(seq)`` (optional) is called on the writer thread after each group commit.
    Sealing and snapshots run on a maintenance thread after commits; retention runs there every
    ``retention_every_s`` and on ``apply_retention``.
    """

    def __init__(self, directory: str, *, segment_bytes: int = 16 << 20, snapshot_every: int = 50_000,
                 retain_ms: int | None = 30 * 24 * 3600 * 1000, retain_bytes: int | None = 4 << 30,
                 zstd_level: int = 3, fsync: bool = True, retention_every_s: float = 60.0,
                 on_durable: Callable[[int], None] | None = None, group_window_s: float = 0.0) -> None:
        if not 4096 <= segment_bytes <= 1 << 30:
            raise ValueError("segment_bytes must be 4 KiB .. 1 GiB")
        self.dir = os.path.abspath(directory)
        self.segment_bytes = segment_bytes
        self.snapshot_every = max(1, snapshot_every)
        self.retain_ms = retain_ms
        self.retain_bytes = retain_bytes
        self.fsync = fsync
        self.retention_every_s = retention_every_s
        self.on_durable = on_durable
        # How long the writer lets a group gather before it syncs, unless someone waits for it.
        self.group_window_s = group_window_s
        self._urgent = 0
        self._cctx = zstandard.ZstdCompressor(level=zstd_level, write_checksum=True)
        self._dctx = zstandard.ZstdDecompressor()
        # Segments, index and projections: readers and the writer's publish step. Never taken by
        # append, so a slow reader cannot stall the Raft tick thread.
        self._lock = threading.RLock()
        # Sealing, snapshots and retention (the writer thread, or a caller of apply_retention).
        self._maint = threading.Lock()
        # The buffer between append and the writer, and durable_seq for flush waiters.
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[Any] = []
        self._accepted = 0
        self.durable_seq = 0
        self._settled_seq = 0  # durable, and the sealing and snapshot it caused are done
        self.commits = 0  # group commits (one fdatasync per segment written)
        self.appended = 0  # events accepted by append since this store was opened
        # Told the seconds each group commit took to write and fdatasync (a metric); writer thread.
        self.on_commit: Callable[[float], None] | None = None
        self._closing = False
        self._stopped = False
        self.error: str | None = None
        self._segments: list[_Segment] = []
        self._by_no: dict[int, _Segment] = {}
        self._index: dict[str, array[int]] = {}
        self._gaps: list[list[int]] = []
        self._proj = Projections()
        self._snap_seq = 0
        self._snap_due = False
        self._blocks: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self.open_stats: dict[str, Any] = {}
        os.makedirs(self.dir, exist_ok=True)
        t0 = time.perf_counter()
        self._open()
        self.open_stats["open_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        self._accepted = self._settled_seq = self.durable_seq
        self._maint_cond = threading.Condition(threading.Lock())
        self._maint_wanted = False
        self._maint_stop = False
        self._writer = threading.Thread(target=self._run, name="eventstore-writer", daemon=True)
        self._writer.start()
        self._maintainer = threading.Thread(target=self._maintain_loop, name="eventstore-maintenance",
                                            daemon=True)
        self._maintainer.start()

    # ------------------------------------------------------------------ appending (any thread)

    def append(self, events: list[dict[str, Any]],
               live: Callable[[], dict[str, Any] | None] | None = None) -> int:
        """Buffer ``events`` (in seq order) for the writer; returns how many were new.

        Cheap: no I/O, no encoding. Events at or below the last accepted seq are ignored (a
        replay). ``live()`` is called only when the events jump over missing ones: it returns
        ``{"packs": {name: {"state", "node"}}, "nodes": {id: state}}`` as of the last of
        ``events``, and the projections are re-based on it (the gap itself stays recorded).
        """
        if not events:
            return 0
        with self._cond:
            if self._closing:
                return 0
            accepted = self._accepted
            new = events if events[0]["seq"] > accepted else [e for e in events if e["seq"] > accepted]
            if not new:
                return 0
            gap = new[0]["seq"] > accepted + 1
            self._pending.extend(new)
            self._accepted = new[-1]["seq"]
            self.appended += len(new)
            if gap and live is not None:
                try:
                    view = live()
                except Exception:  # the re-base is a bonus; it must never cost the events
                    log.exception("event store: live view for a re-base failed")
                    view = None
                if view is not None:
                    self._pending.append(_Rebase(new[-1]["seq"], view))
            self._cond.notify_all()
        return len(new)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything appended so far is durable; False on timeout."""
        with self._cond:
            target = self._accepted
        return self.wait_durable(target, timeout)

    def wait_durable(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until events up to ``seq`` are durable; False on timeout or when closed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self.durable_seq < seq and not self._stopped:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
                return self.durable_seq >= seq
            finally:
                self._urgent -= 1

    def settle(self, timeout: float | None = None) -> bool:
        """``flush``, then wait until the sealing and snapshots that the writes caused are done too."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            while self._settled_seq < target and not self._stopped:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return self._settled_seq >= target

    def last_seq(self) -> int:
        """The last durable event's sequence number (0 when empty)."""
        return self.durable_seq

    def accepted_seq(self) -> int:
        """The last event handed to ``append`` (durable or still buffered)."""
        with self._cond:
            return self._accepted

    def close(self) -> None:
        """Write what is buffered, finish sealing, snapshot the projections, close the files."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._writer.join()
        with self._maint_cond:
            self._maint_stop = True
            self._maint_cond.notify_all()
        self._maintainer.join()
        with self._maint:
            if self._proj.seq > self._snap_seq:
                try:
                    self._write_snapshot()
                except OSError:
                    log.exception("event store: snapshot on close failed")
        with self._lock:
            for seg in self._segments:
                self._close_fds(seg)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self.group_window_s and not self._closing and not self._urgent:
                    self._cond.wait(self.group_window_s)  # woken early when a reader waits
                batch, self._pending = self._pending, []
                closing = self._closing
            # Huge backlogs go in groups: each is written, fsync'ed and acknowledged in turn, which
            # keeps the lock holds of publishing short and the memory of one write bounded.
            for i in range(0, len(batch), MAX_GROUP):
                try:
                    self._commit(batch[i:i + MAX_GROUP])
                except Exception:
                    log.exception("event store: commit failed")
            if closing:
                with self._cond:
                    if not self._pending:
                        return

    def _commit(self, batch: list[Any]) -> None:
        """Write ``batch`` durably (retrying on I/O errors), publish it, acknowledge it."""
        while True:
            try:
                t0 = time.monotonic()
                chunks = self._write(batch)
                if self.on_commit is not None:
                    self.on_commit(time.monotonic() - t0)
                break
            except OSError as e:
                # Nothing is acknowledged before fsync succeeds: cut what was half written, retry.
                self.error = f"{type(e).__name__}: {e}"
                log.error("event store: write failed (%s); retrying", self.error)
                with self._lock:
                    for seg in self._segments:
                        if not seg.sealed and seg.wfd >= 0:
                            try:
                                os.ftruncate(seg.wfd, seg.size)
                            except OSError:
                                pass
                if self._closing:
                    return
                time.sleep(0.5)
        self.error = None
        self.commits += 1
        last = self._publish(batch, chunks)
        if self._snap_due:
            # A re-base is only as good as its snapshot: write it before acknowledging the batch.
            with self._maint:
                self._write_snapshot()
        with self._cond:
            self.durable_seq = last
            self._cond.notify_all()
        if self.on_durable is not None:
            try:
                self.on_durable(last)
            except Exception:
                log.exception("event store: on_durable callback failed")
        with self._maint_cond:
            self._maint_wanted = True
            self._maint_cond.notify_all()

    # ------------------------------------------------------------------ the maintenance thread

    def _maintain_loop(self) -> None:
        """Seal full segments, write snapshots, apply retention: off the writer's path, so that a
        16 MiB compression never delays an acknowledgment (zstd runs without the GIL)."""
        next_retention = time.monotonic() + self.retention_every_s
        while True:
            with self._maint_cond:
                while not self._maint_wanted and not self._maint_stop and time.monotonic() < next_retention:
                    self._maint_cond.wait(timeout=max(0.01, next_retention - time.monotonic()))
                wanted, self._maint_wanted = self._maint_wanted, False
                stop = self._maint_stop
            if wanted or stop:
                target = self.durable_seq
                try:
                    self._maintain()
                except Exception:
                    log.exception("event store: sealing or snapshot failed")
                with self._cond:
                    self._settled_seq = max(self._settled_seq, target)
                    self._cond.notify_all()
            if stop:
                return
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self.retention_every_s
                try:
                    self.apply_retention()
                except Exception:
                    log.exception("event store: retention failed")

    def _maintain(self) -> None:
        with self._maint:
            # Only segments the writer has finished publishing: one it has just rolled away from
            # may still be receiving its last records' index entries.
            for seg in [s for s in self._segments[:-1] if s.full and not s.sealed]:
                self._seal(seg)
            # A snapshot costs in proportion to the packs, a replay on start to the events since
            # the last one: with many packs, snapshot less often.
            every = max(self.snapshot_every, len(self._proj.packs))
            if self._proj.seq - self._snap_seq >= every:
                self._write_snapshot()

    def _write(self, batch: list[Any]) -> list[tuple[_Segment, list[int], int]]:
        """Encode and write the events of ``batch``, rolling segments at ``segment_bytes``.

        Returns, per segment written, the raw offset of each record and the new end.
        """
        seg = self._segments[-1]
        size = seg.size
        chunks: list[tuple[_Segment, list[int], int]] = []
        recs: list[bytes] = []
        offsets: list[int] = []
        for item in batch:
            if isinstance(item, _Rebase):
                continue
            rec = encode_record(item)
            if size >= self.segment_bytes and (recs or seg.count):
                self._write_out(seg, recs)
                chunks.append((seg, offsets, size))
                seg = self._new_segment(seg.no + 1)
                size, recs, offsets = 0, [], []
            offsets.append(size)
            recs.append(rec)
            size += len(rec)
        self._write_out(seg, recs)
        chunks.append((seg, offsets, size))
        return chunks

    def _write_out(self, seg: _Segment, recs: list[bytes]) -> None:
        if not recs:
            return
        view = memoryview(b"".join(recs))
        while view:
            n = os.write(seg.wfd, view)
            view = view[n:]
        if self.fsync:
            os.fdatasync(seg.wfd)

    def _publish(self, batch: list[Any], chunks: list[tuple[_Segment, list[int], int]]) -> int:
        places = ((seg, off) for seg, offsets, _ in chunks for off in offsets)
        index_event = self._index_event
        index = self._index
        with self._lock:
            last = self.durable_seq
            apply = self._proj.apply
            for item in batch:
                if item.__class__ is _Rebase:
                    self._proj = Projections.from_live(item.seq, item.view.get("packs", {}),
                                                       item.view.get("nodes", {}))
                    apply = self._proj.apply
                    self._snap_due = True
                    log.warning("event store: events missing before seq %d; projections re-based on the "
                                "live state", item.seq)
                    continue
                seg, off = next(places)
                if index_event(seg, off, item, last, index) is not None:
                    self._gaps.append(seg.gaps[-1])
                last = item["seq"]
                apply(item)
            for seg, _, end in chunks:
                seg.size = seg.disk_bytes = end
            for seg in self._segments[:-1]:  # the writer only ever writes the last one
                seg.full = True
        return last

    @staticmethod
    def _index_event(seg: _Segment, off: int, ev: dict[str, Any], prev: int,
                     index: dict[str, array[int]] | None) -> list[int] | None:
        """Account one record at ``off`` of ``seg``: blocks, time range, pack offsets (and the
        global ``index`` when given); returns the gap before it, if any."""
        seq = ev["seq"]
        gap = None
        if seq > prev + 1:
            gap = [prev + 1, seq - 1]
            seg.gaps.append(gap)
        at = ev.get("at", 0)
        if at.__class__ is not int:
            at = 0
        if seg.count == 0:
            seg.first_seq, seg.first_at = seq, at
        if not seg.block_raw or off - seg.block_raw[-1] >= BLOCK_BYTES:
            seg.block_raw.append(off)
            seg.block_seq.append(seq)
        seg.last_seq = seq
        if at > seg.last_at:
            seg.last_at = at
        seg.count += 1
        pack = ev.get("pack")
        if isinstance(pack, str):
            if index is not None:
                arr = index.get(pack)
                if arr is None:
                    arr = index[pack] = array("Q")
                arr.append(seg.no << OFFSET_BITS | off)
            if seg.packs is not None:
                seg.packs.setdefault(pack, []).append(off)
        return gap

    # ------------------------------------------------------------------ files

    def _path(self, no: int, ext: str) -> str:
        return os.path.join(self.dir, f"seg-{no:08d}.{ext}")

    def _new_segment(self, no: int) -> _Segment:
        seg = _Segment(no)
        path = self._path(no, "log")
        seg.wfd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        seg.rfd = os.open(path, os.O_RDONLY)
        _fsync_dir(self.dir)
        with self._lock:
            self._segments.append(seg)
            self._by_no[no] = seg
        return seg

    @staticmethod
    def _close_fds(seg: _Segment) -> None:
        for fd in (seg.rfd, seg.wfd):
            if fd >= 0:
                os.close(fd)
        seg.rfd = seg.wfd = -1

    def _seal(self, seg: _Segment) -> None:
        """Compress a full segment into blocks, write its index, then drop the .log."""
        raw = os.pread(seg.rfd, seg.size, 0) if seg.size else b""
        frames, comp, off = [], [], 0
        for i, start in enumerate(seg.block_raw):
            end = seg.block_raw[i + 1] if i + 1 < len(seg.block_raw) else seg.size
            frame = self._cctx.compress(raw[start:end])
            frames.append(frame)
            comp.append((off, len(frame)))
            off += len(frame)
        idx = {"version": 1, "no": seg.no, "first_seq": seg.first_seq, "last_seq": seg.last_seq,
               "first_at": seg.first_at, "last_at": seg.last_at, "count": seg.count, "raw_bytes": seg.size,
               "blocks": [[r, s, c[0], c[1]] for r, s, c in zip(seg.block_raw, seg.block_seq, comp)],
               "gaps": seg.gaps, "packs": seg.packs or {}}
        idx_bytes = self._cctx.compress(encode_big(idx))
        _write_file(self._path(seg.no, "idx"), idx_bytes)
        _write_file(self._path(seg.no, "zst"), b"".join(frames))
        _fsync_dir(self.dir)
        rfd = os.open(self._path(seg.no, "zst"), os.O_RDONLY)
        with self._lock:
            self._close_fds(seg)
            seg.rfd = rfd
            seg.sealed = True
            seg.block_comp = comp
            seg.packs = None
            seg.disk_bytes = off + len(idx_bytes)
        os.unlink(self._path(seg.no, "log"))
        _fsync_dir(self.dir)

    def _snapshots(self) -> list[int]:
        return sorted(int(m.group(1)) for m in map(SNAP_RE.match, os.listdir(self.dir)) if m)

    def _snap_path(self, seq: int) -> str:
        return os.path.join(self.dir, f"snap-{seq:020d}.zst")

    def _write_snapshot(self) -> None:
        with self._lock:  # shallow copies only: the writer waits for this lock to publish
            proj = self._proj
            seq, packs, nodes = proj.seq, dict(proj.packs), dict(proj.nodes)
        doc = _doc(seq, packs, nodes)
        _write_file(self._snap_path(doc["seq"]), self._cctx.compress(encode_big(doc)))
        _fsync_dir(self.dir)
        self._snap_seq = doc["seq"]
        self._snap_due = False
        for old in self._snapshots()[:-SNAPSHOTS_KEPT]:
            os.unlink(self._snap_path(old))

    def _read_snapshot(self, seq: int) -> Projections:
        with open(self._snap_path(seq), "rb") as f:
            return Projections.from_doc(json.loads(self._dctx.decompress(f.read())))

    # ------------------------------------------------------------------ opening and recovery

    def _open(self) -> None:
        found: dict[int, set[str]] = {}
        for name in os.listdir(self.dir):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.dir, name))  # an unfinished seal or snapshot
                continue
            m = SEG_RE.match(name)
            if m:
                found.setdefault(int(m.group(1)), set()).add(m.group(2))
        truncated = 0
        for no in sorted(found):
            exts = found[no]
            if "log" in exts:
                # An interrupted seal: the .log is the truth, a .zst/.idx beside it may be partial.
                for ext in ("zst", "idx"):
                    if ext in exts:
                        os.unlink(self._path(no, ext))
                seg, cut = self._load_log(no)
                truncated += cut
            elif "zst" in exts:
                seg = self._load_sealed(no, "idx" in exts)
            else:
                os.unlink(self._path(no, "idx"))
                continue
            if seg is None:
                continue
            self._segments.append(seg)
            self._by_no[no] = seg
        for seg in [s for s in self._segments[:-1] if not s.sealed]:
            seg.full = True
            self._seal(seg)
        if not self._segments or self._segments[-1].sealed:
            self._new_segment(self._segments[-1].no + 1 if self._segments else 1)
        self.durable_seq = max((s.last_seq for s in self._segments), default=0)
        self.open_stats.update(segments=len(self._segments), truncated_bytes=truncated)
        self._load_projections()

    def _load_log(self, no: int) -> tuple[_Segment, int]:
        """Scan a .log, index it, and cut it at the first torn or corrupt record."""
        seg = _Segment(no)
        path = self._path(no, "log")
        with open(path, "rb") as f:
            data = f.read()
        prev = max((s.last_seq for s in self._segments), default=0)
        pos = 0
        cut = 0
        while pos < len(data):
            try:
                ev, end = decode_record(data, pos)
                if ev["seq"] <= prev:
                    raise CorruptRecord(pos, f"sequence {ev['seq']} after {prev}")
            except CorruptRecord as e:
                cut = len(data) - pos
                log.warning("event store: %s: %s; dropping the last %d bytes", os.path.basename(path), e, cut)
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, pos)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                break
            self._index_event(seg, pos, ev, prev, self._index)
            prev = ev["seq"]
            pos = end
        self._gaps.extend(seg.gaps)
        seg.size = seg.disk_bytes = pos
        seg.wfd = os.open(path, os.O_WRONLY | os.O_APPEND)
        seg.rfd = os.open(path, os.O_RDONLY)
        return seg, cut

    def _load_sealed(self, no: int, has_idx: bool) -> _Segment | None:
        doc = None
        if has_idx:
            try:
                with open(self._path(no, "idx"), "rb") as f:
                    doc = json.loads(self._dctx.decompress(f.read()))
                if doc.get("version") != 1 or doc.get("no") != no:
                    doc = None
            except (OSError, ValueError, zstandard.ZstdError):
                doc = None
        if doc is None:
            try:
                doc = self._rebuild_idx(no)
            except (OSError, ValueError, zstandard.ZstdError, CorruptRecord) as e:
                # Damage on disk after the seal was fsync'ed: keep the file aside, record the loss.
                log.error("event store: sealed segment %d is unreadable (%s); moved aside", no, e)
                os.replace(self._path(no, "zst"), self._path(no, "zst") + ".corrupt")
                return None
        seg = _Segment(no)
        seg.sealed = seg.full = True
        seg.packs = None
        seg.first_seq, seg.last_seq = doc["first_seq"], doc["last_seq"]
        seg.first_at, seg.last_at, seg.count = doc["first_at"], doc["last_at"], doc["count"]
        seg.size = doc["raw_bytes"]
        seg.block_raw = [b[0] for b in doc["blocks"]]
        seg.block_seq = [b[1] for b in doc["blocks"]]
        seg.block_comp = [(b[2], b[3]) for b in doc["blocks"]]
        seg.gaps = doc["gaps"]
        prev = max((s.last_seq for s in self._segments), default=0)
        if prev and seg.count and seg.first_seq > prev + 1 and not any(g[0] == prev + 1 for g in seg.gaps):
            seg.gaps.insert(0, [prev + 1, seg.first_seq - 1])  # a segment lost between them
        self._gaps.extend(seg.gaps)
        base = no << OFFSET_BITS
        index = self._index
        for pack, offs in doc["packs"].items():
            arr = index.get(pack)
            if arr is None:
                arr = index[pack] = array("Q")
            arr.extend([base | o for o in offs])
        seg.rfd = os.open(self._path(no, "zst"), os.O_RDONLY)
        seg.disk_bytes = os.fstat(seg.rfd).st_size + (os.path.getsize(self._path(no, "idx")))
        return seg

    def _rebuild_idx(self, no: int) -> dict[str, Any]:
        """Re-create a lost .idx from its .zst (each frame is one block)."""
        with open(self._path(no, "zst"), "rb") as f:
            data = f.read()
        seg = _Segment(no)
        prev = max((s.last_seq for s in self._segments), default=0)
        raw_off = 0
        blocks = []
        for comp_off, comp_len, raw in _frames(data, self._dctx):
            pos = 0
            first = None
            while pos < len(raw):
                ev, end = decode_record(raw, pos)
                if first is None:
                    first = ev["seq"]
                # Blocks are cut where the writer cut them; only the index and ranges are recomputed.
                self._index_event(seg, raw_off + pos, ev, prev, None)
                prev = ev["seq"]
                pos = end
            blocks.append([raw_off, first or 0, comp_off, comp_len])
            raw_off += len(raw)
        doc = {"version": 1, "no": no, "first_seq": seg.first_seq, "last_seq": seg.last_seq,
               "first_at": seg.first_at, "last_at": seg.last_at, "count": seg.count, "raw_bytes": raw_off,
               "blocks": blocks, "gaps": seg.gaps, "packs": seg.packs or {}}
        _write_file(self._path(no, "idx"), self._cctx.compress(encode_big(doc)))
        _fsync_dir(self.dir)
        return doc

    def _load_projections(self) -> None:
        """Projections = the newest usable snapshot + the events after it."""
        proj = None
        for seq in reversed(self._snapshots()):
            if seq > self.durable_seq or seq < self._retained_from() - 1:
                continue  # ahead of a log cut short by damage, or behind what retention kept
            try:
                proj = self._read_snapshot(seq)
                break
            except (OSError, ValueError, KeyError, TypeError, zstandard.ZstdError) as e:
                log.warning("event store: snapshot %d unreadable (%s); trying an older one", seq, e)
        if proj is None:
            proj = Projections()
        self._snap_seq = proj.seq
        replayed = 0
        for ev in self._scan(proj.seq):
            proj.apply(ev)
            replayed += 1
        self._proj = proj
        self.open_stats.update(snapshot_seq=self._snap_seq, replayed=replayed)

    def _retained_from(self) -> int:
        """The first seq still on disk; 1 unless retention removed segments (numbering starts at 1)."""
        with self._lock:
            if not self._segments or self._segments[0].no == 1:
                return 1
            first = next((s for s in self._segments if s.count), None)
            return first.first_seq if first is not None else self.durable_seq + 1

    # ------------------------------------------------------------------ reading

    def _block(self, seg: _Segment, i: int, end: int | None = None) -> bytes:
        """The raw bytes of block ``i`` of ``seg`` (up to ``end`` for the active one). Under _lock."""
        if seg.sealed:
            key = (seg.no, i)
            data = self._blocks.get(key)
            if data is None:
                off, length = seg.block_comp[i]
                data = self._dctx.decompress(os.pread(seg.rfd, length, off))
                self._blocks[key] = data
                if len(self._blocks) > BLOCK_CACHE:
                    self._blocks.popitem(last=False)
            else:
                self._blocks.move_to_end(key)
            if end is not None and seg.block_raw[i] + len(data) > end:
                data = data[:max(0, end - seg.block_raw[i])]
            return data
        start = seg.block_raw[i]
        stop = seg.block_raw[i + 1] if i + 1 < len(seg.block_raw) else seg.size
        if end is not None:
            stop = min(stop, end)
        return os.pread(seg.rfd, max(0, stop - start), start)

    def _read_at(self, pos: int) -> dict[str, Any] | None:
        """The event at index position ``pos``; None when retention removed it. Under _lock."""
        seg = self._by_no.get(pos >> OFFSET_BITS)
        if seg is None:
            return None
        off = pos & OFFSET_MASK
        if seg.sealed:
            i = bisect.bisect_right(seg.block_raw, off) - 1
            return decode_record(self._block(seg, i), off - seg.block_raw[i])[0]
        buf = os.pread(seg.rfd, 512, off)
        if len(buf) >= HEADER.size:
            need = HEADER.size + HEADER.unpack_from(buf, 0)[0]
            if need > len(buf):
                buf += os.pread(seg.rfd, need - len(buf), off + len(buf))
        return decode_record(buf, 0)[0]

    def _scan(self, after_seq: int = 0, upto_seq: int | None = None) -> Iterator[dict[str, Any]]:
        """Every event with after_seq < seq (<= upto_seq), in order, as of the call.

        The lock is held per block, not for the whole scan, so the writer keeps publishing.
        """
        with self._lock:
            plan = [(s.no, s.size) for s in self._segments if s.count and s.last_seq > after_seq
                    and (upto_seq is None or s.first_seq <= upto_seq)]
        for no, end in plan:
            i = -1
            while True:
                with self._lock:
                    seg = self._by_no.get(no)
                    if seg is None:
                        break
                    if i < 0:
                        i = max(0, bisect.bisect_right(seg.block_seq, after_seq + 1) - 1)
                    if i >= len(seg.block_raw) or seg.block_raw[i] >= end:
                        break
                    data = self._block(seg, i, end)
                for _, ev in iter_records(data):
                    seq = ev["seq"]
                    if upto_seq is not None and seq > upto_seq:
                        return
                    if seq > after_seq:
                        yield ev
                i += 1

    def _scan_back(self) -> Iterator[dict[str, Any]]:
        """Every event, newest first, as of the call."""
        with self._lock:
            plan = [(s.no, s.size) for s in reversed(self._segments) if s.count]
        for no, end in plan:
            i = None
            while True:
                with self._lock:
                    seg = self._by_no.get(no)
                    if seg is None:
                        break
                    if i is None:
                        i = bisect.bisect_left(seg.block_raw, end) - 1
                    if i < 0:
                        break
                    data = self._block(seg, i, end)
                yield from reversed([ev for _, ev in iter_records(data)])
                i -= 1

    def knows(self, pack: str) -> bool:
        """Whether the history mentions ``pack`` (retained events or the projections)."""
        with self._lock:
            return pack in self._index or pack in self._proj.packs

    def pack_history(self, pack: str, since_ms: int | None = None) -> list[dict[str, Any]]:
        """The retained events of one pack, oldest first (only ``at >= since_ms`` if given)."""
        out = []
        with self._lock:
            for pos in self._index.get(pack, ()):
                ev = self._read_at(pos)
                if ev is not None and (since_ms is None or ev.get("at", 0) >= since_ms):
                    out.append(ev)
        return out

    def tail(self, after_seq: int = 0, pack: str | None = None, node: str | None = None,
             type: str | Iterable[str] | None = None, limit: int = 1000,
             last: int | None = None) -> list[dict[str, Any]]:
        """Events matching the filters, oldest first: those after ``after_seq`` (at most ``limit``),
        or with ``last`` the newest ``last`` ones. ``node`` also matches a move away from it;
        ``type`` is one type, a comma-separated list or an iterable of types."""
        types = None
        if type is not None:
            types = set(type.split(",")) if isinstance(type, str) else set(type)

        def match(ev: dict[str, Any]) -> bool:
            if types is not None and ev.get("type") not in types:
                return False
            if pack is not None and ev.get("pack") != pack:
                return False
            if node is not None and ev.get("node") != node and (ev.get("detail") or {}).get("source") != node:
                return False
            return True

        out: list[dict[str, Any]] = []
        if pack is not None:
            with self._lock:
                positions = self._index.get(pack, array("Q"))
                seq_of = {no: s.last_seq for no, s in self._by_no.items()}
                order = reversed(positions) if last is not None else iter(positions)
                for pos in order:
                    if last is None and seq_of.get(pos >> OFFSET_BITS, 0) <= after_seq:
                        continue
                    ev = self._read_at(pos)
                    if ev is None or (last is None and ev["seq"] <= after_seq) or not match(ev):
                        continue
                    out.append(ev)
                    if len(out) >= (last if last is not None else limit):
                        break
            return out[::-1] if last is not None else out
        if last is not None:
            for ev in self._scan_back():
                if match(ev):
                    out.append(ev)
                    if len(out) >= last:
                        break
            return out[::-1]
        for ev in self._scan(after_seq):
            if match(ev):
                out.append(ev)
                if len(out) >= limit:
                    break
        return out

    def gaps(self, after_seq: int = 0, upto_seq: int | None = None) -> list[list[int]]:
        """Ranges of seq numbers this store never received (overlapping the given range)."""
        with self._lock:
            return [list(g) for g in self._gaps
                    if g[1] > after_seq and (upto_seq is None or g[0] <= upto_seq)]

    def retained_from(self) -> int:
        return self._retained_from()

    def projections(self, pack: str | None = None) -> dict[str, Any]:
        """The maintained projections: ``{"seq", "packs": {name: {"state", "node"}},
        "nodes": {id: {"state", "packs"}}}`` (packs per node: those holding a reservation)."""
        with self._lock:
            return self._proj.view(pack)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            segs = [s.meta() for s in self._segments]
            return {"last_seq": self.durable_seq, "retained_from": self._retained_from(),
                    "events": sum(s["events"] for s in segs), "segments": len(segs),
                    "sealed": sum(1 for s in segs if s["sealed"]),
                    "raw_bytes": sum(s["raw_bytes"] for s in segs),
                    "disk_bytes": sum(s["disk_bytes"] for s in segs),
                    "packs_indexed": len(self._index), "gaps": [list(g) for g in self._gaps],
                    "snapshot_seq": self._snap_seq, "projection_seq": self._proj.seq, "commits": self.commits,
                    "error": self.error, "open": dict(self.open_stats), "segment_list": segs}

    # ------------------------------------------------------------------ verification

    def verify(self, live: dict[str, dict[str, Any]], live_nodes: dict[str, str] | None = None,
               upto_seq: int | None = None, full: bool = False, pack: str | None = None) -> list[str]:
        """Differences between the live state and projections rebuilt from the log (empty: agree)."""
        return self.verify_report(live, live_nodes, upto_seq, full, pack)["differences"]  # type: ignore[no-any-return]

    def verify_report(self, live: dict[str, dict[str, Any]], live_nodes: dict[str, str] | None = None,
                      upto_seq: int | None = None, full: bool = False, pack: str | None = None
                      ) -> dict[str, Any]:
        """Check every record (checksums, order, index), rebuild the projections up to
        ``upto_seq`` (default: the last durable event) from the newest snapshot at or below it
        (``full``: from the first event, when retention has removed nothing) and compare them with
        ``live`` (``{pack: {"state", "node"}}``) and ``live_nodes`` (``{node: state}``)."""
        upto = self.durable_seq if upto_seq is None else upto_seq
        differences: list[str] = []
        notes: list[str] = []
        retained_from = self._retained_from()
        base: Projections | None = None
        base_name = "the first event"
        if not (full and retained_from <= 1):
            if full:
                notes.append(f"events before seq {retained_from} were removed by retention: replayed from "
                             "a snapshot")
            for seq in reversed(self._snapshots()):
                if retained_from - 1 <= seq <= upto:
                    try:
                        base = self._read_snapshot(seq)
                        base_name = f"snapshot {seq}"
                        break
                    except (OSError, ValueError, KeyError, TypeError, zstandard.ZstdError) as e:
                        differences.append(f"snapshot {seq} is unreadable: {e}")
            if base is None and retained_from > 1:
                differences.append(f"no snapshot covers the events removed before seq {retained_from}")
        proj = base or Projections()
        replayed = checked = 0
        per_pack: dict[str, int] = {}
        prev = 0
        with self._lock:
            plan = [(s.no, s.size, s.sealed, len(s.block_raw)) for s in self._segments]
        vanished = False
        for no, end, sealed, nblocks in plan:
            for i in range(nblocks):
                with self._lock:
                    seg = self._by_no.get(no)
                    if seg is None:
                        vanished = True  # removed by retention while we read
                        break
                    if seg.block_raw[i] >= end:
                        break
                    try:
                        data = self._block(seg, i, end)
                    except (OSError, zstandard.ZstdError) as e:
                        differences.append(f"segment {no} block {i}: unreadable: {e}")
                        continue
                    block_start = seg.block_raw[i]
                    block_seq = seg.block_seq[i]
                try:
                    for off, ev in iter_records(data):
                        seq = ev["seq"]
                        if off == 0 and seq != block_seq:
                            differences.append(f"segment {no} block {i}: starts at seq {seq}, its index says "
                                               f"{block_seq}")
                        if seq <= prev:
                            differences.append(f"segment {no} offset {block_start + off}: seq {seq} "
                                               f"after {prev}")
                        prev = seq
                        checked += 1
                        if isinstance(ev.get("pack"), str):
                            per_pack[ev["pack"]] = per_pack.get(ev["pack"], 0) + 1
                        if proj.seq < seq <= upto:
                            proj.apply(ev)
                            replayed += 1
                except CorruptRecord as e:
                    differences.append(f"segment {no} block {i}: {e}")
        ends = {no: end for no, end, _, _ in plan}
        with self._lock:
            # Only positions inside what was scanned: the writer may have appended since.
            for name in [] if vanished else set(per_pack) | set(self._index):
                held = sum(1 for pos in self._index.get(name, ())
                           if (pos & OFFSET_MASK) < ends.get(pos >> OFFSET_BITS, -1))
                if held != per_pack.get(name, 0):
                    differences.append(f"index of pack {name}: {held} positions, the log has "
                                       f"{per_pack.get(name, 0)} records")
            gaps = [list(g) for g in self._gaps if g[0] <= upto]
        if proj.seq < upto and not any(g[1] >= upto for g in gaps):
            differences.append(f"the log ends at seq {proj.seq}, before seq {upto}")
        if gaps:
            notes.append("events never received: " + ", ".join(f"{a}..{b}" for a, b in gaps[:20]))
        differences.extend(_compare(proj, live, live_nodes, pack))
        return {"ok": not differences, "differences": differences[:1000],
                "difference_count": len(differences),
                "seq": upto, "base": base_name, "replayed": replayed, "records_checked": checked,
                "retained_from": retained_from, "gaps": gaps, "notes": notes,
                "packs": len(live) if pack is None else 1}

    # ------------------------------------------------------------------ retention

    def apply_retention(self, now_ms: int | None = None) -> dict[str, Any]:
        """Remove the oldest sealed segments that are older than ``retain_ms`` (by their newest
        event) or while the store exceeds ``retain_bytes``; never the active segment."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        with self._maint:
            with self._lock:
                total = sum(s.disk_bytes for s in self._segments)
                remove: list[_Segment] = []
                for seg in self._segments[:-1]:
                    if not seg.sealed:
                        break
                    too_old = self.retain_ms is not None and seg.last_at < now - self.retain_ms
                    too_big = self.retain_bytes is not None and total > self.retain_bytes
                    if not (too_old or too_big):
                        break
                    remove.append(seg)
                    total -= seg.disk_bytes
            if not remove:
                return {"removed_segments": 0, "removed_events": 0, "retained_from": self._retained_from()}
            last_removed = max(s.last_seq for s in remove)
            if self._snap_seq < last_removed:
                self._write_snapshot()  # the projections must not depend on what goes
            dropped: set[str] = set()
            for seg in remove:
                try:
                    with open(self._path(seg.no, "idx"), "rb") as f:
                        dropped.update(json.loads(self._dctx.decompress(f.read()))["packs"])
                except (OSError, ValueError, KeyError, zstandard.ZstdError):
                    dropped.update(self._index)  # slower, same result
            limit = (max(s.no for s in remove) + 1) << OFFSET_BITS
            with self._lock:
                for seg in remove:
                    self._segments.remove(seg)
                    del self._by_no[seg.no]
                    self._close_fds(seg)
                for key in [k for k in self._blocks if k[0] < limit >> OFFSET_BITS]:
                    del self._blocks[key]
                for name in dropped:
                    arr = self._index.get(name)
                    if arr is None:
                        continue
                    del arr[:bisect.bisect_left(arr, limit)]
                    if not arr:
                        del self._index[name]
                first = self._retained_from()
                self._gaps = [g for g in self._gaps if g[1] >= first]
            for seg in remove:
                for ext in ("zst", "idx"):
                    try:
                        os.unlink(self._path(seg.no, ext))
                    except FileNotFoundError:
                        pass
            _fsync_dir(self.dir)
            log.info("event store: retention removed %d segment(s), %d events", len(remove),
                     sum(s.count for s in remove))
            return {"removed_segments": len(remove), "removed_events": sum(s.count for s in remove),
                    "retained_from": first}


def _compare(proj: Projections, live: dict[str, dict[str, Any]], live_nodes: dict[str, str] | None,
             pack: str | None) -> list[str]:
    out = []
    names = [pack] if pack is not None else sorted(set(proj.packs) | set(live))
    for name in names:
        h = proj.packs.get(name)
        v = live.get(name)
        if h is None and v is None:
            continue
        if h is None:
            out.append(f"pack {name}: {v['state']} on {v.get('node') or '-'} in the live state, "  # type: ignore[index]
                       "absent from the history")
        elif v is None:
            out.append(f"pack {name}: {h[0]} on {h[1] or '-'} in the history, absent from the live state")
        elif h[0] != v["state"] or h[1] != v.get("node"):
            out.append(f"pack {name}: history says {h[0]} on {h[1] or '-'}, live state says {v['state']} "
                       f"on {v.get('node') or '-'}")
    if live_nodes is not None and pack is None:
        for node in sorted(set(proj.nodes) | set(live_nodes)):
            h_state, v_state = proj.nodes.get(node), live_nodes.get(node)
            if h_state != v_state:
                out.append(f"node {node}: history says {h_state or 'absent'}, "
                           f"live state says {v_state or 'absent'}")
    return out


__all__ = ["CorruptRecord", "EventStore", "Projections", "decode_record", "encode_record", "iter_records"]
