"""Network namespaces of our own, so that a drill can cut an agent off for real.

On loopback every agent shares one network: pausing a process is the closest thing to a
partition. Here each agent gets a network namespace and an address of its own, and a partition
is a link taken down. One ``NetnsNetwork`` (one *run*) makes:

* a hub namespace ``cnd-<run>-hub`` holding a bridge ``br0`` (no address: a plain switch);
* per agent, a namespace ``cnd-<run>-<node>`` whose ``eth0`` is one end of a veth pair, the
  other end (``v<i>``) a port of the bridge; the agent binds ``10.A.B.(10+i)``;
* the host's leg: a veth ``cn<run>h`` in the caller's namespace with ``10.A.B.1/24``, its peer a
  port of the bridge, so that the CLI and the tests reach the agents through the bridge.

``A.B`` is a /24 of 10.160.0.0-10.254.255.0 that no route of the caller's namespace and no other
live run uses. Cut an agent off: its bridge port goes down (``cut``); heal: up again. Traffic
only ever flows between the addresses of the run.

Agents are started inside their namespace by ``nsenter --net=<ns> --`` (``prefix``), which execs
in place (the pid is the agent's) and, unlike ``ip netns exec``, keeps the caller's mounts: the
agent still sees the cgroup hierarchies that isolate its exec packs.

Cleanup is owed whatever happens: ``remove`` (also on ``with`` exit and at interpreter exit)
deletes every namespace of the run, which destroys its veth pairs; a registry file per run
(``/run/canidae-netns/<run>.json``, written before anything is made) names the owner process, so
``remove_stale`` can delete what a run whose owner died left behind, never another live run's.
This module needs root, ``ip`` (iproute2) and ``nsenter``; ``unavailable_reason`` says why not.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterable
from typing import Any, Self

from canidae.core.errors import InvalidInput, OperationFailed

PREFIX = "cnd-"
REGISTRY = "/run/canidae-netns"
NETNS_DIR = "/var/run/netns"
FIRST_HOST = 10  # agents get .10, .11, ...; .1 is the host's leg

_probe_lock = threading.Lock()
_probe: str | None | bool = False  # False: not probed yet; None: available; str: why not


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise OperationFailed(f"ip {' '.join(args)}: {p.stderr.strip() or f'exit {p.returncode}'}")
    return p


def _start_ticks(pid: int) -> int | None:
    """The start time of a process (field 22 of /proc/<pid>/stat): a pid plus this names one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def unavailable_reason() -> str | None:
    """None when namespaces can be made here, else why not (probed once per process)."""
    global _probe
    with _probe_lock:
        if _probe is False:
            _probe = _probe_now()
        return _probe  # type: ignore[return-value]


