"""``canidae scale-test run --mode sim`` and ``scale-test report``: the simulated scale test.

The run is driven through ``canidae.cli.main.main`` (the real exit-code mapping), small enough to
stay fast; the chaos schedule of the full 100K plan is checked on the plan itself (pure), and
the run repeats exactly in two processes with different hash seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from canidae.cli.main import main
from canidae.core import scaleplan
from canidae.core.scaleplan import SimPlan, build_scenario, chaos_counts, chaos_schedule
from canidae.core.scenario import parse_scenario
from canidae.core.sim import Simulation

SMALL = [
    "scale-test",
    "run",
    "--mode",
    "sim",
    "--packs",
    "3000",
    "--nodes",
    "60",
    "--chaos",
    "--ramp",
    "--rounds",
    "8",
    "--seed",
    "11",
]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_sim_run_reports_the_seed_table_and_no_violation(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, *SMALL)
    assert doc["kind"] == "canidae-scale-test" and doc["mode"] == "sim" and doc["ok"] is True
    s = doc["summary"]
    assert (s["packs"], s["placed"], s["unplaced"], s["violations"]) == (3000, 3000, 0, 0)
    assert s["zone_failures"] == 1 and s["node_failures"] == 2 and s["joined_nodes"] == 2
    assert doc["sim"]["violations"] == [] and len(doc["sim"]["log"]) == s["steps"]
    # Every step was checked: the log has one entry per step, each with its violation count.
    assert all(step["violations"] == 0 for step in doc["sim"]["log"])
    table = doc["table"]
    assert [r["packs"] for r in table["expected"]] == [100, 1_000, 10_000, 100_000]
    assert table["headers"] == ["Packs", "Nodes", "Memory/Pack", "CPU/Pack", "Yips/sec", "p99 Latency"]
    cells = table["measured"]["cells"]
    assert cells["packs"] == "3,000" and cells["yips_per_s"] == "n/a"
    assert set(table["measured"]["notes"]) == {"memory_per_pack", "cpu_per_pack", "yips_per_s", "p99_latency"}
    assert sum(doc["series"]["packs_per_node"].values()) == 3000
    assert doc["series"]["latency"]["windows"]


def test_sim_run_human_output_and_saved_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "runs" / "run.json"
    code, out, err = run_cli(capsys, *SMALL, "--out", str(out_file))
    assert code == 0, err
    assert "Expected Performance at Scale" in out and "0 invariant violations" in out
    saved = json.loads(out_file.read_text())
    assert saved["summary"]["digest"] in out.replace("\n", "") or saved["summary"]["digest"][:12] in out


def _sim_in_subprocess(hashseed: str, seed: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    proc = subprocess.run(
        [sys.executable, "-m", "canidae", *SMALL[:-1], str(seed), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_same_seed_same_run_whatever_the_hash_seed() -> None:
    a = _sim_in_subprocess("1", 11)
    b = _sim_in_subprocess("4242", 11)
    assert a["sim"] == b["sim"]  # counts, every step's log line, digest, scenario
    assert a["series"]["packs_per_node"] == b["series"]["packs_per_node"]
    assert a["summary"]["digest"] == b["summary"]["digest"]
    c = _sim_in_subprocess("1", 12)
    assert c["summary"]["digest"] != a["summary"]["digest"]


def test_the_100k_plan_has_the_chaos_the_issue_asks_for() -> None:
    # The plan alone (pure, fast): 2,000 nodes, >= 50 node failures, one zone failure, joins.
    preset = scaleplan.PRESETS["100k"]
    plan = SimPlan(
        preset.packs,
        preset.sim_nodes,
        zones=3,
        chaos=True,
        ramp=preset.ramp,
        duration_s=preset.duration_s,
        seed=0,
    ).check()
    counts = chaos_counts(parse_scenario(build_scenario(plan)))
    assert counts["node_failures"] >= 50 and counts["zone_failures"] == 1 and counts["joins"] == 2
    assert chaos_schedule(plan) == chaos_schedule(plan)
    other = chaos_schedule(SimPlan(preset.packs, preset.sim_nodes, chaos=True, seed=1))
    assert other != chaos_schedule(plan)


def test_one_zone_has_no_zone_failure_and_no_chaos_has_no_faults() -> None:
    one = chaos_counts(parse_scenario(build_scenario(SimPlan(500, 10, zones=1, chaos=True))))
    assert one["zone_failures"] == 0 and one["node_failures"] >= 1
    calm = chaos_counts(parse_scenario(build_scenario(SimPlan(500, 10, chaos=False))))
    assert calm == {"node_failures": 0, "zone_failures": 0, "joins": 0, "joined_nodes": 0, "revivals": 0}


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--nodes", "0"], 2, "--nodes must be at least 1"),
        (["--packs", "0"], 2, "--packs must be at least 1"),
        (["--zones", "4", "--nodes", "3"], 2, "cannot exceed the nodes"),
        (["--rounds", "0"], 2, "--rounds must be"),
        (["--duration", "0"], 2, "--duration must be at least 1"),
        (["--packs", "5000", "--nodes", "10"], 6, "do not fit on 10 nodes"),
        (["--packs", "500", "--nodes", "5", "--node-packs", "50"], 6, "capacity 250"),
        (["--mode", "live", "--plan", "100k"], 2, "too many agents for one machine"),
        (["--mode", "live", "--packs", "10", "--nodes", "0"], 2, "must be at least 1"),
        (["--mode", "live", "--packs", "100", "--nodes", "2", "--node-packs", "10"], 6, "do not fit"),
        (["--mode", "live", "--packs", "100", "--nodes", "2", "--chaos", "--kill", "3"], 2, "cannot exceed"),
        (["--kill", "3"], 2, "--kill is an option of --mode live"),
        (["--mode", "live", "--rounds", "3"], 2, "--rounds is an option of --mode sim"),
    ],
)
def test_bad_parameters_are_clear_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    got, out, err = run_cli(capsys, "scale-test", "run", *args)
    assert got == code
    assert out == ""  # nothing on stdout for a failure, no cluster started
    assert err.startswith("canidae: error: ") and message in err and err.count("\n") == 1


def test_a_violation_is_printed_saved_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Simulation.check

    def broken(self: Simulation) -> list[str]:
        return real(self) + (
            ["planted violation"] if self.log and self.log[-1].step.startswith("kill") else []
        )

    monkeypatch.setattr(Simulation, "check", broken)
    out_file = tmp_path / "bad.json"
    code, out, err = run_cli(capsys, *SMALL, "--out", str(out_file), "--json")
    assert code == 1 and "problem(s)" in err and "planted violation" in err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["summary"]["violations"] > 0
    assert json.loads(out_file.read_text())["problems"] == doc["problems"]


def test_report_draws_svg_and_refuses_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_file = tmp_path / "run.json"
    code, _, err = run_cli(capsys, *SMALL, "--out", str(run_file))
    assert code == 0, err
    svg = tmp_path / "pics" / "run.svg"
    doc = run_json(capsys, "scale-test", "report", str(run_file), "--out", str(svg))
    assert doc["ok"] is True and doc["picture"] == str(svg)
    assert doc["histogram"]["nodes"] == len(json.loads(run_file.read_text())["series"]["packs_per_node"])
    root = ET.fromstring(svg.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert root.findall(f".//{ns}polyline") and len(root.findall(f".//{ns}rect")) > 2
    texts = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "Latency percentiles over time" in texts and "Packs per node" in texts
    code, out, err = run_cli(capsys, "scale-test", "report", str(run_file))
    assert code == 0 and "Expected Performance at Scale" in out and "packs per node" in out

    code, out, err = run_cli(capsys, "scale-test", "report", str(run_file), "--out", str(tmp_path / "x.png"))
    assert code == 2 and out == "" and "PNG is not available" in err
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "other.json").write_text('{"hello": 1}')
    code, _, err = run_cli(capsys, "scale-test", "report", str(tmp_path / "other.json"))
    assert code == 2 and "is not a run saved by" in err
    code, _, err = run_cli(capsys, "scale-test", "report", str(tmp_path / "missing.json"))
    assert code == 5 and "no file" in err


def test_autoscale_day_drives_the_real_decisions_and_is_drawn(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    run_file = tmp_path / "run.json"
    small = ["scale-test", "run", "--mode", "sim", "--packs", "500", "--nodes", "10", "--rounds", "2",
             "--no-chaos", "--seed", "3", "--autoscale"]
    doc = run_json(capsys, *small, "--out", str(run_file))
    a = doc["autoscale"]
    f = a["figures"]
    # A day of 10 s evaluations; the fleet follows the load both ways, never below the oracle's
    # peak by much and never far above its node-hours.
    assert f["steps"] == 8640 and f["hours"] == 24.0
    assert f["adds"] > 0 and f["removes"] > 0 and f["decisions_per_day"] == f["adds"] + f["removes"]
    assert 1.0 <= f["node_hours_ratio"] < 1.5 and f["peak_nodes"] >= 1000
    assert f["under_provisioned"] < 0.1
    assert len(a["series"]) == 288 and {d["action"] for d in a["decisions"]} == {"add", "remove"}
    assert all(d["reason"] for d in a["decisions"])
    # The same seed gives the same day.
    again = run_json(capsys, *small)
    assert again["autoscale"]["figures"] == f and again["autoscale"]["decisions"] == a["decisions"]
    svg = tmp_path / "run.svg"
    run_json(capsys, "scale-test", "report", str(run_file), "--out", str(svg))
    root = ET.fromstring(svg.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    texts = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "Autoscaling over a simulated day" in texts and "offered packs" in texts
    code, _, err = run_cli(capsys, "scale-test", "run", "--mode", "live", "--autoscale")
    assert code == 2 and "--autoscale is an option of --mode sim" in err
