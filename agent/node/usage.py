"""What this node's packs use and do, measured once per heartbeat interval for its metrics summary.

``PackUsage`` counts the yips the node's mailboxes take in and hand out (totals for
``/v1/metrics``, and per pack for the interval), and turns what the drivers run into one
``PackReading`` per pack (``canidae.core.sampling``): CPU in millicores over the interval and
resident memory, read from ``/proc`` for each member process of an exec pack (children a member
starts itself are not counted), member restarts in the interval, yips handled in it. A virtual
pack has no process: it reads as zero use. A pack is marked ``error`` when a member restarted or is
not alive, and ``outlier`` when it uses more than it reserved; both are always kept by the sampler.

It reads ``/proc`` and a monotonic time given by the caller; it decides nothing about sampling.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from canidae.core.sampling import PackReading

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class PackProcs:
    """What a driver says of one pack it runs: its member pids, whether all are alive, restarts so far."""

    name: str
    pids: tuple[int, ...] = ()
    alive: bool = True
    restarts: int = 0
    cpu_reserved_m: int = 0
    mem_reserved_mib: int = 0


def proc_usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds used, resident MiB) of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            statm = f.read().split()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS, int(statm[1]) * _PAGE / (1024 * 1024)


class PackUsage:
    def __init__(self) -> None:
        self.yips_queued = 0  # yips taken into this node's mailboxes since the agent started
        self.yips_delivered = 0  # yips handed to readers since the agent started
        self.restarts = 0  # member restarts seen since the agent started
        self._yips: dict[str, int] = {}  # per pack, in the current interval
        self._cpu_s: dict[str, float] = {}  # per pack, CPU seconds at the last reading
        self._restarts: dict[str, int] = {}  # per pack, restarts at the last reading
        self._at: float | None = None

    def queued(self, pack: str, n: int) -> None:
        self.yips_queued += n
        self._yips[pack] = self._yips.get(pack, 0) + n

    def delivered(self, pack: str, n: int) -> None:
        self.yips_delivered += n
        self._yips[pack] = self._yips.get(pack, 0) + n

    def readings(self, packs: Iterable[PackProcs], now: float,
                 keep: Callable[[str], bool] | None = None) -> tuple[list[PackReading], float]:
        """One reading per pack over the interval since the last call, and the interval's length (s).

        ``keep``: when given, a pack with nothing to read (no process, no restart, alive, no yips:
        every field zero, not an error) is left out unless ``keep(name)``: the caller's sampler
        would drop it and its zeros add nothing to a sum. Building those readings was most of a
        heartbeat's cost on a node holding thousands of virtual packs.
        """
        interval = 0.0 if self._at is None else max(now - self._at, 1e-3)
        self._at = now
        yips, self._yips = self._yips, {}
        cpu_before, restarts_before = self._cpu_s, self._restarts
        self._cpu_s, self._restarts = {}, {}
        out = []
        for p in packs:
            if keep is not None and not p.pids and p.alive and p.name not in yips \
                    and p.restarts == restarts_before.get(p.name, p.restarts) and not keep(p.name):
                self._cpu_s[p.name] = 0.0
                self._restarts[p.name] = p.restarts
                continue
            cpu_s = mem = 0.0
            for pid in p.pids:
                u = proc_usage(pid)
                if u is not None:
                    cpu_s += u[0]
                    mem += u[1]
            self._cpu_s[p.name] = cpu_s
            self._restarts[p.name] = p.restarts
            prior = cpu_before.get(p.name)
            cpu_m = 0.0 if prior is None or interval == 0.0 else max(0.0, cpu_s - prior) / interval * 1000.0
            restarted = max(0, p.restarts - restarts_before.get(p.name, p.restarts))
            self.restarts += restarted
            over = ((p.cpu_reserved_m and cpu_m > p.cpu_reserved_m)
                    or (p.mem_reserved_mib and mem > p.mem_reserved_mib))
            out.append(PackReading(p.name, cpu_m=cpu_m, mem_mib=mem, restarts=restarted,
                                   yips=yips.get(p.name, 0), error=restarted > 0 or not p.alive,
                                   outlier=bool(over)))
        return out, interval


def reserved(packs: Iterable[PackProcs]) -> tuple[int, int]:
    """(CPU millicores, MiB) the given packs reserve."""
    cpu = mem = 0
    for p in packs:
        cpu += p.cpu_reserved_m
        mem += p.mem_reserved_mib
    return cpu, mem


def from_specs(desired: Mapping[str, Mapping[str, object]], running: Mapping[str, PackProcs]) -> list[PackProcs]:
    """Every pack this node holds, with its processes where a driver runs some (exec packs)."""
    out = []
    for name, a in desired.items():
        if a.get("state") not in ("placed", "running"):
            continue
        spec = a.get("spec") or {}
        assert isinstance(spec, Mapping)
        procs = running.get(name)
        out.append(PackProcs(name, procs.pids if procs else (), procs.alive if procs else True,
                             procs.restarts if procs else 0, int(spec.get("cpu", 0) or 0),  # type: ignore[call-overload]
                             int(spec.get("mem", 0) or 0)))  # type: ignore[call-overload]
    return out


__all__ = ["PackProcs", "PackUsage", "from_specs", "proc_usage", "reserved"]
