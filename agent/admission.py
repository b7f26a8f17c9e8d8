"""Admission control: which requests an agent takes on now, which wait, and which it refuses.

Theory of operation (after Kubernetes' API Priority and Fairness and Envoy's overload manager):

* Every route belongs to one **priority class** (``ROUTE_CLASSES``, by method and route
  template; unlisted routes: GET is ``read``, anything else ``write``):

  ======  ==================================================================  ===============
  class   routes                                                             when refused
  ======  ==================================================================  ===============
  system  heartbeats, reports, registration, assignments, health             never
  write   everything that changes the cluster                                queue full, wait
  read    lookups and listings                                               + pressure 0.8
  bulk    metrics, the cluster metrics tree (``top``), events and history    + pressure 0.5
  ======  ==================================================================  ===============

  ``system`` is agent-internal traffic: it is never counted against a limit, never queued and
  never refused, so no flood of client requests can make a node miss heartbeats (a false
  NodeDown). Raft travels on its own TCP port and never meets this module.
* Each other class has **its own** concurrency limit (adaptive: see ``_Class``), a bounded FIFO
  queue and a bound on the time a request may wait in it (``ClassLimits``). Classes share
  nothing: a flood of reads fills the read queue and is refused there, while writes keep their
  own slots.
* A **pressure** source (``Pressure``: a level in [0, 1]) sheds whole classes, lowest priority
  first: ``bulk`` from ``shed_at`` 0.5, ``read`` from 0.8; writes never (see ``DEFAULT_LIMITS``:
  measured, shedding them costs throughput), they are bounded by slots and queue. The default
  source, ``LoopLag``, measures how late the agent's event loop runs its timers (everything an
  agent does shares that loop, so its lag is what every request would wait on); tests inject a
  fixed level (``FixedPressure``), or, in a real agent, ``FilePressure`` through the
  ``CANIDAE_PRESSURE_FILE`` variable.
* A refused request is answered **429** with ``Retry-After`` and ``{"error": {"code":
  "overloaded", "details": {"class", "reason", "retry_after_s"}}}`` (``core.errors.Overloaded``),
  before its handler has done anything: repeating it is always safe. The clients
  (``ServerLink``, ``Client``) wait as told, with jitter, a bounded number of times.

Long-polls (a ``wait`` query parameter on a route in ``LONG_POLLS``) hold no slot: their
duration is idle waiting. They are still refused under pressure like the rest of their class.

This module decides and counts; it reads the monotonic clock (or the one it is given), the
loop, and the pressure file, nothing else. What it cannot see: the time a request waits in the
event loop before it reaches the edge (a CPU-starved agent); only the loop's lag reflects that.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from canidae.agent.telemetry import Reading
from canidae.core.errors import Overloaded


class Priority(str, Enum):
    SYSTEM = "system"
    WRITE = "write"
    READ = "read"
    BULK = "bulk"


# Routes whose class is not the default (GET read, else write), by (method, route template).
ROUTE_CLASSES: dict[tuple[str, str], Priority] = {
    ("GET", "/v1/health"): Priority.SYSTEM,
    ("POST", "/v1/nodes"): Priority.SYSTEM,  # registration of an agent
    ("POST", "/v1/nodes/{node}/heartbeat"): Priority.SYSTEM,
    ("GET", "/v1/nodes/{node}/assignments"): Priority.SYSTEM,
    ("POST", "/v1/nodes/{node}/assignments"): Priority.SYSTEM,  # resync
    ("POST", "/v1/nodes/{node}/reports"): Priority.SYSTEM,
    ("GET", "/v1/digest"): Priority.SYSTEM,  # replicas compared by drills and tests
    ("GET", "/v1/exec/info"): Priority.SYSTEM,  # agent doctor, and probes of the failure detector
    ("GET", "/v1/metrics"): Priority.BULK,
    ("GET", "/v1/metrics/cluster"): Priority.BULK,  # top and metrics
    ("GET", "/v1/events"): Priority.BULK,
    ("GET", "/v1/history/verify"): Priority.BULK,
    ("GET", "/v1/history/stats"): Priority.BULK,
    ("GET", "/v1/packs/{name}/history"): Priority.BULK,
    ("GET", "/v1/exec/packs/{pack}/logs"): Priority.BULK,
}


# The routes that long-poll (``wait``): only these may hold no slot while they wait. Anywhere else
# a ``wait`` parameter is ignored by the handler, and must not let a request skip its slot.
LONG_POLLS = frozenset({("GET", "/v1/events"), ("GET", "/v1/yips/{pack}"), ("GET", "/v1/nodes/{node}/assignments")})


def route_class(method: str, template: str | None) -> Priority:
    if template is not None:
        cls = ROUTE_CLASSES.get((method, template))
        if cls is not None:
            return cls
    return Priority.READ if method in ("GET", "HEAD") else Priority.WRITE


@dataclass(frozen=True, slots=True)
class ClassLimits:
    """What one class may hold: up to ``concurrency`` requests in their handlers (the ceiling of an
    adaptive limit, see ``_Class``), ``queue`` more waiting (each at most ``max_wait_s``), and
    refused outright from pressure ``shed_at`` on. ``target_s``: the time in a slot the adaptive
    limit steers to; ``floor``: the least it goes down to."""

    concurrency: int
    queue: int
    max_wait_s: float
    shed_at: float
    target_s: float = 1.0
    floor: int = 8


# Writes wait in the group commit, not on the CPU: many may be in flight, and the more there are
# the bigger the batches and the higher the throughput (bench/overload.py, admission off: 365
# accepted/s from 32 connections, 608/s from 128, 866/s from 1,280). So writes are never shed by
# pressure (shedding them when the loop lagged cut accepted writes from 538/s to 204/s at 640
# connections); their limit adapts instead: as many in flight as keep a write's time in its slot
# near ``target_s`` (a fixed 1,024 let p99 reach 9 s on a slower run; a 1 s target refused so
# many that accepted writes fell to 77 % of the peak, 2 s kept 84 %). Reads cost the loop CPU
# while in flight; bulk reads (metrics, history) the most.
NEVER = math.inf
DEFAULT_LIMITS: dict[Priority, ClassLimits] = {
    Priority.WRITE: ClassLimits(concurrency=1024, queue=4096, max_wait_s=1.0, shed_at=NEVER, target_s=2.0, floor=64),
    Priority.READ: ClassLimits(concurrency=64, queue=256, max_wait_s=1.0, shed_at=0.8, target_s=0.5),
    Priority.BULK: ClassLimits(concurrency=4, queue=32, max_wait_s=1.0, shed_at=0.5, target_s=2.0, floor=1),
}


class Pressure(Protocol):
    """How loaded the agent is, 0 (idle) .. 1 (saturated)."""

    def level(self) -> float: ...


class FixedPressure:
    """A level set by hand (tests, drills)."""

    def __init__(self, level: float = 0.0) -> None:
        self.value = level

    def level(self) -> float:
        return self.value


class FilePressure:
    """The level written, as a decimal number, in a file (``CANIDAE_PRESSURE_FILE``): lets a test
    drive the pressure of a real agent process. Read at most every ``EVERY_S``; a missing or
    unreadable file is level 0."""

    EVERY_S = 0.1

    def __init__(self, path: str) -> None:
        self.path = path
        self._value, self._read_at = 0.0, float("-inf")

    def level(self) -> float:
        now = time.monotonic()
        if now - self._read_at >= self.EVERY_S:
            self._read_at = now
            try:
                with open(self.path) as f:
                    v = float(f.read().strip() or 0)
                self._value = min(1.0, max(0.0, v)) if math.isfinite(v) else 0.0
            except (OSError, ValueError):
                self._value = 0.0
        return self._value


class LoopLag:
    """The event loop's lag: how late a timer set every ``INTERVAL_S`` fires, smoothed (EWMA);
    level 0 below ``low_s`` of lag, 1 from ``high_s``, linear between."""

    INTERVAL_S = 0.05
    # While nothing asks for the level (no request of a limited class: an idle agent), the timer
    # runs at this slower pace: 20 wake-ups a second were most of an idle agent's. The first
    # request back switches to the fast pace; until then it reads the lag measured slowly,
    # which a starved loop still shows (a late timer is late whatever its period).
    IDLE_INTERVAL_S = 0.5
    QUIET_AFTER_S = 2.0
    ALPHA = 0.3

    def __init__(self, low_s: float = 0.02, high_s: float = 0.25) -> None:
        self.low_s, self.high_s = low_s, high_s
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._asked = time.monotonic()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            period = self.INTERVAL_S if t0 - self._asked < self.QUIET_AFTER_S else self.IDLE_INTERVAL_S
            await asyncio.sleep(period)
            late = max(0.0, time.monotonic() - t0 - period)
            self.lag_s += self.ALPHA * (late - self.lag_s)

    def level(self) -> float:
        self._asked = time.monotonic()
        return min(1.0, max(0.0, (self.lag_s - self.low_s) / (self.high_s - self.low_s)))


def pressure_from_env() -> Pressure:
    """``FilePressure`` when ``CANIDAE_PRESSURE_FILE`` names a file, else the loop's lag."""
    path = os.environ.get("CANIDAE_PRESSURE_FILE")
    return FilePressure(path) if path else LoopLag()


