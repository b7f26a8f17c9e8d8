"""The ``canidae`` command shell: the command tree, global options, and how every kind of
failure becomes one line on stderr and a documented exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer.main

from canidae import __version__
from canidae.cli import main as cli_main
from canidae.cli.output import GLOBALS
from canidae.core import errors
from canidae.core.types import Driver

CONTRACT_NOUNS = {
    "cluster": {"up", "down", "status"},
    "agent": {"run", "init", "doctor"},
    "node": {"list", "show", "drain", "cordon", "uncordon", "revoke"},
    "pack": {"create", "place", "spawn", "list", "show", "migrate", "stop", "kill", "logs", "history"},
    "yip": {"send", "recv"},
    "token": {"create", "list", "show", "revoke", "self", "rotate-bootstrap"},
    "policy": {"apply", "list", "show", "delete"},
    "ring": {"show", "lookup", "simulate"},
    "drill": {"failover", "node", "zone", "partition"},
    "scale-test": {"run", "report"},
    "events": {"tail"},
    "history": {"verify"},
    "fleet": {"bootstrap", "status"},
    "autoscale": {"plan"},
    "audit": {"tail", "verify", "export", "checkpoint", "checkpoints"},
    "keys": {"list", "status", "rotate", "retire"},
}
CONTRACT_COMMANDS = {"place", "metrics", "top"}
# Every noun of DESIGN.md's contract is built; a noun joins the tree (and this table) only once it is.


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the tree with its path below ``canidae``, the root included."""
    yield path, command
    ctx = command.make_context("canidae", [], resilient_parsing=True)
    for name in getattr(command, "list_commands", lambda _ctx: [])(ctx):
        yield from walk(command.get_command(ctx, name), path + (name,))


TREE = list(walk(typer.main.get_command(cli_main.app)))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_classes() -> list[type[errors.CanidaeError]]:
    found, pending = [], [errors.CanidaeError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


# ---------------------------------------------------------------------------------------------
# The command tree


def test_every_noun_and_verb_of_the_contract_is_registered() -> None:
    paths = {path for path, _ in TREE}
    for noun, verbs in CONTRACT_NOUNS.items():
        assert (noun,) in paths, noun
        for verb in verbs:
            assert (noun, verb) in paths, f"{noun} {verb}"
    for name in CONTRACT_COMMANDS:
        assert (name,) in paths, name


def test_nouns_table_names_every_top_level_command_once() -> None:
    names = [name for name, _ in cli_main.NOUNS]
    assert len(names) == len(set(names))
    top = {path[0] for path, _ in TREE if len(path) == 1}
    assert top == set(names)


@pytest.mark.parametrize("path", [path for path, _ in TREE], ids=lambda p: " ".join(p) or "canidae")
def test_help_works_for_every_command(capsys: pytest.CaptureFixture[str], path: tuple[str, ...]) -> None:
    code, out, err = run(capsys, *path, "--help")
    assert code == 0, err
    assert "Usage:" in out and " ".join(("canidae",) + path) in out
    assert err == ""


def test_short_help_option_works(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pack", "spawn", "-h")
    assert code == 0 and "--members" in out


def test_root_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    assert "6 conflict" in flat and "3 cluster unavailable" in flat


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["pack"]):
        code, out, _ = run(capsys, *argv)
        assert code == errors.EXIT_USAGE
        assert "Usage:" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"canidae {__version__}\n", "")


# ---------------------------------------------------------------------------------------------
# Only built commands are shown


def test_every_command_in_the_tree_is_built() -> None:
    # A command that is not built is not in --help, the completions or the man page: every
    # command of the tree lives in a real module of the CLI.
    modules = {cmd.callback.__module__ for _, cmd in TREE if getattr(cmd, "callback", None) is not None}
    assert modules and all(m.startswith("canidae.cli.") for m in modules), modules
    assert not any(m.endswith("unavailable") for m in modules)


def test_failure_with_json_prints_nothing_on_stdout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_main, "app", _app_raising(errors.NotFound("no pack web")))
    code, out, err = run(capsys, "boom")
    assert (code, out, err) == (errors.EXIT_NOT_FOUND, "", "canidae: error: no pack web\n")


# ---------------------------------------------------------------------------------------------
# Usage errors: exit 2, one line, no traceback


def _assert_one_usage_line(code: int, out: str, err: str, expected: str) -> None:
    assert code == errors.EXIT_USAGE
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("canidae: error: "), err
    assert expected in err
    assert "Traceback" not in err and "╭" not in err


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["bogus"], "No such command 'bogus'"),
        (["pack", "bogus"], "No such command 'bogus'"),
        (["pack", "spawn", "--bogus"], "No such option: --bogus (see 'canidae pack spawn --help')"),
        (["--bogus", "pack", "list"], "No such option: --bogus (see 'canidae --help')"),
        (["pack", "show"], "Missing argument"),
        (["--addr", "nope", "pack", "list"], "'nope' is not host:port"),
        (["--addr", "h:99999", "pack", "list"], "'h:99999' is not host:port"),
        (["--json"], "Missing command"),
    ],
)
def test_usage_error_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    _assert_one_usage_line(*run(capsys, *argv), expected)


