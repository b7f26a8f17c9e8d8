"""The pack commands a new user trips on, run through the CLI against one real local cluster
(1 server + 1 client agent, exec packs with real processes): delete, spawns that fail leaving
nothing behind, spec files, crash loops, honest failure reasons, the exit-code rule, the --json
contract (NDJSON for streams, filtered totals) and whole values when piped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canidae.cli import main as cli_main
from harness import LocalCluster, for_the_cli, local_cluster, wait_until
from canidae.core.types import Resources

NODE_CPU = 4000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("clipacks")
    with for_the_cli(local_cluster(str(data), servers=1, clients=1, capacity=Resources(NODE_CPU, 8192, 200))) as lc:
        yield lc


class Cli:
    """Runs ``canidae`` in this process (the real command, parsing included) and captures it."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str, code: int | None = 0) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = cli_main.main(list(argv))
        out, err = self.capsys.readouterr()
        if code is not None:
            assert rc == code, f"canidae {' '.join(argv)}: exit {rc}, expected {code}; stderr: {err}"
        if rc:
            assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, no traceback
        return rc, out, err

    def json(self, *argv: str) -> Any:
        return json.loads(self("--json", *argv)[1])

    def names(self) -> set[str]:
        return {p["name"] for p in self.json("pack", "list")["packs"]}


