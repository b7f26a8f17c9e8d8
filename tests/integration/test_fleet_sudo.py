"""``fleet bootstrap`` through sudo with a password, against real sshd.

The host's login is ``ops``, not root, so every root command goes through sudo. No real user is
made on this machine: the host's sshd runs in a mount namespace of its own (it goes away with
its processes) where ``/etc/passwd`` is a copy with an ``ops`` line, and ``sudo`` is a stand-in
script on PATH (``/usr/local/sbin``, bind-mounted there only). The stand-in speaks sudo's side of
the protocol canidae uses: ``-n`` fails with "a password is required"; ``-S -p ''`` reads one line
from stdin and runs the command only when it is the password. ``ops`` has uid 0 in that copy (a
script cannot change users), so this checks canidae's side (checked up front, refused without a
password, a wrong one reported, the right one fed over stdin to every root command and never on
a command line or in any output), not sudo's own privilege change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetrig import ROOT, Fleet, fleet_rig

pytestmark = pytest.mark.netns

PASSWORD = "correct horse 42"
FAKE_SUDO = r"""#!/bin/sh
log="@LOG@"
if [ "$1" = "-n" ]; then
  echo "no-password $*" >> "$log"; echo "sudo: a password is required" >&2; exit 1
fi
if [ "$1" = "-S" ] && [ "$2" = "-p" ] && [ -z "$3" ]; then
  shift 3
  IFS= read -r pw || pw=""
  if [ "$pw" != "@PASSWORD@" ]; then
    echo "wrong-password $*" >> "$log"; echo "Sorry, try again." >&2; echo "sudo: 1 incorrect password attempt" >&2
    exit 1
  fi
  echo "ran $1 $2" >> "$log"
  exec "$@"
fi
echo "unexpected $*" >> "$log"; exit 1
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    if not os.path.isdir("/usr/local/sbin") or not os.path.exists("/usr/bin/unshare"):
        pytest.skip("needs /usr/local/sbin and unshare (util-linux)")
    setup = tmp_path / "setup"
    (setup / "sbin").mkdir(parents=True)
    (setup / "home").mkdir()
    log = setup / "sudo.log"
    sudo = setup / "sbin" / "sudo"
    sudo.write_text(FAKE_SUDO.replace("@LOG@", str(log)).replace("@PASSWORD@", PASSWORD))
    sudo.chmod(0o755)
    passwd = setup / "passwd"
    passwd.write_text(Path("/etc/passwd").read_text() + f"ops:x:0:0:fleet test:{setup / 'home'}:/bin/sh\n")

    def wrap(name: str, argv: list[str]) -> list[str]:
        script = (f"mount --bind {passwd} /etc/passwd && mount --bind {setup / 'sbin'} /usr/local/sbin && "
                  'exec "$@"')
        return ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh", *argv]

    with fleet_rig(hosts=(("s1", "server"),), user="ops", wrap=wrap) as f:
        f.sudo_log = log  # type: ignore[attr-defined]
        yield f


def _bootstrap(fleet: Fleet, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "canidae", "--config", str(fleet.cli_config), "fleet", "bootstrap",
                           str(fleet.inventory), "--yes", "--json", "--source", ROOT, *args],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False,
                          env={**os.environ, **(env or {})})


def test_sudo_password_asked_once_fed_over_stdin(fleet: Fleet, tmp_path: Path) -> None:
    log: Path = fleet.sudo_log  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if k != "CANIDAE_SUDO_PASSWORD"}
    os.environ.pop("CANIDAE_SUDO_PASSWORD", None)

    # No password and no terminal to ask on: refused at the sudo step, with how to give one.
    p = _bootstrap(fleet, "--accept-new")
    assert p.returncode == 1, p.stderr
    s1 = json.loads(p.stdout)["hosts"][0]
    assert s1["step"] == "sudo" and "--sudo-password-file" in s1["error"], s1
    assert not fleet.host_dir("s1").exists()

    # A wrong password: refused, and said so.
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    p = _bootstrap(fleet, "--sudo-password-file", str(wrong))
    assert p.returncode == 1, p.stderr
    s1 = json.loads(p.stdout)["hosts"][0]
    assert s1["step"] == "sudo" and "refused the password" in s1["error"], s1

    # The right one (from the environment): every root command goes through sudo -S, fed over stdin.
    p = _bootstrap(fleet, env={**env, "CANIDAE_SUDO_PASSWORD": PASSWORD})
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    assert doc["hosts"][0]["status"] == "ok" and doc["leader"] == "s1", doc
    assert fleet.agent_pid("s1") is not None
    lines = log.read_text().splitlines()
    assert not [line for line in lines if line.startswith("unexpected")], lines
    ran = [line for line in lines if line.startswith("ran ")]
    assert ran[0] == "ran true " and len(ran) >= 8, ran  # the check up front, then each root command
    assert all(line.startswith("ran sh -c") for line in ran[1:]), ran

    # A file works too, and a re-run with it changes nothing.
    good = tmp_path / "good"
    good.write_text(PASSWORD + "\n")
    p = _bootstrap(fleet, "--sudo-password-file", str(good))
    assert p.returncode == 0 and json.loads(p.stdout)["hosts"][0]["status"] == "unchanged", p.stderr[-2000:]

    # The password is on no command line, in no output, in no file the run wrote on the host.
    assert PASSWORD not in log.read_text()
    assert PASSWORD not in p.stdout + p.stderr
    for d, _, files in os.walk(fleet.root):
        for f in files:
            path = os.path.join(d, f)
            if path in (str(good),) or os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            assert PASSWORD.encode() not in data, path
