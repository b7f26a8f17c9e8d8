"""The soak: a Jepsen-style test of a live cluster under a nemesis, judged by ``core.history_check``.

Theory of operation. A soak runs three things at once against a local cluster (a throwaway one,
or one started by ``cluster up``), then judges what it recorded:

* **Clients.** N worker threads, each with its own typed ``Client`` (its own connections, its
  own order of agents to try, servers and client agents alike), issue a seeded mix of
  operations on packs: spawn of a fresh name (mostly virtual, some exec ``sleep`` packs where the
  agents can run them), stop, linearizable read (``GET /v1/packs/{name}``) and stale read
  (``?stale=1``). Each call is recorded as an ``Op`` with monotonic invoke and complete times and
  an outcome: ``ok``; ``fail`` for a definite refusal (exists, not_found, invalid, conflict,
  denied); ``info`` when the outcome is unknown (timeout, unavailable after every retry, an
  internal error). A write carries one request id for all its retries inside a bounded per-op
  deadline (a share of ops get one pass over the agents only, so that faults leave some
  outcomes unknown); some writes are deliberately sent once more with the same id after their answer,
  which must answer the same. A worker whose op ended ``info`` continues as a new process, as in
  Jepsen: the unknown op stays concurrent with everything after it.
* **Nemesis.** One thread injects a fault every 5-10 s (the enabled kinds in seeded random
  order, each kind once per round), each logged with its time: SIGKILL the leader (then restart it), SIGSTOP the leader for ~3 s
  (then SIGCONT), SIGKILL every server (restarted within ~1 s), SIGKILL a client agent (then
  restart it), cut the leader off the network (agents in network namespaces of our own,
  ``canidae.agent.ops.netns``; skipped, and said so, where they cannot be made).
* **Final observations.** When the time is up the nemesis heals everything, the clients finish
  their last op, and the runner waits, with a deadline, for the cluster to settle: a leader,
  every node ready, no pack placed or stopping, every agent running what the state assigns it,
  replicas at one digest, all of it holding for a quiet period. Then it reads a linearizable list
  of every pack, each agent's own running set (``GET /v1/agent/running``), each server's digest
  (``GET /v1/digest``) and the live processes of exec packs (by working directory under each
  agent's data dir), and hands history and observations to ``check_history``.

Beyond the checker's rows the runner adds its own: the cluster settled; every agent answered at
the end; writes repeated with their request id were answered the same; exec packs' processes
match the state (the assigned node runs one process per member; no process elsewhere).

Nothing here decides what is correct: ``canidae.core.history_check`` does. Everything here is
bounded in time and heals what it broke, even when it fails.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from canidae.agent.client import Client
from canidae.agent.ops import netns
from canidae.agent.ops.localcluster import LocalCluster
from canidae.agent.ops.waiting import wait_until
from canidae.core.errors import (
    CanidaeError,
    Conflict,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    Timeout,
)
from canidae.core.history_check import (
    ASSIGNED_STATES,
    Check,
    FinalObservations,
    Op,
    OpKind,
    Outcome,
    PackView,
    Report,
    Verdict,
    check_history,
    report_rows,
)

FAULTS = ("kill", "pause", "crash-all", "kill-client", "partition")
FAULT_HELP = {
    "kill": "SIGKILL the leader, restart it 0.5-2 s later",
    "pause": "SIGSTOP the leader for ~3 s, then SIGCONT",
    "crash-all": "SIGKILL every server, restart them all within ~1 s",
    "kill-client": "SIGKILL a client agent, restart it 1-3 s later",
    "partition": "cut the leader off the network for 3-6 s (network namespaces, root only)",
}
# Answers that say the operation did not happen (and, for reads, what was seen): the state
# machine's own refusals, and refusals before anything was proposed.
DEFINITE = (NotFound, Conflict, InvalidInput, NotAuthenticated, PermissionDenied)
EXEC_COMMAND = ("sleep", "1000000")
EXAMPLES = 5


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float = 60.0
    clients: int = 6
    seed: int = 0
    faults: tuple[str, ...] = FAULTS
    fault_every_s: tuple[float, float] = (5.0, 10.0)
    first_fault_s: float = 3.0         # a calm start: the history begins on a healthy cluster
    op_deadline_s: float = 5.0         # retries of one op (same request id) stop after this
    short_share: float = 0.2           # of ops, given only one pass over the agents: unknown outcomes
    attempt_s: float = 1.0             # one HTTP attempt: a paused server must not hold an op for long
    think_s: float = 0.05              # mean pause between a worker's ops
    mix: tuple[tuple[OpKind, float], ...] = ((OpKind.SPAWN, 0.25), (OpKind.STOP, 0.10), (OpKind.READ, 0.45),
                                             (OpKind.STALE_READ, 0.20))
    exec_share: float = 0.1            # of spawns, exec packs (when the agents can run them)
    max_exec: int = 24                 # live exec packs at most (real processes on a shared machine)
    repeat_share: float = 0.2          # of writes, sent once more with the same request id
    settle_s: float = 45.0
    quiet_s: float = 2.0

    def validate(self) -> None:
        unknown = sorted(set(self.faults) - set(FAULTS))
        if unknown:
            raise InvalidInput(f"unknown fault {unknown[0]!r}: choose among {', '.join(FAULTS)}")
        if self.duration_s <= 0 or self.clients < 1:
            raise InvalidInput("a soak needs a positive duration and at least one client")
        lo, hi = self.fault_every_s
        if not 0 < lo <= hi:
            raise InvalidInput("the fault interval must be 0 < min <= max seconds")


@dataclass
class FaultEvent:
    t_s: float
    fault: str
    victims: list[str]
    detail: str = ""
    took_s: float | None = None      # from the fault to the victims restored
    leader_s: float | None = None    # from the victims restored to a leader with a quorum (None: none seen)

    def to_dict(self) -> dict[str, Any]:
        return {"t_s": round(self.t_s, 3), "fault": self.fault, "victims": self.victims, "detail": self.detail,
                "took_s": None if self.took_s is None else round(self.took_s, 3),
                "leader_s": None if self.leader_s is None else round(self.leader_s, 3)}


@dataclass
class SoakResult:
    options: SoakOptions
    ops: list[Op]
    faults: list[FaultEvent]
    skipped: dict[str, str]
    report: Report
    extra: tuple[Check, ...]
    final: FinalObservations
    settle: dict[str, Any]
    cluster: dict[str, Any]
    elapsed_s: float
    notes: list[str] = field(default_factory=list)
    # The event history and final record of a few packs named by failing checks: the first
    # thing to read when a check fails.
    postmortem: dict[str, Any] = field(default_factory=dict)
    # Agents' log lines at ERROR or CRITICAL written during the soak (node -> first lines, count).
    log_alerts: dict[str, Any] = field(default_factory=dict)

    def checks(self) -> tuple[Check, ...]:
        return self.report.checks() + self.extra

    @property
    def ok(self) -> bool:
        return all(c.verdict is Verdict.PASS for c in self.checks())

    def write_gap(self) -> dict[str, float] | None:
        """The longest time between two acknowledged writes (availability as clients saw it)."""
        done = sorted(op.complete for op in self.ops if op.outcome is Outcome.OK and op.complete is not None
                      and op.kind in (OpKind.SPAWN, OpKind.STOP))
        if len(done) < 2:
            return None
        t0 = min(op.invoke for op in self.ops)
        gap, at = max((b - a, a) for a, b in itertools.pairwise(done))
        return {"s": round(gap / 1e9, 3), "from_s": round((at - t0) / 1e9, 3)}

    def op_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {k.value: {o.value: 0 for o in Outcome} for k in OpKind}
        for op in self.ops:
            counts[op.kind.value][op.outcome.value] += 1
        return counts

    def rows(self) -> list[tuple[str, int, str, str]]:
        return report_rows(self.report) + [(c.title, c.count, c.verdict.value, c.examples[0] if c.examples else "")
                                           for c in self.extra]

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        return {
            "ok": self.ok, "seed": o.seed, "duration_s": o.duration_s, "elapsed_s": round(self.elapsed_s, 3),
            "clients": o.clients, "cluster": self.cluster,
            "faults": [f.to_dict() for f in self.faults], "skipped_faults": self.skipped,
            "ops": {"total": len(self.ops), "keys": self.report.keys, "unknown": self.report.unknown_ops,
                    "by_kind": self.op_counts(), "longest_write_gap": self.write_gap()},
            "settle": self.settle, "notes": self.notes,
            "checks": [c.to_dict() for c in self.checks()],
            "log_alerts": self.log_alerts, "postmortem": self.postmortem,
        }


class _Keys:
    """The pack names the workers made, shared between them: reads favour recent names so that
    each name sees concurrent operations, stops take names that were spawned."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lock = threading.Lock()
        self.all: list[str] = []
        self.recent: deque[str] = deque(maxlen=24)
        self.stoppable: list[str] = []
        self.exec_live: set[str] = set()

    def fresh(self, worker: int, n: int, exec_pack: bool) -> str:
        name = f"{self.prefix}-{worker}-{n}"
        with self.lock:
            self.all.append(name)
            self.recent.append(name)
            self.stoppable.append(name)
            if exec_pack:
                self.exec_live.add(name)
        return name

    def for_read(self, rng: random.Random) -> str | None:
        with self.lock:
            if not self.all:
                return None
            return rng.choice(self.recent) if rng.random() < 0.7 else rng.choice(self.all)

    def for_stop(self, rng: random.Random) -> str | None:
        with self.lock:
            if not self.stoppable:
                return None
            if rng.random() < 0.15:  # now and then a name already stopped (stop is idempotent)
                name = rng.choice(self.all)
            else:
                name = self.stoppable.pop(rng.randrange(len(self.stoppable)))
            self.recent.append(name)
            self.exec_live.discard(name)
            return name


