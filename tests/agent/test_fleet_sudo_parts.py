"""The sudo password of a fleet run, without SSH: asked once however many hosts need it at once;
read from a file or the environment for scripts; and the command line that runs a body as root
through ``sudo -S`` carries the body intact (quotes, pipes, ``&&``) while the password only ever
travels on stdin (checked with a stand-in ``sudo`` on PATH)."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from canidae.agent.ops.fleet import remote
from canidae.agent.ops.fleet.inventory import parse_inventory
from canidae.agent.ops.fleet.sudo import ENV, SudoPassword
from canidae.core.errors import InvalidInput


def test_asked_once_for_every_host() -> None:
    asked: list[int] = []

    def ask() -> str:
        asked.append(1)
        return "pw\n"

    async def many() -> list[str | None]:
        sudo = SudoPassword(None, ask)
        return list(await asyncio.gather(*(sudo.get() for _ in range(20))))
    assert asyncio.run(many()) == ["pw"] * 20 and asked == [1]
    assert "pw" not in repr(SudoPassword("pw"))


def test_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw"
    f.write_text("secret one\n")
    monkeypatch.setenv(ENV, "from env")
    assert asyncio.run(SudoPassword.from_options(str(f), None).get()) == "secret one"  # the file wins
    assert asyncio.run(SudoPassword.from_options(None, None).get()) == "from env"
    monkeypatch.delenv(ENV)
    assert asyncio.run(SudoPassword.from_options(None, None).get()) is None  # no terminal, nothing given
    f.write_text("two\nlines\n")
    with pytest.raises(InvalidInput, match="one non-empty line"):
        SudoPassword.from_options(str(f), None)
    with pytest.raises(InvalidInput, match="No such file"):
        SudoPassword.from_options(str(tmp_path / "missing"), None)


def test_root_command_through_sudo_with_the_password_on_stdin(tmp_path: Path) -> None:
    log = tmp_path / "argv"
    fake = tmp_path / "bin" / "sudo"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" > {log}
[ "$1" = "-S" ] && [ "$2" = "-p" ] && [ -z "$3" ] || exit 9
shift 3
IFS= read -r pw
[ "$pw" = "s3cret 'x'" ] || {{ echo "Sorry, try again." >&2; exit 1; }}
exec "$@"
""")
    fake.chmod(0o755)
    doc = {"cluster": {}, "hosts": [{"name": "s1", "address": "10.0.0.1", "role": "server", "user": "ops"}]}
    host = parse_inventory(doc, str(tmp_path / "lab.toml")).hosts[0]
    body = "echo 'a b' | tr a-z A-Z && echo \"$((1 + 2))\""
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}

    def run(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", remote.root(host, body, password=True)], input=password + "\n",
                              capture_output=True, text=True, env=env, timeout=30, check=False)
    r = run("s3cret 'x'")
    assert (r.returncode, r.stdout) == (0, "A B\n3\n"), r.stderr
    assert "s3cret" not in log.read_text()  # not on the command line
    r = run("wrong")
    assert r.returncode == 1 and "Sorry" in r.stderr
    # Without a password: sudo -n.
    assert remote.root(host, body) == f"sudo -n sh -c {shlex.quote(body)}"
