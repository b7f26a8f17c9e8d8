"""Log files of exec pack members: lossless size rotation, tail and cursor reads.

Each member writes its stdout and stderr, interleaved in order, straight to ``member-<i>.log``
(opened ``O_APPEND`` by the agent and inherited by the member), so output keeps flowing while
the agent restarts, or is down: no process of ours stands between a member and its log.

Rotation takes the *head* of the live file away in place, never its tail, so that it loses
nothing the member writes meanwhile:

1. copy the oldest kept bytes of the live file, up to a point ``upto``, to ``member-<i>.log.1.tmp``
   and fsync it (the live file and the member are not touched);
2. shift the older copies up (``.1`` -> ``.2`` ... up to ``keep``) and rename the copy to ``.1``;
3. remove the copied range from the live file with ``fallocate``: ``FALLOC_FL_COLLAPSE_RANGE``
   (ext4, XFS) cuts it out and the file shrinks (``upto`` is then a multiple of the filesystem
   block, so a line may straddle ``.1`` and the live file); where the filesystem cannot collapse
   (tmpfs, btrfs, ...), ``FALLOC_FL_PUNCH_HOLE`` frees its blocks and the file keeps its size
   (``upto`` is then the end of a line, and the head of the file reads as zeros);
4. record the new positions in ``member-<i>.pos``.

Both fallocate calls take the inode lock that every write takes, and an ``O_APPEND`` write
finds the end of the file under that lock: a member's write lands wholly before a collapse
(past ``upto``: it stays) or wholly after it (at the new end). Nothing is lost or doubled.
Copy-then-truncate, what we did before, lost whatever the member wrote between the copy and
the truncation. Two other designs were weighed: a pipe from the member through the agent to the
file makes rotation trivial but ties the member to the agent (with the agent down the pipe
fills and the member blocks; a FIFO that a restarted agent reopens does not remove that), and a
log-shipping process per member costs a process per member. Where the filesystem supports
neither fallocate mode, rotation falls back on copy-then-truncate and says so in the agent log.

A reader's position is a *cursor*: the count of bytes the member has written since the log was
created. ``member-<i>.pos`` holds ``rotated`` (the cursor where the bytes kept in the live file
begin: everything before it went to ``.1`` and older copies) and ``shift`` (the cursor of the live
file's offset 0: collapses move it, punched holes do not). Readers and rotation take a lock per
member, so a reader never sees a collapse without the positions that go with it. If the agent
dies between steps 2 and 3, the copied range is in ``.1`` and still in the live file: it is
kept twice, and cursors past it are off by its length; nothing is lost.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import threading
from typing import Any

log = logging.getLogger("canidae.exec")

MAX_READ = 1 << 20
COPY_CHUNK = 1 << 20
LINE_LOOKBACK = 64 * 1024  # how far back from the end a rotation looks for the end of a line

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
METHODS = ("collapse", "punch")

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int

_no_collapse: set[int] = set()  # devices whose filesystem refused to collapse a range
_warned_lossy: set[str] = set()


class _Locks:
    __slots__ = ("rotating", "view")

    def __init__(self) -> None:
        self.rotating = threading.Lock()  # one rotation of a member's log at a time
        self.view = threading.Lock()      # the files and positions change together, under it


_locks: dict[str, _Locks] = {}
_locks_guard = threading.Lock()


def _locks_of(live: str) -> _Locks:
    with _locks_guard:
        got = _locks.get(live)
        if got is None:
            got = _locks[live] = _Locks()
        return got


def log_path(logs_dir: str, member: int) -> str:
    return os.path.join(logs_dir, f"member-{member}.log")


def open_for_member(logs_dir: str, member: int) -> int:
    """A write-only, append-mode descriptor for the member's stdout and stderr."""
    os.makedirs(logs_dir, mode=0o700, exist_ok=True)
    return os.open(log_path(logs_dir, member), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _pos_path(logs_dir: str, member: int) -> str:
    return os.path.join(logs_dir, f"member-{member}.pos")


def _positions(logs_dir: str, member: int) -> tuple[int, int]:
    """(rotated, shift): see the module docstring. A file from before ``shift`` existed was
    rotated by truncation: its live file began at ``rotated``."""
    try:
        with open(_pos_path(logs_dir, member)) as f:
            pos = json.load(f)
        rotated = int(pos["rotated"])
        return rotated, int(pos.get("shift", rotated))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0, 0


def _write_positions(logs_dir: str, member: int, rotated: int, shift: int) -> None:
    path = _pos_path(logs_dir, member)
    with open(path + ".tmp", "w") as f:
        json.dump({"rotated": rotated, "shift": shift}, f)
    os.replace(path + ".tmp", path)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _fallocate is None:
        raise OSError(errno.ENOSYS, "fallocate is not available")
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def needs_rotation(logs_dir: str, member: int, max_bytes: int) -> bool:
    """Whether the bytes kept in the member's live log passed ``max_bytes``."""
    rotated, shift = _positions(logs_dir, member)
    return shift + _size(log_path(logs_dir, member)) - rotated > max_bytes


def rotate_if_needed(logs_dir: str, member: int, max_bytes: int, keep: int,
                     methods: tuple[str, ...] = METHODS) -> bool:
    """Rotate the member's log when it grew past ``max_bytes``; True when it did.

    Blocking file work (a copy of up to the whole log and an fsync): call it off the event loop.
    ``methods`` are the fallocate modes to try, in order (tests narrow them).
    """
    live = log_path(logs_dir, member)
    locks = _locks_of(live)
    with locks.rotating:
        rotated, shift = _positions(logs_dir, member)
        try:
            fd = os.open(live, os.O_RDWR | os.O_CLOEXEC)  # never written through: the member appends
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            size = st.st_size
            if shift + size - rotated <= max_bytes:
                return False
            block = st.st_blksize or 4096
            collapse = "collapse" in methods and st.st_dev not in _no_collapse
            upto = shift + (size - 1) // block * block  # a collapse must end before the end of the file
            if not collapse or upto <= rotated:
                collapse = False
                upto = shift + _end_of_last_line(fd, rotated - shift, size)
            _copy(fd, rotated - shift, upto - rotated, f"{live}.1.tmp")
            with locks.view:
                kept = _rotated_copies(logs_dir, member)
                for i in range(keep - 1, 0, -1):
                    if i in kept:
                        os.replace(f"{live}.{i}", f"{live}.{i + 1}")
                os.replace(f"{live}.1.tmp", f"{live}.1")
                new_shift, upto = _cut(fd, live, shift, rotated, upto, collapse, methods, st.st_dev)
                _write_positions(logs_dir, member, upto, new_shift)
            return True
        finally:
            os.close(fd)


def _rotated_copies(logs_dir: str, member: int) -> set[int]:
    prefix = f"member-{member}.log."
    return {int(n[len(prefix):]) for n in os.listdir(logs_dir)
            if n.startswith(prefix) and n[len(prefix):].isdigit()}


def _cut(fd: int, live: str, shift: int, rotated: int, upto: int, collapse: bool, methods: tuple[str, ...],
         dev: int) -> tuple[int, int]:
    """Take the copied bytes [rotated, upto) out of the live file; returns (shift, rotated) after."""
    if collapse:
        try:
            fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, upto - shift)
            return upto, upto
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                _no_collapse.add(dev)
            log.debug("cannot collapse the head of %s (%s); punching a hole instead", live, e.strerror)
    if "punch" in methods:
        try:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, rotated - shift, upto - rotated)
            return shift, upto
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    # Neither: copy what came since, then truncate. What the member writes between the two is lost.
    if live not in _warned_lossy:
        _warned_lossy.add(live)
        log.warning("the filesystem of %s can neither collapse nor punch a range: its rotation may lose "
                    "output written while it rotates", live)
    with open(f"{live}.1", "ab") as dst:
        rest = os.fstat(fd).st_size - (upto - shift)
        _copy_into(fd, upto - shift, rest, dst.fileno())
    os.ftruncate(fd, 0)
    return upto + rest, upto + rest