class Soak:
    """One soak run over ``cluster``. ``log`` gets one line per event (faults, phases)."""

    def __init__(self, cluster: LocalCluster, options: SoakOptions,
                 log: Callable[[str], None] | None = None) -> None:
        options.validate()
        self.cluster = cluster
        self.o = options
        self.log_fn = log
        self.keys = _Keys(f"soak{secrets.token_hex(2)}")
        self.ops: list[Op] = []
        # Each worker's op under way (process, kind, key, invoke): one still under way when the
        # history closes is recorded with an unknown outcome.
        self.inflight: dict[int, tuple[int, OpKind, str, int]] = {}
        self.faults: list[FaultEvent] = []
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self.repeats: list[str] = []      # writes repeated with their id and answered differently
        self.repeated = 0
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.exec_ok = False
        self.exec_info: dict[str, Any] = {}
        # What the nemesis broke and has not repaired yet: healed on the way out whatever happens.
        self.paused: set[str] = set()
        self.dead: set[str] = set()
        self.damage_lock = threading.Lock()

    # ------------------------------------------------------------------ logging

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, line: str) -> None:
        if self.log_fn is not None:
            self.log_fn(f"+{self.now():7.3f}s {line}")

    # ------------------------------------------------------------------ the run

    def run(self, tamper: Callable[[FinalObservations], FinalObservations] | None = None) -> SoakResult:
        """Preflight, clients and nemesis for ``duration_s``, heal, settle, observe, check.

        ``tamper`` may change the final observations before they are checked: a test of the
        checks' wiring, never used otherwise.
        """
        self._enabled_faults()
        self.log_offsets = {a["id"]: _size(agent_output(a)) for a in self.cluster.agents}
        self._preflight()
        self.t0 = time.monotonic()
        self.log(f"soak: {self.o.clients} clients for {self.o.duration_s:g} s, faults: "
                 f"{', '.join(self._faults) or 'none'} (seed {self.o.seed})")
        workers = [threading.Thread(target=self._worker, args=(i,), name=f"soak-client-{i}", daemon=True)
                   for i in range(self.o.clients)]
        nemesis = threading.Thread(target=self._nemesis, name="soak-nemesis", daemon=True)
        try:
            for t in workers:
                t.start()
            nemesis.start()
            self.stop.wait(self.o.duration_s)
        finally:
            self.stop.set()
            nemesis.join(timeout=30)
            self._heal_everything()
            # A worker's last op ends within its deadline plus one pass over the agents.
            bound = self.o.op_deadline_s + self.o.attempt_s * (len(self.cluster.agents) + 2) + 5
            for t in workers:
                t.join(timeout=bound)
            ops = list(self.ops)  # the history closes here, whatever a late worker appends
            for i, t in enumerate(workers):
                under_way = self.inflight.get(i)
                if t.is_alive() and under_way is not None:
                    process, kind, key, invoke = under_way
                    ops.append(Op(process, kind, key, Outcome.INFO, invoke, error="still under way at the end"))
                    self.notes.append(f"client {i} was still busy at the end: its {kind.value} {key} is unknown")
        elapsed = self.now()
        self.log(f"nemesis stopped and everything healed; {len(self.ops)} ops recorded; settling")
        settle = self._settle()
        self.log(("settled" if settle["settled"] else "did not settle") + f" after {settle['settle_s']:.3f} s")
        final, unreachable, exec_members, packs = self._observe()
        if tamper is not None:
            final = tamper(final)
        ops.sort(key=lambda op: op.invoke)
        report = check_history(ops, final)
        extra = (
            _check("settled", "cluster did not settle", settle["waiting_on"]),
            _check("agents", "agents not answering at the end", [f"{a}: no answer" for a in unreachable]),
            _check("idempotent", "repeated writes answered differently", self.repeats),
            _check("processes", "exec packs whose processes differ from the state",
                   process_problems(final, exec_members)),
        )
        result = SoakResult(self.o, ops, self.faults, self.skipped, report, extra, final, settle,
                            self._describe_cluster(), elapsed, self.notes)
        if not result.ok:
            result.postmortem = self._postmortem(result, packs)
            result.postmortem["servers at the end"] = self._servers_status()
        result.log_alerts = log_alerts(self.cluster.agents, self.log_offsets)
        self.log("all checks pass" if result.ok else "some checks fail")
        return result

    def _servers_status(self) -> dict[str, Any]:
        """Each server's own Raft view (its local status, no barrier): who lags, who it follows."""
        out: dict[str, Any] = {}
        keys = ("raft_state", "leader", "term", "commit_index", "last_applied", "has_quorum")
        with self._http() as http:
            for s in self.cluster.servers():
                try:
                    st = http.get(self.cluster.url(s, "/v1/status")).json()
                    out[s["id"]] = {**{k: st.get(k) for k in keys},
                                    "peers": {p["id"]: p["connected"] for p in st.get("peers", []) if not p["self"]}}
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                    out[s["id"]] = {"error": f"{type(e).__name__}: {e}"}
        return out

    def _postmortem(self, result: SoakResult, packs: dict[str, dict[str, Any]], most: int = 8) -> dict[str, Any]:
        """Final record and event history of the first packs that failing checks name."""
        names: list[str] = []
        for check in result.checks():
            if check.verdict is Verdict.PASS:
                continue
            for example in check.examples:
                word = example.split(":", 1)[0].split(" ", 1)[0]
                if word in packs and word not in names:
                    names.append(word)
        out: dict[str, Any] = {}
        with self.cluster.client(timeout=5.0) as c:
            for name in names[:most]:
                entry: dict[str, Any] = {"final": packs[name]}
                try:
                    entry["events"] = c.pack_history(name).get("events", [])
                except CanidaeError as e:
                    entry["events_error"] = e.message
                out[name] = entry
        return out

    def _describe_cluster(self) -> dict[str, Any]:
        c = self.cluster
        return {"servers": len(c.servers()), "client_agents": len([a for a in c.agents if a["role"] == "client"]),
                "network": "namespaces" if c.network is not None else "loopback",
                "exec": {"enabled": self.exec_ok, **self.exec_info}, "repeated_writes": self.repeated}

    def _enabled_faults(self) -> None:
        self._faults = [f for f in self.o.faults]
        if "partition" in self._faults and self.cluster.network is None:
            why = netns.unavailable_reason() or "the cluster runs on loopback (it was not started in namespaces)"
            self.skipped["partition"] = why
        if "kill-client" in self._faults and not [a for a in self.cluster.agents if a["role"] == "client"]:
            self.skipped["kill-client"] = "the cluster has no client agent"
        self._faults = [f for f in self._faults if f not in self.skipped]

    # ------------------------------------------------------------------ preflight

    def _preflight(self) -> None:
        wait_until(lambda: self.cluster.leader() is not None, 30, "soak: a leader before the start")
        if self.o.exec_share <= 0:
            self.exec_info = {"reason": "no exec packs asked for"}
            return
        with self.cluster.client(timeout=5.0) as c:
            try:
                info = c.request("GET", "/v1/exec/info", retry_for=10)
                self.exec_info = {"mechanism": info["exec"].get("mechanism"),
                                  "pack_users": info["exec"].get("pack_users")}
            except CanidaeError as e:
                self.exec_info = {"reason": f"exec info: {e.message}"}
                return
            # One exec pack, run and stopped, before the clock starts: can the agents run one here?
            probe = f"{self.keys.prefix}-probe"
            try:
                c.create_packs([self._exec_spec(probe)], retry_for=10)
                wait_until(lambda: c.pack(probe)["state"] in ("running", "failed"), 30,
                                        "soak: the exec probe pack running")
                if c.pack(probe)["state"] != "running":
                    self.exec_info["reason"] = f"the probe exec pack failed: {c.pack(probe)['reason']}"
                else:
                    self.exec_ok = True
                c.request("POST", f"/v1/packs/{probe}/stop", json={"request_id": uuid.uuid4().hex}, retry_for=10)
                wait_until(lambda: c.pack(probe)["state"] in ("stopped", "failed"), 30,
                                        "soak: the exec probe pack stopped")
            except CanidaeError as e:
                self.exec_ok = False
                self.exec_info["reason"] = f"the probe exec pack: {e.message}"

    @staticmethod
    def _exec_spec(name: str) -> dict[str, Any]:
        return {"name": name, "driver": "exec", "command": list(EXEC_COMMAND), "cpu": 10, "mem": 32,
                "restart": "always"}

    # ------------------------------------------------------------------ clients

    def _worker(self, index: int) -> None:
        rng = random.Random(self.o.seed * 7919 + index)
        addrs = [a["api"] for a in self.cluster.agents]
        rng.shuffle(addrs)
        process, n = index, 0
        kinds, weights = zip(*self.o.mix)
        with Client(self.cluster.target(apis=addrs), timeout=self.o.attempt_s) as c:
            while not self.stop.is_set():
                kind = rng.choices(kinds, weights)[0]
                op: Op | None
                if kind is OpKind.SPAWN:
                    n += 1
                    op = self._spawn(c, rng, process, index, n)
                elif kind is OpKind.STOP:
                    op = self._stop_op(c, rng, index, process)
                else:
                    op = self._read(c, rng, index, process, stale=kind is OpKind.STALE_READ)
                self.inflight.pop(index, None)
                if op is not None:
                    self.ops.append(op)
                    if op.outcome is Outcome.INFO:
                        process += self.o.clients  # as in Jepsen: the unknown op stays open forever
                self.stop.wait(rng.uniform(0, 2 * self.o.think_s))

    def _call(self, c: Client, method: str, path: str, *, body: Any = None,
              params: dict[str, Any] | None = None, patient: bool = True) -> tuple[Outcome, Any, str | None]:
        try:
            return Outcome.OK, c.request(method, path, json=body, params=params,
                                         retry_for=self.o.op_deadline_s if patient else 0.0), None
        except DEFINITE as e:
            return Outcome.FAIL, None, e.code
        except CanidaeError as e:
            return Outcome.INFO, None, e.code
        except httpx.HTTPError as e:  # the client maps these; anything left is an unknown outcome
            return Outcome.INFO, None, type(e).__name__

    def _write(self, c: Client, rng: random.Random, worker: int, process: int, kind: OpKind, key: str,
               method: str, path: str, body: dict[str, Any], note: str | None) -> Op:
        invoke = time.monotonic_ns()
        self.inflight[worker] = (process, kind, key, invoke)
        outcome, _, error = self._call(c, method, path, body=body, patient=rng.random() >= self.o.short_share)
        if outcome is not Outcome.INFO and rng.random() < self.o.repeat_share:
            # The same request once more, as a client that lost the answer would: same id, same answer.
            self.repeated += 1
            again, _, error2 = self._call(c, method, path, body=body)
            if again is not Outcome.INFO and (again, error2) != (outcome, error):
                first = outcome.value + (f" {error}" if error else "")
                second = again.value + (f" {error2}" if error2 else "")
                self.repeats.append(f"{kind.value} {key}: answered {first}, then {second} to the same request id")
                note = f"{note or ''} repeated: first answer {first}".strip()
                outcome, error = again, error2
        return Op(process, kind, key, outcome, invoke, time.monotonic_ns(), error=error, input=note)

    def _spawn(self, c: Client, rng: random.Random, process: int, index: int, n: int) -> Op:
        with self.keys.lock:
            exec_room = self.exec_ok and len(self.keys.exec_live) < self.o.max_exec
        exec_pack = exec_room and rng.random() < self.o.exec_share
        name = self.keys.fresh(index, n, exec_pack)
        spec = self._exec_spec(name) if exec_pack else {"name": name}
        body = {"request_id": uuid.uuid4().hex, "spec": spec, "place": True}
        return self._write(c, rng, index, process, OpKind.SPAWN, name, "POST", "/v1/packs", body,
                           "exec" if exec_pack else None)

    def _stop_op(self, c: Client, rng: random.Random, index: int, process: int) -> Op | None:
        name = self.keys.for_stop(rng)
        if name is None:
            return None
        body = {"request_id": uuid.uuid4().hex}
        return self._write(c, rng, index, process, OpKind.STOP, name, "POST", f"/v1/packs/{name}/stop", body,
                           None)

    def _read(self, c: Client, rng: random.Random, index: int, process: int, stale: bool) -> Op | None:
        name = self.keys.for_read(rng)
        if name is None:
            return None
        kind = OpKind.STALE_READ if stale else OpKind.READ
        invoke = time.monotonic_ns()
        self.inflight[index] = (process, kind, name, invoke)
        outcome, data, error = self._call(c, "GET", f"/v1/packs/{name}", params={"stale": 1} if stale else None,
                                          patient=rng.random() >= self.o.short_share)
        complete = time.monotonic_ns()
        output = None
        if outcome is Outcome.OK:
            try:
                output = str(data["pack"]["state"])
            except (KeyError, TypeError):
                outcome, error = Outcome.INFO, "malformed answer"
        return Op(process, kind, name, outcome, invoke, complete, output=output, error=error)

    # ------------------------------------------------------------------ nemesis

    def _nemesis(self) -> None:
        if not self._faults:
            return
        rng = random.Random(self.o.seed * 104729 + 1)
        wait = self.o.first_fault_s
        cycle: list[str] = []
        while not self.stop.wait(wait):
            # A seeded shuffle of every enabled kind, again and again: random order, no kind starved.
            if not cycle:
                cycle = list(self._faults)
                rng.shuffle(cycle)
            fault = cycle.pop()
            try:
                self._inject(fault, rng)
            except (CanidaeError, OSError, httpx.HTTPError) as e:  # logged, not fatal: the soak goes on
                self.faults.append(FaultEvent(self.now(), fault, [], f"not carried out: {e}"))
                self.log(f"{fault}: not carried out: {e}")
            wait = rng.uniform(*self.o.fault_every_s)

    def _leader_or_any(self, rng: random.Random) -> tuple[str, str]:
        """The leader (waiting up to 5 s for one), else a random live server, with how it was chosen."""
        try:
            wait_until(lambda: self.cluster.leader() is not None, 5, "a leader")
        except CanidaeError:
            pass
        leader = self.cluster.leader()
        if leader is not None:
            return leader, "leader"
        alive = sorted(a["id"] for a in self.cluster.servers() if self.cluster.alive(a))
        return rng.choice(alive or sorted(a["id"] for a in self.cluster.servers())), "no leader: a random server"

    def _inject(self, fault: str, rng: random.Random) -> None:
        cl = self.cluster
        if fault in ("kill", "pause", "partition"):
            victim, how = self._leader_or_any(rng)
            victims = [victim]
        elif fault == "crash-all":
            victims, how = sorted(a["id"] for a in cl.servers()), "every server"
        else:
            victims = [rng.choice(sorted(a["id"] for a in cl.agents if a["role"] == "client"))]
            how = "a client agent"
        t = self.now()
        event = FaultEvent(t, fault, victims, how)
        self.faults.append(event)
        self.log(f"{fault}: {', '.join(victims)} ({how})")
        if fault == "pause":
            self._signal(victims[0], signal.SIGSTOP)
            try:
                self.stop.wait(rng.uniform(2.5, 3.5))
            finally:
                self._signal(victims[0], signal.SIGCONT)
        elif fault == "partition":
            assert cl.network is not None
            cl.network.cut(victims[0])
            try:
                self.stop.wait(rng.uniform(3.0, 6.0))
            finally:
                cl.network.heal(victims[0])
        else:
            for v in victims:
                self._signal(v, signal.SIGKILL)
            for v in victims:
                a = cl.agent(v)
                wait_until(lambda a=a: not cl.alive(a), 5, f"{v} gone after SIGKILL")
            order = list(victims)
            rng.shuffle(order)
            lo, hi = {"kill": (0.5, 2.0), "kill-client": (1.0, 3.0)}.get(fault, (0.0, 1.0 / len(order)))
            for v in order:
                self.stop.wait(rng.uniform(lo, hi))
                self._restart(v)
        event.took_s = self.now() - t
        restored = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - restored < 15.0:
            if self.cluster.leader() is not None:
                event.leader_s = time.monotonic() - restored
                break
            self.stop.wait(0.05)
        after = "no leader yet" if event.leader_s is None else f"a leader {event.leader_s:.3f} s later"
        self.log(f"{fault}: {', '.join(victims)} restored after {event.took_s:.3f} s; {after}")

    def _signal(self, ident: str, sig: int) -> None:
        a = self.cluster.agent(ident)
        with self.damage_lock:
            if sig == signal.SIGSTOP:
                self.paused.add(ident)
            elif sig == signal.SIGKILL:
                self.dead.add(ident)
        try:
            os.kill(a["pid"], sig)
        except ProcessLookupError:
            pass
        with self.damage_lock:
            if sig == signal.SIGCONT:
                self.paused.discard(ident)

    def _restart(self, ident: str) -> None:
        self.cluster.restart(ident)
        with self.damage_lock:
            self.dead.discard(ident)

    def _heal_everything(self) -> None:
        """Undo whatever the nemesis left broken (it normally repairs each fault itself)."""
        with self.damage_lock:
            paused, dead = sorted(self.paused), sorted(self.dead)
        for ident in paused:
            self._signal(ident, signal.SIGCONT)
        if self.cluster.network is not None:
            self.cluster.network.heal_all()
        for a in self.cluster.agents:
            if not self.cluster.alive(a):
                try:  # a process caught in an exec reads as dead for an instant: never start a second one
                    wait_until(lambda a=a: self.cluster.alive(a), 0.5, "the agent alive after all")
                    continue
                except CanidaeError:
                    pass
                if a["id"] not in dead:
                    self.notes.append(f"agent {a['id']} had exited on its own; restarted (see {a.get('log')})")
                self._restart(a["id"])

    # ------------------------------------------------------------------ settling and observing

    def _agent_running(self, http: httpx.Client, a: dict[str, Any]) -> dict[str, int] | None:
        try:
            r = http.get(self.cluster.url(a, "/v1/agent/running"))
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        return {str(k): int(v) for k, v in r.json()["running"].items()}

    def _digest(self, http: httpx.Client, a: dict[str, Any]) -> dict[str, Any] | None:
        try:
            r = http.get(self.cluster.url(a, "/v1/digest"))
            return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    def _http(self) -> httpx.Client:
        return httpx.Client(timeout=3.0, headers={"authorization": f"Bearer {self.cluster.token}"},
                            verify=self.cluster.verify)

    def _unsettled(self, c: Client, http: httpx.Client) -> list[str]:
        """What keeps the cluster from being settled now ([] when it is)."""
        if self.cluster.leader() is None:
            return ["no leader with a quorum"]
        waiting = [f"node {n['id']} is {n['state']}" for n in c.nodes() if n["state"] != "ready"]
        packs = list(c.iter_packs())
        moving = [p["name"] for p in packs if p["state"] in ("placed", "stopping")]
        if moving:
            waiting.append(f"{len(moving)} pack(s) placed or stopping (e.g. {moving[0]})")
        assigned: dict[str, dict[str, int]] = {}
        for p in packs:
            if p["node"] is not None and p["state"] in ASSIGNED_STATES:
                assigned.setdefault(p["node"], {})[p["name"]] = p["generation"]
        for a in self.cluster.agents:
            have = self._agent_running(http, a)
            if have is None:
                waiting.append(f"agent {a['id']} does not answer")
            elif have != assigned.get(a["id"], {}):
                waiting.append(f"agent {a['id']} runs {len(have)} pack(s), the state assigns it "
                               f"{len(assigned.get(a['id'], {}))}")
        digests = {s["id"]: self._digest(http, s) for s in self.cluster.servers()}
        seen = {(d["applied"], d["digest"]) if d else None for d in digests.values()}
        if len(seen) != 1 or None in seen:
            waiting.append("replicas at different digests")
        return waiting

    def _settle(self) -> dict[str, Any]:
        """Wait until nothing keeps the cluster from being settled for ``quiet_s`` in a row."""
        t0 = time.monotonic()
        quiet_since: list[float] = []
        waiting = ["not looked at yet"]
        with self.cluster.client(timeout=3.0) as c, self._http() as http:
            def quiet() -> bool:
                nonlocal waiting
                try:
                    waiting = self._unsettled(c, http)
                except CanidaeError as e:
                    waiting = [f"cluster: {e.message}"]
                if waiting:
                    quiet_since.clear()
                    return False
                quiet_since[:] = quiet_since or [time.monotonic()]
                return time.monotonic() - quiet_since[0] >= self.o.quiet_s
            try:
                wait_until(quiet, self.o.settle_s, "soak: the cluster settled", interval=0.2)
            except Timeout:
                return {"settled": False, "settle_s": round(time.monotonic() - t0, 3), "waiting_on": waiting}
        return {"settled": True, "settle_s": round(time.monotonic() - t0, 3), "waiting_on": []}

    def _final_packs(self) -> list[dict[str, Any]]:
        """Every pack, read linearizably (retried for a while); failing that, the most advanced
        replica's local copy, and a note says so."""
        with self.cluster.client(timeout=5.0) as c:
            got: list[list[dict[str, Any]]] = []

            def listed() -> bool:
                got.append(list(c.iter_packs()))
                return True
            try:
                wait_until(listed, 20, "soak: a linearizable list of the packs")
                return got[-1]
            except CanidaeError as e:
                self.notes.append(f"no linearizable list of the packs at the end ({e.message}): "
                                  "the most advanced replica's local copy is checked instead")
        with self._http() as http:
            best = max(self.cluster.servers(), key=lambda s: (self._digest(http, s) or {}).get("applied", -1))
        with Client(self.cluster.target(apis=[best["api"]]), timeout=5.0) as c:
            return list(c.iter_packs(stale=True))

    def _observe(self) -> tuple[FinalObservations, list[str], dict[str, int], dict[str, dict[str, Any]]]:
        """The final observations, the agents that did not answer, members of each exec pack, and
        the final record of every pack."""
        packs = self._final_packs()
        state = {p["name"]: PackView(p["state"], p["node"], int(p["generation"])) for p in packs}
        exec_members = {p["name"]: int(p.get("members", 1)) for p in packs if p.get("driver") == "exec"}
        running: dict[str, dict[str, int]] = {}
        unreachable = []
        with self._http() as http:
            for a in self.cluster.agents:
                have = self._agent_running(http, a)
                if have is None:
                    unreachable.append(a["id"])
                else:
                    running[a["id"]] = have
            digests = {}
            for s in self.cluster.servers():
                d = self._digest(http, s)
                digests[s["id"]] = None if d is None else f"{d['applied']}:{d['digest']}"
        processes = pack_processes_by_node(self.cluster.agents)
        return (FinalObservations(state, running, digests, processes), unreachable, exec_members,
                {p["name"]: p for p in packs})


