"""CPU and memory of agent processes and of the machine, from ``/proc``: what a scale test measures
beside latencies, and the note that says when other processes were busy.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_ticks(pid: int) -> int:
    """User plus system CPU of a process, in clock ticks (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


HZ = os.sysconf("SC_CLK_TCK")


def machine_busy_ticks() -> int:
    """CPU ticks every core of the machine spent busy (not idle, not waiting for I/O) since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0
    return sum(fields) - fields[3] - fields[4]


def own_ticks() -> int:
    """CPU ticks of this process and of its waited-for children (wrk)."""
    t = os.times()
    return round((t.user + t.system + t.children_user + t.children_system) * HZ)


@dataclass
class Usage:
    """CPU (percent of one core) and memory of each agent over a window, and what else ran then."""

    seconds: float
    cpu_percent: dict[str, float]
    rss_bytes: dict[str, int]
    others_percent: float  # CPU of every other process of the machine, percent of one core

    @property
    def cpu_total(self) -> float:
        return round(sum(self.cpu_percent.values()), 3)

    @property
    def rss_total(self) -> int:
        return sum(self.rss_bytes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "cpu_percent_total": self.cpu_total,
            "rss_bytes_total": self.rss_total,
            "others_cpu_percent": self.others_percent,
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
        }


def measure_usage(pids: dict[str, int], seconds: float) -> Usage:
    """Sample every agent's CPU ticks at both ends of a window of ``seconds``; memory at its end."""
    t0 = time.monotonic()
    busy0, own0 = machine_busy_ticks(), own_ticks()
    before = {k: cpu_ticks(p) for k, p in pids.items()}
    time.sleep(seconds)  # the measuring window itself: nothing to wait for, time is what we measure
    after = {k: cpu_ticks(p) for k, p in pids.items()}
    busy1, own1 = machine_busy_ticks(), own_ticks()
    elapsed = max(time.monotonic() - t0, 1e-9)
    agents = sum(after.values()) - sum(before.values())
    others = max(0, (busy1 - busy0) - agents - (own1 - own0))
    return Usage(
        elapsed,
        {k: round((after[k] - before[k]) / HZ / elapsed * 100, 3) for k in pids},
        {k: rss_bytes(p) for k, p in pids.items()},
        round(others / HZ / elapsed * 100, 1) if seconds else 0.0,
    )


def machine(pids: dict[str, int] | None = None) -> dict[str, Any]:
    """Cores, load average and CPU ticks (the machine's busy ones, ours): see ``others_cpu``."""
    ours = own_ticks() + sum(cpu_ticks(p) for p in (pids or {}).values())
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "busy_ticks": machine_busy_ticks(),
        "our_ticks": ours,
        "t": time.monotonic(),
    }


def others_cpu(before: dict[str, Any], after: dict[str, Any]) -> float:
    """Percent of one core that other processes used between two ``machine`` samples (approximate:
    a process of ours that died in between takes its ticks with it)."""
    elapsed = max(after["t"] - before["t"], 1e-9)
    others = (after["busy_ticks"] - before["busy_ticks"]) - (after["our_ticks"] - before["our_ticks"])
    return round(max(0, others) / HZ / elapsed * 100, 1)


BUSY_PERCENT = 20.0  # other processes above this share of one core: the figures say so


def busy_note(others: float, cpus: int | None, when: str) -> list[str]:
    if others > BUSY_PERCENT:
        return [
            f"the machine was busy: other processes used {others:.0f}% of one core ({cpus} cores) {when}; "
            "they competed with the measured ones"
        ]
    return []