def _end_of_last_line(fd: int, start: int, size: int) -> int:
    """The offset just past the last newline in [start, size) (looking back LINE_LOOKBACK at
    most), or ``size`` when there is none: a rotated file then ends with a whole line."""
    lo = max(start, size - LINE_LOOKBACK)
    data = os.pread(fd, size - lo, lo)
    nl = data.rfind(b"\n")
    return size if nl < 0 else lo + nl + 1


def _copy(fd: int, offset: int, length: int, dst_path: str) -> None:
    out = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _copy_into(fd, offset, length, out)
        os.fsync(out)  # on disk before the range leaves the live file
    finally:
        os.close(out)


def _copy_into(fd: int, offset: int, length: int, out: int) -> None:
    while length > 0:
        chunk = os.pread(fd, min(COPY_CHUNK, length), offset)
        if not chunk:
            raise OSError(errno.EIO, f"the log ended {length} bytes early while being rotated")
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view):]
        offset += len(chunk)
        length -= len(chunk)


def members_with_logs(logs_dir: str) -> list[int]:
    try:
        names = os.listdir(logs_dir)
    except OSError:
        return []
    out = []
    for n in names:
        if n.startswith("member-") and n.endswith(".log") and n[7:-4].isdigit():
            out.append(int(n[7:-4]))
    return sorted(out)