def _size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def agent_output(agent: dict[str, Any]) -> str:
    """The file an agent's stdout and stderr go to: its log lines, and any traceback of a thread
    that died (which the log file does not show)."""
    return os.path.join(os.path.dirname(agent["config"]), "stdout.log")


ALERTS = (b" ERROR ", b" CRITICAL ", b"Exception in thread", b"Traceback")


def log_alerts(agents: list[dict[str, Any]], offsets: Mapping[str, int], most: int = 5) -> dict[str, Any]:
    """node -> {"count", "first"}: the ERROR and CRITICAL lines and the tracebacks (as their last
    line) each agent wrote since ``offsets``."""
    out: dict[str, Any] = {}
    for a in agents:
        try:
            with open(agent_output(a), "rb") as f:
                f.seek(offsets.get(a["id"], 0))
                raw = f.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        lines: list[str] = []
        in_traceback = False
        for line in raw:
            if in_traceback:
                if line and not line[0].isspace():  # the exception itself ends a traceback
                    lines.append(f"traceback: {line}")
                    in_traceback = False
                continue
            if line.startswith("Traceback"):
                in_traceback = True
            elif any(m.decode() in line for m in ALERTS):
                lines.append(line)
        if lines:
            out[a["id"]] = {"count": len(lines), "first": [line[:300] for line in lines[:most]]}
    return out


