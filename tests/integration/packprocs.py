"""Helpers for tests of exec packs: a Python interpreter that pack users may run, and a look at the
processes a test left (by working directory under its data dir), to assert on and to clean up."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from canidae.agent.node.exec_driver import _can_exec


def member_python() -> str:
    """An interpreter that an unprivileged pack user can execute (every directory above it too)."""
    probe_uid = (1 << 30) + 12345
    for cand in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.isfile(cand) and _can_exec(cand, probe_uid if os.geteuid() == 0 else None, probe_uid):
            return cand
    pytest.skip("no Python interpreter that a pack user may run")


def processes_under(root: str) -> list[int]:
    """Pids whose working directory is below ``root`` (a test's data dir): the packs' processes."""
    root = os.path.realpath(root)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if f.read().rpartition(b")")[2].split()[0] == b"Z":
                        continue
            except OSError:
                continue
            out.append(int(entry))
    return out


def kill_leftovers(root: str) -> list[int]:
    """Kill whatever still runs below ``root``; returns what was found (a passing test leaves nothing)."""
    found = processes_under(root)
    for _ in range(100):
        left = processes_under(root)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    return found


def remove_cgroups(name: str, root: str = "/sys/fs/cgroup", depth: int = 4) -> list[str]:
    """Remove the empty cgroups an agent left (parent ``name`` and its pack cgroups) after a crash."""
    removed = []
    base = root.rstrip("/").count("/")
    for top, dirs, _ in os.walk(root):
        if top.count("/") - base >= depth:
            dirs[:] = []
            continue
        if os.path.basename(top) == name:
            for d in dirs:
                try:
                    os.rmdir(os.path.join(top, d))
                except OSError:
                    pass
            try:
                os.rmdir(top)
                removed.append(top)
            except OSError:
                pass
            dirs[:] = []
    return removed


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid
