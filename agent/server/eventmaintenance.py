"""Keeping the event store small and quick to open: sealing full segments (zstd blocks and an
index), projection snapshots, and retention by age and size.

``EventMaintenance`` is a part of ``EventStore`` (its base class), run on the store's maintenance
thread so compressing a segment never delays an acknowledgment. A seal writes the .zst and .idx to
temporary names, fsyncs them, renames them, fsyncs the directory and only then removes the .log;
retention removes whole sealed segments, oldest first, after a snapshot at or after the last
removed event, so the projections can always be rebuilt.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from typing import Any

import zstandard

from canidae.agent.server.eventprojections import Projections, projection_doc
from canidae.agent.server.eventrecords import encode_big, fsync_dir, write_file
from canidae.agent.server.eventsegments import (
    OFFSET_BITS,
    SNAP_RE,
    SNAPSHOTS_KEPT,
    Segment,
)

log = logging.getLogger("canidae.eventstore")


class EventMaintenance:
    """The maintenance side of ``EventStore``: its methods use the store's attributes (segments,
    snapshots, retention settings, lock), set up by ``EventStore.__init__``."""

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

    def _seal(self, seg: Segment) -> None:
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
        write_file(self._path(seg.no, "idx"), idx_bytes)
        write_file(self._path(seg.no, "zst"), b"".join(frames))
        fsync_dir(self.dir)
        rfd = os.open(self._path(seg.no, "zst"), os.O_RDONLY)
        with self._lock:
            self._close_fds(seg)
            seg.rfd = rfd
            seg.sealed = True
            seg.block_comp = comp
            seg.packs = None
            seg.disk_bytes = off + len(idx_bytes)
        os.unlink(self._path(seg.no, "log"))
        fsync_dir(self.dir)

    def _snapshots(self) -> list[int]:
        return sorted(int(m.group(1)) for m in map(SNAP_RE.match, os.listdir(self.dir)) if m)

    def _snap_path(self, seq: int) -> str:
        return os.path.join(self.dir, f"snap-{seq:020d}.zst")

    def _write_snapshot(self) -> None:
        with self._lock:  # shallow copies only: the writer waits for this lock to publish
            proj = self._proj
            seq, packs, nodes = proj.seq, dict(proj.packs), dict(proj.nodes)
        doc = projection_doc(seq, packs, nodes)
        write_file(self._snap_path(doc["seq"]), self._cctx.compress(encode_big(doc)))
        fsync_dir(self.dir)
        self._snap_seq = doc["seq"]
        self._snap_due = False
        for old in self._snapshots()[:-SNAPSHOTS_KEPT]:
            os.unlink(self._snap_path(old))

    def _read_snapshot(self, seq: int) -> Projections:
        with open(self._snap_path(seq), "rb") as f:
            return Projections.from_doc(json.loads(self._dctx.decompress(f.read())))

    # ------------------------------------------------------------------ opening and recovery

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

    def apply_retention(self, now_ms: int | None = None) -> dict[str, Any]:
        """Remove the oldest sealed segments that are older than ``retain_ms`` (by their newest
        event) or while the store exceeds ``retain_bytes``; never the active segment."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        with self._maint:
            with self._lock:
                total = sum(s.disk_bytes for s in self._segments)
                remove: list[Segment] = []
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
            fsync_dir(self.dir)
            log.info("event store: retention removed %d segment(s), %d events", len(remove),
                     sum(s.count for s in remove))
            return {"removed_segments": len(remove), "removed_events": sum(s.count for s in remove),
                    "retained_from": first}


__all__ = ["EventMaintenance"]
