"""``canidae place``: the offline dry run of the scheduler, driven through its own typer app."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from canidae.cli.place import app
from canidae.core.errors import InvalidInput
from typer.testing import CliRunner, Result

runner = CliRunner()

TOPOLOGY = """
[[node]]
id = "a1"
zone = "east"
region = "r1"
cell = "c1"
cpu = 1000
mem = 2048
max_packs = 4

[[node]]
id = "a2"
zone = "east"
region = "r1"
cell = "c2"
cpu = 1000
mem = 2048
max_packs = 4
weight = 2.0

[[ node ]]
id = "b1"
zone = "west"
region = "r1"
cell = "c1"
cpu = 1000
mem = 512
max_packs = 4

[[node]]
id = "b2"
zone = "west"
region = "r1"
cell = "c1"
cpu = 1000
mem = 2048
max_packs = 4
state = "down"
"""


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def run_json(*args: str) -> dict:  # type: ignore[type-arg]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def topology_file(tmp_path: Path, text: str = TOPOLOGY) -> str:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return str(path)


def test_json_document_shape() -> None:
    doc = run_json("--count", "30", "--prefix", "web")
    assert set(doc) == {"placements", "unplaced", "summary"}
    assert len(doc["placements"]) == 30 and doc["unplaced"] == []
    first = doc["placements"][0]
    assert set(first) == {"pack", "node", "zone", "region", "cell"}
    assert first["pack"] == "web-01"
    s = doc["summary"]
    assert (s["packs"], s["placed"], s["unplaced"], s["nodes"], s["ready"]) == (30, 30, 0, 12, 12)
    assert [z["zone"] for z in s["zones"]] == ["z1", "z2", "z3"]
    assert sum(z["placed"] for z in s["zones"]) == 30


def test_made_up_fleet_options() -> None:
    doc = run_json(
        "--zones",
        "2",
        "--regions",
        "1",
        "--cells",
        "1",
        "--nodes",
        "4",
        "--cpu",
        "1000",
        "--mem",
        "1024",
        "--max-packs",
        "2",
        "--count",
        "10",
        "--cpu-per-pack",
        "300",
    )
    # Each node fits 2 packs (slots), 3 by cpu: 8 placed, 2 unplaced with per-zone reasons.
    assert doc["summary"]["placed"] == 8
    assert doc["unplaced"][0]["reasons"] == [
        "zone z1: 2 nodes had no free pack slot",
        "zone z2: 2 nodes had no free pack slot",
    ]


def test_topology_file_with_states_weights_and_reasons(tmp_path: Path) -> None:
    doc = run_json("--topology", topology_file(tmp_path), "--count", "14", "--mem-per-pack", "600")
    where = Counter(p["node"] for p in doc["placements"])
    assert "b2" not in where  # down
    assert "b1" not in where  # 512 MiB < 600
    assert where == {"a1": 3, "a2": 3}  # 3 x 600 MiB fill 2048 MiB
    assert doc["unplaced"][0]["reasons"] == [
        "zone east: 2 nodes lacked 600 MiB memory",
        "zone west: 1 node lacked 600 MiB memory, 1 node were down",
    ]
    assert doc["summary"]["ready"] == 3


def test_pins_and_spread(tmp_path: Path) -> None:
    doc = run_json("--count", "9", "--zone", "z2")
    assert {p["zone"] for p in doc["placements"]} == {"z2"}
    doc = run_json("--pack", "solo", "--node", "n05")
    assert doc["placements"] == [{"pack": "solo", "node": "n05", "zone": "z2", "region": "r1", "cell": "c2"}]
    doc = run_json("--count", "12", "--spread", "region")
    counts = Counter((p["zone"], p["region"]) for p in doc["placements"])
    assert len(counts) == 6 and set(counts.values()) == {2}
    doc = run_json("--count", "2", "--zone", "nowhere")
    assert doc["unplaced"][0]["reasons"] == ["no zone matches zone=nowhere"]


def test_named_packs_and_determinism() -> None:
    a = run_json("--pack", "web", "--pack", "db", "--count", "3", "--seed", "4")
    b = run_json("--pack", "web", "--pack", "db", "--count", "3", "--seed", "4")
    assert a == b
    assert [p["pack"] for p in a["placements"]] == ["web", "db", "pack-1", "pack-2", "pack-3"]


def test_human_output_has_tables_and_reasons() -> None:
    result = invoke(
        "--nodes", "3", "--zones", "3", "--regions", "1", "--cells", "1", "--max-packs", "1", "--count", "4"
    )
    assert result.exit_code == 0
    out = result.stdout
    for text in (
        "Placements",
        "Per zone, after placement",
        "Unplaced",
        "pack-4",
        "had no free pack slot",
        "3 of 4 packs placed",
    ):
        assert text in out


def test_help_documents_the_topology_file() -> None:
    result = runner.invoke(app, ["--help"], terminal_width=120)
    assert result.exit_code == 0
    assert "[[ node ]]" in result.stdout and "max_packs" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--count", "0"], "nothing to place"),
        (["--pack", "a", "--pack", "a"], "pack 'a' is named twice"),
        (["--pack", "bad name"], "invalid pack name"),
        (["--count", "1", "--group", "g"], "--group only means something with --spread"),
        (["--count", "1", "--load-factor", "1.0"], "load factor"),
        (["--count", "1", "--zone", "bad/zone"], "invalid zone name"),
    ],
)
def test_bad_input_raises_invalid_input(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert isinstance(result.exception, InvalidInput), result.output
    assert message in result.exception.message
    assert result.stdout == ""


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "has no [[node]] tables"),
        ("[[node]]\nid = 'a'\n", "node #1: missing zone, region, cell, cpu, mem, max_packs"),
        (
            "[[node]]\nid='a'\nzone='z'\nregion='r'\ncell='c'\ncpu=1\nmem=1\nmax_packs=1\ncolour='red'\n",
            "node #1: unknown key 'colour'",
        ),
        (
            "[[node]]\nid='a'\nzone='z'\nregion='r'\ncell='c'\ncpu=0\nmem=1\nmax_packs=1\n",
            "capacity must be positive",
        ),
        (
            "[[node]]\nid='a'\nzone='z'\nregion='r'\ncell='c'\ncpu=1\nmem=1\nmax_packs=1\nstate='asleep'\n",
            "state must be one of",
        ),
        (
            "[[node]]\nid='a'\nzone='z'\nregion='r'\ncell='c'\ncpu=1\nmem=1\nmax_packs=1\n" * 2,
            "duplicate node id 'a'",
        ),
        ("[[node]\n", "not valid TOML"),
        ("[cluster]\nname='x'\n", "unknown table 'cluster'"),
    ],
)
def test_bad_topology_files(tmp_path: Path, text: str, message: str) -> None:
    result = invoke("--topology", topology_file(tmp_path, text), "--count", "1")
    assert isinstance(result.exception, InvalidInput), result.output
    assert message in result.exception.message


def test_topology_file_and_sizes_are_exclusive(tmp_path: Path) -> None:
    result = invoke("--topology", topology_file(tmp_path), "--nodes", "3", "--count", "1")
    assert isinstance(result.exception, InvalidInput)
    assert result.exception.message == "use --topology or --nodes, not both"


def test_missing_topology_file(tmp_path: Path) -> None:
    result = invoke("--topology", str(tmp_path / "nope.toml"), "--count", "1")
    assert isinstance(result.exception, InvalidInput)
    assert "cannot read topology file" in result.exception.message