class _Class:
    """One class's slots, queue and counts, and its adaptive limit.

    The limit starts at the ceiling (``concurrency``) and is revised once per ``WINDOW_S`` from the
    mean time admitted requests held their slot: above ``target_s`` it shrinks in proportion
    (at most by half), never below ``floor``; at or below it, and with the slots nearly all used,
    it grows by a quarter (additive-increase, proportional-decrease, as TCP and adaptive
    concurrency limiters do). Little's law makes this the number of requests the agent finishes
    in ``target_s``: more would only wait longer, holding memory and making every answer late.
    """

    WINDOW_S = 0.5

    def __init__(self, priority: Priority, limits: ClassLimits | None, clock: Callable[[], float]) -> None:
        self.priority = priority
        self.limits = limits  # None: never limited (system)
        self.clock = clock
        self.limit = float(limits.concurrency) if limits is not None else math.inf
        self.in_flight = 0
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.admitted = 0
        self.queued = 0  # admitted after waiting in the queue
        self.rejected: dict[str, int] = {"queue_full": 0, "queue_wait": 0, "pressure": 0}
        self.wait_s = 0.0  # total time admitted requests spent queued
        self._window_at = clock()
        self._window_n = 0
        self._window_held_s = 0.0
        self._window_busy = 0  # the most slots in use during the window

    def has_slot(self) -> bool:
        return self.in_flight < self.limit

    def take(self) -> None:
        self.in_flight += 1
        self._window_busy = max(self._window_busy, self.in_flight)

    def release(self, held_s: float) -> None:
        self.in_flight -= 1
        self._window_n += 1
        self._window_held_s += held_s
        now = self.clock()
        if now - self._window_at >= self.WINDOW_S and self.limits is not None:
            self._adapt(self.limits)
            self._window_at, self._window_n, self._window_held_s = now, 0, 0.0
            self._window_busy = self.in_flight
        # Hand free slots to the oldest waiters still waiting (timed-out ones are done already).
        while self.waiting and self.has_slot():
            fut = self.waiting.popleft()
            if not fut.done():
                self.take()
                fut.set_result(None)

    def _adapt(self, lim: ClassLimits) -> None:
        if not self._window_n:
            return
        held = self._window_held_s / self._window_n
        if held > lim.target_s:
            self.limit = max(float(lim.floor), self.limit * max(0.5, lim.target_s / held))
        elif self._window_busy >= 0.8 * self.limit:
            self.limit = min(float(lim.concurrency), self.limit * 1.25 + 1)


