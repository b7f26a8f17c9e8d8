"""The event store's record format and the durable-file helpers it writes with.

A record is ``u32 length | u32 crc32(payload) | payload`` (little endian), the payload being the
event as canonical JSON (sorted keys, no spaces, ASCII). ``decode_record`` refuses anything that
is not exactly that (short header, length past the end, checksum mismatch, unparsable JSON) with
``CorruptRecord`` naming the offset, which is how a torn tail is found and cut on start. Sealed
segments are zstd frames (``frames`` walks them). ``encode_big`` writes a large document (a
projections snapshot) without holding the GIL for one long stretch. See ``eventstore`` for the
files and how they are written and read.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import zstandard

HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
MAX_RECORD = 16 << 20

_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
try:
    # JSONEncoder.encode builds a new C encoder on every call; that alone was half the writer's time.
    from json.encoder import c_make_encoder as _c_make_encoder
    from json.encoder import encode_basestring_ascii as _ascii

    _c_encode = _c_make_encoder(None, _encoder.default, _ascii, None, ":", ",", True, False, True)

    def dumps(event: dict[str, Any]) -> str:
        return "".join(_c_encode(event, 0))
except (ImportError, TypeError):  # no C accelerator: the pure-Python encoder gives the same text
    dumps = _encoder.encode


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
            text = "[" + ",".join(dumps(v[i:i + SLICE])[1:-1] for i in range(0, len(v), SLICE)) + "]"
        elif isinstance(v, dict) and len(v) > SLICE:
            items = list(v.items())
            text = "{" + ",".join(dumps(dict(items[i:i + SLICE]))[1:-1]
                                  for i in range(0, len(items), SLICE)) + "}"
        else:
            text = dumps(v)
        parts.append(dumps(key) + ":" + text)
    return ("{" + ",".join(parts) + "}").encode()


def encode_record(event: dict[str, Any]) -> bytes:
    payload = dumps(event).encode()
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


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: temporary name, fsync, rename (the caller fsyncs the dir)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def frames(data: bytes, dctx: zstandard.ZstdDecompressor) -> Iterator[tuple[int, int, bytes]]:
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


__all__ = ["HEADER", "MAX_RECORD", "CorruptRecord", "decode_record", "dumps", "encode_big", "encode_record",
           "frames", "fsync_dir", "iter_records", "write_file"]
