"""``fleet bootstrap``: bring every host of an inventory to a running agent, servers first.

A run connects to the selected hosts (at most ``parallel`` at once) and, per host: checks sudo,
probes, computes the host's config hash (its agent.toml, the secret keys, the wheels, how it is
supervised) and, when the hash recorded on the host differs or the agent is not running, stops
the old agent, copies the wheelhouse and installs it into a venv (only when the wheels differ),
writes the config and the secret keys (mode 0600), starts the agent supervised, waits until its
API answers and records the hash. Servers go first; clients start once the servers have a leader
with quorum. Each host ends ``ok``, ``unchanged``, ``failed`` (at a named step, with the remote
stderr) or ``unreachable``.

The operator's side lives in the inventory's state dir: the cluster identity (made on the first
run, then reused, so every run issues the same credentials), the cluster's secret keys (the same
file on every agent), the cluster's TLS CA (``ca.pem``, ``ca.key``: the key never leaves this
machine), each host's certificate (``certs/HOST.pem`` and ``.key``, issued once for the host's
address and copied to its install dir with the CA's certificate) and ``failed.json``, the hosts
``--limit @failed`` retries. The bootstrap's own calls to the agents check their certificates.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import tomli_w

from canidae.agent import certs
from canidae.agent.client.tls import client_context
from canidae.agent.config import config_to_mapping
from canidae.agent.identity import Identity
from canidae.agent.ops.fleet import remote
from canidae.agent.ops.fleet.inventory import Host, Inventory, agent_config, config_hash
from canidae.agent.ops.fleet.sshlink import HostKeyChanged, HostKeyUnknown, Link, Unreachable
from canidae.agent.ops.fleet.sudo import ENV as sudo_env
from canidae.agent.ops.fleet.sudo import SudoPassword
from canidae.agent.ops.fleet.wheelhouse import Wheelhouse
from canidae.agent.secretbox import Keyring, key_file
from canidae.core.errors import CanidaeError, OperationFailed
from canidae.core.types import Resources, Role

FAILED_FILE = "failed.json"
IDENTITY_FILE = "identity.toml"
KEYS_FILE = "secret.keys"
UP_TIMEOUT_S = 30.0
LEADER_TIMEOUT_S = 30.0

# Called with a host and whether its agent runs, once the host is known to need a change; it
# refuses with StepFailed.
BeforeChange = Callable[[Host, bool], Awaitable[None]]


@dataclass
class HostOutcome:
    host: str
    role: str
    address: str
    status: str = "ok"            # ok | unchanged | failed | unreachable
    step: str = ""                # the step that failed
    error: str = ""               # why, with the remote stderr
    changed: list[str] = field(default_factory=list)
    hash: str = ""
    seconds: float = 0.0


class StepFailed(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def open_state(inv: Inventory) -> tuple[Identity, bytes]:
    """The fleet's identity and secret keys, made on the first run (mode 0600 in a 0700 dir)."""
    os.makedirs(inv.state_dir, mode=0o700, exist_ok=True)
    os.chmod(inv.state_dir, 0o700)
    ident_path = os.path.join(inv.state_dir, IDENTITY_FILE)
    if not os.path.exists(ident_path):
        Identity.new().write(ident_path)
    keys_path = os.path.join(inv.state_dir, KEYS_FILE)
    if not os.path.exists(keys_path):
        Keyring.new().save(keys_path)
    Keyring.load(keys_path)
    with open(keys_path, "rb") as f:
        return Identity.load(ident_path), f.read()


def open_ca(inv: Inventory) -> certs.ClusterCA:
    """The fleet's TLS CA, made on the first run (the key mode 0600, in the state dir)."""
    os.makedirs(inv.state_dir, mode=0o700, exist_ok=True)
    return certs.ClusterCA.open_or_create(inv.state_dir, inv.name)[0]


def ca_file(inv: Inventory) -> str:
    return os.path.join(inv.state_dir, certs.CA_CERT)