class Admission:
    """The admission decision of one agent (see the module docstring)."""

    def __init__(self, pressure: Pressure | None = None, limits: dict[Priority, ClassLimits] | None = None,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled  # off: every request is admitted at once (and counted)
        self.pressure: Pressure = pressure if pressure is not None else LoopLag()
        self.clock = clock
        lim = {**DEFAULT_LIMITS, **(limits or {})}
        self.classes = {p: _Class(p, None if p is Priority.SYSTEM else lim[p], clock) for p in Priority}

    def _refuse(self, c: _Class, reason: str, retry_after_s: float, why: str) -> Overloaded:
        c.rejected[reason] += 1
        return Overloaded(f"this agent is overloaded: {c.priority.value} request refused ({why}); "
                          f"retry after {retry_after_s:g} s",
                          {"class": c.priority.value, "reason": reason, "retry_after_s": retry_after_s})

    @asynccontextmanager
    async def admit(self, method: str, template: str | None, long_poll: bool = False) -> AsyncIterator[Priority]:
        """Hold a slot of the route's class for the block; ``Overloaded`` when refused."""
        c = self.classes[route_class(method, template)]
        lim = c.limits if self.enabled else None
        if lim is None:
            c.admitted += 1
            yield c.priority
            return
        level = self.pressure.level()
        if level >= lim.shed_at:
            # Pressure moves fast (the loop's lag, smoothed over a fraction of a second): one second.
            raise self._refuse(c, "pressure", 1.0,
                               f"load level {level:.2f}, {c.priority.value} shed from {lim.shed_at:g}")
        if long_poll and (method, template) in LONG_POLLS:
            c.admitted += 1
            yield c.priority
            return
        if c.has_slot() and not c.waiting:
            c.take()
        else:
            if len(c.waiting) >= lim.queue:
                raise self._refuse(c, "queue_full", float(max(1, math.ceil(lim.max_wait_s))),
                                   f"{c.in_flight} in flight and {len(c.waiting)} queued")
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            c.waiting.append(fut)
            t0 = self.clock()
            try:
                await asyncio.wait_for(asyncio.shield(fut), lim.max_wait_s)
            except TimeoutError:
                if fut.done() and not fut.cancelled():  # the slot came just as the wait ended: keep it
                    pass
                else:
                    fut.cancel()
                    raise self._refuse(c, "queue_wait", float(max(1, math.ceil(lim.max_wait_s))),
                                       f"queued longer than {lim.max_wait_s:g} s") from None
            except BaseException:
                if fut.done() and not fut.cancelled():
                    c.release(0.0)  # we were given a slot but are going away: pass it on
                else:
                    fut.cancel()
                raise
            c.queued += 1
            c.wait_s += self.clock() - t0
        c.admitted += 1
        t_slot = self.clock()
        try:
            yield c.priority
        finally:
            c.release(self.clock() - t_slot)

    def readings(self) -> list[Reading]:
        """Admitted, queued and refused requests by class, and the pressure, for ``/v1/metrics``."""
        out = [Reading("admission_pressure", "gauge", "Load level admission control sees, 0 (idle) to 1.",
                       self.pressure.level())]
        if isinstance(self.pressure, LoopLag):
            out.append(Reading("event_loop_lag_seconds", "gauge", "How late the agent's event loop runs timers "
                               "(smoothed).", self.pressure.lag_s))
        for p, c in self.classes.items():
            lab = {"class": p.value}
            out += [Reading("admission_admitted", "counter", "Requests admitted, by priority class.", c.admitted, lab),
                    Reading("admission_queued", "counter", "Requests admitted after waiting in their class's "
                            "queue.", c.queued, lab),
                    Reading("admission_queue_wait_seconds", "counter", "Time admitted requests spent queued.",
                            c.wait_s, lab),
                    Reading("admission_in_flight", "gauge", "Requests holding a slot of their class.",
                            c.in_flight, lab),
                    Reading("admission_queue_depth", "gauge", "Requests waiting in their class's queue.",
                            sum(1 for f in c.waiting if not f.done()), lab)]
            if c.limits is not None:  # system has none (and JSON has no infinity)
                out.append(Reading("admission_limit", "gauge", "Slots of the class now (adaptive).", c.limit, lab))
            out += [Reading("admission_rejected", "counter", "Requests refused with 429, by class and reason.",
                            n, {**lab, "reason": reason}) for reason, n in c.rejected.items()]
        return out

    def summary(self) -> dict[str, object]:
        """The pressure and the requests refused so far by class (``/v1/health`` to a credential:
        answered even while every other class is refused)."""
        return {"pressure": round(self.pressure.level(), 3),
                "rejected": {p.value: sum(c.rejected.values()) for p, c in self.classes.items()
                             if c.limits is not None}}

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per class: in flight, queued now, admitted, queued, rejected (by reason), wait seconds."""
        return {p.value: {"limit": c.limit, "in_flight": c.in_flight, "waiting": sum(1 for f in c.waiting if not f.done()),
                          "admitted": c.admitted, "queued": c.queued, "wait_s": c.wait_s,
                          **{f"rejected_{k}": v for k, v in c.rejected.items()}}
                for p, c in self.classes.items()}


def long_poll(query: Iterable[tuple[str, str]]) -> bool:
    """Whether a request's query asks to wait (``wait`` above 0)."""
    for k, v in query:
        if k == "wait":
            return v not in ("", "0")
    return False


__all__ = [
    "DEFAULT_LIMITS",
    "ROUTE_CLASSES",
    "Admission",
    "ClassLimits",
    "FilePressure",
    "FixedPressure",
    "LoopLag",
    "Pressure",
    "Priority",
    "long_poll",
    "pressure_from_env",
    "route_class",
]
