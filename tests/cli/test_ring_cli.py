"""Tests of ``canidae ring`` (canidae.cli.ring) through typer's CliRunner, plus one run of the
installed command for the exit code of a bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from canidae.cli.ring import app, simulate_ring
from canidae.core.errors import InvalidInput
from typer.testing import CliRunner

runner = CliRunner()


def run_json(*args: str) -> dict:
    result = runner.invoke(app, ["simulate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_simulate_json_has_the_documented_keys() -> None:
    doc = run_json("--nodes", "50", "--packs", "5000", "--add", "3", "--remove", "4", "--zones", "3",
                   "--seed", "7")
    for key in ("nodes", "packs", "vnodes", "load_factor", "balance", "add", "remove", "timings_ms"):
        assert key in doc
    assert (doc["nodes"], doc["packs"], doc["vnodes"], doc["load_factor"]) == (50, 5000, 160, 1.25)
    assert set(doc["balance"]) >= {"max_over_mean", "min_over_mean", "stddev_over_mean"}
    for op in ("add", "remove"):
        assert set(doc[op]) >= {"moved", "optimum", "ratio", "between_survivors"}
    assert set(doc["timings_ms"]) >= {"build", "place", "rebalance"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in doc["timings_ms"].values())
    assert sum(z["packs"] for z in doc["per_zone"]) == 5000
    assert [z["zone"] for z in doc["per_zone"]] == ["z0", "z1", "z2"]


@pytest.mark.parametrize("nodes,packs,add,remove", [(10, 2000, 1, 1), (100, 20000, 5, 10), (3, 300, 2, 2)])
def test_simulate_moves_nothing_between_survivors(nodes: int, packs: int, add: int, remove: int) -> None:
    doc = run_json("--nodes", str(nodes), "--packs", str(packs), "--add", str(add), "--remove", str(remove))
    assert doc["add"]["between_survivors"] == 0
    assert doc["remove"]["between_survivors"] == 0
    assert doc["remove"]["ratio"] == 1.0
    assert doc["remove"]["moved"] == doc["remove"]["optimum"] > 0
    assert doc["add"]["optimum"] == pytest.approx(packs * add / (nodes + add))
    assert 0 < doc["add"]["moved"] <= 1.10 * doc["add"]["optimum"]
    assert doc["balance"]["max_over_mean"] <= 1.25 + nodes / packs + 1e-9


def test_simulate_is_deterministic_for_a_seed() -> None:
    a = simulate_ring(20, 3000, add=2, remove=3, seed=5)
    b = simulate_ring(20, 3000, add=2, remove=3, seed=5)
    c = simulate_ring(20, 3000, add=2, remove=3, seed=6)
    for doc in (a, b, c):
        del doc["timings_ms"]
    assert a == b
    assert a["remove"]["removed"] != c["remove"]["removed"] or a["balance"] != c["balance"]


def test_simulate_without_changes() -> None:
    doc = run_json("--nodes", "5", "--packs", "100", "--vnodes", "10", "--load-factor", "1.5")
    assert doc["add"]["moved"] == doc["remove"]["moved"] == 0
    assert doc["add"]["ratio"] == doc["remove"]["ratio"] == 1.0
    assert doc["vnodes"] == 10 and doc["load_factor"] == 1.5


def test_simulate_human_output() -> None:
    result = runner.invoke(app, ["simulate", "--nodes", "20", "--packs", "2000", "--add", "1", "--remove", "1",
                                 "--zones", "2"])
    assert result.exit_code == 0, result.output
    for text in ("max/mean", "movement", "between survivors", "timings", "packs per zone"):
        assert text in result.stdout


@pytest.mark.parametrize("args", [
    ["--nodes", "0", "--packs", "10"],
    ["--nodes", "-3", "--packs", "10"],
    ["--nodes", "5", "--packs", "0"],
    ["--nodes", "5", "--packs", "10", "--load-factor", "1.0"],
    ["--nodes", "5", "--packs", "10", "--load-factor", "0.5"],
    ["--nodes", "5", "--packs", "10", "--load-factor", "inf"],
    ["--nodes", "5", "--packs", "10", "--load-factor", "nan"],
    ["--nodes", "5", "--packs", "10", "--remove", "5"],
    ["--nodes", "5", "--packs", "10", "--remove", "9"],
    ["--nodes", "5", "--packs", "10", "--vnodes", "0"],
    ["--nodes", "5", "--packs", "10", "--zones", "0"],
    ["--nodes", "5", "--packs", "10", "--add", "-1"],
])
def test_simulate_bad_input_raises_invalid_input(args: list[str]) -> None:
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidInput)
    assert "\n" not in result.exception.message
    assert result.stdout == ""


def test_bad_input_exits_2_from_the_installed_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "canidae", "ring", "simulate", "--nodes", "4", "--packs", "10",
                           "--remove", "4"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--remove" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["show"], ["lookup", "web"], ["rebalance", "--plan"]])
def test_cluster_commands_without_a_cluster_say_so(args: list[str], tmp_path, monkeypatch) -> None:
    from canidae.cli.output import GLOBALS
    from canidae.core.errors import Unavailable
    monkeypatch.delenv("CANIDAE_ADDR", raising=False)
    monkeypatch.setattr(GLOBALS, "addr", ())
    monkeypatch.setattr(GLOBALS, "config_path", tmp_path / "missing.toml")
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, Unavailable)
    assert "no cluster configured" in result.exception.message
