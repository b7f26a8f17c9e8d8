"""Scale tests: the simulated run (timed around ``canidae.core.sim``) and the live run.

Both runs produce one JSON-able document (``run_sim``, ``run_live``) with the same outline:
the parameters, the seed's "Expected Performance at Scale" table next to a row of what was
measured (with a note saying what each measured cell is), latency percentiles over time, the
packs on every node at the end, and what the mode adds (the simulator's result and log; the
live run's phases). ``canidae scale-test run`` renders it; ``canidae scale-test report`` draws it.

The simulated run is deterministic: its ``sim`` section (counts, log, digest) depends only on
the parameters and the seed. Wall time, CPU time and memory are measured around it and kept
apart, under ``timing``.

The live run measures from outside, as a user would: latencies on the client side, memory and
CPU of every agent process from ``/proc``. Its phases, each timed:

1. start a throwaway cluster on loopback (servers plus client agents), or use one started by
   ``cluster up`` (``data_dir``: its ``cluster.json`` gives the pids);
2. idle: CPU and memory of every agent before any pack;
3. spawn: K virtual packs through the bulk API (``count=`` series, ``batch`` packs a request),
   paced to a rate when asked (a ramp), each request timed;
4. settle: until every pack runs; steady: CPU and memory with the packs running;
5. load: yips between random packs when the agents have a yip API; otherwise stale reads of
   random packs with ``wrk``, and the document says yip figures are not available;
6. chaos: SIGKILL client agents, time until each of their packs runs on another node, restart
   them, and check that no pack runs twice once they are back.

A throwaway cluster is always stopped and its directory removed, whatever happens.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from canidae.agent.client import Client, Target
from canidae.agent.ops import localcluster
from canidae.core import scaleplan
from canidae.core.errors import CanidaeError, InvalidInput, NotFound, Timeout
from canidae.core.packtoken import pack_token
from canidae.core.scaleplan import SimPlan, percentile, windows
from canidae.core.scenario import parse_scenario
from canidae.core.sim import Simulation
from canidae.core.types import NodeState, Resources

# progress(phase, done, total): called as a run advances (a progress bar, or nothing).
Progress = Callable[[str, float, float], None]

DOC_KIND = "canidae-scale-test"
DOC_VERSION = 1
WRK = "/usr/bin/wrk"


def _no_progress(phase: str, done: float, total: float) -> None:
    pass


# ------------------------------------------------------------------ /proc


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


# ------------------------------------------------------------------ the table


def fmt_bytes(n: float | None) -> str:
    if n is None or math.isnan(n):
        return "n/a"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_rate(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def measured_row(
    packs: int,
    nodes: int,
    *,
    memory: float | None,
    memory_note: str,
    cpu: float | None,
    cpu_note: str,
    yips: float | None,
    yips_note: str,
    p99: float | None,
    p99_note: str,
    cpu_text: str | None = None,
) -> dict[str, Any]:
    """The measured row of the seed's table: raw values, the cells as shown, and what each one is."""
    return {
        "packs": packs,
        "nodes": nodes,
        "memory_bytes": memory,
        "cpu_percent": cpu,
        "yips": yips,
        "p99_ms": p99,
        "cells": {
            "packs": f"{packs:,}",
            "nodes": f"{nodes:,}",
            "memory_per_pack": fmt_bytes(memory),
            "cpu_per_pack": cpu_text if cpu_text is not None else ("n/a" if cpu is None else f"{cpu:.3g}%"),
            "yips_per_s": fmt_rate(yips),
            "p99_latency": "n/a" if p99 is None else f"{p99:.3g}ms",
        },
        "notes": {
            "memory_per_pack": memory_note,
            "cpu_per_pack": cpu_note,
            "yips_per_s": yips_note,
            "p99_latency": p99_note,
        },
    }


def table_doc(measured: dict[str, Any]) -> dict[str, Any]:
    return {
        "columns": list(scaleplan.SEED_COLUMNS),
        "headers": list(scaleplan.SEED_HEADERS),
        "expected": [{k: row[k] for k in scaleplan.SEED_COLUMNS} for row in scaleplan.SEED_TABLE],
        "nearest": scaleplan.nearest_seed_row(measured["packs"]),
        "measured": measured,
    }


