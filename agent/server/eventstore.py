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

The store by module: this one owns the writer (buffering, group commit, publishing) and opening
(recovery of torn tails, loading indexes); ``eventrecords`` the record format and durable-file
helpers; ``eventsegments`` the layout and the in-memory segment; ``eventprojections`` the
projections and their comparison with the live state; ``eventqueries`` (a base class) every read;
``eventmaintenance`` (a base class) sealing, snapshots and retention.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import zstandard

from canidae.agent.server.eventmaintenance import EventMaintenance
from canidae.agent.server.eventprojections import Projections
from canidae.agent.server.eventqueries import EventQueries
from canidae.agent.server.eventrecords import (
    CorruptRecord,
    decode_record,
    encode_big,
    encode_record,
    frames,
    fsync_dir,
    iter_records,
    write_file,
)
from canidae.agent.server.eventsegments import (
    BLOCK_BYTES,
    OFFSET_BITS,
    SEG_RE,
    Rebase,
    Segment,
)

log = logging.getLogger("canidae.eventstore")

MAX_GROUP = 20_000  # events per group commit at most



class EventStore(EventQueries, EventMaintenance):
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
        self._segments: list[Segment] = []
        self._by_no: dict[int, Segment] = {}
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
            # Only the first append of a group wakes the writer: it then gathers for
            # ``group_window_s``, and waking it again for each later append (every Raft entry
            # applied) cut that window short, making it one write and fdatasync per entry.
            wake = not self._pending
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
                    self._pending.append(Rebase(new[-1]["seq"], view))
            if wake:
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

    def __exit__(self, *exc: object) -> None:
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



    def _write(self, batch: list[Any]) -> list[tuple[Segment, list[int], int]]:
        """Encode and write the events of ``batch``, rolling segments at ``segment_bytes``.

        Returns, per segment written, the raw offset of each record and the new end.
        """
        seg = self._segments[-1]
        size = seg.size
        chunks: list[tuple[Segment, list[int], int]] = []
        recs: list[bytes] = []
        offsets: list[int] = []
        for item in batch:
            if isinstance(item, Rebase):
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

    def _write_out(self, seg: Segment, recs: list[bytes]) -> None:
        if not recs:
            return
        view = memoryview(b"".join(recs))
        while view:
            n = os.write(seg.wfd, view)
            view = view[n:]
        if self.fsync:
            os.fdatasync(seg.wfd)

    def _publish(self, batch: list[Any], chunks: list[tuple[Segment, list[int], int]]) -> int:
        places = ((seg, off) for seg, offsets, _ in chunks for off in offsets)
        index_event = self._index_event
        index = self._index
        with self._lock:
            last = self.durable_seq
            apply = self._proj.apply
            for item in batch:
                if item.__class__ is Rebase:
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
    def _index_event(seg: Segment, off: int, ev: dict[str, Any], prev: int,
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
        seg.last_at = max(seg.last_at, at)
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

    def _new_segment(self, no: int) -> Segment:
        seg = Segment(no)
        path = self._path(no, "log")
        seg.wfd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        seg.rfd = os.open(path, os.O_RDONLY)
        fsync_dir(self.dir)
        with self._lock:
            self._segments.append(seg)
            self._by_no[no] = seg
        return seg

    @staticmethod
    def _close_fds(seg: Segment) -> None:
        for fd in (seg.rfd, seg.wfd):
            if fd >= 0:
                os.close(fd)
        seg.rfd = seg.wfd = -1






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

    def _load_log(self, no: int) -> tuple[Segment, int]:
        """Scan a .log, index it, and cut it at the first torn or corrupt record."""
        seg = Segment(no)
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

    def _load_sealed(self, no: int, has_idx: bool) -> Segment | None:
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
        seg = Segment(no)
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
        seg = Segment(no)
        prev = max((s.last_seq for s in self._segments), default=0)
        raw_off = 0
        blocks = []
        for comp_off, comp_len, raw in frames(data, self._dctx):
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
        write_file(self._path(no, "idx"), self._cctx.compress(encode_big(doc)))
        fsync_dir(self.dir)
        return doc


__all__ = ["CorruptRecord", "EventStore", "Projections", "decode_record", "encode_record", "iter_records"]
