"""``fleet bootstrap`` of 100 hosts at ``--parallel 50``: wall time and peak memory of the
bootstrapping process (the ``canidae`` command), against 100 in-process SSH servers.

    python bench/fleet100.py                    # ~2-4 min on 2 cores
    python bench/fleet100.py --hosts 20 --parallel 10

The hosts are asyncssh servers in this process, one per loopback address (127.0.1.10, ...), each
with its own host key, answering the commands bootstrap sends from a small model of a host
(probe, stop/start, install, hash files) instead of running them, and an SFTP server that
receives every wheel and discards it; each host also answers its agent API (health; status on
the servers, a leader with quorum). So the figure is the operator's side for real: SSH
connections and key checks, every wheel (canidae's and its dependencies') encrypted and sent to
every host, the per-host steps, the waits; the hosts' side costs nothing (the venv installs a
real host does are not in it). Two runs: from nothing (everything copied and "installed"), then
a re-run (every host unchanged: connect and probe only). The command's peak RSS is its
``ru_maxrss`` (``wait4``). Needs root to bind 127.0.1.x (any Linux loopback answers 127/8).
Nothing here is a test: it reports, it never fails on a slow figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import asyncssh

from canidae.agent.ops.fleet.wheelhouse import prepare

SSH_PORT = 2222
API_PORT = 7100
RAFT_PORT = 7200


class HostModel:
    """What a host remembers between commands: whether its agent runs, and its two hash files."""

    def __init__(self, name: str, role: str) -> None:
        self.name, self.role = name, role
        self.running = False
        self.hash: str | None = None
        self.wheels: str | None = None
        self.commands = 0

    def answer(self, command: str) -> tuple[int, str]:
        self.commands += 1
        if "base64.b64decode(" in command:
            words = shlex.split(command)
            op = words[3]
            if op == "probe":
                ports = json.loads(words[4])["ports"]
                return 0, json.dumps({
                    "python": [3, 11, 7], "os": "Linux bench", "setpriv": "/usr/bin/setpriv", "cgroup2": True,
                    "systemd": False, "time": time.time(), "cpus": 4, "mem_mib": 8192, "running": self.running,
                    "ports": {str(p): True for p in ports}, "hash": self.hash, "wheels": self.wheels}) + "\n"
            if op == "stop":
                self.running = False
            elif op == "start":
                self.running = True
            return 0, json.dumps({"ok": True}) + "\n"
        if "fleet.sha256" in command and command.startswith("echo "):
            self.hash = command.split()[1]
        elif "wheels.sha256" in command and "pip install" in command:
            self.wheels = command.rsplit("echo ", 1)[1].split()[0]
        elif "fleet.sha256" in command and command.startswith("rm -f"):
            self.hash = None
        return 0, ""


class Discard(asyncssh.SFTPServer):
    """SFTP that accepts every file and keeps none (the bench measures the sender)."""

    def open(self, path: bytes, pflags: int, attrs: Any) -> Any:
        return open(os.devnull, "wb")  # the SFTP server closes it

    def open56(self, path: bytes, desired_access: int, flags: int, attrs: Any) -> Any:
        return open(os.devnull, "wb")

    def setstat(self, path: bytes, attrs: Any) -> None:
        return None

    def fsetstat(self, file_obj: Any, attrs: Any) -> None:
        return None

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        return None

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        return None


class Api:
    """The agent API of every host: health, and the servers' status (one leads, with quorum)."""

    def __init__(self, models: dict[str, HostModel], n: int) -> None:
        self.models, self.n = models, n

    async def serve(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                m = self.models[name]
                if not m.running:
                    break
                if path.startswith("/v1/status"):
                    body = {"node": name, "raft_state": "leader" if name == "s1" else "follower",
                            "has_quorum": True, "nodes": sum(x.running for x in self.models.values())}
                else:
                    body = {"ok": True, "node": name, "version": "bench"}
                data = json.dumps(body).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(data)).encode() + b"\r\n\r\n" + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def addr(i: int) -> str:
    return f"127.0.1.{10 + i}"