def _counts(where: dict[str, str], nodes: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(sorted(nodes), 0)
    for node in where.values():
        if node in counts:
            counts[node] += 1
    return counts


# ------------------------------------------------------------------ simulated


def run_sim(plan: SimPlan, progress: Progress = _no_progress) -> dict[str, Any]:
    """Run a simulated scale test and return its document (see the module docstring)."""
    text = scaleplan.build_scenario(plan)
    steps = parse_scenario(text)
    sim = Simulation(plan.seed)
    # (virtual s, ms) of each decision: placements (spawn batches, re-placements) and rebalances.
    samples: list[tuple[float, float]] = []
    rebalances: list[tuple[float, float]] = []
    decisions = {"place": 0, "rebalance": 0, "packs_decided": 0}
    host0 = machine()
    rss0 = rss_bytes(os.getpid())
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for i, step in enumerate(steps):
        sim.apply(step)
        if step.op == "topology":
            _time_decisions(sim, samples, rebalances, decisions)
        progress(f"sim: {step.text[:48]}", i + 1, len(steps))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rss1 = rss_bytes(os.getpid())
    host1 = machine()
    result = sim.result()
    chaos = scaleplan.chaos_counts(steps)
    live_nodes = [k for k, n in sim.nodes.items() if n.state is not NodeState.DOWN]
    growth = max(0, rss1 - rss0)
    decided = max(1, decisions["packs_decided"])
    p99 = percentile([ms for _, ms in samples], 99) if samples else None
    measured = measured_row(
        result.packs,
        result.nodes,
        memory=growth / max(1, result.packs),
        memory_note="growth of the simulating process's RSS over the run, per pack (the scheduler's "
        "and the simulator's records of every pack and node)",
        cpu=None,
        cpu_text=f"{cpu / decided * 1e6:.3g} µs",
        cpu_note="a simulation runs no pack, so there is no CPU per running pack: this is the CPU time of "
        "the whole run (placements, re-placements, rebalancing, invariant checks) per pack decided",
        yips=None,
        yips_note="not simulated: the simulator models placement, not messages",
        p99=p99,
        p99_note=f"p99 wall time of one placement decision of the scheduler (a batch of up to "
        f"{plan.batch:,} packs, or the re-placement of a failed node's or zone's packs), "
        f"{len(samples):,} decisions; rebalances onto joined or revived nodes apart: p99 "
        f"{_fmt_ms(percentile([ms for _, ms in rebalances], 99))} over {len(rebalances)}",
    )
    problems = list(result.violations)
    return {
        "kind": DOC_KIND,
        "version": DOC_VERSION,
        "mode": "sim",
        "params": plan.to_dict(),
        "ok": result.ok,
        "problems": problems,
        "summary": {
            "packs": result.packs,
            "placed": result.placed,
            "unplaced": result.unplaced,
            "nodes": result.nodes,
            "node_failures": chaos["node_failures"],
            "zone_failures": chaos["zone_failures"],
            "joined_nodes": chaos["joined_nodes"],
            "moves": result.moves,
            "balance": result.balance,
            "steps": len(steps),
            "violations": len(result.violations),
            "virtual_s": result.clock_ms / 1000,
            "wall_s": round(wall, 3),
            "digest": result.digest,
        },
        "table": table_doc(measured),
        "series": {
            "latency": {
                "what": "scheduler decisions (ms): placements, rebalances",
                "x": "virtual time (s)",
                "windows": [dict(w, phase="placements") for w in windows(samples)]
                + [dict(w, phase="rebalances") for w in windows(rebalances)],
            },
            "packs_per_node": _counts(sim.where, live_nodes),
        },
        "sim": {**result.to_dict(), "chaos": chaos, "scenario": text},
        "timing": {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "decisions": decisions,
            "placement_ms": _pcts([ms for _, ms in samples]),
            "rebalance_ms": _pcts([ms for _, ms in rebalances]),
            "machine": {
                "cpus": host0["cpus"],
                "loadavg": host1["loadavg"],
                "others_cpu_percent": others_cpu(host0, host1),
            },
        },
        "notes": busy_note(others_cpu(host0, host1), host0["cpus"], "during the run"),
    }


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or math.isnan(x) else round(x, nd)


def _fmt_ms(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.0f} ms" if x >= 100 else f"{x:.3g} ms"


def _time_decisions(
    sim: Simulation,
    samples: list[tuple[float, float]],
    rebalances: list[tuple[float, float]],
    counts: dict[str, int],
) -> None:
    """Time every placement and rebalance the scheduler decides, by wrapping its two entry points.

    The wrappers only read the clock around the pure calls: the decisions, and so the run's
    result and digest, are the same as without them.
    """
    sched = sim.scheduler
    assert sched is not None
    place, rebalance = sched.place, sched.rebalance_plan

    def timed_place(specs: Any, seed: int, exclude: frozenset[str] = frozenset()) -> Any:
        t = time.perf_counter()
        plan = place(specs, seed=seed, exclude=exclude)
        samples.append((sim.clock_ms / 1000, (time.perf_counter() - t) * 1000))
        counts["place"] += 1
        counts["packs_decided"] += len(specs)
        return plan

    def timed_rebalance(assignment: Any, specs: Any, newcomers: Any = None) -> Any:
        t = time.perf_counter()
        moves = rebalance(assignment, specs, newcomers=newcomers)
        rebalances.append((sim.clock_ms / 1000, (time.perf_counter() - t) * 1000))
        counts["rebalance"] += 1
        counts["packs_decided"] += len(moves)
        return moves

    sched.place = timed_place  # type: ignore[method-assign]
    sched.rebalance_plan = timed_rebalance  # type: ignore[method-assign]


# ------------------------------------------------------------------ live


@dataclass(frozen=True)
class LivePlan:
    """The parameters of a live run (validated by ``check``)."""

    packs: int
    clients: int
    servers: int = 3
    zones: int = 3
    chaos: bool = False
    kill: int = 5  # client agents killed by the chaos phase
    ramp: bool = False
    duration_s: float = 60.0
    seed: int = 0
    batch: int = 100  # packs per bulk request
    rate: float = 0.0  # packs per second while spawning; 0: as fast as the cluster answers
    node_packs: int = 50_000
    data_dir: str | None = None  # a cluster started by 'cluster up'; None: a throwaway one
    base_port: int | None = None
    timeout_s: float = 120.0  # for each wait (start, settle, recovery)
    load_connections: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ramp_s(self) -> float:
        return self.duration_s * 0.5 if self.ramp else 0.0

    @property
    def steady_s(self) -> float:
        return min(60.0, max(2.0, self.duration_s * 0.15))

    @property
    def load_s(self) -> float:
        return max(2.0, self.duration_s - self.ramp_s - self.steady_s)

    @property
    def spawn_rate(self) -> float:
        """Packs per second while spawning: ``rate``, else spread over the ramp, else no pacing (0)."""
        if self.rate:
            return self.rate
        return self.packs / self.ramp_s if self.ramp_s else 0.0

    def check(self) -> LivePlan:
        if self.data_dir is None:
            scaleplan.check_counts(self.packs, self.clients, 1, what_nodes="--nodes (client agents)")
            if self.servers not in (1, 3, 5, 7):
                raise InvalidInput(f"--servers must be 1, 3, 5 or 7 (an odd Raft group), got {self.servers}")
            if self.clients > 200:
                raise InvalidInput(
                    f"--nodes (client agents) must be at most 200 on one machine, got {self.clients}"
                )
            if self.zones < 1:
                raise InvalidInput(f"--zones must be at least 1, got {self.zones}")
            scaleplan.check_capacity(self.packs, self.servers + self.clients, self.node_packs)
        elif self.packs < 1:
            raise InvalidInput(f"--packs must be at least 1, got {self.packs}")
        if self.chaos and self.kill < 1:
            raise InvalidInput(f"--kill must be at least 1 with --chaos, got {self.kill}")
        if self.chaos and self.data_dir is None and self.kill > self.clients:
            raise InvalidInput(f"--kill ({self.kill}) cannot exceed the client agents ({self.clients})")
        if self.batch < 1:
            raise InvalidInput(f"--batch must be at least 1, got {self.batch}")
        if self.rate < 0:
            raise InvalidInput(f"--rate must not be negative, got {self.rate}")
        if self.duration_s <= 0:
            raise InvalidInput(f"--duration must be positive, got {self.duration_s:g}")
        if self.node_packs < 1:
            raise InvalidInput(f"--node-packs must be at least 1, got {self.node_packs}")
        return self


@dataclass
class LiveCluster:
    """The agents of the cluster under test, with their pids (from ``cluster.json``)."""

    data_dir: str
    agents: list[dict[str, Any]]
    token: str
    throwaway: bool

    @staticmethod
    def start(plan: LivePlan) -> LiveCluster:
        tmp = tempfile.mkdtemp(prefix="canidae-scale-")
        try:
            base = plan.base_port or localcluster.find_base_port(plan.servers, plan.clients)
            layout = localcluster.ClusterLayout(
                servers=plan.servers,
                clients=plan.clients,
                base_port=base,
                zones=plan.zones,
                capacity=Resources(1_000_000, 1_048_576, plan.node_packs),
            )
            # Every agent imports and starts on the same cores: allow time in proportion.
            timeout = max(plan.timeout_s, 30.0 + 1.0 * (plan.servers + plan.clients))
            info = localcluster.up(layout, tmp, os.path.join(tmp, "cli.toml"), timeout=timeout)
            st = localcluster.read_cluster_state(tmp)
            assert st is not None
            return LiveCluster(tmp, info["agents"], st["token"], throwaway=True)
        except BaseException:
            if localcluster.read_cluster_state(tmp) is not None:
                localcluster.down(tmp, timeout=5)
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def open(data_dir: str) -> LiveCluster:
        st = localcluster.read_cluster_state(os.path.abspath(data_dir))
        if st is None:
            raise NotFound(f"no cluster started by 'cluster up' in {data_dir}")
        return LiveCluster(os.path.abspath(data_dir), st["agents"], st["token"], throwaway=False)

    def close(self) -> None:
        if self.throwaway:
            self._save()
            if localcluster.read_cluster_state(self.data_dir) is not None:
                localcluster.down(self.data_dir, timeout=5)
            shutil.rmtree(self.data_dir, ignore_errors=True)
        else:
            self._save()

    def _save(self) -> None:
        # Restarted agents have new pids: keep cluster.json true so 'cluster down' stops them.
        import json

        st = localcluster.read_cluster_state(self.data_dir)
        if st is None:
            return
        st["agents"] = self.agents
        path = os.path.join(self.data_dir, localcluster.STATE_FILE)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(st, f, indent=1)
        os.replace(path + ".tmp", path)

    def servers(self) -> list[dict[str, Any]]:
        return [a for a in self.agents if a["role"] == "server"]

    def clients(self) -> list[dict[str, Any]]:
        return [a for a in self.agents if a["role"] == "client"]

    def alive(self, a: dict[str, Any]) -> bool:
        return localcluster._pid_alive(a["pid"], a["config"])

    def pids(self) -> dict[str, int]:
        return {a["id"]: a["pid"] for a in self.agents if self.alive(a)}

    def client(self, timeout: float = 10.0) -> Client:
        return Client(Target(tuple(a["api"] for a in self.servers()), self.token), timeout=timeout)

    def leader_api(self) -> str | None:
        for a in self.servers():
            try:
                h = httpx.get(f"http://{a['api']}/v1/health", timeout=1.0,
                              headers={"authorization": f"Bearer {self.token}"}).json()
            except (httpx.HTTPError, ValueError):
                continue
            if h.get("raft", {}).get("state") == "leader" and h["raft"].get("has_quorum"):
                return str(a["api"])
        return None

    def restart(self, a: dict[str, Any]) -> None:
        if not self.alive(a):
            localcluster.restart_agent(a)


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll ``cond`` until it is true; return the seconds it took, or raise Timeout."""
    return localcluster.wait_until(cond, timeout, f"scale test: {what}", interval)


NO_YIP_API = "the agents have no yip API"


def probe_yips(c: Client, pack: str) -> str | None:
    """None when the agents take a probe yip to ``pack``; else why not (``NO_YIP_API``, or the error)."""
    try:
        c.request("POST", f"/v1/yips/{pack}", json={"text": "scale-test probe"})
    except NotFound as e:
        return NO_YIP_API if e.message.startswith("no route") else f"a probe yip failed: {e.message}"
    except CanidaeError as e:
        return f"a probe yip failed: {e.message}"
    return None


# wrk scripts: requests to random packs of the run (``prefix<batch>-<i>``), figures printed by done().
_WRK_COMMON = """
local prefix = "{prefix}"
local total = {total}
local batch = {batch}
math.randomseed({seed})
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CANIDAE_WRK_TOKEN")
local function pack()
  local n = math.random(0, total - 1)
  return prefix .. math.floor(n / batch) .. "-" .. (n % batch)
end
-- Error answers: counted by status, the last one kept (the first 200 bytes), read back in done().
local threads = {{}}
setup = function(thread) table.insert(threads, thread) end
errors = ""
last_error = ""
local seen = {{}}
response = function(status, headers, body)
  if status >= 400 then
    seen[status] = (seen[status] or 0) + 1
    errors = ""
    for code, n in pairs(seen) do errors = errors .. code .. "=" .. n .. " " end
    last_error = string.sub(body or "", 1, 200)
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("CANIDAE-WRK %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
  for _, t in ipairs(threads) do
    io.write("CANIDAE-CODES " .. (t:get("errors") or "") .. "\\n")
    io.write("CANIDAE-LAST " .. string.gsub(t:get("last_error") or "", "\\n", " ") .. "\\n")
  end
  -- The whole latency histogram (microseconds, count), so that windows merge exactly.
  for i = 1, #latency do
    local v, c = latency(i)
    io.write(string.format("CANIDAE-H %d %d\\n", v, c))
  end
end
"""
_WRK_READ = (
    _WRK_COMMON
    + """
request = function()
  return wrk.format("GET", "/v1/packs/" .. pack() .. "?stale=1")
end
"""
)
_WRK_YIP = (
    _WRK_COMMON
    + """
wrk.headers["Content-Type"] = "application/json"
local body = '{{"text":"yip from the scale test"}}'
request = function()
  return wrk.format("POST", "/v1/yips/" .. pack(), nil, body)
end
"""
)


def run_wrk(api: str, script: str, seconds: float, connections: int, token: str) -> dict[str, Any]:
    """One wrk run against ``api``: requests, errors and the latency histogram (µs -> count)."""
    secs = max(1, round(seconds))
    cmd = [WRK, "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "5s", "-s", script, f"http://{api}"]
    # The token goes through the environment: a command line is visible to every user of the machine.
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=secs + 30,
        check=False,
        env={**os.environ, "CANIDAE_WRK_TOKEN": token},
    )
    m = re.search(r"CANIDAE-WRK (\d+) (\d+) (\d+) (\d+)", out.stdout)
    if not m:
        raise Timeout(f"wrk gave no figures (exit {out.returncode}): {out.stderr.strip()[:200]}")
    req, dur_us, sock_err, status_err = (int(x) for x in m.groups())
    codes: dict[str, int] = {}
    for m_codes in re.findall(r"CANIDAE-CODES ([^\n]*)", out.stdout):
        for item in m_codes.split():
            code, _, n = item.partition("=")
            codes[code] = codes.get(code, 0) + int(n)
    last = re.search(r"CANIDAE-LAST ([^\n]*)", out.stdout)
    hist: dict[int, int] = {}
    for v, n in re.findall(r"CANIDAE-H (\d+) (\d+)", out.stdout):
        hist[int(v)] = hist.get(int(v), 0) + int(n)
    return {
        "requests": req,
        "seconds": dur_us / 1e6,
        "per_s": req / (dur_us / 1e6) if dur_us else 0.0,
        "socket_errors": sock_err,
        "status_errors": status_err,
        "error_statuses": codes,
        "last_error": last.group(1).strip() if last and codes else None,
        "hist": hist,
        **hist_pcts(hist),
    }


def hist_pcts(hist: dict[int, int]) -> dict[str, float | None]:
    """p50, p90, p99 and max in ms of a latency histogram in µs (nearest rank)."""
    total = sum(hist.values())
    out: dict[str, float | None] = {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    if not total:
        return out
    keys = sorted(hist)
    ranks = {
        name: max(1, math.ceil(p / 100 * total))
        for name, p in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99))
    }
    seen = 0
    for v in keys:
        seen += hist[v]
        for name, rank in ranks.items():
            if out[name] is None and seen >= rank:
                out[name] = v / 1000
    out["max_ms"] = keys[-1] / 1000
    return out


def run_live(plan: LivePlan, progress: Progress = _no_progress) -> dict[str, Any]:
    """Run a live scale test and return its document (see the module docstring)."""
    plan.check()
    t_start = time.monotonic()
    progress("live: starting the cluster", 0, 1)
    cluster = LiveCluster.open(plan.data_dir) if plan.data_dir else LiveCluster.start(plan)
    try:
        return _live(plan, cluster, t_start, progress)
    finally:
        progress("live: stopping", 1, 1)
        cluster.close()


def _live(plan: LivePlan, cluster: LiveCluster, t_start: float, progress: Progress) -> dict[str, Any]:
    rng = random.Random(plan.seed)
    host0 = machine(cluster.pids())
    notes: list[str] = []
    problems: list[str] = []
    phases: dict[str, Any] = {"start_s": round(time.monotonic() - t_start, 3)}
    timeline: list[dict[str, Any]] = []

    def mark(event: str) -> None:
        timeline.append({"t_s": round(time.monotonic() - t_start, 3), "event": event})

    mark(f"cluster ready: {len(cluster.servers())} servers, {len(cluster.clients())} client agents")
    with cluster.client(timeout=30.0) as c:
        leader = cluster.leader_api()
        if leader in c.addrs:  # writes go to the leader first: no forwarding hop
            c.addrs.insert(0, c.addrs.pop(c.addrs.index(leader)))
        nodes = c.nodes()
        if plan.data_dir:
            ready = [n for n in nodes if n["state"] == NodeState.READY.value]
            free = sum(n["capacity"]["packs"] - n.get("packs", 0) for n in ready)
            if plan.packs > free:
                raise scaleplan.NoCapacity(
                    f"{plan.packs:,} packs do not fit: the cluster has room for {free:,}"
                )

        # 2. idle
        progress("live: idle CPU and memory", 0, 1)
        idle = measure_usage(cluster.pids(), 2.0)
        mark(f"idle: agents use {idle.cpu_total:.1f}% CPU, {fmt_bytes(idle.rss_total)} RSS")

        # 3. spawn
        prefix = f"st{uuid.uuid4().hex[:6]}b"
        rate = plan.spawn_rate
        mark(
            f"spawn: {plan.packs:,} packs in {-(-plan.packs // plan.batch):,} requests of up to {plan.batch}"
            + (
                f", paced at {rate:,.0f} packs/s"
                if rate
                else ", one after another, as fast as the cluster answers"
            )
        )
        spawn = _spawn(plan, cluster, c, prefix, t_start, progress, problems)
        spawn_samples = spawn.pop("samples")
        phases["spawn"] = spawn
        mark(
            f"spawn acknowledged: p50 {spawn['latency_ms']['p50']} ms, p99 {spawn['latency_ms']['p99']} ms "
            f"over {spawn['requests']} requests, {spawn['packs_per_s']:,.0f} packs/s"
        )

        # 4. settle, then steady
        progress("live: waiting for every pack to run", 0, 1)
        settle_s = wait_until(lambda: _none_waiting(c), plan.timeout_s, "every pack running", 0.05)
        phases["settle"] = {"all_running_s_after_last_ack": round(settle_s, 3)}
        mark(f"all {plan.packs:,} packs running, {settle_s:.2f} s after the last acknowledgement")
        progress("live: steady CPU and memory", 0, 1)
        steady = measure_usage(cluster.pids(), plan.steady_s)
        # A cluster of 'cluster up' may hold packs of its own: the per-pack figures count them all.
        held = sum(1 for p in c.iter_packs(state="running", stale=True)) if plan.data_dir else plan.packs
        mark(f"steady: agents use {steady.cpu_total:.1f}% CPU, {fmt_bytes(steady.rss_total)} RSS")

        # 5. load: yips between random packs (when the agents take yips), then reads
        load_samples: list[dict[str, Any]] = []
        where0 = {p["name"]: p["node"] for p in c.iter_packs(stale=True) if p["state"] == "running"}
        addresses = {n["id"]: n["address"] for n in nodes}
        yips: dict[str, Any] | None = None
        yips1: dict[str, Any] | None = None
        reads: dict[str, Any] = {"requests": 0}
        load_s = plan.load_s
        no_yips = probe_yips(c, sorted(where0)[0]) if where0 else "no pack is running"
        if not os.access(WRK, os.X_OK):
            notes.append(f"no yip or read load: {WRK} is not installed")
        elif no_yips is None:
            # Under load (the throughput), then one at a time (the latency without queueing).
            yips = _wrk_load(
                "yips",
                plan,
                cluster,
                prefix,
                t_start,
                progress,
                load_samples,
                rng,
                load_s / 2,
                plan.load_connections,
                (where0, addresses),
            )
            mark(
                f"yips: {yips['ok_per_s']:,.0f}/s acknowledged with {plan.load_connections} connections, "
                f"p50 {yips['p50_ms']:.2f} ms, p99 {yips['p99_ms']:.2f} ms, {yips['errors']} errors"
                + (f" (HTTP {yips['error_statuses']}: {yips['last_error']})" if yips["errors"] else "")
            )
            yips1 = _wrk_load(
                "yips",
                plan,
                cluster,
                prefix,
                t_start,
                progress,
                load_samples,
                rng,
                load_s / 4,
                1,
                (where0, addresses),
            )
            mark(
                f"yips one at a time: {yips1['ok_per_s']:,.0f}/s, p50 {yips1['p50_ms']:.2f} ms, "
                f"p99 {yips1['p99_ms']:.2f} ms"
            )
            load_s /= 4
        elif no_yips == NO_YIP_API:
            notes.append(
                "yip figures are not available yet: the agents have no yip API, so no yip was sent; "
                "the load phase measures stale reads of random packs instead"
            )
        else:
            problems.append(f"yips: {no_yips}")
            notes.append(f"no yip figures: {no_yips}; the load phase measures stale reads of random packs")
        for name, run in (("yips", yips), ("yips one at a time", yips1)):
            if run is not None and run["errors"] > run["requests"] / 100:
                problems.append(f"{name}: {run['errors']:,} of {run['requests']:,} failed")
        if os.access(WRK, os.X_OK):
            reads = _wrk_load(
                "reads",
                plan,
                cluster,
                prefix,
                t_start,
                progress,
                load_samples,
                rng,
                load_s,
                plan.load_connections,
            )
            mark(
                f"reads: {reads['ok_per_s']:,.0f}/s, p50 {reads['p50_ms']:.2f} ms, "
                f"p99 {reads['p99_ms']:.2f} ms"
            )

        # 6. chaos
        chaos: dict[str, Any] | None = None
        if plan.chaos:
            chaos = _chaos(plan, cluster, c, rng, progress, mark, problems)

        # the end: where the packs are
        progress("live: counting packs per node", 0, 1)
        where = {
            p["name"]: p["node"]
            for p in c.iter_packs(stale=False)
            if p["state"] == "running" and p["name"].startswith(prefix)
        }
        node_ids = [n["id"] for n in c.nodes() if n["state"] != NodeState.DOWN.value]
        final = measure_usage(cluster.pids(), 0.0)

    host1 = machine(cluster.pids())
    others = {"idle": idle.others_percent, "steady": steady.others_percent, "run": others_cpu(host0, host1)}
    worst = max(others, key=lambda k: others[k])
    notes += busy_note(
        others[worst], host0["cpus"], "during the run" if worst == "run" else f"while measuring {worst}"
    )
    packs_running = len(where)
    if chaos is not None:
        back = sum(1 for node in where.values() if node in set(chaos["victims"]))
        notes.append(
            f"the {len(chaos['victims'])} restarted agents hold {back} of this run's packs at the end: "
            "packs that moved away stay away until a rebalance"
        )
    if packs_running < plan.packs:
        problems.append(f"only {packs_running:,} of {plan.packs:,} packs were running at the end")
    n_nodes = len(cluster.agents) if not plan.data_dir else len(nodes)
    total_rss = steady.rss_total
    cpu_total = steady.cpu_total
    spawn = phases["spawn"]["latency_ms"]
    read_text = (
        f"stale reads of random packs: {reads['ok_per_s']:,.0f}/s, p99 {reads['p99_ms']:.2f} ms"
        if reads.get("requests")
        else ""
    )
    if yips is not None and yips1 is not None:
        yips_value, p99_value = yips["ok_per_s"], yips["p99_ms"]
        yips_note = (
            f"yips acknowledged per second: POST /v1/yips/B with the token of pack A to the agent of A, "
            f"which routes it to the agent of B; B random, A random per window of wrk; wrk with "
            f"{plan.load_connections} connections, on the same cores as the agents "
            f"({yips['requests']:,} yips in {yips['seconds']:.0f} s, {yips['errors']} errors)"
        )
        p99_note = (
            f"p99 of a yip acknowledged (it is in the receiver's mailbox), client side, at that rate "
            f"(p50 {yips['p50_ms']:.2f} ms). One yip at a time: p50 {yips1['p50_ms']:.2f} ms, p99 "
            f"{yips1['p99_ms']:.2f} ms. Spawn requests of {plan.batch} packs: p99 {spawn['p99']} ms"
        )
    else:
        yips_value = None
        yips_note = (
            "not available yet: the agents have no yip API"
            if no_yips == NO_YIP_API
            else f"not measured: {no_yips or 'wrk is not installed'}"
        )
        yips_note += f" ({read_text})" if read_text else ""
        p99_value = spawn["p99"]
        p99_note = (
            f"p99 of a bulk spawn request ({plan.batch} packs) acknowledged, client side, over "
            f"{phases['spawn']['requests']:,} requests; not a yip latency (no yip measured)"
        )
    measured = measured_row(
        plan.packs,
        n_nodes,
        memory=total_rss / held,
        memory_note=f"RSS of all {len(steady.rss_bytes)} agent processes with every pack running "
        f"({fmt_bytes(total_rss)}), per running pack ({held:,}); growth since before this run's packs "
        f"{fmt_bytes(max(0, total_rss - idle.rss_total) / plan.packs)} per pack. Virtual packs: "
        "the agents' own memory, no workload's",
        cpu=cpu_total / held,
        cpu_note=f"CPU of all agents with every pack running and no load ({cpu_total:.1f}% of one core "
        f"over {steady.seconds:.1f} s), per running pack; before this run's packs: {idle.cpu_total:.1f}%",
        yips=yips_value,
        yips_note=yips_note,
        p99=p99_value,
        p99_note=p99_note,
    )
    if plan.data_dir is None and plan.packs >= 10_000 and plan.clients < 50:
        notes.append(f"ran with {plan.clients} client agents, not the 50 of the target layout")
    series_lat = [dict(w, phase="spawn") for w in windows(spawn_samples)] + load_samples
    return {
        "kind": DOC_KIND,
        "version": DOC_VERSION,
        "mode": "live",
        "params": plan.to_dict(),
        "ok": not problems,
        "problems": problems,
        "summary": {
            "packs": plan.packs,
            "running": packs_running,
            "servers": len(cluster.servers()),
            "clients": len(cluster.clients()),
            "spawn_p50_ms": spawn["p50"],
            "spawn_p99_ms": spawn["p99"],
            "yips_per_s": _r(yips["ok_per_s"], 1) if yips else None,
            "yip_p50_ms": yips["p50_ms"] if yips else None,
            "yip_p99_ms": yips["p99_ms"] if yips else None,
            "yip_one_at_a_time_p99_ms": yips1["p99_ms"] if yips1 else None,
            "yips": "measured" if yips else f"not measured: {no_yips or 'wrk is not installed'}",
            "reads_per_s": _r(reads.get("ok_per_s"), 1),
            "read_p99_ms": reads.get("p99_ms"),
            "killed": len(chaos["victims"]) if chaos else 0,
            "packs_moved": chaos["affected_packs"] if chaos else 0,
            "recovery_s": chaos["all_running_elsewhere_s"] if chaos else None,
            "duplicated": chaos["duplicated"] if chaos else None,
            "wall_s": round(time.monotonic() - t_start, 3),
        },
        "table": table_doc(measured),
        "series": {
            "latency": {
                "what": "client-side latency (ms): spawn requests, then "
                + ("yips and reads" if yips else "reads"),
                "x": "time (s)",
                "windows": series_lat,
            },
            "packs_per_node": _counts(where, node_ids),
        },
        "live": {
            "phases": {**phases, "yips": yips, "yips_one_at_a_time": yips1, "reads": reads, "chaos": chaos},
            "idle": idle.to_dict(),
            "steady": steady.to_dict(),
            "final_rss_bytes": final.rss_total,
            "timeline": timeline,
            "spawn_samples_ms": [[round(t, 3), round(ms, 3)] for t, ms in spawn_samples],
            "machine": {"cpus": host0["cpus"], "loadavg": host1["loadavg"], "others_cpu_percent": others},
            "cluster": {
                "data_dir": cluster.data_dir,
                "throwaway": cluster.throwaway,
                "agents": [{k: a[k] for k in ("id", "role", "api", "pid", "config")} for a in cluster.agents],
            },
        },
        "notes": notes,
    }


SPAWN_WORKERS = 16  # requests in flight at most while a paced ramp spawns


def _spawn(
    plan: LivePlan,
    cluster: LiveCluster,
    c: Client,
    prefix: str,
    t_start: float,
    progress: Progress,
    problems: list[str],
) -> dict[str, Any]:
    """Spawn the run's packs in bulk requests (``count=`` series of ``plan.batch``) and time each one.

    Unpaced, the requests go one after another (a throughput test). Paced (a ramp), they are sent
    open loop: each at its due time whether or not the previous ones are answered (up to
    ``SPAWN_WORKERS`` in flight), so a slow answer does not slow the offered rate down and hide
    the queueing it causes. A request that started more than 5 ms after its due time is counted
    as late.
    """
    import concurrent.futures
    import threading

    batches = -(-plan.packs // plan.batch)
    sizes = [min(plan.batch, plan.packs - k * plan.batch) for k in range(batches)]
    rate = plan.spawn_rate
    samples: list[tuple[float, float]] = []
    commit_ms: list[float] = []
    late: list[float] = []
    lock = threading.Lock()
    local = threading.local()
    leader_first = list(c.addrs)
    clients: list[Client] = []
    done = [0]
    t_spawn = time.monotonic()

    def one(k: int) -> None:
        due = t_spawn + k * plan.batch / rate if rate else 0.0
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the ramp's pace: this request is due then
        elif rate and delay < -0.005:  # more than 5 ms behind its due time: every worker was busy
            with lock:
                late.append(-delay * 1000)
        if rate:
            cl = getattr(local, "client", None)
            if cl is None:
                cl = local.client = cluster.client(timeout=30.0)
                cl.addrs[:] = leader_first
                with lock:
                    clients.append(cl)
        else:
            cl = c
        t0 = time.perf_counter()
        res = cl.create_packs([{"name": f"{prefix}{k}"}], count=sizes[k], retry_for=30.0)
        ms = (time.perf_counter() - t0) * 1000
        with lock:
            samples.append((time.monotonic() - t_start, ms))
            if isinstance(res.get("commit_ms"), (int, float)):
                commit_ms.append(float(res["commit_ms"]))
            if res.get("unplaced"):
                problems.append(f"request {k}: {len(res['unplaced'])} packs unplaced")
            done[0] += sizes[k]
        progress("live: spawning", done[0], plan.packs)

    try:
        if rate:
            with concurrent.futures.ThreadPoolExecutor(SPAWN_WORKERS) as pool:
                for f in [pool.submit(one, k) for k in range(batches)]:
                    f.result()
        else:
            for k in range(batches):
                one(k)
    finally:
        for cl in clients:
            cl.close()
    spawn_s = time.monotonic() - t_spawn
    samples.sort()
    return {
        "packs": plan.packs,
        "requests": batches,
        "batch": plan.batch,
        "seconds": round(spawn_s, 3),
        "packs_per_s": round(plan.packs / spawn_s, 1) if spawn_s else None,
        "paced_packs_per_s": round(rate, 1) if rate else None,
        "open_loop": bool(rate),
        "late_requests": len(late),
        "late_ms": _pcts(late),
        "latency_ms": _pcts([ms for _, ms in samples]),
        "server_commit_ms": _pcts(commit_ms),
        "samples": samples,
    }


def _pcts(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": _r(percentile(values, 50)),
        "p90": _r(percentile(values, 90)),
        "p99": _r(percentile(values, 99)),
        "max": _r(max(values, default=math.nan)),
    }


def _none_waiting(c: Client) -> bool:
    return not any(c.packs(state=s, limit=1)["packs"] for s in ("placed", "pending"))


def _wrk_load(
    kind: str,
    plan: LivePlan,
    cluster: LiveCluster,
    prefix: str,
    t_start: float,
    progress: Progress,
    windows_out: list[dict[str, Any]],
    rng: random.Random,
    seconds: float,
    connections: int,
    senders: tuple[dict[str, str], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Yips or stale reads to random packs with wrk for ``seconds``, in windows; percentiles of them all.

    Reads rotate over the servers with the admin token. Yips are sent as a pack would: with the
    token of a random sender pack, to the agent that runs it (a new sender every window).
    """
    fd, script = tempfile.mkstemp(prefix="canidae-wrk-", suffix=".lua")
    runs: list[dict[str, Any]] = []
    merged: dict[int, int] = {}
    label = f"{kind} x{connections}"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(
                (_WRK_YIP if kind == "yips" else _WRK_READ).format(
                    prefix=prefix, total=plan.packs, batch=plan.batch, seed=plan.seed
                )
            )
        apis = [a["api"] for a in cluster.servers() if cluster.alive(a)]
        running = sorted(senders[0]) if senders else []
        # One-second windows; longer ones on long runs (--full), so that a run keeps ~300 windows.
        window = max(1, round(seconds / 300))
        chunks = max(1, round(seconds / window))
        for i in range(chunks):
            progress(f"live: {label}", i, chunks)
            if senders:
                sender = rng.choice(running)
                api, token = senders[1][senders[0][sender]], _pack_token_of(cluster, sender)
            else:
                api, token = apis[i % len(apis)], cluster.token
            r = run_wrk(api, script, window, connections, token)
            for v, n in r.pop("hist").items():
                merged[v] = merged.get(v, 0) + n
            r["t"] = round(time.monotonic() - t_start, 3)
            r["via"] = api
            if senders:
                r["sender"], r["sender_node"] = sender, senders[0][sender]
            runs.append(r)
            windows_out.append(
                {
                    "t": r["t"],
                    "n": r["requests"],
                    "p50": r["p50_ms"],
                    "p90": r["p90_ms"],
                    "p99": r["p99_ms"],
                    "max": r["max_ms"],
                    "phase": label,
                }
            )
        progress(f"live: {label}", chunks, chunks)
    finally:
        os.unlink(script)
    total = sum(r["requests"] for r in runs)
    errors = sum(r["socket_errors"] + r["status_errors"] for r in runs)
    statuses: dict[str, int] = {}
    for r in runs:
        for code, n in r["error_statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    last_error = next((r["last_error"] for r in reversed(runs) if r["last_error"]), None)
    secs = sum(r["seconds"] for r in runs)
    what = (
        "yips: POST /v1/yips/B (B random) with the token of a sender pack A, to A's agent"
        if kind == "yips"
        else "stale reads: GET /v1/packs/NAME?stale=1 of random packs, servers in turn"
    )
    return {
        "what": what,
        "connections": connections,
        "windows": len(runs),
        "requests": total,
        "errors": errors,
        "error_statuses": statuses,
        "last_error": last_error,
        "seconds": round(secs, 3),
        "per_s": round(total / secs, 1) if secs else None,
        "ok_per_s": round((total - errors) / secs, 1) if secs else 0.0,
        **hist_pcts(merged),
        "runs": runs,
    }


def _chaos(
    plan: LivePlan,
    cluster: LiveCluster,
    c: Client,
    rng: random.Random,
    progress: Progress,
    mark: Callable[[str], None],
    problems: list[str],
) -> dict[str, Any]:
    """SIGKILL client agents at once; time until all their packs run elsewhere; bring them back."""
    import signal

    alive = sorted((a for a in cluster.clients() if cluster.alive(a)), key=lambda a: a["id"])
    if len(alive) < plan.kill:
        raise InvalidInput(f"--kill {plan.kill}: only {len(alive)} client agents are running")
    victims = sorted(rng.sample(alive, plan.kill), key=lambda a: a["id"])
    ids = {a["id"] for a in victims}
    before = {p["name"]: p["node"] for p in c.iter_packs() if p["state"] in ("placed", "running")}
    affected = sorted(n for n, node in before.items() if node in ids)
    progress("live: chaos", 0, 1)
    t0 = time.monotonic()
    for a in victims:
        os.kill(a["pid"], signal.SIGKILL)
    mark(f"chaos: SIGKILL {', '.join(sorted(ids))} ({len(affected):,} packs on them)")

    def declared_down() -> bool:
        return all(n["state"] == NodeState.DOWN.value for n in c.nodes() if n["id"] in ids)

    def elsewhere() -> bool:
        # Cheap polls first (nothing left on a victim, nothing waiting), then the full proof.
        if any(c.packs(node=v, limit=1)["packs"] for v in sorted(ids)) or not _none_waiting(c):
            return False
        now = {p["name"]: p for p in c.iter_packs()}
        return all(n in now and now[n]["state"] == "running" and now[n]["node"] not in ids for n in affected)

    down_s = moved_s = None
    try:
        down_s = wait_until(declared_down, plan.timeout_s, "the victims declared down")
        wait_until(elsewhere, plan.timeout_s, "the victims' packs running elsewhere")
        moved_s = time.monotonic() - t0
        mark(
            f"chaos: {len(affected):,} packs running elsewhere {moved_s:.2f} s after the kill "
            f"(declared down after {down_s:.2f} s)"
        )
    except Timeout as e:
        problems.append(str(e))
        mark(f"chaos: {e}")
    after = {p["name"] for p in c.iter_packs()}
    lost = [n for n in before if n not in after]
    if lost:
        problems.append(f"{len(lost)} packs lost after the kill (e.g. {lost[0]})")
    # Bring the victims back, then check that every pack runs exactly once.
    progress("live: restarting the killed agents", 0, 1)
    for a in victims:
        cluster.restart(a)
    duplicated = None
    try:

        def settled() -> bool:
            nodes = {n["id"]: n for n in c.nodes()}
            if any(nodes[v]["state"] != NodeState.READY.value for v in ids if v in nodes):
                return False
            runs = sum(1 for p in c.iter_packs() if p["state"] == "running")
            return sum(n.get("running_here") or 0 for n in nodes.values()) == runs

        back_s = wait_until(
            settled, plan.timeout_s, "the killed agents back and every pack running once", 0.1
        )
        duplicated = 0
        mark(f"chaos: victims back, every pack runs exactly once ({back_s:.2f} s after the restart)")
    except Timeout as e:
        nodes = c.nodes()
        runs = sum(1 for p in c.iter_packs() if p["state"] == "running")
        duplicated = max(0, sum(n.get("running_here") or 0 for n in nodes) - runs)
        problems.append(f"{e} ({duplicated} more running than the state says)")
    progress("live: chaos", 1, 1)
    return {
        "victims": sorted(ids),
        "affected_packs": len(affected),
        "signal": "SIGKILL",
        "declared_down_s": _r(down_s),
        "all_running_elsewhere_s": _r(moved_s),
        "lost": len(lost),
        "duplicated": duplicated,
    }


__all__ = ["LiveCluster", "LivePlan", "Usage", "measure_usage", "run_live", "run_sim", "run_wrk"]


def _pack_token_of(cluster: Any, pack: str) -> str:
    """The token the agent of ``pack``'s node gives its members: signed with that agent's own
    credential (from its config, which the operator running the cluster holds), for the current run."""
    import tomllib
    with cluster.client() as c:
        p = c.pack(pack)
    cfg = next(a["config"] for a in cluster.agents if a["id"] == p["node"])
    with open(cfg, "rb") as f:
        return pack_token(tomllib.load(f)["token"], pack, p["generation"], p["node"])
