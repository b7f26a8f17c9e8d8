"""Log files of exec pack members: size rotation, tail and cursor reads.

Each member writes its stdout and stderr, interleaved in order, straight to ``member-<i>.log``
(opened ``O_APPEND`` by the agent and inherited by the member), so output keeps flowing while
the agent restarts. Rotation is copy-then-truncate: the agent copies a file past ``max_bytes``
to ``.1`` (shifting older copies up to ``keep``) and truncates the live one, which the member
goes on appending to. Bytes written between the copy and the truncation are lost; that is the
price of never stopping a member to rotate its log.

A reader's position is a *cursor*: the count of bytes the member has written since the log was
created, kept across rotations in ``member-<i>.pos`` (bytes moved out of the live file so far).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

MAX_READ = 1 << 20


def log_path(logs_dir: str, member: int) -> str:
    return os.path.join(logs_dir, f"member-{member}.log")


def open_for_member(logs_dir: str, member: int) -> int:
    """A write-only, append-mode descriptor for the member's stdout and stderr."""
    os.makedirs(logs_dir, mode=0o700, exist_ok=True)
    return os.open(log_path(logs_dir, member), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _rotated_bytes(logs_dir: str, member: int) -> int:
    try:
        with open(os.path.join(logs_dir, f"member-{member}.pos")) as f:
            return int(json.load(f)["rotated"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def rotate_if_needed(logs_dir: str, member: int, max_bytes: int, keep: int) -> bool:
    """Rotate the member's log when it grew past ``max_bytes``; True when it did."""
    live = log_path(logs_dir, member)
    size = _size(live)
    if size <= max_bytes:
        return False
    for i in range(keep - 1, 0, -1):
        src = f"{live}.{i}"
        if os.path.exists(src):
            os.replace(src, f"{live}.{i + 1}")
    with open(live, "rb") as src_f, open(f"{live}.1.tmp", "wb") as dst_f:
        shutil.copyfileobj(src_f, dst_f)
        copied = dst_f.tell()
    os.truncate(live, 0)
    os.replace(f"{live}.1.tmp", f"{live}.1")
    pos = os.path.join(logs_dir, f"member-{member}.pos")
    with open(pos + ".tmp", "w") as f:
        json.dump({"rotated": _rotated_bytes(logs_dir, member) + copied}, f)
    os.replace(pos + ".tmp", pos)
    return True


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
    return _rotated_bytes(logs_dir, member) + _size(log_path(logs_dir, member))


def read(logs_dir: str, member: int, cursor: int | None = None, tail: int | None = None) -> dict[str, Any]:
    """Output of one member: from ``cursor`` (or its last ``tail`` lines, or everything kept).

    Returns ``{"text", "cursor", "lost"}``: the text (UTF-8, undecodable bytes replaced), the cursor
    to continue from, and how many bytes before the requested position were rotated away.
    """
    live = log_path(logs_dir, member)
    rotated = _rotated_bytes(logs_dir, member)
    live_size = _size(live)
    end = rotated + live_size
    old = f"{live}.1"
    old_size = _size(old) if os.path.exists(old) else 0
    oldest = rotated - old_size  # the first byte still kept (in .1 or the live file)
    if tail is not None:
        data = _tail_bytes(old, live, tail)
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
                f.seek(start - rotated)
                chunks.append(f.read(budget))
            start += len(chunks[-1])
        except OSError:
            pass
    return {"text": b"".join(chunks).decode(errors="replace"), "cursor": start, "lost": lost}


def _tail_bytes(old: str, live: str, lines: int) -> bytes:
    if lines <= 0:
        return b""
    data = b""
    for path in (live, old):
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - MAX_READ))
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
