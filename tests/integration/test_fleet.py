"""``canidae fleet bootstrap`` against real sshd: five hosts, each a network namespace of its own
with its own address on a bridge, its own sshd and host key, key authentication only.

One scenario, in order: the first run records the host keys (--accept-new), installs the wheels
into a venv per host over SFTP, starts 3 servers then 2 clients and writes the client config;
packs spawned with that config run on the clients; a re-run changes nothing; a host cut off the
network fails alone (unreachable) and ``--limit @failed`` completes it once it is back; a host
whose host key changed is refused. Every agent, sshd and namespace is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from canidae import __version__
from canidae.agent.ops import netns
from canidae.agent.ops.localcluster import kill_pack_leftovers, pid_alive
from canidae.agent.ops.waiting import wait_until
from canidae.core.errors import Timeout

pytestmark = pytest.mark.netns

SSHD = "/usr/sbin/sshd"
# The source tree under test: the wheels installed on the hosts are built from it (an installed,
# non-editable canidae does not know where it came from).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOSTS = (("s1", "server"), ("s2", "server"), ("s3", "server"), ("c1", "client"), ("c2", "client"))


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
            self.sshd[name] = subprocess.Popen([*self.net.prefix(name), SSHD, "-D", "-e", "-f", str(cfg)],
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

    def bootstrap(self, *args: str, code: int = 0) -> dict[str, Any]:
        p = self.cli("fleet", "bootstrap", str(self.inventory), "--yes", "--json", "--source", ROOT, *args, code=code)
        doc: dict[str, Any] = json.loads(p.stdout)
        return doc

    def close(self) -> None:
        for name, _ in HOSTS:
            self.stop_agent(name)
            kill_pack_leftovers(str(self.host_dir(name) / "data"))
        for name in list(self.sshd):
            self.stop_sshd(name)
        self.net.heal_all()
        for name, _ in HOSTS:  # whatever a host's session left running in its namespace
            out = subprocess.run(["ip", "netns", "pids", self.net.namespace(name)], capture_output=True,
                                 text=True, check=False).stdout.split()
            for pid in out:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        self.net.remove()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="canidae-fleet-"))
    net = netns.NetnsNetwork()
    f = Fleet(root, net, {})
    try:
        net.create()
        f.addrs = net.add_nodes([n for n, _ in HOSTS])
        _keygen(root / "id_ed25519")
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        for name, _ in HOSTS:
            (root / "sshd" / name).mkdir(parents=True)
            _keygen(root / "sshd" / name / "host_key")
            f.start_sshd(name)
        hosts = "".join(f"""
            [[hosts]]
            name = "{name}"
            address = "{f.addrs[name]}"
            role = "{role}"
            zone = "z{i % 2 + 1}"
            install_dir = "{f.host_dir(name)}"
            capacity = {{ cpu = 4000, mem = 4096, packs = 100 }}
            """ for i, (name, role) in enumerate(HOSTS))
        f.inventory.write_text(textwrap.dedent("""\
            [cluster]
            name = "lab"
            user = "root"
            key = "id_ed25519"
            known_hosts = "known_hosts"
            python = "/usr/bin/python3"
            connect_timeout_s = 3
            """) + textwrap.dedent(hosts))
        yield f
    finally:
        f.close()
        leftovers = net.leftovers()
        shutil.rmtree(root, ignore_errors=True)
        assert not leftovers, leftovers


def _by_host(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in doc["hosts"]}


def _pack_process(fleet: Fleet, host: str) -> list[int]:
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


def test_fleet_bootstrap_over_ssh(fleet: Fleet) -> None:
    # Without --accept-new, hosts whose key is not known are refused, and nothing is installed.
    doc = fleet.bootstrap(code=1)
    assert {h["step"] for h in doc["hosts"]} <= {"host-key", "leader"}
    assert "not in" in _by_host(doc)["s1"]["error"] and not fleet.host_dir("s1").exists()

    doc = fleet.bootstrap("--accept-new")
    hosts = _by_host(doc)
    assert {h["status"] for h in hosts.values()} == {"ok"}, doc
    assert doc["leader"] in ("s1", "s2", "s3") and doc["registered"] and doc["failed"] == []
    assert "install" in hosts["c2"]["changed"]
    assert len((fleet.root / "known_hosts").read_text().splitlines()) == 5
    assert fleet.cli_config.stat().st_mode & 0o777 == 0o600
    for name, _ in HOSTS:
        assert (fleet.host_dir(name) / "venv" / "bin" / "python").exists()
        assert (fleet.host_dir(name) / "agent.toml").stat().st_mode & 0o777 == 0o600
        assert fleet.agent_pid(name) is not None
    keys = {(fleet.host_dir(n) / "data" / "secret.keys").read_bytes() for n, _ in HOSTS}
    assert len(keys) == 1  # one cluster key file on every agent
    assert "cluster_password" not in (fleet.host_dir("c1") / "agent.toml").read_text()

    print(f"\nfleet bootstrap of 5 hosts (3 servers, 2 clients; venvs installed over SFTP): {doc['seconds']:.1f} s")
    status = json.loads(fleet.cli("fleet", "status", str(fleet.inventory), "--json").stdout)
    assert [(h["host"], h["up"], h["version"]) for h in status["hosts"]] == [(n, True, __version__) for n, _ in HOSTS]
    assert sorted(h["raft_state"] for h in status["hosts"] if h["role"] == "server") == ["follower", "follower",
                                                                                         "leader"]

    # Packs spawned with the written config run on the clients.
    for host in ("c1", "c2"):
        out = json.loads(fleet.cli("--json", "pack", "spawn", f"web-{host}", "--node", host, "--check", "0",
                                   "--", "sleep", "600").stdout)
        assert out["state"] == "running", out
        wait_until(lambda host=host: _pack_process(fleet, host), 10, f"the pack's process on {host}")
    nodes = {n["id"] for n in json.loads(fleet.cli("--json", "node", "list").stdout)["nodes"]}
    assert nodes == {n for n, _ in HOSTS}

    # A re-run changes nothing and says so; the agents keep running, not restarted.
    pids = {n: fleet.agent_pid(n) for n, _ in HOSTS}
    doc = fleet.bootstrap()
    assert {h["status"] for h in doc["hosts"]} == {"unchanged"} and doc["changed"] == 0
    assert {n: fleet.agent_pid(n) for n, _ in HOSTS} == pids
    human = fleet.cli("fleet", "bootstrap", str(fleet.inventory), "--yes", "--source", ROOT).stdout
    assert "nothing changed: 5 host(s)" in human

    # A host cut off fails alone (unreachable); once back, --limit @failed completes it.
    fleet.stop_agent("c1")
    fleet.net.cut("c1")
    status = json.loads(fleet.cli("fleet", "status", str(fleet.inventory), "--json", code=3).stdout)
    assert status["down"] == ["c1"]
    doc = fleet.bootstrap(code=1)
    hosts = _by_host(doc)
    assert hosts["c1"]["status"] == "unreachable" and doc["failed"] == ["c1"]
    assert {hosts[n]["status"] for n in ("s1", "s2", "s3", "c2")} == {"unchanged"}
    fleet.net.heal("c1")
    doc = fleet.bootstrap("--limit", "@failed")
    assert [(h["host"], h["status"]) for h in doc["hosts"]] == [("c1", "ok")]
    assert "install" not in doc["hosts"][0]["changed"] and "start" in doc["hosts"][0]["changed"]
    assert fleet.agent_pid("c1") is not None
    assert fleet.bootstrap("--limit", "@failed")["hosts"] == []  # nothing left to retry

    # A host whose key changed is refused, with --accept-new too; known_hosts is left as it was.
    known = (fleet.root / "known_hosts").read_text()
    fleet.stop_sshd("c2")
    fleet.new_host_key("c2")
    fleet.start_sshd("c2")
    doc = fleet.bootstrap("--accept-new", code=1)
    c2 = _by_host(doc)["c2"]
    assert (c2["status"], c2["step"]) == ("failed", "host-key") and "does not match" in c2["error"]
    assert doc["failed"] == ["c2"] and (fleet.root / "known_hosts").read_text() == known
    assert fleet.agent_pid("c2") == pids["c2"]  # nothing was done to it
