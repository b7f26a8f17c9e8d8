"""The deterministic simulator: scenarios run clean, runs repeat exactly, the checker can fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from canidae.core.errors import InvalidInput
from canidae.core.scenario import parse_line, parse_scenario
from canidae.core.sim import Simulation, run_scenario
from canidae.core.types import NodeState, Resources

SCENARIOS = Path(__file__).parent / "scenarios"
FAST = sorted(p for p in SCENARIOS.glob("*.txt") if p.name != "full-scale.txt")


@pytest.mark.parametrize("path", FAST, ids=lambda p: p.stem)
def test_scenario_runs_without_violations(path: Path) -> None:
    result = run_scenario(path.read_text(), seed=7)
    assert result.violations == ()
    assert result.ok
    assert result.log and all(s.violations == 0 for s in result.log)


@pytest.mark.slow
def test_full_scale_scenario() -> None:
    result = run_scenario((SCENARIOS / "full-scale.txt").read_text(), seed=7)
    assert result.violations == ()
    assert (result.nodes, result.packs, result.placed) == (2020, 100_000, 100_000)


def test_result_counts_and_log() -> None:
    result = run_scenario((SCENARIOS / "chaos.txt").read_text(), seed=3)
    assert result.packs == 5250 and result.placed == 5250 and result.unplaced == 0
    assert result.nodes == 220 and result.down == 0
    assert result.clock_ms == 30_000
    kill = next(s for s in result.log if s.step.startswith("kill zone"))
    assert kill.detail.startswith("killed ") and kill.moved > 0
    joined = next(s for s in result.log if s.step.startswith("join"))
    assert "packs moved onto them" in joined.detail
    assert result.moves == sum(s.moved for s in result.log)
    assert result.to_dict()["ok"] is True


def test_unplaced_packs_carry_reasons() -> None:
    result = run_scenario(
        "topology zones=2 regions=1 cells=1 nodes=4 cpu=1000 mem=1024 packs=10\nspawn 20 cpu=300 mem=10\n",
        seed=1,
    )
    assert (result.placed, result.unplaced) == (12, 8)
    assert result.unplaced_reasons == {
        "zone z1: 2 nodes lacked 300m cpu; zone z2: 2 nodes lacked 300m cpu": 8
    }
    assert result.ok


def test_ramp_advances_the_virtual_clock() -> None:
    sim = Simulation(seed=1)
    for step in parse_scenario(
        "topology zones=1 regions=1 cells=1 nodes=2 cpu=9000 mem=9000 packs=100\n"
        "spawn 10 over=1000 batch=3\nadvance 250\n"
    ):
        sim.apply(step)
    assert sim.clock_ms == 1250
    assert [s.at_ms for s in sim.log] == [0, 1000, 1250]


# ---------------------------------------------------------------------- determinism


def test_same_seed_same_digest_other_seed_other_digest() -> None:
    text = (SCENARIOS / "chaos.txt").read_text()
    assert run_scenario(text, seed=11).digest == run_scenario(text, seed=11).digest
    assert run_scenario(text, seed=11).digest != run_scenario(text, seed=12).digest


def test_digest_is_the_same_in_processes_with_different_hash_seeds() -> None:
    code = (
        "import sys; from canidae.core.sim import run_scenario; "
        "print(run_scenario(open(sys.argv[1]).read(), seed=5).digest)"
    )
    digests = []
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(SCENARIOS / "constraints.txt")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1]
    assert digests[0] == run_scenario((SCENARIOS / "constraints.txt").read_text(), seed=5).digest


# ---------------------------------------------------------------------- the checker can fail


def small_world() -> Simulation:
    sim = Simulation(seed=1)
    for step in parse_scenario(
        "topology zones=2 regions=1 cells=2 nodes=8 cpu=1000 mem=1000 packs=10\nspawn 40 cpu=100 mem=100\n"
    ):
        sim.apply(step)
    assert sim.check() == []
    return sim


def test_checker_sees_scheduler_usage_drift() -> None:
    sim = small_world()
    assert sim.scheduler is not None
    sim.scheduler.reserve("n1", Resources(5, 0, 0))
    found = sim.check()
    assert len(found) == 1 and found[0].startswith("node n1: the scheduler counts cpu=")


def test_checker_sees_capacity_exceeded_and_dead_nodes() -> None:
    sim = small_world()
    # Pile every pack onto n1 behind the scheduler's back, then declare n2 down with packs on it.
    for name in list(sim.where)[:12]:
        sim.where[name] = "n1"
    found = sim.check()
    assert any(f.startswith("node n1 over capacity: cpu ") and "/1000" in f for f in found)
    n2 = sim.nodes["n2"]
    sim.nodes["n2"] = type(n2)(n2.id, n2.location, n2.capacity, state=NodeState.DOWN)
    assert any("which is down" for f in sim.check() if "n2" in f)


def test_checker_sees_lost_and_doubly_counted_packs() -> None:
    sim = small_world()
    name = next(iter(sim.where))
    sim.unplaced[name] = ""
    found = sim.check()
    assert any("both on node" in f for f in found)
    assert any("without a reason" in f for f in found)
    del sim.where[name]
    del sim.unplaced[name]
    assert "1 packs are neither placed nor unplaced" in sim.check()


def test_checker_sees_needless_moves() -> None:
    sim = small_world()
    assert sim.scheduler is not None
    real = sim.scheduler.place

    def place_and_shuffle(specs, seed, exclude=frozenset()):  # type: ignore[no-untyped-def]
        plan = real(specs, seed, exclude)
        # A buggy step that also moves one bystander pack.
        bystander = min(sim.where)
        sim.where[bystander] = "n8" if sim.where[bystander] != "n8" else "n7"
        return plan

    sim.scheduler.place = place_and_shuffle  # type: ignore[method-assign]
    sim.apply(parse_line("kill node=n3", 9))
    assert any("may only move the packs it displaced" in v for v in sim.violations)


def test_failed_expectations_are_violations() -> None:
    result = run_scenario(
        "topology zones=1 regions=1 cells=1 nodes=2 cpu=1000 mem=1000 packs=10\n"
        "spawn 5\nexpect placed=6 balance<=1.0 unplaced>=1\n",
        seed=1,
    )
    assert not result.ok
    assert result.violations[0].startswith("line 3 (expect placed=6")
    assert "expected placed=6, got 5" in result.violations[0]
    assert len(result.violations) == 3


# ---------------------------------------------------------------------- the language


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("spawn 5", "line 1: the scenario must start with a topology line"),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\nexplode now",
            "line 2: unknown operation",
        ),
        ("# c\ntopology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1", "line 2: topology needs packs="),
        (
            "topology zones=x regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1",
            "line 1: zones must be an integer",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1 load=1",
            "line 1: load (the load factor)",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\n\nspawn",
            "line 3: spawn needs a count",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\nspawn 5 colour=red",
            "line 2: spawn takes no option 'colour'",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\nspawn 5 spread=rack",
            "line 2: spread must be zone, region or cell",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\nkill zone=z1 node=n1",
            "line 2: kill needs exactly one of",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\nkill region=r1",
            "line 2: region must be a scoped id",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\nkill node=n1 count=2",
            "line 2: count= goes with node=random",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\nexpect happiness=1",
            "line 2: expect knows no 'happiness'",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\nspawn 1 zone=bad/zone",
            "line 2: invalid zone name",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\n" * 2,
            "line 2: only one topology line",
        ),
        (
            "topology zones=1 regions=1 cells=1 nodes=1 cpu=1 mem=1 packs=1\njoin nodes=2 cell=c1",
            "line 2: join places new nodes",
        ),
    ],
)
def test_bad_lines_name_their_line(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_scenario(text)


def test_unknown_names_at_run_time_name_their_line() -> None:
    with pytest.raises(InvalidInput, match="line 2: no node 'n9'"):
        run_scenario("topology zones=1 regions=1 cells=1 nodes=2 cpu=1 mem=1 packs=1\nkill node=n9\n", seed=1)
    with pytest.raises(InvalidInput, match="line 2: no zone 'z7'"):
        run_scenario("topology zones=1 regions=1 cells=1 nodes=2 cpu=1 mem=1 packs=1\nkill zone=z7\n", seed=1)


def test_comments_blank_lines_and_underscores() -> None:
    steps = parse_scenario(
        "# header\n\ntopology zones=1 regions=1 cells=1 nodes=1_000 cpu=1 mem=1 packs=1"
        "  # trailing\nspawn 10_000\n"
    )
    assert [s.line for s in steps] == [3, 4]
    assert steps[0].args["nodes"] == 1000 and steps[1].count == 10_000