def end_cursor(logs_dir: str, member: int) -> int:
    with _locks_of(log_path(logs_dir, member)).view:
        _, shift = _positions(logs_dir, member)
        return shift + _size(log_path(logs_dir, member))


def read(logs_dir: str, member: int, cursor: int | None = None, tail: int | None = None) -> dict[str, Any]:
    """Output of one member: from ``cursor`` (or its last ``tail`` lines, or everything kept).

    Returns ``{"text", "cursor", "lost"}``: the text (UTF-8, undecodable bytes replaced), the cursor
    to continue from, and how many bytes before the requested position were rotated away.
    """
    live = log_path(logs_dir, member)
    with _locks_of(live).view:
        return _read(live, *_positions(logs_dir, member), cursor, tail)


def _read(live: str, rotated: int, shift: int, cursor: int | None, tail: int | None) -> dict[str, Any]:
    end = shift + _size(live)
    old = f"{live}.1"
    oldest = rotated - _size(old)  # the first byte still kept (in .1 or the live file)
    if tail is not None:
        data = _tail_bytes(old, live, rotated - shift, tail)
        return {"text": data.decode(errors="replace"), "cursor": end, "lost": 0}
    start = oldest if cursor is None else cursor
    lost = 0
    if start < oldest:
        lost, start = oldest - start, oldest
    if start > end:  # a cursor from before a reset of the log (new data dir): start over
        start = oldest
    chunks: list[bytes] = []
    budget = MAX_READ
    if start < rotated:
        with open(old, "rb") as f:
            f.seek(start - oldest)
            chunks.append(f.read(min(budget, rotated - start)))
        budget -= len(chunks[-1])
        start += len(chunks[-1])
    if budget > 0 and start >= rotated:
        try:
            with open(live, "rb") as f:
                f.seek(start - shift)
                chunks.append(f.read(budget))
            start += len(chunks[-1])
        except OSError:
            pass
    return {"text": b"".join(chunks).decode(errors="replace"), "cursor": start, "lost": lost}


def _tail_bytes(old: str, live: str, live_start: int, lines: int) -> bytes:
    """The last ``lines`` lines of the kept output; the live file's kept bytes start at ``live_start``."""
    if lines <= 0:
        return b""
    data = b""
    for path, first in ((live, live_start), (old, 0)):
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(first, size - MAX_READ))
                data = f.read() + data
        except OSError:
            continue
        if data.count(b"\n") > lines:
            break
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts = parts[:-1]
        return b"\n".join(parts[-lines:]) + b"\n"
    return b"\n".join(parts[-lines:])