def _app_with_typed_options() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def spawn(
        name: str,
        cpu: Annotated[int, typer.Option("--cpu")] = 100,
        members: Annotated[int, typer.Option("--members", min=1, max=64)] = 1,
        driver: Annotated[Driver, typer.Option("--driver")] = Driver.VIRTUAL,
    ) -> None:
        raise AssertionError("not reached: every case is a usage error")

    @app.command()
    def other() -> None:
        pass

    return app


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["spawn", "web", "--cpu", "lots"], "Invalid value for '--cpu'"),
        (["spawn", "web", "--driver", "qemu"], "Invalid value for '--driver'"),
        (["spawn", "web", "--members", "0"], "Invalid value for '--members'"),
        (["spawn", "web", "--cpu"], "--cpu"),
        (["spawn"], "Missing argument 'name'"),
        (["spawn", "a", "b"], "unexpected extra argument"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: str
) -> None:
    monkeypatch.setattr(cli_main, "app", _app_with_typed_options())
    code, out, err = run(capsys, *argv)
    _assert_one_usage_line(code, out, err, expected)
    assert err.rstrip().endswith("(see 'canidae spawn --help')")


def test_usage_error_from_the_installed_command(tmp_path: Path) -> None:
    """End to end through ``python -m canidae``: the console entry point maps errors the same way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANIDAE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "canidae", "pack", "spawn", "--bogus"],
        capture_output=True, text=True, check=False, env=env, cwd=tmp_path, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "canidae: error: No such option: --bogus (see 'canidae pack spawn --help')\n"


# ---------------------------------------------------------------------------------------------
# Global options


def test_global_options_are_stored(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANIDAE_ADDR", raising=False)
    monkeypatch.delenv("CANIDAE_TOKEN", raising=False)
    # The global options are read before the noun's own --help stops the run: nothing connects.
    code, _, _ = run(capsys, "--json", "--addr", "a:1, b:2", "--token", "s3cret", "--config", "/etc/c.toml",
                     "pack", "--help")
    assert code == 0
    assert GLOBALS.json is True
    assert GLOBALS.addr == ("a:1", "b:2")
    assert GLOBALS.token == "s3cret"
    assert GLOBALS.config_path == Path("/etc/c.toml")
    # A later run without them resets every field.
    run(capsys, "pack", "--help")
    assert (GLOBALS.json, GLOBALS.addr, GLOBALS.token) == (False, (), None)
    assert GLOBALS.config_path == Path("~/.config/canidae/config.toml").expanduser()


def test_global_options_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANIDAE_ADDR", "10.0.0.1:7400,10.0.0.2:7400")
    monkeypatch.setenv("CANIDAE_TOKEN", "from-env")
    run(capsys, "node", "--help")
    assert GLOBALS.addr == ("10.0.0.1:7400", "10.0.0.2:7400")
    assert GLOBALS.token == "from-env"


# ---------------------------------------------------------------------------------------------
# The one mapping from exceptions to exit codes


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_typed_error_maps_to_its_exit_code(capsys: pytest.CaptureFixture[str], cls: type[errors.CanidaeError]) -> None:
    assert cli_main.report_failure(cls("it went\nwrong")) == cls.exit_code
    assert capsys.readouterr() == ("", "canidae: error: it went wrong\n")


def _app_raising(exc: BaseException) -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def boom() -> None:
        raise exc

    @app.command()
    def other() -> None:  # two commands, so "boom" is a subcommand as in canidae
        pass

    return app


@pytest.mark.parametrize(
    "exc,code,line",
    [
        (errors.NotFound("pack web not found"), 5, "canidae: error: pack web not found"),
        (errors.NoCapacity("no node has 512 MiB"), 6, "canidae: error: no node has 512 MiB"),
        (errors.NoLeader("no leader"), 3, "canidae: error: no leader"),
        (errors.PermissionDenied("denied"), 4, "canidae: error: denied"),
        (errors.InvalidInput("bad name"), 2, "canidae: error: bad name"),
        (typer.Exit(3), 3, None),
        (SystemExit(4), 4, None),
        (typer.BadParameter("no good"), 2, "canidae: error: Invalid value: no good (see 'canidae boom --help')"),
        (KeyboardInterrupt(), 130, "canidae: interrupted"),
        (typer.Abort(), 130, "canidae: interrupted"),
        (
            ValueError("boom"), 1,
            "canidae: internal error: ValueError: boom (set CANIDAE_DEBUG=1 for a traceback)",
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_exception_in_a_command_maps_to_exit_code(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
    code: int,
    line: str | None,
) -> None:
    monkeypatch.delenv("CANIDAE_DEBUG", raising=False)
    monkeypatch.setattr(cli_main, "app", _app_raising(exc))
    assert run(capsys, "boom") == (code, "", f"{line}\n" if line else "")


def test_traceback_only_with_debug(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "app", _app_raising(RuntimeError("kaput")))
    monkeypatch.setenv("CANIDAE_DEBUG", "1")
    code, _, err = run(capsys, "boom")
    assert code == 1
    assert "Traceback" in err and "RuntimeError: kaput" in err
    assert err.endswith("canidae: internal error: RuntimeError: kaput (set CANIDAE_DEBUG=1 for a traceback)\n")


def test_click_package_usage_error_maps_to_2(capsys: pytest.CaptureFixture[str]) -> None:
    click = pytest.importorskip("click", reason="the click package is not installed")
    assert cli_main.report_failure(click.UsageError("bad usage")) == 2
    assert capsys.readouterr().err == "canidae: error: bad usage\n"


def test_version_loads_no_command_tree() -> None:
    # Scripts ask for the version often: it must not pay for typer, rich or any noun.
    code = ("import sys; sys.argv = ['canidae', '--version']\n"
            "from canidae.cli.entry import run\n"
            "try:\n    run()\nexcept SystemExit as e:\n"
            "    print(e.code, sorted(m for m in ('typer', 'rich', 'httpx', 'canidae.cli.main') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.splitlines() == [f"canidae {__version__}", "0 []"], out
