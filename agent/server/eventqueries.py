"""Reading the event store: per-pack history through the index, tails with filters, gaps,
projections, statistics and the comparison with the live state.

``EventQueries`` is a part of ``EventStore`` (its base class): it holds no state of its own and
reads the store's segments, index and projections under the store's lock, exactly as the writer
publishes them. A position is ``segment number << 32 | raw offset``: one ``pread`` in the active
segment, or one block decompression (cached) in a sealed one.
"""

from __future__ import annotations

import bisect
import os
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

import zstandard

from canidae.agent.server.eventprojections import Projections, compare
from canidae.agent.server.eventrecords import HEADER, CorruptRecord, decode_record, iter_records
from canidae.agent.server.eventsegments import (
    BLOCK_CACHE,
    OFFSET_BITS,
    OFFSET_MASK,
    Segment,
)


class EventQueries:
    """The read side of ``EventStore``: its methods use the store's attributes (segments, index,
    projections, lock), set up by ``EventStore.__init__``."""

    def _block(self, seg: Segment, i: int, end: int | None = None) -> bytes:
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
        differences.extend(compare(proj, live, live_nodes, pack))
        return {"ok": not differences, "differences": differences[:1000],
                "difference_count": len(differences),
                "seq": upto, "base": base_name, "replayed": replayed, "records_checked": checked,
                "retained_from": retained_from, "gaps": gaps, "notes": notes,
                "packs": len(live) if pack is None else 1}

    # ------------------------------------------------------------------ retention


__all__ = ["EventQueries"]
