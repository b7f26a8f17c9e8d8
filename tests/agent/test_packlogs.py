"""Member logs rotate without losing or doubling a line: a real process writes numbered lines as
fast as it can while its log rotates many times (collapsing the head of the file, or punching
it out where the filesystem cannot collapse); every number is then found exactly once across the
rotated copies and the live file, and a reader following by cursor saw each once too."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from canidae.agent.node import packlogs

# Numbered lines, one write each, as fast as it can until killed (between two writes: a small
# write to a regular file is never cut short by a signal).
WRITER = "import os\ni = 0\nwhile True:\n    os.write(1, b'%d\\n' % i)\n    i += 1\n"
ROTATIONS = 50


def can_collapse(directory: Path) -> bool:
    probe = directory / "collapse-probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 3 * os.fstat(fd).st_blksize)
        packlogs.fallocate(fd, packlogs.FALLOC_FL_COLLAPSE_RANGE, 0, os.fstat(fd).st_blksize)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture(params=["collapse", "punch", "tmpfs"])
def logs_dir(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, tuple[str, ...]]:
    """A logs directory and the fallocate modes its rotations may use."""
    if request.param == "tmpfs":  # no collapse there: the rotation finds out and punches
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no tmpfs at /dev/shm")
        d = tempfile.mkdtemp(prefix="canidae-logs-", dir="/dev/shm")
        yield d, packlogs.METHODS
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)
        return
    if request.param == "collapse" and not can_collapse(tmp_path):
        pytest.skip("this filesystem cannot collapse a range")
    yield str(tmp_path / "logs"), (("collapse", "punch") if request.param == "collapse" else ("punch",))


def numbers_in(data: bytes) -> list[int]:
    return [int(line) for line in data.split(b"\n") if line]


def test_rotation_under_a_fast_writer_loses_and_doubles_no_line(logs_dir):
    d, methods = logs_dir
    fd = packlogs.open_for_member(d, 0)
    writer = subprocess.Popen([sys.executable, "-c", WRITER], stdout=fd, stderr=subprocess.DEVNULL)
    os.close(fd)
    followed = bytearray()
    cursor = 0
    rotations = 0

    def follow() -> None:
        nonlocal cursor
        while True:
            got = packlogs.read(d, 0, cursor=cursor)
            assert got["lost"] == 0  # read before the next rotation: nothing rotated away unread
            if got["cursor"] == cursor:
                return
            followed.extend(got["text"].encode())
            cursor = got["cursor"]

    deadline = time.monotonic() + 120
    try:
        while rotations < ROTATIONS:  # the writer never stops: every one of these is concurrent with it
            assert writer.poll() is None and time.monotonic() < deadline, "the writer stopped or is stuck"
            rotations += packlogs.rotate_if_needed(d, 0, max_bytes=8192, keep=100_000, methods=methods)
            follow()
    finally:
        writer.kill()
        writer.wait()
    while packlogs.rotate_if_needed(d, 0, max_bytes=8192, keep=100_000, methods=methods):
        rotations += 1
    follow()

    live = packlogs.log_path(d, 0)
    copies = sorted((int(p.rsplit(".", 1)[1]) for p in os.listdir(d) if p.startswith("member-0.log.")),
                    reverse=True)
    assert copies == list(range(rotations, 0, -1))  # keep was large enough: every rotated copy is here
    rotated = b"".join(Path(f"{live}.{i}").read_bytes() for i in copies)
    assert b"\0" not in rotated  # punched holes never reach a rotated copy
    # Punched holes read as zeros at the head of the live file: they are not output.
    everything = rotated + Path(live).read_bytes().lstrip(b"\0")
    n = len(numbers_in(everything))
    assert n > 10_000 and numbers_in(everything) == list(range(n))  # each once, in order, no gap
    assert numbers_in(bytes(followed)) == list(range(n))
    assert packlogs.end_cursor(d, 0) == cursor == len(everything) == len(followed)


def test_rotated_copies_end_with_a_whole_line_where_a_hole_is_punched(tmp_path):
    d = str(tmp_path / "logs")
    fd = packlogs.open_for_member(d, 0)
    os.write(fd, b"".join(b"line %05d\n" % i for i in range(2000)) + b"partial")
    assert packlogs.rotate_if_needed(d, 0, max_bytes=1000, keep=2, methods=("punch",))
    rotated = Path(packlogs.log_path(d, 0) + ".1").read_bytes()
    assert rotated.endswith(b"line 01999\n") and rotated.startswith(b"line 00000\n")
    # The live file keeps its size, its head is a hole; reads and tails skip it.
    assert os.path.getsize(packlogs.log_path(d, 0)) == 2000 * 11 + 7
    assert packlogs.read(d, 0, tail=2)["text"] == "line 01999\npartial"
    got = packlogs.read(d, 0, cursor=2000 * 11)
    assert got == {"text": "partial", "cursor": 2000 * 11 + 7, "lost": 0}
    os.write(fd, b" and more\n")
    os.close(fd)
    assert packlogs.read(d, 0, cursor=got["cursor"])["text"] == " and more\n"
    assert packlogs.read(d, 0)["text"].startswith("line 00000\n")  # .1 and the live file, in order


def test_a_log_rotated_by_truncation_earlier_reads_as_before(tmp_path):
    d = str(tmp_path / "logs")
    fd = packlogs.open_for_member(d, 0)
    os.write(fd, b"new output\n")
    os.close(fd)
    Path(d, "member-0.log.1").write_bytes(b"old output\n")
    Path(d, "member-0.pos").write_text('{"rotated": 11}')  # what copy-then-truncate wrote
    assert packlogs.read(d, 0, cursor=0) == {"text": "old output\nnew output\n", "cursor": 22, "lost": 0}
    assert packlogs.end_cursor(d, 0) == 22
    assert not packlogs.rotate_if_needed(d, 0, max_bytes=100, keep=2)


def test_where_no_range_can_be_cut_rotation_still_bounds_the_log(tmp_path, caplog):
    d = str(tmp_path / "logs")
    fd = packlogs.open_for_member(d, 0)
    os.write(fd, b"".join(b"%d\n" % i for i in range(1000)))
    assert packlogs.rotate_if_needed(d, 0, max_bytes=100, keep=2, methods=())
    assert "may lose output" in caplog.text
    assert os.path.getsize(packlogs.log_path(d, 0)) == 0
    os.write(fd, b"after\n")
    os.close(fd)
    assert packlogs.read(d, 0)["text"] == "".join(f"{i}\n" for i in range(1000)) + "after\n"
