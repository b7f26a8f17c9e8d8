"""The exec driver: runs a pack's members as real processes on this node and supervises them.

What it owns, per pack generation placed here (a *run*):

* a directory ``<data_dir>/exec/packs/<pack>/`` with ``work/`` (the members' working directory),
  ``logs/`` (one size-rotated log per member, ``canidae.agent.node.packlogs``) and ``run.json`` (the
  run record: pids, process start times, generation, restarts, final state);
* where the agent runs as root, a user of its own, new for every run (uid = a per-node base + a
  slot from a counter that never hands out a slot a live run holds), so that a pack cannot signal,
  trace or read the processes and files of another pack, and ``RLIMIT_NPROC`` bounds its
  processes; when a run ends its working directory becomes root's (0700); a cgroup with its CPU,
  memory and process limits (``canidae.agent.node.isolation``); rlimits on open files;
* confinement (``canidae.agent.node.confine``): a mount namespace with a private /tmp and the
  data dir hidden, ``network = "none"``, NoNewPrivs, no capabilities;
* a scrubbed environment, read by the member only after the drop to its user: ``PATH``,
  ``HOME``, ``LANG``, the spec's ``env``, its secrets (opened here with the cluster's key,
  ``canidae.agent.secretbox``) and the ``CANIDAE_*`` variables (pack, member index, node,
  generation, agent address, mailbox URL, pack token).

Starting a member: it is spawned as ``/bin/sh`` waiting on a pipe (a *gate*), in a new session,
under the pack's user and working directory. While it waits, the agent moves it into the pack's
cgroup and sets its rlimits, writes the run record, and only then opens the gate: the shell execs
the command (same pid). So a member never runs a single instruction outside its limits, and an
agent that dies before recording a member leaves no orphan: the gate sees end-of-file and exits.
Moving a process between cgroups waits for a kernel RCU grace period (~10 ms on cgroup v1), so a
few *spare* gates wait ready in cgroups of their own: a pack's first member takes one, its cgroup
is renamed to the pack's and given the pack's limits, and the gate runs a start script (log
redirection, working directory, rlimits, then the confinement chain) in place of the command line.

Supervision: each member is watched through a pidfd on the event loop (no thread, no pipe per
member). Exits go through the restart policy: ``always`` restarts, ``on-failure`` restarts on a
non-zero exit or a signal, ``never`` does not; restarts back off exponentially up to a cap, and
after ``max_restarts`` failed runs in a row (a run longer than ``stable_s`` resets the count) the
pack fails. The cluster only hears ``running`` (all members started), ``stopped`` (stopped on
request, or every member exited 0 under ``never``/``on-failure``) and ``failed`` (with the reason:
exit code or signal, the memory limit, a command that cannot start).

After an agent restart, the run records are read back: members whose pid still names the same
process (same start time in ``/proc/<pid>/stat``) are adopted and watched again; cgroups and
per-pack-user processes that no record claims are killed. The reconciler then stops whatever the
cluster no longer assigns here. An adopted member is not a child of the new agent, so its exit
status cannot be read: it counts as a failure. A graceful agent stop stops every pack (SIGTERM,
then SIGKILL) without reporting, so that the restarted agent starts them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from typing import Any, Mapping

from canidae.agent.keyring import ClusterKeys
from canidae.agent.node import confine, packlogs
from canidae.agent.node.drivers import Report
from canidae.agent.node.isolation import Isolation, Limits, Sandbox
from canidae.core.errors import InvalidInput, NotFound

log = logging.getLogger("canidae.exec")

SH = "/bin/sh"
# The gate: set the member's own rlimits (lowering needs no privilege, so this works where the
# agent lacks CAP_SYS_RESOURCE to set them from outside), wait for the agent's "go" on stdin
# (end-of-file: the agent died, never run), then become the command.
# Whatever follows "go" on stdin is the member's environment, read after the privilege drop
# (``canidae.agent.node.confine``).
GATE = '{ulimits} || exit 112; read -r _ || exit 111; exec "$@"'
# Dropping to the pack's user in the gate (rather than in the forked child) lets the agent spawn
# with vfork: a fork of a large agent costs ~10 ms, a vfork ~0.2 ms.
SETPRIV = confine.SETPRIV
# A spare gate is started before its pack is known: it reads the path of its start script.
SPARE_GATE = 'read -r script || exit 111; . "$script"'
GATE_ABORTED = 111
GATE_LIMITS = 112
RLIMIT_OF = {"nofile": resource.RLIMIT_NOFILE, "core": resource.RLIMIT_CORE, "nproc": resource.RLIMIT_NPROC,
             "as": resource.RLIMIT_AS}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UID_BASE = 1 << 30
UID_SLOTS = 1 << 14
UID_COUNTER = "uid-next"  # under the packs' root: the next pack user slot (see ExecDriver._alloc_slot)
CANNOT_RUN = {126: "is not executable", 127: "was not found"}
# What the gate's shell, env or setpriv print when they cannot exec the command: an exit 126/127
# without one of these in the member's log is the command's own exit status, not a missing command.
GATE_EXEC_ERRORS = (b"canidae-gate:", b"env: ", b"setpriv: ")


@dataclass(frozen=True)
class ExecSettings:
    """Knobs of the exec driver; ``from_env`` reads ``CANIDAE_EXEC_<NAME>`` overrides."""

    grace_s: float = 5.0          # SIGTERM -> SIGKILL on stop
    close_grace_s: float = 2.0    # the same when the agent itself stops
    backoff_s: float = 0.2        # first restart delay; doubles per failed run in a row
    backoff_cap_s: float = 30.0
    max_restarts: int = 10        # failed runs in a row before the pack fails
    stable_s: float = 10.0        # a run this long resets the count
    log_max_bytes: int = 8 << 20
    log_keep: int = 2
    log_check_s: float = 1.0
    max_procs: int = 512          # processes per pack
    max_files: int = 1024         # open files per member
    spares: int = 2               # gates kept ready in cgroups of their own (see Spare)
    isolation: str = "auto"       # auto | cgroup2 | cgroup1 | rlimits
    pack_users: str = "auto"      # auto (when root) | on | off

    @staticmethod
    def from_env(env: Mapping[str, str]) -> ExecSettings:
        kw: dict[str, Any] = {}
        for f in fields(ExecSettings):
            raw = env.get(f"CANIDAE_EXEC_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(ExecSettings(), f.name))
            try:
                kw[f.name] = kind(raw)
            except ValueError:
                raise InvalidInput(f"CANIDAE_EXEC_{f.name.upper()} must be a {kind.__name__}, got {raw!r}") from None
        return ExecSettings(**kw)


def proc_start_ticks(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if not rest or rest[0] == b"Z":
        return None
    return int(rest[19])


def describe_exit(rc: int | None) -> str:
    if rc is None:
        return "exited (status unknown: the agent restarted meanwhile)"
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name.removeprefix('SIG')}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited {rc}"


def _can_exec(path: str, uid: int | None, gid: int | None) -> bool:
    """Whether ``uid`` may execute ``path`` (the file and every directory above it), by mode bits."""
    if uid is None:
        return os.access(path, os.X_OK)

    def allowed(st: os.stat_result) -> bool:
        if st.st_uid == uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid == gid:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)

    path = os.path.abspath(path)
    d = os.path.dirname(path)
    while True:
        try:
            if not allowed(os.stat(d)):
                return False
        except OSError:
            return False
        if d == "/":
            break
        d = os.path.dirname(d)
    try:
        return allowed(os.stat(path))
    except OSError:
        return False


class CannotStart(Exception):
    """The command of a pack cannot run here: a clear reason, no restart."""


class Member:
    __slots__ = ("index", "pid", "start_ticks", "proc", "pidfd", "started", "restarts", "failures",
                 "last_exit", "last_exit_at", "timer", "alive")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.start_ticks: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # None: adopted, not our child
        self.pidfd = -1
        self.started = 0.0
        self.restarts = 0
        self.failures = 0
        self.last_exit = ""
        self.last_exit_at = 0  # wall clock, ms: when the member last exited (0: never)
        self.timer: asyncio.TimerHandle | None = None
        self.alive = False

    def record(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.pid, "start_ticks": self.start_ticks, "restarts": self.restarts,
                "last_exit": self.last_exit, "last_exit_at": self.last_exit_at}


class Spare:
    """A gate started ahead of need and already moved into a cgroup of its own (``p-.spare-N``):
    starting a pack then renames that cgroup instead of moving a process, which on cgroup v1 costs
    a kernel RCU grace period (~10 ms). It reads the path of a start script, then runs it."""

    __slots__ = ("gate", "proc", "sandbox", "start_ticks")

    def __init__(self, sandbox: Sandbox, proc: subprocess.Popen[bytes], gate: int) -> None:
        self.sandbox, self.proc, self.gate = sandbox, proc, gate
        self.start_ticks: int | None = None


class Run:
    """One generation of one pack on this node."""

    __slots__ = ("name", "generation", "spec", "slot", "uid", "gid", "dir", "work", "logs", "sandbox", "limits",
                 "rlimits", "members", "state", "reason", "oom_seen", "all_exited", "started_at", "crashloop",
                 "token", "opened")

    def __init__(self, name: str, generation: int, spec: dict[str, Any], pack_dir: str) -> None:
        self.name, self.generation, self.spec = name, generation, spec
        self.slot = -1
        self.uid: int | None = None
        self.gid: int | None = None
        self.dir = pack_dir
        self.work = os.path.join(pack_dir, "work")
        self.logs = os.path.join(pack_dir, "logs")
        self.sandbox = Sandbox(name)
        self.limits = Limits()
        self.rlimits: list[tuple[int, int]] = []
        self.members = [Member(i) for i in range(int(spec.get("members", 1)))]
        self.state = "running"  # running | stopping | done
        self.reason = ""
        self.oom_seen = 0
        self.all_exited: asyncio.Event | None = None
        self.started_at = time.time()
        self.crashloop = False  # reported to the cluster as crash-looping, not yet recovered
        # The run's pack token, signed once at its start: every member (and every restart of one)
        # gets the same, valid as long as the run and its key are.
        self.token = ""
        # Its secrets opened at its start (memory only): a member restarted after the key that
        # sealed them was rotated and retired still gets them.
        self.opened: dict[str, str] | None = None

    @property
    def policy(self) -> str:
        return str(self.spec.get("restart", "on-failure"))


class ExecDriver:
    """Runs exec packs; see the module docstring for the whole story."""

    name = "exec"

    def __init__(self, report: Report, *, data_dir: str, node_id: str, token: str, api: str,
                 settings: ExecSettings | None = None, ca_pem: str | None = None) -> None:
        self._report = report
        self.node_id, self.token, self.api = node_id, token, api
        # The cluster CA's certificate (public), given to members as text: their mailbox is HTTPS.
        # None: the agent serves plain HTTP (--insecure-http).
        self.ca_pem = ca_pem
        self.settings = settings or ExecSettings.from_env(os.environ)
        self.root = os.path.join(os.path.abspath(data_dir), "exec", "packs")
        self.data_dir = os.path.abspath(data_dir)
        self.runs: dict[str, Run] = {}
        self.finished: dict[str, tuple[int, str, str]] = {}  # name -> (generation, state, reason)
        self.isolation: Isolation | None = None
        self.pack_users = False
        self.namespaces = False
        self.keys = ClusterKeys(data_dir, "", token)  # the node runtime gives the agent's own
        self.uid_base = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_start: dict[str, tuple[int, dict[str, Any]]] = {}
        self._housekeeping: asyncio.Task[Any] | None = None
        self._ulimit_flags: dict[str, str] = {}
        self._resolved: dict[tuple[str, str, bool], tuple[float, str]] = {}
        self._spares: list[Spare] = []
        self._spare_seq = 0
        self._refilling = False
        self._forgotten: set[str] = set()  # deleted packs whose files go once their run has ended
        self.closed = False

    # ------------------------------------------------------------------ opening: isolation and adoption

    def open(self) -> None:
        """Choose the isolation mechanism, adopt live runs and kill what no record claims (once)."""
        if self.loop is not None:
            return
        self.loop = asyncio.get_running_loop()
        s = self.settings
        want_users = s.pack_users == "on" or (s.pack_users == "auto" and os.geteuid() == 0)
        # The drop to a pack's user is setpriv's (see canidae.agent.node.confine).
        self.pack_users = want_users and os.geteuid() == 0 and bool(SETPRIV)
        if want_users and not self.pack_users:
            log.error("per-pack users need root and setpriv (util-linux): packs run as the agent's user")
        self.namespaces = self.pack_users and confine.available(True)["private_tmp"]
        key = hashlib.sha256(f"{self.node_id}\0{self.data_dir}".encode()).digest()
        self.uid_base = UID_BASE + (int.from_bytes(key[:2], "big") * UID_SLOTS)
        try:
            self.isolation = Isolation.detect(self.node_id, self.data_dir, s.isolation)
        except ValueError as e:
            log.error("%s; falling back on rlimits", e)
            self.isolation = Isolation("rlimits", {}, str(e))
        log.info("exec driver: isolation %s (%s); per-pack users %s", self.isolation.mechanism,
                 self.isolation.detail, "on" if self.pack_users else "off")
        # Private to the agent: a member reaches its working directory through its own mount
        # namespace (canidae.agent.node.confine), never through these directories.
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        os.chmod(os.path.dirname(self.root), 0o700)
        os.chmod(self.root, 0o700)
        self._ulimit_flags = _probe_ulimit_flags()
        self._adopt()
        self._housekeeping = self._spawn_task(self._housekeeping_loop())
        self._spawn_task(self._refill())

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _adopt(self) -> None:
        assert self.isolation is not None
        for name in sorted(os.listdir(self.root)):
            rec = self._read_record(name)
            if rec is None:
                continue
            if rec.get("state") == "exited":
                self.finished[name] = (rec["generation"], rec["final"], rec["reason"])
                continue
            if rec.get("state") != "running":
                continue
            run = Run(name, rec["generation"], rec["spec"], os.path.join(self.root, name))
            run.slot, run.uid, run.gid = rec.get("slot", -1), rec.get("uid"), rec.get("gid")
            run.sandbox = self.isolation.sandbox_of(name)
            run.limits = self._limits(run.spec)
            run.rlimits = self.isolation.rlimits(run.limits, run.uid is not None)
            run.oom_seen = self.isolation.oom_kills(run.sandbox)
            run.all_exited = asyncio.Event()
            alive = 0
            for mrec in rec.get("members", []):
                if mrec["index"] >= len(run.members):
                    continue
                m = run.members[mrec["index"]]
                m.restarts, m.last_exit = mrec.get("restarts", 0), mrec.get("last_exit", "")
                m.last_exit_at = mrec.get("last_exit_at", 0)
                m.pid, m.start_ticks = mrec.get("pid", 0), mrec.get("start_ticks")
                if m.pid and m.start_ticks is not None and proc_start_ticks(m.pid) == m.start_ticks:
                    try:
                        m.pidfd = os.pidfd_open(m.pid)
                    except OSError:
                        continue
                    m.alive, m.started = True, time.monotonic()
                    assert self.loop is not None
                    self.loop.add_reader(m.pidfd, self._on_exit, run, m)
                    alive += 1
            if not alive:
                # Nothing of it survived: clean up; the reconciler starts it again if still assigned.
                self._kill_sandbox_now(run)
                self._write_record(run, "lost")
                self._retire_work(run)
                continue
            log.info("adopted pack %s generation %d (%d of %d members alive)", name, run.generation, alive,
                     len(run.members))
            self.runs[name] = run
            for m in run.members:
                if not m.alive:
                    self._member_exited(run, m, None)
        # Anything in our cgroups or running as one of our pack users that no run claims is an orphan.
        for name in self.isolation.leftovers():
            if name not in self.runs:
                self._kill_sandbox_now(Run(name, 0, {}, os.path.join(self.root, name)))
        if self.pack_users:
            claimed = {r.uid for r in self.runs.values()}
            for pid, uid in _processes_by_uid(self.uid_base, self.uid_base + UID_SLOTS):
                if uid not in claimed:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def _kill_sandbox_now(self, run: Run) -> None:
        assert self.isolation is not None
        sb = self.isolation.sandbox_of(run.name)
        for _ in range(50):
            if not self.isolation.signal_all(sb, signal.SIGKILL):
                break
            time.sleep(0.01)
        for _ in range(50):
            if self.isolation.remove(sb):
                break
            time.sleep(0.01)

    # ------------------------------------------------------------------ PackDriver

    def running(self) -> dict[str, int]:
        self.open()
        return {name: run.generation for name, run in self.runs.items()}

    async def start(self, pack: str, generation: int, spec: dict[str, Any]) -> None:
        if self.closed:  # the agent is stopping: a start now would outlive it
            return
        self.open()
        run = self.runs.get(pack)
        if run is not None:
            if run.generation == generation:
                if run.state == "running":
                    await self._report(pack, generation, "running", "")
                return
            # An older generation still runs here: start once it is gone (the reconciler stops it).
            self._pending_start[pack] = (generation, spec)
            if run.state == "running":
                await self.stop(pack, run.generation, "replaced by a new placement")
            return
        done = self.finished.get(pack)
        if done is not None and done[0] > generation:
            return
        if done is not None and done[0] == generation and done[1] != "stopped":
            # It ended by itself (exited, failed): say so again instead of running it twice.
            await self._report(pack, generation, done[1], done[2])
            return
        # A generation stopped here on an instruction may be asked to run again (the cluster
        # still wants it running): the newer instruction wins.
        await self._launch(pack, generation, spec)

    async def stop(self, pack: str, generation: int, reason: str) -> None:
        self.open()
        run = self.runs.get(pack)
        if run is None or run.generation != generation:
            if self._pending_start.get(pack, (None,))[0] == generation:
                del self._pending_start[pack]
            await self._report(pack, generation, "stopped", reason)
            return
        if run.state != "running":
            return
        run.state = "stopping"
        self._spawn_task(self._stop(run, reason, self.settings.grace_s, report=True))

    async def forget(self, pack: str) -> None:
        """The pack was deleted: remove its directory (work, logs, run record) once no run of it is
        left here; a run still stopping removes it when it ends."""
        self.open()
        self._pending_start.pop(pack, None)
        if pack in self.runs:
            self._forgotten.add(pack)
            return
        self._remove_files(pack)

    def _remove_files(self, pack: str) -> None:
        self._forgotten.discard(pack)
        self.finished.pop(pack, None)
        path = os.path.join(self.root, pack)
        if os.path.dirname(path) == self.root:  # a valid pack name never leaves the root
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path)

    async def close(self) -> None:
        """The agent stops: stop every pack (without reporting) and remove the isolation parents."""
        if self.loop is None or self.closed:
            self.closed = True
            return
        self.closed = True
        stops = []
        for run in list(self.runs.values()):
            if run.state == "running":
                run.state = "stopping"
                stops.append(self._stop(run, "agent stopped", self.settings.close_grace_s, report=False))
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        while self._spares:
            self._discard(self._spares.pop())
        await asyncio.gather(*stops, return_exceptions=True)
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.close_grace_s + 1)
        assert self.isolation is not None
        self.isolation.close()

    # ------------------------------------------------------------------ operations for the API

    def kill(self, pack: str, sig: int) -> dict[str, Any]:
        """Send ``sig`` to every live member's process group; the restart policy sees the exits."""
        self.open()
        run = self.runs.get(pack)
        if run is None:
            raise NotFound(f"pack {pack} runs no process on node {self.node_id}")
        sent = []
        for m in run.members:
            if m.alive:
                try:
                    os.killpg(m.pid, sig)
                except ProcessLookupError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(m.pid, sig)
                sent.append(m.index)
        return {"pack": pack, "node": self.node_id, "signal": signal.Signals(sig).name.removeprefix("SIG"),
                "members": sent}

    def status(self, pack: str) -> dict[str, Any]:
        self.open()
        assert self.isolation is not None
        run = self.runs.get(pack)
        if run is None:
            rec = self._read_record(pack)
            if rec is None:
                raise NotFound(f"pack {pack} has never run on node {self.node_id}")
            return {"pack": pack, "node": self.node_id, "generation": rec["generation"],
                    "state": rec.get("final") or rec.get("state"), "reason": rec.get("reason", ""),
                    "uid": rec.get("uid"), "members": rec.get("members", []), "isolation": self.isolation.mechanism,
                    "logs": run_logs_dir(self.root, pack)}
        return {"pack": pack, "node": self.node_id, "generation": run.generation, "state": run.state,
                "reason": run.reason, "uid": run.uid, "restart": run.policy, "isolation": self.isolation.mechanism,
                "cgroups": dict(run.sandbox.dirs), "memory_bytes": self.isolation.memory_bytes(run.sandbox),
                "limits": {"cpu": run.limits.cpu_milli, "mem": run.limits.mem_mib, "procs": run.limits.max_procs,
                           "files": run.limits.max_files},
                "members": [{**m.record(), "running": m.alive} for m in run.members], "logs": run.logs}

    def describe(self) -> dict[str, Any]:
        self.open()
        assert self.isolation is not None
        root = self.pack_users  # the protections below need the drop from root to a pack user
        given = {k: v and (root or k == "no_new_privs") for k, v in confine.available(root).items()}
        if not self.namespaces:
            given.update(private_tmp=False, hidden_data_dir=False, network_none=False)
        return {**self.isolation.describe(), "pack_users": self.pack_users, "confinement": given,
                "env_after_drop": True, "uid_reuse": "never while a run holds the uid; ended runs' files are root's",
                "uid_range": [self.uid_base, self.uid_base + UID_SLOTS - 1] if self.pack_users else None,
                "packs": len(self.runs), "settings": {f.name: getattr(self.settings, f.name)
                                                      for f in fields(ExecSettings)}}

    # ------------------------------------------------------------------ launching

    def _limits(self, spec: dict[str, Any]) -> Limits:
        return Limits(cpu_milli=int(spec.get("cpu", 0)), mem_mib=int(spec.get("mem", 0)),
                      max_procs=self.settings.max_procs, max_files=self.settings.max_files)

    def _ulimits(self, run: Run) -> str:
        parts = []
        for name, value in run.rlimits:
            flag = self._ulimit_flags.get(name)
            if flag is None:
                continue
            hard = resource.getrlimit(RLIMIT_OF[name])[1]
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)  # raising a limit would need a privilege the member lacks
            if name == "as":
                value //= 1024  # kilobytes
            parts.append(f"ulimit {flag} {value}")
        return " && ".join(parts) or "true"

    def _alloc_slot(self) -> int:
        """A pack user never used on this node before (every run gets a new one), so no process or
        file of an earlier pack can belong to it. Slots go round after UID_SLOTS runs: then a slot
        is skipped while a run holds it or a process runs under it (an ended run's files are root's)."""
        path = os.path.join(self.root, UID_COUNTER)
        try:
            with open(path) as f:
                nxt = int(f.read().strip() or 0)
        except (OSError, ValueError):
            nxt = 0
        used = {r.slot for r in self.runs.values()}
        if nxt >= UID_SLOTS:
            used |= {uid - self.uid_base for uid, _ in _processes_by_uid(self.uid_base, self.uid_base + UID_SLOTS)}
        for i in range(UID_SLOTS):
            slot = (nxt + i) % UID_SLOTS
            if slot not in used:
                break
        else:
            raise CannotStart(f"node {self.node_id} has no free pack user (at most {UID_SLOTS} exec packs)")
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            # Kept counting past UID_SLOTS: it says that slots have gone round once.
            f.write(str(nxt + i + 1 if nxt + i + 1 < 2 * UID_SLOTS else UID_SLOTS))
        os.replace(tmp, path)
        return slot

    def _retire_work(self, run: Run) -> None:
        """A run has ended and none of its processes is left: its working directory becomes root's,
        0700, so that its user owns nothing here (kept for inspection; the next run of the same
        pack gets the files under its own user)."""
        if run.uid is None or not os.path.isdir(run.work):
            return
        try:
            for top, dirs, files in os.walk(run.work):
                for n in dirs + files:
                    os.lchown(os.path.join(top, n), 0, 0)
            os.chown(run.work, 0, 0)
            os.chmod(run.work, 0o700)
        except OSError as e:
            log.warning("cannot hand the working directory of %s back to root: %s", run.name, e)

    def _env(self, run: Run, index: int) -> dict[str, str]:
        env = {"PATH": f"{DEFAULT_PATH}:{os.path.dirname(sys.executable)}", "HOME": run.work, "LANG": "C.UTF-8"}
        env.update(run.spec.get("env") or {})
        env.update(self._open_secrets(run))
        if not run.token:
            run.token = self.keys.pack_token(run.name, run.generation, self.node_id)
        token = run.token
        env.update(CANIDAE_PACK=run.name, CANIDAE_MEMBER=str(index), CANIDAE_MEMBERS=str(len(run.members)),
                   CANIDAE_NODE=self.node_id, CANIDAE_GENERATION=str(run.generation), CANIDAE_ADDR=self.api,
                   CANIDAE_MAILBOX=f"{'http' if self.ca_pem is None else 'https'}://{self.api}/v1/yips/{run.name}",
                   CANIDAE_TOKEN=token, CANIDAE_PACK_TOKEN=token,
                   CANIDAE_CONFIG=os.path.join(run.work, ".canidae.toml"))
        if self.ca_pem is not None:
            env.update(CANIDAE_CA_PEM=self.ca_pem)
        else:
            env.update(CANIDAE_INSECURE_HTTP="1")
        return env

    def _confinement(self, run: Run) -> confine.Confinement:
        return confine.Confinement(uid=run.uid, gid=run.gid, network=str(run.spec.get("network", "host")),
                                   work=run.work, data_dir=self.data_dir, fstab=os.path.join(run.dir, "mounts.fstab"),
                                   namespaces=self.namespaces)

    def _open_secrets(self, run: Run) -> dict[str, str]:
        """The pack's secrets in the clear, for its members' environment only (never logged or stored)."""
        sealed = run.spec.get("secrets") or {}
        if not sealed:
            return {}
        try:
            if run.opened is None:
                run.opened = {k: self.keys.open(k, v) for k, v in sealed.items()}
            return run.opened
        except InvalidInput as e:
            raise CannotStart(e.message) from None

    def _env_payload(self, run: Run, index: int) -> bytes:
        try:
            return confine.env_payload(self._env(run, index))
        except ValueError as e:  # the spec was validated when created: only a damaged record gets here
            raise CannotStart(str(e)) from None

    def _prepare(self, run: Run) -> None:
        """Working and log directories, owned by the pack's user; CannotStart with the reason."""
        try:
            try:
                os.mkdir(run.dir, 0o700)
                os.mkdir(run.logs, 0o700)
                os.mkdir(run.work, 0o700)
                fresh = True
            except FileExistsError:  # an earlier run of this pack on this node
                fresh = False
                os.makedirs(run.logs, mode=0o700, exist_ok=True)
                if os.path.lexists(run.work) and not os.path.isdir(run.work):
                    raise CannotStart(f"working directory {run.work} exists and is not a directory") from None
                os.makedirs(run.work, mode=0o700, exist_ok=True)
            if run.uid is not None:
                if fresh:
                    os.chown(run.work, run.uid, run.gid)
                elif os.lstat(run.work).st_uid != run.uid:  # a former run's user: hand its files over
                    for top, dirs, files in os.walk(run.work):
                        for n in dirs + files:
                            os.lchown(os.path.join(top, n), run.uid, run.gid)
                    os.chown(run.work, run.uid, run.gid)
            c = self._confinement(run)
            if c.network == "none" and not c.namespaces:
                raise CannotStart("network none needs an agent running as root with unshare and mount "
                                  "(util-linux)")
            if c.namespaces:
                confine.write_fstab(c)
        except CannotStart:
            raise
        except OSError as e:
            raise CannotStart(f"cannot prepare working directory {run.work}: {e.strerror}") from None

    def _resolve(self, run: Run, env: dict[str, str]) -> str:
        """The executable the command names, checked as the pack's user would see it.

        Found programs are remembered for a few seconds (per PATH and user): starting many packs
        of one command then costs one lookup, not one walk of PATH per pack.
        """
        argv = run.spec.get("command") or []
        if not argv:
            raise CannotStart("the exec driver needs a command")
        prog = argv[0]
        search = env.get("PATH", "")
        key = (prog, search if "/" not in prog else run.work, run.uid is None)
        hit = self._resolved.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        if "/" in prog:
            path = prog if os.path.isabs(prog) else os.path.join(run.work, prog)
            if not os.path.exists(path):
                raise CannotStart(f"command {prog!r} not found")
        else:
            path = ""
            for d in search.split(":"):
                cand = os.path.join(d or ".", prog)
                if os.path.isfile(cand) and _can_exec(cand, run.uid, run.gid):
                    path = cand
                    break
            if not path:
                raise CannotStart(f"command {prog!r} not found in PATH ({search})")
        if not os.path.isfile(path):
            raise CannotStart(f"command {prog!r} is not a file")
        if not _can_exec(path, run.uid, run.gid):
            who = f" by the pack's user (uid {run.uid})" if run.uid is not None else ""
            raise CannotStart(f"command {prog!r} is not executable{who}")
        if len(self._resolved) > 1000:
            self._resolved.clear()
        # Pack users own no file outside their work dir: what one may run, all may.
        self._resolved[key] = (time.monotonic() + 5.0, path)
        return path

    async def _launch(self, name: str, generation: int, spec: dict[str, Any]) -> None:
        assert self.isolation is not None
        t0 = time.perf_counter()
        self.finished.pop(name, None)
        run = Run(name, generation, spec, os.path.join(self.root, name))
        run.all_exited = asyncio.Event()
        run.limits = self._limits(spec)
        try:
            if self.pack_users:
                run.slot = self._alloc_slot()
                run.uid = run.gid = self.uid_base + run.slot
            run.rlimits = self.isolation.rlimits(run.limits, run.uid is not None)
            self._prepare(run)
            self._resolve(run, self._env(run, 0))
            spare = self._take_spare(run)
            if spare is None:
                try:
                    run.sandbox = self.isolation.create(name, run.limits)
                except OSError as e:
                    raise CannotStart(f"cannot create the pack's cgroup: {e.strerror}") from None
            run.oom_seen = self.isolation.oom_kills(run.sandbox)
            self.runs[name] = run
            gates: list[tuple[int, bytes]] = []
            try:
                for m in run.members:
                    if m.index == 0 and spare is not None:
                        gates.append(self._use_spare(run, m, spare))
                    else:
                        gates.append((self._spawn(run, m), b"go\n" + self._env_payload(run, m.index)))
            except CannotStart:
                for g, _ in gates:
                    os.close(g)
                raise
            self._write_record(run, "running")
            for g, word in gates:
                _open_gate(g, word)
        except CannotStart as e:
            self.runs.pop(name, None)
            await self._fail_to_start(run, str(e))
            return
        log.debug("pack %s generation %d: %d member(s) started in %.1f ms", name, generation, len(run.members),
                  (time.perf_counter() - t0) * 1000)
        await self._report(name, generation, "running", "")
        # Starting is synchronous work: let heartbeats and requests through between two packs, or a
        # node starting hundreds of packs at once would look dead to the leader.
        await asyncio.sleep(0)

    def _spawn(self, run: Run, m: Member) -> int:
        """Start one member behind its gate; returns the gate's write end (write b"go" to run it)."""
        assert self.isolation is not None and self.loop is not None
        argv = [SH, "-c", GATE.format(ulimits=self._ulimits(run)), "canidae-gate",
                *confine.argv(self._confinement(run), list(run.spec["command"]))]
        r, w = os.pipe()
        try:
            out = packlogs.open_for_member(run.logs, m.index)
        except OSError as e:
            os.close(r)
            os.close(w)
            raise CannotStart(f"cannot open the log of member {m.index}: {e.strerror}") from None
        try:
            # Root's side sees no variable of the spec: they reach the member through the gate's stdin.
            proc = subprocess.Popen(argv, stdin=r, stdout=out, stderr=out, cwd=run.work, env={"PATH": DEFAULT_PATH},
                                    start_new_session=True, close_fds=True)
        except OSError as e:
            os.close(w)
            raise CannotStart(f"cannot start member {m.index}: {e.strerror}") from None
        finally:
            os.close(r)
            os.close(out)
        try:
            self.isolation.attach(run.sandbox, proc.pid)
            m.pidfd = os.pidfd_open(proc.pid)
        except OSError as e:
            os.close(w)  # the gate sees end-of-file: the member never runs
            proc.wait()
            raise CannotStart(f"cannot confine member {m.index}: {e.strerror}") from None
        m.proc, m.pid, m.alive, m.started = proc, proc.pid, True, time.monotonic()
        m.start_ticks = proc_start_ticks(proc.pid)
        self.loop.add_reader(m.pidfd, self._on_exit, run, m)
        return w

    # ------------------------------------------------------------------ spares

    def _spares_usable(self) -> bool:
        assert self.isolation is not None
        return self.settings.spares > 0 and self.isolation.mechanism != "rlimits" and not self.closed

    async def _refill(self) -> None:
        """Keep ``settings.spares`` gates waiting in cgroups of their own, moved there off the loop."""
        if self._refilling or not self._spares_usable():
            return
        self._refilling = True
        assert self.isolation is not None and self.loop is not None
        try:
            while len(self._spares) < self.settings.spares and not self.closed:
                self._spare_seq += 1
                sb = self.isolation.create(f".spare-{self._spare_seq}", Limits(max_procs=self.settings.max_procs))
                r, w = os.pipe()
                try:
                    proc = subprocess.Popen([SH, "-c", SPARE_GATE], stdin=r, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, cwd="/", env={"PATH": DEFAULT_PATH},
                                            start_new_session=True, close_fds=True)
                finally:
                    os.close(r)
                spare = Spare(sb, proc, w)
                try:
                    await self.loop.run_in_executor(None, self.isolation.attach, sb, proc.pid)
                except OSError as e:
                    log.warning("no spare gates: %s", e)
                    self._discard(spare)
                    return
                spare.start_ticks = proc_start_ticks(proc.pid)
                if self.closed:
                    self._discard(spare)
                    return
                self._spares.append(spare)
        except OSError as e:
            log.warning("no spare gates: %s", e)
        finally:
            self._refilling = False

    def _take_spare(self, run: Run) -> Spare | None:
        """A ready gate whose cgroup becomes the pack's (renamed, limits set), or None."""
        assert self.isolation is not None
        if not self._spares or not self._spares_usable():
            return None
        spare = self._spares.pop()
        self._spawn_task(self._refill())
        if spare.proc.poll() is not None:
            self._discard(spare)
            return None
        try:
            sb = self.isolation.take_over(spare.sandbox, run.name, run.limits)
        except OSError as e:
            log.warning("cannot hand a spare gate to %s: %s", run.name, e)
            sb = None
        if sb is None:
            self._discard(spare)
            return None
        run.sandbox = sb
        return spare

    def _use_spare(self, run: Run, m: Member, spare: Spare) -> tuple[int, bytes]:
        """Member ``m`` runs in ``spare``: write its start script; returns (gate, the script's path
        followed by the member's environment, which the confined member reads from the same pipe)."""
        assert self.loop is not None
        log_file = packlogs.log_path(run.logs, m.index)
        script = os.path.join(run.dir, f"start-{m.index}.sh")
        # The script holds no variable of the spec (values could be secrets): those follow on stdin.
        lines = [f"exec >>{shlex.quote(log_file)} 2>&1",
                 f"cd {shlex.quote(run.work)} || exit {GATE_LIMITS}",
                 f"{self._ulimits(run)} || exit {GATE_LIMITS}",
                 "exec " + " ".join(shlex.quote(a) for a in confine.argv(self._confinement(run),
                                                                        list(run.spec["command"])))]
        try:
            fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
            m.pidfd = os.pidfd_open(spare.proc.pid)
        except OSError as e:
            self._discard(spare)
            raise CannotStart(f"cannot start member {m.index}: {e.strerror}") from None
        m.proc, m.pid, m.alive, m.started = spare.proc, spare.proc.pid, True, time.monotonic()
        m.start_ticks = spare.start_ticks
        self.loop.add_reader(m.pidfd, self._on_exit, run, m)
        return spare.gate, f"{script}\n".encode() + self._env_payload(run, m.index)

    def _discard(self, spare: Spare) -> None:
        assert self.isolation is not None
        with contextlib.suppress(OSError):
            os.close(spare.gate)  # the gate reads end-of-file and exits
        with contextlib.suppress(OSError):
            spare.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            spare.proc.wait(timeout=2)
        for _ in range(100):
            if self.isolation.remove(spare.sandbox):
                break
            time.sleep(0.002)

    async def _fail_to_start(self, run: Run, reason: str) -> None:
        assert self.isolation is not None
        log.warning("pack %s cannot start: %s", run.name, reason)
        run.state, run.reason = "done", reason
        for m in run.members:
            self._unwatch(m)
        if run.sandbox.dirs:
            await self._kill_all(run)
        await asyncio.get_running_loop().run_in_executor(None, self._retire_work, run)
        self.finished[run.name] = (run.generation, "failed", reason)
        with contextlib.suppress(OSError):
            self._write_record(run, "exited", final="failed")
        await self._report(run.name, run.generation, "failed", reason)

    # ------------------------------------------------------------------ supervision

    def _unwatch(self, m: Member) -> None:
        if m.pidfd >= 0:
            if self.loop is not None:
                self.loop.remove_reader(m.pidfd)
            os.close(m.pidfd)
            m.pidfd = -1
        if m.timer is not None:
            m.timer.cancel()
            m.timer = None

    def _on_exit(self, run: Run, m: Member) -> None:
        """The member's pidfd is readable: it exited. Read its status (when ours) and decide."""
        rc: int | None = None
        if m.proc is not None:
            # Whatever the member left in its process group goes with it. Before reaping: until
            # then the pid (and so the group id) cannot be reused by another process.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(m.pid, signal.SIGKILL)
            rc = m.proc.poll()
            if rc is None:  # not reaped yet (cannot happen for a readable pidfd); look again later
                return
        self._unwatch(m)
        m.alive, m.proc = False, None
        self._member_exited(run, m, rc)

    def _member_exited(self, run: Run, m: Member, rc: int | None) -> None:
        assert self.isolation is not None
        m.last_exit = describe_exit(rc)
        m.last_exit_at = int(time.time() * 1000)
        ran = time.monotonic() - m.started
        if run.state != "running":
            if run.all_exited is not None and not any(x.alive for x in run.members):
                run.all_exited.set()
            return
        oom = self.isolation.oom_kills(run.sandbox)
        if oom > run.oom_seen:
            self._finish(run, "failed", f"memory limit {run.limits.mem_mib} MiB exceeded (OOM kill)")
            return
        if rc in CANNOT_RUN and m.restarts == 0 and ran < 2.0 and self._gate_could_not_exec(run, m):
            self._finish(run, "failed", f"member {m.index}: command {run.spec['command'][0]!r} "
                                        f"{CANNOT_RUN[rc]} ({describe_exit(rc)})")
            return
        if rc in (GATE_ABORTED, GATE_LIMITS, confine.CONFINE_FAILED) and ran < 2.0 and m.restarts == 0:
            self._finish(run, "failed", f"member {m.index} could not be started" +
                         {GATE_LIMITS: " (its rlimits could not be set)",
                          confine.CONFINE_FAILED: " (its namespaces or environment could not be set up; "
                                                  "see pack logs)"}.get(rc, ""))
            return
        failed = rc != 0
        if ran >= self.settings.stable_s:
            m.failures = 0
        policy = run.policy
        if not failed and policy != "always":
            self._persist(run)
            if not any(x.alive or x.timer is not None for x in run.members) \
                    and all(x.last_exit == "exited 0" for x in run.members):
                self._finish(run, "exited", "exited 0")
            return
        if failed and policy == "never":
            self._finish(run, "failed", f"member {m.index} {m.last_exit}")
            return
        if failed:
            m.failures += 1
            if m.failures > self.settings.max_restarts:
                self._finish(run, "failed", f"gave up after {m.restarts} restarts: member {m.index} {m.last_exit}")
                return
        delay = min(self.settings.backoff_cap_s, self.settings.backoff_s * (2 ** max(0, m.failures - 1)))
        assert self.loop is not None
        m.timer = self.loop.call_later(delay, self._restart_member, run, m)
        self._persist(run)
        if failed and rc is not None and ran < self.settings.stable_s and not run.crashloop:
            # Failing soon after it started (an adopted member, rc None, may have run for long),
            # again and again under backoff: say so to the cluster
            # (the pack still runs and holds its node), once, until its members stay up.
            run.crashloop = True
            self._spawn_task(self._report(run.name, run.generation, "crashloop",
                                          f"member {m.index} {m.last_exit} after {ran:.1f} s; restarting"))

    def _gate_could_not_exec(self, run: Run, m: Member) -> bool:
        """Whether the member's log ends with the gate failing to exec the command."""
        try:
            with open(packlogs.log_path(run.logs, m.index), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read()
        except OSError:
            return True  # no evidence either way: keep the old, cautious reading
        return any(marker in tail for marker in GATE_EXEC_ERRORS)

    def _check_recovered(self, run: Run) -> None:
        """A crash-looping run whose members have all stayed up for ``stable_s`` runs again."""
        if run.state != "running" or not run.crashloop or self.runs.get(run.name) is not run:
            return
        now = time.monotonic()
        if all(m.alive and now - m.started >= self.settings.stable_s - 0.05 for m in run.members):
            run.crashloop = False
            self._spawn_task(self._report(run.name, run.generation, "running", ""))

    def _restart_member(self, run: Run, m: Member) -> None:
        m.timer = None
        if run.state != "running" or self.runs.get(run.name) is not run:
            return
        m.restarts += 1
        try:
            gate = self._spawn(run, m)
        except CannotStart as e:
            self._finish(run, "failed", str(e))
            return
        self._persist(run)
        _open_gate(gate, b"go\n" + self._env_payload(run, m.index))
        if run.crashloop:
            assert self.loop is not None
            self.loop.call_later(self.settings.stable_s, self._check_recovered, run)

    def _persist(self, run: Run) -> None:
        try:
            self._write_record(run, "running")
        except OSError as e:
            log.warning("cannot write the run record of %s: %s", run.name, e)

    def _finish(self, run: Run, state: str, reason: str) -> None:
        """The pack ends on its own (all exited, failure, OOM): kill what is left, then report."""
        if run.state != "running":
            return
        run.state = "stopping"
        self._spawn_task(self._end(run, state, reason, report=True))

    async def _stop(self, run: Run, reason: str, grace: float, report: bool) -> None:
        for m in run.members:
            if m.timer is not None:
                m.timer.cancel()
                m.timer = None
            if m.alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(m.pid, signal.SIGTERM)
        assert self.isolation is not None and run.all_exited is not None
        self.isolation.signal_all(run.sandbox, signal.SIGTERM)
        if any(m.alive for m in run.members):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run.all_exited.wait(), grace)
        await self._end(run, "stopped", reason, report, with_exits=True)

    async def _end(self, run: Run, state: str, reason: str, report: bool, with_exits: bool = False) -> None:
        await self._kill_all(run)
        await asyncio.get_running_loop().run_in_executor(None, self._retire_work, run)
        if with_exits:  # how each member went: on SIGTERM, or on SIGKILL after the grace period
            exits = "; ".join(f"member {m.index} {m.last_exit}" for m in run.members if m.last_exit)
            reason = f"{reason} ({exits})" if exits else reason
        run.reason = reason
        run.state = "done"
        if self.runs.get(run.name) is run:
            del self.runs[run.name]
        if report:
            self.finished[run.name] = (run.generation, state, reason)
            with contextlib.suppress(OSError):
                self._write_record(run, "exited", final=state)
        else:
            with contextlib.suppress(OSError):
                self._write_record(run, "closed")
        if report:
            await self._report(run.name, run.generation, state, reason)
        if run.name in self._forgotten and run.name not in self.runs:
            self._remove_files(run.name)
        nxt = self._pending_start.pop(run.name, None)
        if nxt is not None and not self.closed:
            await self.start(run.name, nxt[0], nxt[1])

    async def _kill_all(self, run: Run) -> None:
        """SIGKILL every member and every process in the pack's cgroup until none is left."""
        assert self.isolation is not None
        for m in run.members:
            if m.alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(m.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = self.isolation.signal_all(run.sandbox, signal.SIGKILL)
            if run.uid is not None and self.isolation.mechanism == "rlimits":
                for pid, _ in _processes_by_uid(run.uid, run.uid + 1):
                    left += 1
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for m in run.members:
                if m.alive and m.proc is not None and m.proc.poll() is not None:
                    self._unwatch(m)
                    m.alive = False
                    m.last_exit = describe_exit(m.proc.returncode)
            if not left and not any(m.alive for m in run.members):
                break
            await asyncio.sleep(0.005)
        for m in run.members:
            self._unwatch(m)
            m.alive = False
        for _ in range(200):
            if self.isolation.remove(run.sandbox):
                break
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ records and logs

    def _record_path(self, name: str) -> str:
        return os.path.join(self.root, name, "run.json")

    def _read_record(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self._record_path(name)) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and isinstance(rec.get("generation"), int) else None

    def _write_record(self, run: Run, state: str, final: str | None = None) -> None:
        rec = {"pack": run.name, "generation": run.generation, "state": state, "final": final,
               "reason": run.reason, "spec": run.spec, "slot": run.slot, "uid": run.uid, "gid": run.gid,
               "node": self.node_id, "members": [m.record() for m in run.members]}
        path = self._record_path(run.name)
        tmp = f"{path}.tmp"
        # Root's alone (0600): it holds the spec, whose secrets are sealed but whose env is plain.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(rec, f, separators=(",", ":"))
        os.chmod(tmp, 0o600)  # an older version's leftover .tmp keeps its mode through O_CREAT
        os.replace(tmp, path)

    async def _housekeeping_loop(self) -> None:
        """Rotate logs; fail packs whose cgroup saw an OOM kill that no member exit revealed."""
        s = self.settings
        assert self.isolation is not None
        while True:
            await asyncio.sleep(s.log_check_s)
            for run in list(self.runs.values()):
                if run.state == "running" and self.isolation.oom_kills(run.sandbox) > run.oom_seen:
                    self._finish(run, "failed", f"memory limit {run.limits.mem_mib} MiB exceeded (OOM kill)")
                    continue
                for m in run.members:
                    try:
                        # Off the loop: a rotation copies up to the whole log and fsyncs the copy.
                        if packlogs.needs_rotation(run.logs, m.index, s.log_max_bytes):
                            await asyncio.get_running_loop().run_in_executor(
                                None, packlogs.rotate_if_needed, run.logs, m.index, s.log_max_bytes, s.log_keep)
                    except OSError as e:
                        log.warning("cannot rotate the log of %s member %d: %s", run.name, m.index, e)

    def logs_dir(self, pack: str) -> str:
        d = run_logs_dir(self.root, pack)
        if not os.path.isdir(d):
            raise NotFound(f"pack {pack} has no logs on node {self.node_id}")
        return d


def run_logs_dir(root: str, pack: str) -> str:
    return os.path.join(root, pack, "logs")


def _probe_ulimit_flags() -> dict[str, str]:
    """The ``ulimit`` flags of this host's /bin/sh: the process count is ``-u`` in bash, ``-p`` in dash."""
    flags = {"nofile": "-n", "core": "-c", "as": "-v"}
    for flag in ("-u", "-p"):
        try:
            r = subprocess.run([SH, "-c", f"ulimit {flag}"], capture_output=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            break
        out = r.stdout.strip()
        if r.returncode == 0 and not r.stderr and (out.isdigit() or out == b"unlimited"):
            flags["nproc"] = flag
            break
    return flags


def _open_gate(w: int, word: bytes) -> None:
    """Write ``word`` (the go-ahead and the member's environment) and close: the member reads to
    end-of-file. A gate that died meanwhile is seen by its pidfd, not here."""
    try:
        view = memoryview(word)
        while view:
            view = view[os.write(w, view):]
    except BrokenPipeError:
        pass
    finally:
        os.close(w)


def _processes_by_uid(lo: int, hi: int) -> list[tuple[int, int]]:
    """(pid, uid) of the processes whose real uid is in [lo, hi)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if lo <= uid < hi:
            out.append((int(entry), uid))
    return out


__all__ = ["ExecDriver", "ExecSettings", "describe_exit", "proc_start_ticks", "run_logs_dir"]
