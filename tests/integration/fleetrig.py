"""A fleet of SSH hosts for the ``fleet`` tests: each host a network namespace of its own with its
own address on a bridge, its own sshd and host key, key authentication only, and an install dir
under one temp dir. ``fleet_rig`` makes one and removes everything it made (agents, packs, sshd,
whatever a session left in a namespace, the namespaces) whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from canidae.agent.ops import netns
from canidae.agent.ops.localcluster import kill_pack_leftovers, pid_alive
from canidae.agent.ops.waiting import wait_until
from canidae.core.errors import Timeout

SSHD = "/usr/sbin/sshd"
# The source tree under test: the wheels installed on the hosts are built from it (an installed,
# non-editable canidae does not know where it came from).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOSTS = (("s1", "server"), ("s2", "server"), ("s3", "server"), ("c1", "client"), ("c2", "client"))

# How a host's sshd is started: given the host name and the sshd command line, the command line to run.
Wrap = Callable[[str, list[str]], list[str]]


def _skip_reason() -> str | None:
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        return "openssh-server (sshd, ssh-keygen) is not installed"
    if not os.path.exists("/usr/bin/python3"):
        return "no /usr/bin/python3 for the hosts"
    return netns.unavailable_reason()


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)


def _listening(addr: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((addr, port)) == 0


@dataclass
class Fleet:
    root: Path
    net: netns.NetnsNetwork
    addrs: dict[str, str]
    hosts: tuple[tuple[str, str], ...] = HOSTS
    wrap: Wrap | None = None
    sshd: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def inventory(self) -> Path:
        return self.root / "lab.toml"

    @property
    def cli_config(self) -> Path:
        return self.root / "cli.toml"

    def host_dir(self, name: str) -> Path:
        return self.root / "hosts" / name

    def start_sshd(self, name: str) -> None:
        d = self.root / "sshd" / name
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "sshd_config"
        cfg.write_text(textwrap.dedent(f"""\
            Port 22
            ListenAddress {self.addrs[name]}
            HostKey {d}/host_key
            PidFile {d}/sshd.pid
            AuthorizedKeysFile {self.root}/authorized_keys
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            UsePAM no
            StrictModes no
            Subsystem sftp internal-sftp
            """))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        with open(d / "sshd.log", "ab") as log:
            argv = [SSHD, "-D", "-e", "-f", str(cfg)]
            argv = self.wrap(name, argv) if self.wrap else argv
            self.sshd[name] = subprocess.Popen([*self.net.prefix(name), *argv],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        wait_until(lambda: self.sshd[name].poll() is None and _listening(self.addrs[name], 22), 15,
                   f"sshd of {name} listening")

    def stop_sshd(self, name: str) -> None:
        p = self.sshd.pop(name)
        p.terminate()
        p.wait(timeout=10)

    def new_host_key(self, name: str) -> None:
        key = self.root / "sshd" / name / "host_key"
        key.unlink()
        key.with_suffix(".pub").unlink()
        _keygen(key)

    def agent_pid(self, name: str) -> int | None:
        try:
            pid = int((self.host_dir(name) / "agent.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid, str(self.host_dir(name) / "agent.toml")) else None

    def stop_agent(self, name: str) -> None:
        pid = self.agent_pid(name)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: self.agent_pid(name) is None, 15, f"agent {name} stopped")
        except Timeout:
            os.killpg(pid, signal.SIGKILL)

    def cli(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "canidae", "--config", str(self.cli_config), *args],
                           check=False, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert p.returncode == code, f"exit {p.returncode} (expected {code}): {p.stderr[-3000:]}\n{p.stdout[-3000:]}"
        return p

    def bootstrap(self, *args: str, code: int = 0, source: str = ROOT) -> dict[str, Any]:
        p = self.cli("fleet", "bootstrap", str(self.inventory), "--yes", "--json", "--source", source, *args, code=code)
        doc: dict[str, Any] = json.loads(p.stdout)
        return doc

    def close(self) -> None:
        for name, _ in self.hosts:
            with contextlib.suppress(Exception):
                self.stop_agent(name)
            kill_pack_leftovers(str(self.host_dir(name) / "data"))
        for name in list(self.sshd):
            with contextlib.suppress(Exception):
                self.stop_sshd(name)
        self.net.heal_all()
        for name, _ in self.hosts:  # whatever a host's session left running in its namespace
            out = subprocess.run(["ip", "netns", "pids", self.net.namespace(name)], capture_output=True,
                                 text=True, check=False).stdout.split()
            for pid in out:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        self.net.remove()


@contextlib.contextmanager
def fleet_rig(hosts: tuple[tuple[str, str], ...] = HOSTS, user: str = "root", wrap: Wrap | None = None) -> Iterator[Fleet]:
    """A fleet of ``hosts`` ((name, role) pairs) whose inventory logs in as ``user``; ``wrap``
    changes how each sshd is started. Skips when this machine cannot make one."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="canidae-fleet-"))
    net = netns.NetnsNetwork()
    f = Fleet(root, net, {}, hosts, wrap)
    try:
        net.create()
        f.addrs = net.add_nodes([n for n, _ in hosts])
        _keygen(root / "id_ed25519")
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        for name, _ in hosts:
            (root / "sshd" / name).mkdir(parents=True)
            _keygen(root / "sshd" / name / "host_key")
            f.start_sshd(name)
        text = "".join(f"""
            [[hosts]]
            name = "{name}"
            address = "{f.addrs[name]}"
            role = "{role}"
            zone = "z{i % 2 + 1}"
            install_dir = "{f.host_dir(name)}"
            capacity = {{ cpu = 4000, mem = 4096, packs = 100 }}
            """ for i, (name, role) in enumerate(hosts))
        f.inventory.write_text(textwrap.dedent(f"""\
            [cluster]
            name = "lab"
            user = "{user}"
            key = "id_ed25519"
            known_hosts = "known_hosts"
            python = "/usr/bin/python3"
            connect_timeout_s = 3
            """) + textwrap.dedent(text))
        yield f
    finally:
        f.close()
        leftovers = net.leftovers()
        shutil.rmtree(root, ignore_errors=True)
        assert not leftovers, leftovers


def by_host(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in doc["hosts"]}


def pack_processes(fleet: Fleet, host: str) -> list[int]:
    """Pids of pack processes running from ``host``'s data dir."""
    root = os.path.realpath(fleet.host_dir(host) / "data") + os.sep
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(root):
                    found.append(int(entry))
            except OSError:
                pass
    return found




__all__ = ["HOSTS", "ROOT", "Fleet", "by_host", "fleet_rig", "pack_processes"]
