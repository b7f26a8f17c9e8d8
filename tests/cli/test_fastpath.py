"""``canidae.cli.fastpath``: which command lines it answers without the typer tree, and that it
leaves every other one (help, usage errors, other commands, tables) to the full CLI. Its answers
against a live cluster are compared with the full CLI's in tests/integration/test_cli_packs.py."""

from __future__ import annotations

import pytest

from canidae.cli import pack as pack_cli
from canidae.cli.fastpath import parse
from canidae.cli.packlist import DEFAULT_LIMIT, STATES


@pytest.mark.parametrize("argv, expected", [
    (["--json", "pack", "list"], {}),
    (["pack", "list", "--json"], {}),
    (["--json", "--addr", "a:1,b:2", "--token=t", "--config", "/c.toml", "pack", "list"],
     {"addr": "a:1,b:2", "token": "t", "config": "/c.toml"}),
    (["--json", "pack", "list", "--node", "n1", "--zone=z1", "--state", "crashlooping", "--limit", "5",
      "--after", "p", "--stale"],
     {"node": "n1", "zone": "z1", "state": "crashlooping", "limit": 5, "after": "p", "stale": True}),
    (["--json", "pack", "list", "--limit", "1", "--limit", "7"], {"limit": 7}),  # the last one, as click takes it
])
def test_the_shapes_it_answers(argv: list[str], expected: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANIDAE_ADDR", raising=False)
    base = {"addr": None, "token": None, "config": None, "node": None, "zone": None, "state": None,
            "limit": DEFAULT_LIMIT, "after": None, "stale": False}
    assert parse(argv) == {**base, **expected}


@pytest.mark.parametrize("argv", [
    ["pack", "list"],  # a table: rich prints it
    ["--json", "pack", "list", "--help"], ["--json", "-h", "pack", "list"], ["--json", "pack", "show", "x"],
    ["--json", "node", "list"], ["--json", "pack"], ["--json"], [],
    ["--json", "pack", "list", "--state", "bogus"], ["--json", "pack", "list", "--limit", "0"],
    ["--json", "pack", "list", "--limit", "x"], ["--json", "pack", "list", "--limit"],
    ["--json", "pack", "list", "--bogus"], ["--json", "pack", "list", "extra"],
    ["--json", "--addr", "nohost", "pack", "list"], ["--json", "--version", "pack", "list"],
])
def test_everything_else_goes_to_the_full_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANIDAE_ADDR", raising=False)
    assert parse(argv) is None


def test_a_bad_address_in_the_environment_goes_to_the_full_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANIDAE_ADDR", "not-an-address")
    assert parse(["--json", "pack", "list"]) is None


def test_its_states_are_the_commands_states() -> None:
    assert tuple(s.value for s in pack_cli.StateFilter) == STATES