def _check(ident: str, title: str, problems: list[str]) -> Check:
    return Check(ident, title, len(problems), Verdict.FAIL if problems else Verdict.PASS,
                 tuple(problems[:EXAMPLES]))


def process_problems(final: FinalObservations, exec_members: Mapping[str, int]) -> list[str]:
    """Exec packs against their real processes: the assigned node runs one per member, no other
    node runs any."""
    problems = []
    for node in sorted(final.processes):
        for name, n in sorted(final.processes[node].items()):
            view = final.state.get(name)
            if n and (view is None or view.node != node or view.state not in ASSIGNED_STATES):
                said = "absent from the state" if view is None else f"state: {view.state} on {view.node}"
                problems.append(f"{name}: {n} process(es) on {node}; {said}")
    for name, members in sorted(exec_members.items()):
        view = final.state[name]
        if view.state == "running" and view.node is not None:
            n = final.processes.get(view.node, {}).get(name, 0)
            if n != members:
                problems.append(f"{name}: {n} process(es) on {view.node}, {members} member(s) expected")
    return problems


def _processes_by_cwd() -> Iterator[tuple[int, str]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue
        except OSError:
            continue
        yield int(entry), cwd


def pack_processes_by_node(agents: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """node -> {pack: live processes} for exec packs, found by their working directory
    (``<agent data dir>/exec/packs/<pack>/work``): what really runs, whatever the agents say."""
    roots = {a["id"]: os.path.join(os.path.realpath(os.path.dirname(a["config"])), "exec", "packs") + os.sep
             for a in agents}
    out: dict[str, dict[str, int]] = {a["id"]: {} for a in agents}
    for _, cwd in _processes_by_cwd():
        for node, root in roots.items():
            if cwd.startswith(root):
                pack = cwd[len(root):].split(os.sep, 1)[0]
                out[node][pack] = out[node].get(pack, 0) + 1
    return out


def write_history(path: str, result: SoakResult) -> None:
    """The whole history, faults and observations as NDJSON: for a post-mortem of a failed soak."""
    with open(path, "w") as f:
        f.writelines(json.dumps({"fault": fe.to_dict()}) + "\n" for fe in result.faults)
        f.writelines(json.dumps({"op": op.to_dict()}) + "\n" for op in result.ops)
        final = result.final
        f.write(json.dumps({"final": {
            "state": {k: [v.state, v.node, v.generation] for k, v in final.state.items()},
            "running": final.running, "digests": final.digests, "processes": final.processes}}) + "\n")
        f.write(json.dumps({"postmortem": result.postmortem}) + "\n")


def drop_running(node: str, pack: str | None = None) -> Callable[[FinalObservations], FinalObservations]:
    """A tamper for tests of the wiring: ``node`` says it runs nothing (or not ``pack``)."""
    def tamper(final: FinalObservations) -> FinalObservations:
        running = {n: dict(p) for n, p in final.running.items()}
        if pack is None:
            running[node] = {}
        else:
            running.get(node, {}).pop(pack, None)
        return replace(final, running=running)
    return tamper


__all__ = ["FAULTS", "FAULT_HELP", "FaultEvent", "Soak", "SoakOptions", "SoakResult", "drop_running",
           "pack_processes_by_node", "process_problems", "write_history"]