def host_cert(inv: Inventory, ca: certs.ClusterCA, h: Host) -> tuple[bytes, bytes]:
    """``h``'s certificate and key, issued once for its address and kept in the state dir (so that
    a re-run finds the host unchanged); issued again when its address changed."""
    d = os.path.join(inv.state_dir, "certs")
    cert_path, key_path = os.path.join(d, f"{h.name}.pem"), os.path.join(d, f"{h.name}.key")
    names = certs.names_for(h.api)
    try:
        with open(cert_path, "rb") as f:
            cert = f.read()
        with open(key_path, "rb") as f:
            key = f.read()
        if sorted(certs.subject_names(cert)) == sorted(names) and certs.signed_by(cert, ca):
            return cert, key
    except (FileNotFoundError, ValueError):
        pass
    cert, key = ca.issue(h.name, names)
    os.makedirs(d, mode=0o700, exist_ok=True)
    certs.write_private(key_path, key)
    certs.write_private(cert_path, cert, 0o644)
    return cert, key


def read_failed(inv: Inventory) -> list[str]:
    try:
        with open(os.path.join(inv.state_dir, FAILED_FILE)) as f:
            return [str(h) for h in json.load(f).get("hosts", [])]
    except (FileNotFoundError, ValueError):
        return []


def write_failed(inv: Inventory, hosts: list[str]) -> None:
    os.makedirs(inv.state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(inv.state_dir, FAILED_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"inventory": inv.path, "hosts": hosts}, f)
    os.replace(path + ".tmp", path)