@pytest.fixture
def cli(cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def pack_dir(cluster: LocalCluster, node: str, pack: str) -> Path:
    return Path(cluster.agent(node)["data_dir"] if "data_dir" in cluster.agent(node)
                else Path(cluster.data_dir) / "agents" / node) / "exec" / "packs" / pack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_spawns_that_fail_leave_nothing_behind(cli: Cli) -> None:
    _, _, err = cli("pack", "spawn", "big", "--cpu", "99999999", code=6)
    assert "no node can take big" in err
    cli("pack", "spawn", "big", "--zone", "z9", code=5)
    cli("pack", "spawn", "big", "--region", "r9", code=5)
    cli("pack", "spawn", "big", "--node", "c33", code=5)
    assert "big" not in cli.names()
    cli("pack", "spawn", "big", "--cpu", "100")  # the name is free: nothing was left
    _, _, err = cli("pack", "spawn", "nocmd", "--", "no-such-command-anywhere", code=1)
    assert "not found" in err and "removed" in err and "nocmd" not in cli.names()
    # --keep-pending keeps what a failed spawn made, and 'pack show' says why it has no node
    cli("pack", "spawn", "waits", "--cpu", "99999999", "--keep-pending", code=6)
    shown = cli("pack", "show", "waits")[1]
    assert "None" not in shown and "waiting for room" in shown
    assert cli.json("pack", "show", "waits")["pack"]["state"] == "pending"
    cli("pack", "delete", "waits", "big")
    assert not {"waits", "big"} & cli.names()


def test_delete_stops_removes_files_and_keeps_history(cli: Cli, cluster: LocalCluster) -> None:
    out = cli.json("pack", "spawn", "del-me", "--node", "c1", "--check", "0", "--", "sleep", "600")
    assert out["state"] == "running"
    files = pack_dir(cluster, "c1", "del-me")
    assert (files / "logs").is_dir()
    cli("pack", "delete", "nope", "del-me", code=5)  # an unknown name: nothing is deleted
    assert "del-me" in cli.names()
    deleted = cli.json("pack", "delete", "del-me")["deleted"]
    assert deleted == [{"name": "del-me", "state": "stopped", "node": "c1"}]
    wait_until(lambda: not files.exists(), 10, "the deleted pack's files removed from its node")
    _, _, err = cli("pack", "show", "del-me", code=5)
    assert "deleted" in err
    events = cli.json("pack", "history", "del-me")["events"]
    assert [e["type"] for e in events][-1] == "PackDeleted" and "PackStopped" in [e["type"] for e in events]
    # the name can be used again, and the new pack starts afresh on its node
    again = cli.json("pack", "spawn", "del-me", "--node", "c1", "--check", "0", "--", "sleep", "600")
    assert again["state"] == "running"
    # --force deletes a running pack without waiting; its node stops it and removes its files
    cli("pack", "delete", "del-me", "--force")
    wait_until(lambda: not files.exists(), 10, "a force-deleted pack's files removed")
    # --all-stopped takes every stopped or failed pack, and only those
    cli("pack", "spawn", "keep-running")
    cli("pack", "create", "just-created")
    for n in ("old-a", "old-b"):
        cli("pack", "spawn", n)
        cli("pack", "stop", n)
    gone = {d["name"] for d in cli.json("pack", "delete", "--all-stopped")["deleted"]}
    assert {"old-a", "old-b"} <= gone and not {"keep-running", "just-created"} & gone
    cli("pack", "delete", "--all-stopped", "keep-running", code=2)
    cli("pack", "delete", "keep-running", "just-created")


def test_spec_files_are_honoured_and_checked(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('cpu = 300\nmem = 32\ncommand = ["sleep", "1000"]\nenv = { A = "1" }\n'
                    '[constraints]\nnode = "c1"\n')
    cli("pack", "spawn", "from-file", "-f", str(spec), "--check", "0")
    p = cli.json("pack", "show", "from-file")["pack"]
    assert (p["cpu"], p["mem"], p["driver"], p["command"], p["node"], p["env"]) == (
        300, 32, "exec", ["sleep", "1000"], "c1", {"A": "1"})
    # an option given on the command line overrides its field, and only that field
    cli("pack", "create", "from-file-2", "-f", str(spec), "--cpu", "200", "--env", "B=2")
    p = cli.json("pack", "show", "from-file-2")["pack"]
    assert (p["cpu"], p["mem"], p["env"]) == (200, 32, {"A": "1", "B": "2"})
    for text, field in (('cpu = "lots"\n', "'cpu'"), ('members = 0\n', "'members'"), ('colour = "red"\n', "'colour'"),
                        ('restart = "sometimes"\n', "'restart'"), ('command = "sleep 1"\n', "'command'"),
                        ('[constraints]\nzone = "../x"\n', "'constraints.zone'")):
        spec.write_text(text)
        _, _, err = cli("pack", "spawn", "bad-spec", "-f", str(spec), code=2)
        assert field in err, (text, err)
    spec.write_text("cpu = [")
    cli("pack", "spawn", "bad-spec", "-f", str(spec), code=2)
    assert "bad-spec" not in cli.names()
    cli("pack", "delete", "from-file", "from-file-2")


def test_a_crash_loop_is_reported_by_spawn_and_visible_in_list_show_and_events(cli: Cli) -> None:
    port = free_port()
    cmd = ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    _, _, err = cli("pack", "spawn", "web", "--members", "2", "--node", "c1", "--check", "20", "--", *cmd, code=1)
    assert "crash-looping" in err and "Address already in use" in err, err

    def looping() -> dict[str, Any] | None:
        packs = cli.json("pack", "list", "--state", "crashlooping")["packs"]
        return packs[0] if packs else None
    p = wait_until(looping, 20, "web listed as crashlooping")
    assert p["name"] == "web" and p["state"] == "running" and p["crashlooping"] and "exited 1" in p["reason"]
    assert "crashlooping" in cli("pack", "list")[1]
    shown = cli.json("pack", "show", "web")
    # whichever member bound the port first runs; the other keeps failing
    winner = [m for m in shown["members"] if m["restarts"] == 0]
    loser = [m for m in shown["members"] if m["last_exit"] == "exited 1"]
    assert len(winner) == 1 and winner[0]["state"] == "running" and winner[0]["pid"]
    assert len(loser) == 1 and loser[0]["last_exit_at"] and loser[0]["member"] != winner[0]["member"]
    table = cli("pack", "show", "web")[1]
    assert "crashlooping" in table and "exited 1" in table and "ago" in table
    # events: NDJSON, one object per line, by contract
    out = cli("events", "tail", "--pack", "web", "--type", "PackCrashLooping", "--json")[1]
    lines = out.splitlines()
    assert lines and all(json.loads(line)["type"] == "PackCrashLooping" for line in lines)
    cli("pack", "delete", "web")
    # A delete is acknowledged once committed; the agent stops the members right after. The
    # second run needs the port back, so wait for that (on a busy machine it takes a moment).
    wait_until(lambda: port_free(port) and port_free(port + 1), 30, "the old members' ports released")
    # the fix the README gives: one port per member, from CANIDAE_MEMBER
    script = f'exec python3 -m http.server --bind 127.0.0.1 $(({port} + CANIDAE_MEMBER))'
    cli("pack", "spawn", "web", "--members", "2", "--node", "c1", "--check", "1", "--", "sh", "-c", script)
    assert cli.json("pack", "show", "web")["pack"]["crashlooping"] is False
    cli("pack", "delete", "web")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_failure_reasons_say_what_happened(cli: Cli) -> None:
    _, _, err = cli("pack", "spawn", "exits", "--restart", "never", "--", "sh", "-c", "exit 127", code=1)
    assert "exited 127" in err and "not found" not in err, err
    assert "exits" not in cli.names()


EXIT_CODES = [
    # unknown name of anything: 5
    (["pack", "show", "no-such-pack"], 5),
    (["pack", "stop", "no-such-pack"], 5),
    (["pack", "place", "no-such-pack"], 5),
    (["pack", "delete", "no-such-pack"], 5),
    (["pack", "migrate", "no-such-pack"], 5),
    (["pack", "history", "no-such-pack"], 5),
    (["pack", "spawn", "x1", "--node", "c33"], 5),
    (["pack", "spawn", "x1", "--zone", "z9"], 5),
    (["pack", "spawn", "x1", "--cell", "c9"], 5),
    (["pack", "list", "--node", "c33"], 5),
    (["pack", "list", "--zone", "z9"], 5),
    (["node", "show", "c33"], 5),
    (["pack", "migrate", "ex-a", "--to", "c33"], 5),
    # cannot place, or the wrong state: 6
    (["pack", "spawn", "x1", "--cpu", "99999999"], 6),
    (["pack", "place", "ex-big"], 6),
    (["pack", "migrate", "ex-a", "--to", "c1"], 6),
    (["pack", "spawn", "ex-a"], 6),
    # invalid value: 2
    (["pack", "spawn", "../x"], 2),
    (["pack", "spawn", "x1", "--cpu", "-1"], 2),
    (["pack", "list", "--state", "bogus"], 2),
    (["events", "tail", "--type", "Bogus"], 2),
    (["pack", "spawn", "x1", "--driver", "exec"], 2),
]


def test_one_exit_code_rule_across_commands(cli: Cli) -> None:
    cli("pack", "spawn", "ex-a", "--node", "c1")
    cli("pack", "create", "ex-big", "--cpu", str(NODE_CPU * 10))
    wrong = []
    for argv, want in EXIT_CODES:
        rc = cli(*argv, code=None)[0]
        if rc != want:
            wrong.append((" ".join(argv), rc, want))
    assert not wrong, wrong
    assert cli.json("pack", "show", "ex-big")["pack"]["state"] == "created"  # a failed place changed nothing
    _, _, err = cli("events", "tail", "--type", "PackStartd", code=2)
    assert "PackStarted" in err
    assert "x1" not in cli.names()
    cli("pack", "delete", "ex-a", "ex-big")


def test_json_totals_count_what_the_filter_matches(cli: Cli) -> None:
    cli("pack", "create", "tot", "--count", "3")
    cli("pack", "spawn", "tot-run")
    listed = cli.json("pack", "list", "--state", "created")
    assert listed["total"] == len(listed["packs"]) == 3
    assert cli.json("pack", "list", "--state", "created", "--limit", "1")["total"] == 3
    by_zone = cli.json("pack", "list", "--zone", "z1")
    assert by_zone["total"] == len(by_zone["packs"]) and "tot-run" in {p["name"] for p in by_zone["packs"]}
    cli("pack", "delete", "tot-0", "tot-1", "tot-2", "tot-run")


def test_piped_output_prints_whole_values(cluster: LocalCluster, cli: Cli) -> None:
    long_reason_name = "wide-" + "x" * 50
    cli("pack", "spawn", long_reason_name, "--cpu", "99999999", "--keep-pending", code=6)
    env = {**os.environ, "COLUMNS": "80"}
    for argv in (["pack", "list"], ["node", "list"], ["pack", "show", long_reason_name]):
        p = subprocess.run([sys.executable, "-m", "canidae", *argv], capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert "…" not in p.stdout, p.stdout
    assert long_reason_name in p.stdout and "heartbeat" in subprocess.run(
        [sys.executable, "-m", "canidae", "node", "list"], capture_output=True, text=True, env=env, timeout=60).stdout
    cli("pack", "delete", long_reason_name)


def test_shell_completions_offer_the_live_cluster_names(cluster: LocalCluster, cli: Cli) -> None:
    cli("pack", "spawn", "complete-me")
    root = Path(__file__).resolve().parents[2]
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "LC_ALL": "C",
           "CANIDAE_CONFIG": os.environ["CANIDAE_CONFIG"], "HOME": str(cluster.data_dir)}
    bash = shutil.which("bash")
    if bash is not None:
        script = "\n".join([
            f"source {root / 'completions' / 'canidae.bash'}",
            "COMP_WORDS=(canidae pack show complete); COMP_CWORD=3; COMPREPLY=(); _canidae",
            "printf '%s\\n' \"${COMPREPLY[*]}\"",
            "COMP_WORDS=(canidae node drain ''); COMP_CWORD=3; COMPREPLY=(); _canidae",
            "printf '%s\\n' \"${COMPREPLY[*]}\""])
        out = subprocess.run([bash, "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                             env=env, timeout=60).stdout.splitlines()
        assert out[0].split() == ["complete-me"] and sorted(out[1].split()) == ["c1", "s1"], out
    fish = shutil.which("fish")
    if fish is not None:
        cmd = f"source {root / 'completions' / 'canidae.fish'}; complete -C 'canidae pack show complete'"
        got = [line.split("\t")[0] for line in subprocess.run(
            [fish, "--no-config", "-c", cmd], capture_output=True, text=True, env=env, timeout=60).stdout.splitlines()]
        assert got == ["complete-me"], got
    cli("pack", "delete", "complete-me")


def test_json_pack_list_answers_as_the_full_cli_without_loading_it(cli: Cli) -> None:
    """The fast path of ``--json pack list`` (``canidae.cli.fastpath``) prints what the typer
    command prints, exits as it exits, and loads neither typer, rich nor httpx."""
    cli("pack", "create", "fast", "--count", "3")
    heavy = ("typer", "rich", "httpx", "cryptography", "pysyncobj")
    code = ("import runpy, sys\nsys.argv = ['canidae', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('canidae', run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
            f"print('LOADED', rc, sorted(m for m in sys.modules if m.startswith({heavy!r})), file=sys.stderr)\n")
    for argv, rc in ((["--json", "pack", "list"], 0), (["pack", "list", "--state", "created", "--limit", "2", "--json"], 0),
                     (["--json", "pack", "list", "--after", "fast-0", "--stale"], 0),
                     (["--json", "pack", "list", "--zone", "z1", "--limit", "1"], 0),
                     (["--json", "pack", "list", "--node", "nosuch"], 5),
                     (["--json", "pack", "list", "--zone", "nosuch"], 5)):
        fast = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
        *err_lines, loaded = fast.stderr.splitlines()
        if rc == 0:
            assert loaded == "LOADED 0 []", fast.stderr
        else:
            assert loaded.startswith(f"LOADED {rc} "), fast.stderr
        full_rc, full_out, full_err = cli(*argv, code=rc)
        assert fast.stdout == full_out and "\n".join(err_lines) == full_err.rstrip("\n"), argv
    cli("pack", "delete", "fast-0", "fast-1", "fast-2")