async def serve_hosts(names: list[tuple[str, str]], keydir: str, auth_keys: str, ready: threading.Event,
                      stop: asyncio.Event, models: dict[str, HostModel]) -> None:
    api = Api(models, len(names))
    servers = []
    for i, (name, role) in enumerate(names):
        key = asyncssh.generate_private_key("ssh-ed25519")
        model = models[name]

        async def process(proc: asyncssh.SSHServerProcess, model: HostModel = model) -> None:
            status, out = model.answer(proc.command or "")
            proc.stdout.write(out)
            proc.exit(status)

        servers.append(await asyncssh.create_server(
            lambda: asyncssh.SSHServer(), addr(i), SSH_PORT, server_host_keys=[key], authorized_client_keys=auth_keys,
            process_factory=process, sftp_factory=Discard, allow_scp=False))
        servers.append(await asyncio.start_server(lambda r, w, name=name: api.serve(name, r, w), addr(i), API_PORT))
    ready.set()
    await stop.wait()
    for s in servers:
        s.close()


def run_cli(args: list[str]) -> tuple[float, float, dict[str, Any]]:
    """Run ``canidae`` with ``args``: its wall time (s), its peak RSS (MiB), its JSON."""
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "canidae", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    t_out = threading.Thread(target=lambda: out_chunks.append(p.stdout.read()))  # type: ignore[union-attr]
    t_err = threading.Thread(target=lambda: err_chunks.append(p.stderr.read()))  # type: ignore[union-attr]
    t_out.start()
    t_err.start()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    t_out.join()
    t_err.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in (0, 1):
        raise SystemExit(f"canidae exited {p.returncode}: {b''.join(err_chunks).decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, json.loads(b"".join(out_chunks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (to bind 127.0.1.x)")
    names = [(f"s{i + 1}", "server") for i in range(3)] + [(f"c{i + 1}", "client") for i in range(args.hosts - 3)]
    work = tempfile.mkdtemp(prefix="canidae-fleet100-")
    try:
        wheels = prepare(os.path.join(work, "wheels"))
        size = sum(os.path.getsize(os.path.join(wheels.path, f)) for f in wheels.files)
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(os.path.join(work, "id"))
        key.write_public_key(os.path.join(work, "id.pub"))
        with open(os.path.join(work, "id.pub")) as f:
            auth = asyncssh.import_authorized_keys(f.read())
        inv = os.path.join(work, "bench.toml")
        with open(inv, "w") as f:
            f.write(f'[cluster]\nname = "bench"\nuser = "root"\nkey = "id"\nknown_hosts = "known_hosts"\n'
                    f'port = {SSH_PORT}\ninstall_dir = "/opt/canidae-bench"\nconnect_timeout_s = 30\n')
            f.writelines(f'\n[[hosts]]\nname = "{name}"\naddress = "{addr(i)}"\nrole = "{role}"\n' for i, (name, role) in enumerate(names))
        models = {n: HostModel(n, r) for n, r in names}
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve_hosts(names, work, auth, ready, stop, models))
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        if not ready.wait(120):
            raise SystemExit("the SSH servers did not start")
        base = ["--config", os.path.join(work, "cli.toml"), "fleet", "bootstrap", inv, "--yes", "--json",
                "--parallel", str(args.parallel), "--wheelhouse", wheels.path]
        first = run_cli([*base, "--accept-new"])
        again = run_cli(base)
        loop.call_soon_threadsafe(stop.set)
        t.join(30)
        for label, (wall, rss, doc) in (("from nothing", first), ("re-run", again)):
            statuses: dict[str, int] = {}
            for h in doc["hosts"]:
                statuses[h["status"]] = statuses.get(h["status"], 0) + 1
            print(f"{label:13s} {len(names)} hosts, --parallel {args.parallel}: wall {wall:6.1f} s, peak RSS "
                  f"{rss:6.1f} MiB; {statuses}")
            bad = [h for h in doc["hosts"] if h["status"] not in ("ok", "unchanged")]
            if bad:
                print(f"  e.g. {bad[0]['host']}: {bad[0]['status']} at {bad[0]['step']}: {bad[0]['error'][:300]}")
        print(f"{len(wheels.files)} wheels, {size / 2**20:.1f} MiB per host ({size * len(names) / 2**30:.2f} GiB "
              f"sent over SSH in the first run); Python {platform.python_version()}, {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