@dataclass
class Bootstrap:
    inv: Inventory
    identity: Identity
    secret_keys: bytes
    wheels: Wheelhouse
    accept_new: bool = False
    parallel: int = 32
    say: Callable[[str], None] = lambda line: None
    sudo: SudoPassword = field(default_factory=SudoPassword)
    _passwords: dict[str, str] = field(default_factory=dict, repr=False)  # host -> the sudo password it takes
    ca: certs.ClusterCA | None = None  # None: the state dir's (made on the first run)

    def __post_init__(self) -> None:
        if self.ca is None:
            self.ca = open_ca(self.inv)

    def agent_http(self) -> httpx.AsyncClient:
        """The bootstrap's own client of the agents: the admin token, the fleet's CA checked."""
        return httpx.AsyncClient(timeout=1.0, headers={"authorization": f"Bearer {self.identity.admin_token}"},
                                 verify=client_context(ca_file(self.inv)))

    async def run(self, hosts: list[Host]) -> dict[str, Any]:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(self.parallel)
        outcomes: dict[str, HostOutcome] = {}

        async def one(h: Host) -> None:
            async with sem:
                outcomes[h.name] = await self.host(h)
                o = outcomes[h.name]
                self.say(f"{h.name}: {o.status}" + (f" at {o.step}: {o.error}" if o.error else ""))

        servers = [h for h in hosts if h.role is Role.SERVER]
        clients = [h for h in hosts if h.role is Role.CLIENT]
        await asyncio.gather(*(one(h) for h in servers))
        leader: str | None = None
        leader_error = ""
        try:
            leader = await self.wait_leader()
        except OperationFailed as e:
            leader_error = e.message
        if clients:
            if leader is None:
                for h in clients:
                    outcomes[h.name] = HostOutcome(h.name, h.role.value, h.address, "failed", "leader",
                                                   f"not started: the servers have no leader ({leader_error})")
            else:
                await asyncio.gather(*(one(h) for h in clients))
        ready = False
        if leader is not None:
            up = sum(o.status in ("ok", "unchanged") for o in outcomes.values()) + \
                sum(h.name not in outcomes for h in self.inv.hosts)
            ready = await self.wait_registered(up)
        ordered = [outcomes[h.name] for h in hosts]
        return {"inventory": self.inv.path, "cluster": self.inv.name, "leader": leader, "registered": ready,
                "wheels": self.wheels.digest, "seconds": round(time.monotonic() - t0, 3),
                "hosts": [asdict(o) for o in ordered],
                "changed": sum(o.status == "ok" for o in ordered),
                "unchanged": sum(o.status == "unchanged" for o in ordered),
                "failed": [o.host for o in ordered if o.status in ("failed", "unreachable")]}

    # ------------------------------------------------------------------ one host

    async def host(self, h: Host, before_change: BeforeChange | None = None) -> HostOutcome:
        """Bring ``h`` to this run's config; ``before_change`` runs once it is known that the host
        must change, before its agent is stopped (an upgrade drains the node there)."""
        out = HostOutcome(h.name, h.role.value, h.address)
        t0 = time.monotonic()
        try:
            link = await Link.open(h, self.inv.known_hosts, self.accept_new, self.inv.connect_timeout_s)
        except Unreachable as e:
            out.status, out.step, out.error = "unreachable", "connect", e.message
            return out
        except (HostKeyChanged, HostKeyUnknown) as e:
            out.status, out.step, out.error = "failed", "host-key", e.message
            return out
        try:
            async with link:
                await self._steps(link, h, out, before_change)
        except StepFailed as e:
            out.status, out.step, out.error = "failed", e.step, e.error
        except Unreachable as e:
            out.status, out.step, out.error = "unreachable", out.changed[-1] if out.changed else "connect", e.message
        except CanidaeError as e:
            out.status, out.step, out.error = "failed", "internal", e.message
        out.seconds = round(time.monotonic() - t0, 3)
        return out

    async def sh(self, link: Link, step: str, command: str, timeout: float = 600.0, as_root: bool = True) -> str:
        """Run ``command`` on the host (as root unless ``as_root`` is false); its stdout, or ``StepFailed``."""
        h = link.host
        password = self._passwords.get(h.name) if as_root else None
        if as_root:
            command = remote.root(h, command, password is not None)
        try:
            r = await link.run(command, timeout, stdin=None if password is None else password + "\n")
        except OperationFailed as e:
            if isinstance(e, Unreachable):
                raise
            raise StepFailed(step, e.message) from None
        if r.status != 0:
            raise StepFailed(step, f"exit {r.status}: {_tail(r.stderr or r.stdout) or '(no output)'}")
        return r.stdout

    async def sudo_step(self, link: Link, h: Host) -> None:
        """Check sudo up front: without a password, else with the run's one password (asked once)."""
        if h.user == "root":
            return
        r = await link.run(remote.SUDO_CHECK, 30)
        if r.status == 0:
            return
        password = await self.sudo.get()
        if password is None:
            raise StepFailed("sudo", f"sudo -n true failed for {h.user} ({_tail(r.stderr) or f'exit {r.status}'}): "
                                     f"give the sudo password on a terminal, with --sudo-password-file FILE or "
                                     f"in ${sudo_env}")
        r = await link.run(remote.SUDO_WITH_PASSWORD, 30, stdin=password + "\n")
        if r.status != 0:
            raise StepFailed("sudo", f"sudo refused the password for {h.user}: "
                                     f"{_tail(r.stderr) or f'exit {r.status}'}")
        self._passwords[h.name] = password

    async def _steps(self, link: Link, h: Host, out: HostOutcome, before_change: BeforeChange | None) -> None:
        await self.sudo_step(link, h)
        t_sent = time.time()
        probe = remote.parse_probe(await self.sh(link, "probe", remote.helper(h, "probe"), 60))
        offset = probe["time"] - (t_sent + time.time()) / 2
        running = bool(probe["running"])
        problems = remote.probe_problems(h, probe, offset)
        if problems:
            raise StepFailed("probe", "; ".join(problems))
        capacity = Resources(int(probe["cpus"]) * 1000, max(1, int(probe["mem_mib"])), 1000)
        cfg = agent_config(self.inv, h, self.identity, capacity)
        toml = tomli_w.dumps(config_to_mapping(cfg)).encode()
        assert self.ca is not None
        cert, key = host_cert(self.inv, self.ca, h)
        systemd = bool(probe["systemd"])
        digest = config_hash(toml, self.secret_keys, self.wheels.digest, "systemd" if systemd else "detached",
                             self.ca.cert_pem + cert + key)
        out.hash = digest
        if running and probe["hash"] == digest:
            out.status = "unchanged"
            return
        if before_change is not None:
            await before_change(h, running)  # raises StepFailed, naming its own step
        if running:
            out.changed.append("stop")
            await self.sh(link, "stop", remote.helper(h, "stop", systemd=systemd), 60)
        await self.sh(link, "prepare", f"{remote.clear_hash(h)} && {remote.prepare_dirs(h)}", 60)
        if probe["wheels"] != self.wheels.digest:
            await self._install_wheels(link, h, out)
        out.changed.append("configure")
        await self._write(link, h, "configure", h.config_path, toml)
        await self._write(link, h, "configure", key_file(h.data_dir), self.secret_keys)
        await self._write(link, h, "configure", cfg.tls_key, key)
        await self._write(link, h, "configure", cfg.tls_cert, cert, 0o644)
        await self._write(link, h, "configure", cfg.tls_ca, self.ca.cert_pem, 0o644)
        out.changed.append("start")
        if systemd:
            await self._write(link, h, "start", remote.unit_path(h), remote.systemd_unit(h).encode(), 0o644)
            await self.sh(link, "start", remote.systemd_start(h), 60)
        else:
            await self.sh(link, "start", remote.helper(h, "start"), 60)
        await self._wait_up(link, h)
        await self.sh(link, "record", remote.record_hash(h, digest), 30)

    async def _install_wheels(self, link: Link, h: Host, out: HostOutcome) -> None:
        """Copy the wheels the host lacks (by content), drop the ones it no longer needs, and install
        the copied ones (every wheel into a new venv)."""
        there = remote.parse_sums(await self.sh(link, "copy", remote.list_wheels(h), 60))
        here = dict(zip(self.wheels.files, self.wheels.sums, strict=True))
        stale = sorted(f for f, s in there.items() if here.get(f) != s)
        missing = [f for f in self.wheels.files if there.get(f) != here[f]]
        out.changed.append("copy")
        await self.sh(link, "copy", remote.remove_wheels(h, stale), 60)
        await self._put(link, h, "copy", [(os.path.join(self.wheels.path, f), os.path.join(h.install_dir, "wheels", f))
                                          for f in missing])
        out.changed.append("install")
        await self.sh(link, "install", remote.install(h, self.wheels.digest, missing), 900)

    async def _put(self, link: Link, h: Host, step: str, files: list[tuple[str, str]]) -> None:
        """Copy files over SFTP; a login that is not root copies to a stage in its home, then root moves them."""
        if not files:
            return
        try:
            if h.user == "root":
                await link.put(files)
                return
            stage = f".canidae-stage-{h.name}"
            await self.sh(link, step, f"rm -rf {stage} && mkdir -m 0700 {stage}", 30, as_root=False)
            await link.put([(local, f"{stage}/{os.path.basename(r)}") for local, r in files])
            for d in sorted({os.path.dirname(r) for _, r in files}):
                await self.sh(link, step, f"cp {stage}/* {shlex.quote(d)}/ && rm -rf {stage}", 120)
        except Unreachable:
            raise
        except OperationFailed as e:
            raise StepFailed(step, e.message) from None

    async def _write(self, link: Link, h: Host, step: str, path: str, data: bytes, mode: int = 0o600) -> None:
        try:
            if h.user == "root":
                await link.write(path, data, mode)
                return
            stage = f".canidae-stage-{h.name}.{os.path.basename(path)}"
            await link.write(stage, data, mode)
            await self.sh(link, step, f"install -m {mode:o} {stage} {shlex.quote(path)} && rm -f {stage}", 30)
        except Unreachable:
            raise
        except OperationFailed as e:
            raise StepFailed(step, e.message) from None

    async def _wait_up(self, link: Link, h: Host) -> None:
        deadline = time.monotonic() + UP_TIMEOUT_S
        async with self.agent_http() as http:
            while True:
                try:
                    r = await http.get(f"https://{h.api}/v1/health")
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                probe = remote.parse_probe(await self.sh(link, "start", remote.helper(h, "probe"), 60))
                if not probe["running"] or time.monotonic() > deadline:
                    log = await self.sh(link, "start", f"tail -n 8 {shlex.quote(os.path.join(h.install_dir, 'stdout.log'))}"
                                         " || true", 30)
                    why = "exited" if not probe["running"] else f"did not answer on {h.api} within {UP_TIMEOUT_S:g} s"
                    raise StepFailed("start", f"the agent {why}: {_tail(log) or '(no output)'}")
                await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ the cluster

    async def server_status(self, http: httpx.AsyncClient, api: str) -> dict[str, Any] | None:
        try:
            r = await http.get(f"https://{api}/v1/status", params={"stale": 1})
            return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    async def wait_leader(self) -> str:
        """The id of a server that leads with quorum, waiting up to ``LEADER_TIMEOUT_S``."""
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        async with self.agent_http() as http:
            while True:
                for s in self.inv.servers:
                    st = await self.server_status(http, s.api)
                    if st and st.get("raft_state") == "leader" and st.get("has_quorum"):
                        return str(st["node"])
                if time.monotonic() > deadline:
                    raise OperationFailed(f"no server led with quorum within {LEADER_TIMEOUT_S:g} s")
                await asyncio.sleep(0.1)

    async def wait_registered(self, n: int) -> bool:
        """Whether the leader counts at least ``n`` nodes within ``LEADER_TIMEOUT_S``."""
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        async with self.agent_http() as http:
            while time.monotonic() < deadline:
                for s in self.inv.servers:
                    st = await self.server_status(http, s.api)
                    if st and st.get("raft_state") == "leader" and st.get("nodes", 0) >= n:
                        return True
                await asyncio.sleep(0.1)
        return False


