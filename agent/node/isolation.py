"""Resource isolation of exec packs: cgroup v2, cgroup v1 or rlimits, chosen once when an agent starts.

This module owns the choice of mechanism and every file it writes under ``/sys/fs/cgroup``:

* **cgroup2** where the unified hierarchy offers the ``memory`` and ``cpu`` controllers to a cgroup
  this agent may create children in;
* **cgroup1** where the ``memory`` and ``cpu`` hierarchies are mounted and writable (``pids`` too
  when mounted: it bounds a pack's process count);
* **rlimits** otherwise: per-process limits only (address space for memory, no CPU limit).

Per-pack cgroups live under a canidae-owned parent named after the node *and* its data dir
(``canidae-<node>-<hash>``), created inside the agent's own cgroup (cgroup v1) so that several
agents on one host, or concurrent test clusters, never share one. A pack's cgroup is
``p-<pack>`` (the prefix keeps a pack named like a control file, e.g. ``memory.max``, valid).

Limits on open files (and processes, where members run under a per-pack user) are rlimits in
every mode; they are applied by the exec driver to each member before it runs its command.
Nothing here decides *when* to create, kill or remove: the exec driver does.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
MECHANISMS = ("cgroup2", "cgroup1", "rlimits")


@dataclass(frozen=True)
class Limits:
    """What one pack may use: CPU millicores and memory MiB (0 = unlimited), processes and open files."""

    cpu_milli: int = 0
    mem_mib: int = 0
    max_procs: int = 512
    max_files: int = 1024


@dataclass
class Sandbox:
    """One pack's cgroup directories (controller -> path); empty under rlimits."""

    pack: str
    dirs: dict[str, str] = field(default_factory=dict)


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(fstype, mount point, root within the hierarchy, super options) of cgroup mounts."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                lf, rf = left.split(), right.split()
                if len(rf) >= 3 and rf[0] in ("cgroup", "cgroup2"):
                    out.append((rf[0], lf[4], lf[3], rf[2]))
    except OSError:
        pass
    return out


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and ``""`` -> path for the unified hierarchy."""
    own: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if ctrls == "":
                    own[""] = path
                for c in ctrls.split(","):
                    if c:
                        own[c] = path
    except OSError:
        pass
    return own


def _under(mount: str, root: str, path: str) -> str:
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    return os.path.join(mount, rel.lstrip("/"))


def parent_name(node_id: str, data_dir: str) -> str:
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:10]
    return f"canidae-{node_id}-{digest}"


class Isolation:
    """The mechanism chosen for this agent, and the per-pack operations on it."""

    def __init__(self, mechanism: str, parents: dict[str, str], detail: str) -> None:
        self.mechanism = mechanism
        self.parents = parents  # controller (or "unified") -> the canidae-owned parent dir
        self.detail = detail
        # Parents are made on the first pack (and removed by close): an agent that never runs an
        # exec pack leaves nothing under /sys/fs/cgroup, even when it is killed.
        self._ready = False

    def _ensure_parents(self) -> None:
        if self._ready:
            return
        for ctrl, d in self.parents.items():
            if not os.path.isdir(d):
                os.mkdir(d)
                if ctrl == "unified":
                    enable = _read(os.path.join(os.path.dirname(d), "cgroup.subtree_control")).split()
                    _write(os.path.join(d, "cgroup.subtree_control"), " ".join(f"+{c}" for c in enable))
        self._ready = True

    # ------------------------------------------------------------------ choosing

    @staticmethod
    def detect(node_id: str, data_dir: str, prefer: str = "auto") -> Isolation:
        """Try cgroup v2, then v1, then fall back on rlimits; ``prefer`` forces one (or fails to it)."""
        if prefer not in ("auto",) + MECHANISMS:
            raise ValueError(f"isolation must be auto, cgroup2, cgroup1 or rlimits, not {prefer!r}")
        name = parent_name(node_id, data_dir)
        why: list[str] = []
        if prefer in ("auto", "cgroup2"):
            got = _try_v2(name, why)
            if got is not None:
                return got
        if prefer in ("auto", "cgroup1"):
            got = _try_v1(name, why)
            if got is not None:
                return got
        return Isolation("rlimits", {}, "; ".join(why) or "rlimits requested")

    def describe(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "detail": self.detail, "parents": dict(self.parents),
                "cpu_enforced": self.mechanism != "rlimits" and ("cpu" in self.parents or "unified" in self.parents),
                "memory_enforced": "per pack (cgroup)" if self.mechanism != "rlimits" else "per member (RLIMIT_AS)",
                "process_limit": "pids controller" if ("pids" in self.parents or self.mechanism == "cgroup2")
                else "RLIMIT_NPROC (per-pack user only)"}

    # ------------------------------------------------------------------ per pack

    def create(self, pack: str, limits: Limits) -> Sandbox:
        """Make the pack's cgroup(s) with its limits; a leftover one of the same name is reused."""
        sb = Sandbox(pack)
        if self.mechanism == "rlimits":
            return sb
        self._ensure_parents()
        reused = False
        for ctrl, parent in self.parents.items():
            d = os.path.join(parent, f"p-{pack}")
            try:
                os.mkdir(d)
            except FileExistsError:
                reused = True
            sb.dirs[ctrl] = d
        self._set_limits(sb, limits, reused)
        return sb

    def take_over(self, sb: Sandbox, pack: str, limits: Limits) -> Sandbox | None:
        """Rename a spare's cgroup(s) to the pack's and set its limits: the spare's process is then in
        the pack's cgroup without a migration (a migration waits for a kernel RCU grace period, ~10 ms,
        on cgroup v1 and on v2 without favordynmods). None if the pack has a leftover cgroup."""
        out = Sandbox(pack)
        for ctrl, d in sb.dirs.items():
            target = os.path.join(os.path.dirname(d), f"p-{pack}")
            if os.path.exists(target):
                for c, moved in out.dirs.items():  # put back what was renamed already
                    os.rename(moved, sb.dirs[c])
                return None
            os.rename(d, target)
            out.dirs[ctrl] = target
        self._set_limits(out, limits, reused=True)
        return out

    def _set_limits(self, sb: Sandbox, limits: Limits, reused: bool) -> None:
        mem = limits.mem_mib * 1024 * 1024
        if self.mechanism == "cgroup1":
            if "memory" in sb.dirs and mem:
                _write(os.path.join(sb.dirs["memory"], "memory.limit_in_bytes"), str(mem))
                try:  # no swap either, where swap accounting exists
                    _write(os.path.join(sb.dirs["memory"], "memory.memsw.limit_in_bytes"), str(mem))
                except OSError:
                    pass
            if "cpu" in sb.dirs and (limits.cpu_milli or reused):
                # A new cgroup has the default period (100 ms) and no quota: write only what differs.
                quota = max(1000, limits.cpu_milli * CPU_PERIOD_US // 1000) if limits.cpu_milli else -1
                _write(os.path.join(sb.dirs["cpu"], "cpu.cfs_quota_us"), str(quota))
                _write(os.path.join(sb.dirs["cpu"], "cpu.shares"), str(max(2, limits.cpu_milli * 1024 // 1000)))
            if "pids" in sb.dirs:
                _write(os.path.join(sb.dirs["pids"], "pids.max"), str(limits.max_procs))
        else:
            d = sb.dirs["unified"]
            if mem:
                _write(os.path.join(d, "memory.max"), str(mem))
                for f, v in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                    try:
                        _write(os.path.join(d, f), v)
                    except OSError:
                        pass
            quota = max(1000, limits.cpu_milli * CPU_PERIOD_US // 1000) if limits.cpu_milli else "max"
            _write(os.path.join(d, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            try:
                _write(os.path.join(d, "pids.max"), str(limits.max_procs))
            except OSError:
                pass

    def attach(self, sb: Sandbox, pid: int) -> None:
        for d in sb.dirs.values():
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def pids(self, sb: Sandbox) -> set[int]:
        """Every process in the pack's cgroup(s) (empty under rlimits: the driver tracks members itself)."""
        out: set[int] = set()
        for d in sb.dirs.values():
            try:
                out.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
            except OSError:
                pass
        return out

    def oom_kills(self, sb: Sandbox) -> int:
        """How many processes of the pack the kernel killed for its memory limit so far."""
        if self.mechanism == "cgroup1" and "memory" in sb.dirs:
            path = os.path.join(sb.dirs["memory"], "memory.oom_control")
        elif self.mechanism == "cgroup2":
            path = os.path.join(sb.dirs["unified"], "memory.events")
        else:
            return 0
        try:
            for line in _read(path).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

    def memory_bytes(self, sb: Sandbox) -> int | None:
        f = {"cgroup1": ("memory", "memory.usage_in_bytes"), "cgroup2": ("unified", "memory.current")}
        ctrl_file = f.get(self.mechanism)
        if ctrl_file is None or ctrl_file[0] not in sb.dirs:
            return None
        try:
            return int(_read(os.path.join(sb.dirs[ctrl_file[0]], ctrl_file[1])))
        except (OSError, ValueError):
            return None

    def signal_all(self, sb: Sandbox, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to every process in the pack's cgroup(s), once; returns how many there were."""
        if self.mechanism == "cgroup2" and sig == signal.SIGKILL:
            try:  # atomic, and reaches processes forked while we iterate
                _write(os.path.join(sb.dirs["unified"], "cgroup.kill"), "1")
            except OSError:
                pass
        found = self.pids(sb)
        for pid in found:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(found)

    def remove(self, sb: Sandbox) -> bool:
        """Remove the pack's cgroup(s); False while a process is still in one (retry later)."""
        ok = True
        for ctrl, d in list(sb.dirs.items()):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                ok = False
                continue
            del sb.dirs[ctrl]
        return ok

    def leftovers(self) -> list[str]:
        """Names of the packs that have a cgroup under this agent's parent."""
        names: set[str] = set()
        for parent in self.parents.values():
            try:
                names.update(e[2:] for e in os.listdir(parent) if e.startswith("p-"))
            except OSError:
                pass
        return sorted(names)

    def sandbox_of(self, pack: str) -> Sandbox:
        """The handle of an existing pack cgroup (after an agent restart)."""
        return Sandbox(pack, {c: os.path.join(p, f"p-{pack}") for c, p in self.parents.items()
                              if os.path.isdir(os.path.join(p, f"p-{pack}"))})

    def close(self) -> None:
        """Remove the canidae parent(s) when no pack cgroup is left in them."""
        self._ready = False
        for parent in self.parents.values():
            try:
                os.rmdir(parent)
            except OSError:
                pass

    # ------------------------------------------------------------------ rlimits (every mode)

    def rlimits(self, limits: Limits, per_pack_user: bool) -> list[tuple[str, int]]:
        """(limit, value) pairs a member gets, soft = hard, before it runs its command.

        Names: ``nofile`` (open files), ``core`` (bytes), ``nproc`` (processes of the member's
        user: a per-pack user makes it a per-pack bound) and, under rlimits only, ``as`` (bytes of
        address space, standing in for the memory limit).
        """
        out = [("nofile", limits.max_files), ("core", 0)]
        if per_pack_user:
            out.append(("nproc", limits.max_procs))
        if self.mechanism == "rlimits" and limits.mem_mib:
            out.append(("as", limits.mem_mib * 1024 * 1024))
        return out


def _try_v1(name: str, why: list[str]) -> Isolation | None:
    mounts = {opt: (mp, root) for fs, mp, root, opts in _mountinfo() if fs == "cgroup"
              for opt in opts.split(",") if opt in V1_CONTROLLERS}
    if "memory" not in mounts or "cpu" not in mounts:
        why.append("cgroup v1: memory and cpu hierarchies are not both mounted")
        return None
    own = _own_cgroups()
    parents: dict[str, str] = {}
    for ctrl in V1_CONTROLLERS:
        if ctrl not in mounts:
            continue
        mp, root = mounts[ctrl]
        d = os.path.join(_under(mp, root, own.get(ctrl, "/")), name)
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            if ctrl == "pids":
                continue
            for made in parents.values():
                try:
                    os.rmdir(made)
                except OSError:
                    pass
            why.append(f"cgroup v1: cannot create {d}: {e.strerror}")
            return None
        parents[ctrl] = d
    iso = Isolation("cgroup1", parents, "cgroup v1 controllers " + ", ".join(parents))
    iso.close()  # it could be made: that was the probe; the first pack makes it again
    return iso


def _try_v2(name: str, why: list[str]) -> Isolation | None:
    mounts = [(mp, root) for fs, mp, root, _ in _mountinfo() if fs == "cgroup2"]
    if not mounts:
        why.append("cgroup v2: not mounted")
        return None
    mp, root = mounts[0]
    own = _under(mp, root, _own_cgroups().get("", "/"))
    wanted = {"memory", "cpu"}
    # Try inside our own cgroup first (a delegated service cgroup), then beside it: cgroup v2 lets
    # only a cgroup without processes hand controllers down to children.
    for base in dict.fromkeys([own, os.path.dirname(own.rstrip("/")) or mp]):
        try:
            offered = set(_read(os.path.join(base, "cgroup.controllers")).split())
        except OSError:
            continue
        if not wanted <= offered:
            why.append(f"cgroup v2: {base} offers {' '.join(sorted(offered)) or 'no controllers'}")
            continue
        d = os.path.join(base, name)
        try:
            enable = " ".join(f"+{c}" for c in sorted(offered & {"memory", "cpu", "pids"}))
            _write(os.path.join(base, "cgroup.subtree_control"), enable)
            os.makedirs(d, exist_ok=True)
            _write(os.path.join(d, "cgroup.subtree_control"), enable)
        except OSError as e:
            why.append(f"cgroup v2: cannot delegate under {base}: {e.strerror}")
            try:
                os.rmdir(d)
            except OSError:
                pass
            continue
        iso = Isolation("cgroup2", {"unified": d}, f"cgroup v2 under {base}")
        iso.close()
        return iso
    return None