def _probe_now() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    name = f"{PREFIX}probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            return f"ip netns add failed: {made.stderr.strip()}"
        link = _ip("-n", name, "link", "add", "t0", "type", "bridge", check=False)
        if link.returncode != 0:
            return f"cannot make a bridge in a namespace: {link.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def _netns_names() -> list[str]:
    p = _ip("netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _routes() -> list[ipaddress.IPv4Network]:
    out = []
    for line in _ip("-4", "route", "show", "table", "all", check=False).stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("broadcast", "local", "unicast", "multicast"):
            word = line.split()[1]
        with contextlib.suppress(ValueError):
            if word != "default":
                out.append(ipaddress.IPv4Network(word, strict=False))
    return out


def _registered() -> dict[str, dict[str, Any]]:
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for f in os.listdir(REGISTRY):
            if f.endswith(".json"):
                with contextlib.suppress(OSError, ValueError), open(os.path.join(REGISTRY, f)) as fh:
                    out[f[:-5]] = json.load(fh)
    return out


def _owner_alive(rec: dict[str, Any]) -> bool:
    pid = rec.get("pid")
    return isinstance(pid, int) and _start_ticks(pid) == rec.get("start_ticks")


class NetnsNetwork:
    """One run's private network; see the module docstring. Use as a context manager."""

    def __init__(self, run: str | None = None) -> None:
        self.run = run or secrets.token_hex(3)[:5]
        if not self.run.isalnum() or len(self.run) > 6:
            raise InvalidInput("a run id is 1-6 letters or digits")
        self.hub = f"{PREFIX}{self.run}-hub"
        self.host_leg = f"cn{self.run}h"
        self.subnet: ipaddress.IPv4Network | None = None
        self.nodes: dict[str, int] = {}  # node id -> index (address .10+i, bridge port v<i>)
        self.cut_nodes: set[str] = set()
        self.removed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ making

    def __enter__(self) -> Self:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def registry_file(self) -> str:
        return os.path.join(REGISTRY, f"{self.run}.json")

    def create(self) -> None:
        """The hub, its bridge and the host's leg. Cleans what stale runs left first."""
        reason = unavailable_reason()
        if reason is not None:
            raise OperationFailed(f"cannot make network namespaces: {reason}")
        os.makedirs(REGISTRY, mode=0o700, exist_ok=True)
        remove_stale()
        atexit.register(self.remove)
        # Choosing a subnet and claiming it in the registry is one step for every run on this host.
        with open(os.path.join(REGISTRY, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            taken = _routes() + [ipaddress.IPv4Network(r["subnet"]) for r in _registered().values()
                                 if r.get("subnet")]
            self.subnet = _free_subnet(int(self.run, 36), taken)
            self._write_registry()
        try:
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "set", "lo", "up")
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            _ip("link", "add", self.host_leg, "type", "veth", "peer", "name", "up0", "netns", self.hub)
            _ip("-n", self.hub, "link", "set", "up0", "master", "br0")
            _ip("-n", self.hub, "link", "set", "up0", "up")
            _ip("addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self.host_leg)
            _ip("link", "set", self.host_leg, "up")
        except BaseException:
            self.remove()
            raise

    def _write_registry(self) -> None:
        rec = {"run": self.run, "pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
               "subnet": str(self.subnet), "hub": self.hub, "host_leg": self.host_leg,
               "nodes": sorted(self.nodes)}
        tmp = self.registry_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.replace(tmp, self.registry_file)

    @property
    def host_address(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def namespace(self, node: str) -> str:
        return f"{PREFIX}{self.run}-{node}"

    def address(self, node: str) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + FIRST_HOST + self.nodes[node])

    def prefix(self, node: str) -> tuple[str, ...]:
        """The command prefix that runs a program inside ``node``'s namespace (exec in place)."""
        return ("nsenter", f"--net={NETNS_DIR}/{self.namespace(node)}", "--")

    def add_node(self, node: str) -> str:
        """A namespace for ``node`` wired to the bridge; returns its address."""
        with self._lock:
            if self.removed or self.subnet is None:
                raise OperationFailed("the network is not up")
            if node in self.nodes:
                return self.address(node)
            if FIRST_HOST + len(self.nodes) >= self.subnet.num_addresses - 1:
                raise InvalidInput(f"at most {self.subnet.num_addresses - FIRST_HOST - 1} agents per run")
            i = len(self.nodes)
            self.nodes[node] = i
            self._write_registry()
        ns, port = self.namespace(node), f"v{i}"
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.hub, "link", "set", port, "master", "br0")
        _ip("-n", self.hub, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{self.address(node)}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return self.address(node)

    def add_nodes(self, nodes: Iterable[str]) -> dict[str, str]:
        return {n: self.add_node(n) for n in nodes}

    # ------------------------------------------------------------------ partitions

    def cut(self, node: str) -> None:
        """Cut ``node`` off from everyone (the other agents and the host): its bridge port goes down."""
        _ip("-n", self.hub, "link", "set", f"v{self.nodes[node]}", "down")
        self.cut_nodes.add(node)

    def heal(self, node: str) -> None:
        _ip("-n", self.hub, "link", "set", f"v{self.nodes[node]}", "up")
        self.cut_nodes.discard(node)

    def heal_all(self) -> None:
        for node in sorted(self.cut_nodes):
            self.heal(node)

    # ------------------------------------------------------------------ removing

    def remove(self) -> list[str]:
        """Delete every namespace of the run (their veths go with them), the host's leg and the
        registry file. Idempotent; returns what could not be removed (nothing, normally)."""
        with self._lock:
            if self.removed:
                return []
            self.removed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.remove)
        return _remove_run(self.run, self.host_leg, kill=False)

    def leftovers(self) -> list[str]:
        """What of this run still exists: namespaces, the host's leg, the registry file."""
        out = [n for n in _netns_names() if n.startswith(f"{PREFIX}{self.run}-")]
        if _ip("link", "show", self.host_leg, check=False).returncode == 0:
            out.append(self.host_leg)
        if os.path.exists(self.registry_file):
            out.append(self.registry_file)
        return out

    def describe(self) -> dict[str, Any]:
        return {"run": self.run, "subnet": str(self.subnet), "host": self.host_address,
                "nodes": {n: {"namespace": self.namespace(n), "address": self.address(n)} for n in self.nodes},
                "cut": sorted(self.cut_nodes)}


def _free_subnet(seed: int, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A /24 in 10.160.0.0-10.254.255.0, starting at one derived from ``seed``, overlapping nothing taken."""
    slots = (254 - 160 + 1) * 256
    for k in range(slots):
        n = (seed + k * 7919) % slots  # a prime stride spreads concurrent runs apart
        net = ipaddress.IPv4Network(f"10.{160 + n // 256}.{n % 256}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise OperationFailed("no free /24 in 10.160.0.0/9 for a network of our own")


def _remove_run(run: str, host_leg: str, kill: bool) -> list[str]:
    mine = [n for n in _netns_names() if n.startswith(f"{PREFIX}{run}-")]
    problems = []
    # Agent namespaces first, the hub last: a veth pair goes when either namespace goes.
    for ns in sorted(mine, key=lambda n: n.endswith("-hub")):
        if kill:
            # A run whose owner died may have left agents inside: they are ours, in our namespace.
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        p = _ip("netns", "del", ns, check=False)
        if p.returncode != 0:
            problems.append(f"{ns}: {p.stderr.strip()}")
    if _ip("link", "show", host_leg, check=False).returncode == 0:
        p = _ip("link", "del", host_leg, check=False)
        if p.returncode != 0:
            problems.append(f"{host_leg}: {p.stderr.strip()}")
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(REGISTRY, f"{run}.json"))
    return problems


def remove_stale() -> list[str]:
    """Remove what runs whose owner process is gone left behind (namespaces of our prefix with no
    live registry entry). Returns the runs removed."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return []
    registered = _registered()
    names = _netns_names()
    removed = []
    for n in names:  # a probe whose process died before deleting it
        pid = n[len(f"{PREFIX}probe-"):].split("-", 1)[0]
        if n.startswith(f"{PREFIX}probe-") and pid.isdigit() and _start_ticks(int(pid)) is None:
            _ip("netns", "del", n, check=False)
            removed.append(n)
    runs = {n[len(PREFIX):].split("-", 1)[0] for n in names
            if n.startswith(PREFIX) and not n.startswith(f"{PREFIX}probe-")}
    runs |= set(registered)
    for run in sorted(runs):
        rec = registered.get(run)
        if rec is not None and _owner_alive(rec):
            continue
        _remove_run(run, rec.get("host_leg", f"cn{run}h") if rec else f"cn{run}h", kill=True)
        removed.append(run)
    return removed


__all__ = ["PREFIX", "NetnsNetwork", "remove_stale", "unavailable_reason"]