def plan(inv: Inventory, hosts: list[Host]) -> list[dict[str, Any]]:
    """What a run would do on each host, without connecting to any."""
    rows = []
    for h in sorted(hosts, key=lambda h: h.role is not Role.SERVER):
        rows.append({
            "host": h.name, "role": h.role.value, "ssh": f"{h.user}@{h.address}:{h.port}",
            "api": h.api, "raft": h.raft, "labels": f"{h.zone}/{h.region}/{h.cell}",
            "capacity": h.capacity.to_dict() if h.capacity else "from the host",
            "install_dir": h.install_dir,
            "steps": (["sudo"] if h.user != "root" else []) + [
                "probe (python >= 3.11, setpriv, ports, clock)", "skip if the config hash matches and it runs",
                "copy wheels + install venv (when the wheels differ)",
                "write agent.toml, secret.keys, agent.key (0600), agent.pem and ca.pem",
                "start (systemd unit, or detached with a pid file)", "wait for its API, record the hash"],
        })
    return rows


__all__ = ["Bootstrap", "HostOutcome", "ca_file", "host_cert", "open_ca", "open_state", "plan", "read_failed",
           "write_failed"]


async def status(inv: Inventory, token: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Each host's agent as its API reports it (``/v1/health``): up or not, role, version, Raft state."""
    async def one(http: httpx.AsyncClient, h: Host) -> dict[str, Any]:
        row: dict[str, Any] = {"host": h.name, "role": h.role.value, "api": h.api, "up": False}
        try:
            r = await http.get(f"https://{h.api}/v1/health")
            body = r.json()
        except (httpx.HTTPError, ValueError) as e:
            return {**row, "error": str(e) or type(e).__name__}
        if r.status_code != 200 or not isinstance(body, dict):
            return {**row, "error": f"HTTP {r.status_code}"}
        raft = body.get("raft") if isinstance(body.get("raft"), dict) else {}
        return {**row, "up": True, "node": body.get("node"), "agent_role": body.get("role"),
                "version": body.get("version"), "uptime_s": body.get("uptime_s"),
                "raft_state": raft.get("state") if raft else None}
    async with httpx.AsyncClient(timeout=timeout, headers={"authorization": f"Bearer {token}"},
                                 verify=client_context(ca_file(inv))) as http:
        return list(await asyncio.gather(*(one(http, h) for h in inv.hosts)))
