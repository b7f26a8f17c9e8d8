"""The event store's segments: the on-disk layout's names and limits, and what the store keeps
in memory of each segment (``Segment``: its seq and time range, block table, per-pack offsets
while active, open files). Changed only under the store's lock. See ``eventstore`` for the files.
"""

from __future__ import annotations

import re
from typing import Any

BLOCK_BYTES = 64 << 10
OFFSET_BITS = 32
OFFSET_MASK = (1 << OFFSET_BITS) - 1
SEG_RE = re.compile(r"^seg-(\d{8})\.(log|zst|idx)$")
SNAP_RE = re.compile(r"^snap-(\d{20})\.zst$")
SNAPSHOTS_KEPT = 2
BLOCK_CACHE = 64

class Segment:
    """One segment's metadata and open files. Changed only under the store's lock."""

    __slots__ = (
        "block_comp",
        "block_raw",
        "block_seq",
        "count",
        "disk_bytes",
        "first_at",
        "first_seq",
        "full",
        "gaps",
        "last_at",
        "last_seq",
        "no",
        "packs",
        "rfd",
        "sealed",
        "size",
        "wfd",
    )

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


class Rebase:
    __slots__ = ("seq", "view")

    def __init__(self, seq: int, view: dict[str, Any]) -> None:
        self.seq = seq
        self.view = view


__all__ = ["BLOCK_BYTES", "BLOCK_CACHE", "OFFSET_BITS", "OFFSET_MASK", "SEG_RE", "SNAPSHOTS_KEPT", "SNAP_RE",
           "Rebase", "Segment"]
