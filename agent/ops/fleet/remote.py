"""What runs on a fleet host, as shell command lines: the probe, the install into a venv, and the
supervised start and stop of the agent.

Everything a host runs is built here from an inventory ``Host``, so ``--plan`` can show it and
the runner only sends it. Builders give what runs as root; ``root`` puts it under sudo when the
login is not root. The probe, start and stop are one small Python program (``HELPER``,
plain enough for any Python 3 so that the probe can report an old one), sent base64-encoded on
the command line with its arguments as JSON: no file is left on the host for it and no quoting
can break it. The agent runs under systemd when systemd is PID 1 (a rendered unit), else as a
detached process of its own session with a pid file, so that it outlives the SSH session.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
from typing import Any

from canidae.agent.ops.fleet.inventory import Host

MIN_PYTHON = (3, 11)
HASH_FILE = "fleet.sha256"      # the config hash of what runs (written once the agent is up)
WHEELS_FILE = "wheels.sha256"   # the digest of the wheels installed in the venv

HELPER = r'''
import json, os, shutil, signal, socket, subprocess, sys, time
op, a = sys.argv[1], json.loads(sys.argv[2])
d = a["install_dir"]
pidfile = os.path.join(d, "agent.pid")

def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None

def agent_pid():
    text = read(pidfile)
    if not text or not text.isdigit():
        return None
    pid = int(text)
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open("/proc/%d/stat" % pid) as f:
            zombie = f.read().rsplit(") ", 1)[1].split()[0] == "Z"
    except OSError:
        return None
    return pid if a["config"] in cmd and not zombie else None

def systemd_active():
    if not a.get("unit"):
        return False
    p = subprocess.run(["systemctl", "is-active", "--quiet", a["unit"]])
    return p.returncode == 0

def port_free(port):
    s = socket.socket(socket.AF_INET6 if ":" in a["address"] else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a["address"], port))
        return True
    except OSError:
        return False
    finally:
        s.close()

if op == "probe":
    comm = read("/proc/1/comm") or ""
    mem = 0
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
    running = agent_pid() is not None or systemd_active()
    print(json.dumps({
        "python": list(sys.version_info[:3]), "os": " ".join(os.uname()[:3]) if hasattr(os, "uname") else sys.platform,
        "setpriv": shutil.which("setpriv"), "cgroup2": os.path.exists("/sys/fs/cgroup/cgroup.controllers"),
        "systemd": comm.strip() == "systemd", "time": time.time(), "cpus": os.cpu_count() or 1, "mem_mib": mem,
        "running": running, "ports": {str(p): (running or port_free(p)) for p in a["ports"]},
        "hash": read(os.path.join(d, a["hash_file"])), "wheels": read(os.path.join(d, a["wheels_file"])),
    }))
elif op == "stop":
    if a.get("unit") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "stop", a["unit"]], stderr=subprocess.DEVNULL)
    pid = agent_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while agent_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if agent_pid() is not None:
            os.killpg(pid, signal.SIGKILL)
    print(json.dumps({"stopped": pid}))
elif op == "start":
    if agent_pid() is not None:
        print(json.dumps({"pid": agent_pid(), "already": True}))
        sys.exit(0)
    log = os.open(os.path.join(d, "stdout.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    proc = subprocess.Popen([os.path.join(d, "venv", "bin", "python"), "-m", "canidae", "agent", "run",
                             "--config", a["config"]], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, close_fds=True, cwd=d)
    with open(pidfile + ".tmp", "w") as f:
        f.write("%d\n" % proc.pid)
    os.replace(pidfile + ".tmp", pidfile)
    time.sleep(0)
    print(json.dumps({"pid": proc.pid}))
'''


def root(host: Host, body: str, password: bool = False) -> str:
    """``body`` (a shell command line) run as root on ``host``: as it is when the login is root, else
    under ``sudo``: ``-n`` (no password), or ``-S`` with an empty prompt when the run feeds the sudo
    password on stdin (the password is never on a command line). One ``sudo`` per command line, so
    the password is read once, before ``body`` runs (whose own stdin is then what is left: nothing)."""
    if host.user == "root":
        return body
    flags = "-S -p ''" if password else "-n"
    return f"sudo {flags} sh -c {shlex.quote(body)}"


def unit_name(host: Host) -> str:
    return f"canidae-agent-{host.name}.service"


def unit_path(host: Host) -> str:
    return f"/etc/systemd/system/{unit_name(host)}"


def helper_args(host: Host, systemd: bool = False) -> dict[str, Any]:
    return {"install_dir": host.install_dir, "config": host.config_path, "address": host.address,
            "ports": [host.api_port] + ([host.raft_port] if host.raft else []),
            "hash_file": HASH_FILE, "wheels_file": WHEELS_FILE, "unit": unit_name(host) if systemd else ""}


def helper(host: Host, op: str, python: str | None = None, systemd: bool = False) -> str:
    """The command line (run as root) of ``op`` (probe, start, stop) of ``HELPER`` on ``host``."""
    code = base64.b64encode(HELPER.encode()).decode()
    prog = f"import base64; exec(base64.b64decode('{code}'))"
    return (f"{shlex.quote(python or host.python)} -c {shlex.quote(prog)} {op} "
            f"{shlex.quote(json.dumps(helper_args(host, systemd)))}")


SUDO_CHECK = "sudo -n true"               # proves sudo needs no password
SUDO_WITH_PASSWORD = "sudo -S -p '' true"  # proves the password fed on stdin is accepted


def prepare_dirs(host: Host) -> str:
    d = shlex.quote(host.install_dir)
    return f"mkdir -p {d}/wheels {d}/data && chmod 0700 {d} {d}/data"


def list_wheels(host: Host) -> str:
    """``sha256sum`` lines of the wheels copied to ``host`` before (none: no output)."""
    w = shlex.quote(os.path.join(host.install_dir, "wheels"))
    return f"cd {w} 2>/dev/null && for f in *.whl; do [ -e \"$f\" ] && sha256sum \"$f\"; done; true"


def parse_sums(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            out[parts[1].strip().lstrip("*")] = parts[0]
    return out


def remove_wheels(host: Host, names: list[str]) -> str:
    w = os.path.join(host.install_dir, "wheels")
    return "rm -f " + " ".join(shlex.quote(os.path.join(w, n)) for n in names) if names else "true"


def install(host: Host, wheels_digest: str, names: list[str] | None = None) -> str:
    """Make the venv (once) and install from the copied wheels only (no index): ``names`` (the wheels
    that changed), or every wheel (a new venv always gets every wheel)."""
    d = host.install_dir
    venv, py = os.path.join(d, "venv"), os.path.join(d, "venv", "bin", "python")
    wheels = os.path.join(d, "wheels")
    every = f"{shlex.quote(wheels)}/*.whl"
    chosen = " ".join(shlex.quote(os.path.join(wheels, n)) for n in names) if names else every
    pip = (f"env PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 {shlex.quote(py)} -m pip install -q "
           f"--no-compile --no-index --find-links {shlex.quote(wheels)} --upgrade --force-reinstall --no-deps")
    return (f"set -e; if [ -x {shlex.quote(py)} ]; then {pip} {chosen}; else "
            f"{shlex.quote(host.python)} -m venv {shlex.quote(venv)}; {pip} {every}; fi; "
            f"{shlex.quote(py)} -m canidae --version; "
            f"echo {wheels_digest} > {shlex.quote(os.path.join(d, WHEELS_FILE))}")


def systemd_unit(host: Host) -> str:
    """The unit that runs ``host``'s agent under systemd."""
    py = os.path.join(host.install_dir, "venv", "bin", "python")
    return "\n".join([
        "[Unit]",
        f"Description=canidae agent {host.name}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        f"ExecStart={py} -m canidae agent run --config {host.config_path}",
        f"WorkingDirectory={host.install_dir}",
        "Restart=on-failure",
        "RestartSec=2",
        "KillMode=mixed",
        "TimeoutStopSec=20",
        "Delegate=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def systemd_verify(path: str) -> str:
    """``systemd-analyze verify`` of a unit file, where systemd-analyze is installed (else nothing).
    It checks the unit's syntax and that ExecStart's program exists; it only warns (exit 0) of an
    unknown key or a bad value, so any line naming the unit file fails the check too."""
    p, name = shlex.quote(path), shlex.quote(os.path.basename(path))
    return (f"if command -v systemd-analyze >/dev/null; then out=$(systemd-analyze verify {p} 2>&1); rc=$?; "
            f"if [ $rc -ne 0 ] || printf '%s' \"$out\" | grep -qF {name}; then printf '%s\\n' \"$out\" >&2; exit 1; fi; fi")


def systemd_start(host: Host) -> str:
    unit = shlex.quote(unit_name(host))
    return (f"{systemd_verify(unit_path(host))}; set -e; systemctl daemon-reload; systemctl enable -q {unit}; "
            f"systemctl restart {unit}")


# What bootstrap leaves in a host's install dir: uninstall removes these and nothing else.
INSTALLED = ("venv", "wheels", "data", "agent.toml", "agent.toml.tmp", "agent.log", "stdout.log", "agent.pid",
             "ca.pem", "agent.pem", "agent.key",  # the agent's TLS files (inventory.agent_config)
             HASH_FILE, WHEELS_FILE)


def uninstall(host: Host) -> str:
    """Remove what bootstrap put on ``host``: its unit (stopped, disabled) and the files it wrote in
    the install dir (only those: the dir itself goes only when that leaves it empty)."""
    unit = shlex.quote(unit_name(host))
    d = host.install_dir
    files = " ".join(shlex.quote(os.path.join(d, f)) for f in INSTALLED)
    logs = shlex.quote(os.path.join(d, "agent.log")) + ".*"
    return (f"if [ -e {shlex.quote(unit_path(host))} ]; then systemctl disable -q --now {unit} || true; "
            f"rm -f {shlex.quote(unit_path(host))}; systemctl daemon-reload || true; fi; "
            f"rm -rf {files} {logs} && (rmdir {shlex.quote(d)} 2>/dev/null || true)")


def record_hash(host: Host, digest: str) -> str:
    return f"echo {digest} > {shlex.quote(os.path.join(host.install_dir, HASH_FILE))}"


def clear_hash(host: Host) -> str:
    return f"rm -f {shlex.quote(os.path.join(host.install_dir, HASH_FILE))}"


def parse_probe(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def probe_problems(host: Host, probe: dict[str, Any], clock_offset_s: float) -> list[str]:
    """What keeps ``host`` from running an agent, in words (empty: nothing)."""
    out = []
    if tuple(probe["python"][:2]) < MIN_PYTHON:
        out.append(f"{host.python} is Python {'.'.join(map(str, probe['python']))}; canidae needs >= "
                   f"{'.'.join(map(str, MIN_PYTHON))} (set python in the inventory)")
    if not probe.get("setpriv"):
        out.append("setpriv is not installed (util-linux): packs cannot drop privileges")
    busy = [p for p, free in probe["ports"].items() if not free]
    if busy:
        out.append(f"port(s) {', '.join(busy)} on {host.address} are in use")
    if abs(clock_offset_s) > 5:
        out.append(f"the clock is {clock_offset_s:+.1f} s off this machine's (run NTP)")
    return out


__all__ = ["HELPER", "SUDO_CHECK", "SUDO_WITH_PASSWORD", "helper", "install", "list_wheels", "parse_probe",
           "parse_sums", "probe_problems", "remove_wheels", "root", "systemd_unit", "systemd_verify", "uninstall",
           "unit_name", "unit_path"]
