"""What runs on a fleet host, as shell command lines: the probe, the install into a venv, and the
supervised start and stop of the agent.

Everything a host runs is built here from an inventory ``Host``, so ``--plan`` can show it and
the runner only sends it. The probe, start and stop are one small Python program (``HELPER``,
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


def _sudo(host: Host) -> str:
    return "" if host.user == "root" else "sudo -n "


def unit_name(host: Host) -> str:
    return f"canidae-agent-{host.name}.service"


def helper_args(host: Host, systemd: bool = False) -> dict[str, Any]:
    return {"install_dir": host.install_dir, "config": host.config_path, "address": host.address,
            "ports": [host.api_port] + ([host.raft_port] if host.raft else []),
            "hash_file": HASH_FILE, "wheels_file": WHEELS_FILE, "unit": unit_name(host) if systemd else ""}


def helper(host: Host, op: str, python: str | None = None, systemd: bool = False) -> str:
    """The command line that runs ``op`` (probe, start, stop) of ``HELPER`` on ``host``."""
    code = base64.b64encode(HELPER.encode()).decode()
    prog = f"import base64; exec(base64.b64decode('{code}'))"
    return (f"{_sudo(host)}{shlex.quote(python or host.python)} -c {shlex.quote(prog)} {op} "
            f"{shlex.quote(json.dumps(helper_args(host, systemd)))}")


def sudo_check(host: Host) -> str | None:
    """The command that proves sudo needs no password (None: the login is root already)."""
    return None if host.user == "root" else "sudo -n true"


def prepare_dirs(host: Host) -> str:
    d = shlex.quote(host.install_dir)
    return (f"{_sudo(host)}mkdir -p {d}/wheels {d}/data && {_sudo(host)}chmod 0700 {d} {d}/data && "
            f"{_sudo(host)}find {d}/wheels -maxdepth 1 -name '*.whl' -delete")


def install(host: Host, wheels_digest: str) -> str:
    """Make the venv (once) and install canidae from the copied wheels only (no index)."""
    d = host.install_dir
    venv, py = os.path.join(d, "venv"), os.path.join(d, "venv", "bin", "python")
    s = _sudo(host)
    return (f"set -e; [ -x {shlex.quote(py)} ] || {s}{shlex.quote(host.python)} -m venv {shlex.quote(venv)}; "
            f"{s}env PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 {shlex.quote(py)} -m pip install -q --no-compile "
            f"--no-index --find-links {shlex.quote(os.path.join(d, 'wheels'))} --upgrade --force-reinstall "
            f"--no-deps {shlex.quote(os.path.join(d, 'wheels'))}/*.whl; "
            f"{s}{shlex.quote(py)} -m canidae --version; "
            f"echo {wheels_digest} | {s}tee {shlex.quote(os.path.join(d, WHEELS_FILE))} >/dev/null")


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


def systemd_start(host: Host, unit_path: str) -> str:
    s, unit = _sudo(host), shlex.quote(unit_name(host))
    verify = (f"if command -v systemd-analyze >/dev/null; then {s}systemd-analyze verify "
              f"{shlex.quote(unit_path)}; fi; ")
    return (f"set -e; {verify}{s}systemctl daemon-reload; {s}systemctl enable -q {unit}; "
            f"{s}systemctl restart {unit}")


def record_hash(host: Host, digest: str) -> str:
    return f"echo {digest} | {_sudo(host)}tee {shlex.quote(os.path.join(host.install_dir, HASH_FILE))} >/dev/null"


def clear_hash(host: Host) -> str:
    return f"{_sudo(host)}rm -f {shlex.quote(os.path.join(host.install_dir, HASH_FILE))}"


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


__all__ = ["HELPER", "helper", "install", "parse_probe", "probe_problems", "systemd_unit", "unit_name"]
