"""``canidae scale-test run --mode live``: a small live run on real agents, with one SIGKILL.

Three servers and five client agents on loopback, 500 virtual packs through the bulk API (a paced,
open-loop ramp), yips (or reads), and one client agent killed for real. Only facts are asserted (every pack runs, the
killed agent's packs run elsewhere, nothing lost or run twice, every process gone afterwards),
never a timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from canidae.agent.ops import localcluster
from canidae.cli.main import main
from harness import pick_base_port


def test_small_live_run_with_one_kill(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "live.json"
    code = main(
        [
            "scale-test",
            "run",
            "--mode",
            "live",
            "--packs",
            "500",
            "--nodes",
            "5",
            "--chaos",
            "--kill",
            "1",
            "--batch",
            "50",
            "--rate",
            "1000",
            "--duration",
            "4",
            "--seed",
            "3",
            "--timeout",
            "60",
            "--base-port",
            str(pick_base_port(3, 5)),
            "--out",
            str(out_file),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert out, err
    doc = json.loads(out)
    assert code == 0, (doc["problems"], err)
    assert json.loads(out_file.read_text())["summary"] == doc["summary"]

    s = doc["summary"]
    assert doc["mode"] == "live" and doc["ok"] is True and doc["problems"] == []
    assert (s["packs"], s["running"], s["servers"], s["clients"]) == (500, 500, 3, 5)
    assert sum(doc["series"]["packs_per_node"].values()) == 500
    assert len(doc["series"]["packs_per_node"]) == 8

    spawn = doc["live"]["phases"]["spawn"]
    assert spawn["requests"] == 10 and spawn["latency_ms"]["n"] == 10 and spawn["open_loop"] is True

    chaos = doc["live"]["phases"]["chaos"]
    assert len(chaos["victims"]) == 1 and chaos["victims"][0].startswith("c")
    assert chaos["affected_packs"] > 0 and chaos["all_running_elsewhere_s"] is not None
    assert chaos["lost"] == 0 and chaos["duplicated"] == 0

    # The seed's table with a measured row; yips are either measured or said to be unavailable.
    measured = doc["table"]["measured"]
    assert measured["packs"] == 500 and measured["nodes"] == 8
    assert measured["memory_bytes"] > 0 and measured["cpu_percent"] is not None
    if s["yips_per_s"] is None:
        assert "not available" in measured["notes"]["yips_per_s"]
        assert any("yip figures are not available" in n for n in doc["notes"])
    else:
        assert doc["live"]["phases"]["yips"]["requests"] > 0 and measured["yips"] == s["yips_per_s"]
    assert doc["live"]["phases"]["reads"]["requests"] > 0
    assert all(w["n"] >= 0 for w in doc["series"]["latency"]["windows"])

    # The throwaway cluster is gone: no agent process, no directory.
    cluster = doc["live"]["cluster"]
    assert cluster["throwaway"] is True and not Path(cluster["data_dir"]).exists()
    assert not any(localcluster.pid_alive(a["pid"], a["config"]) for a in cluster["agents"])
