"""The soak against real agents: clients, a nemesis with real SIGKILL, SIGSTOP and (as root) link
cuts in network namespaces of our own, and the checker's verdict on history and final state.

The ~60 s soak runs in the default suite; the 10-minute one is ``slow``. A short soak whose final
observations are tampered with shows that the checks are wired to what the runner observed.
Every cluster, namespace and pack process made here is removed, also when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from canidae.agent.ops import netns, soak
from canidae.core.history_check import FinalObservations, Verdict
from harness import LocalCluster, local_cluster

AGENT_ENV = {"CANIDAE_EXEC_GRACE_S": "2", "CANIDAE_EXEC_BACKOFF_S": "0.05"}


def _cluster(tmp_path, servers: int, clients: int, namespaces: bool) -> LocalCluster:
    return local_cluster(str(tmp_path / "cluster"), servers, clients, env=AGENT_ENV, namespaces=namespaces)


def _explain(result: soak.SoakResult) -> str:
    """Everything a reader of a failed soak needs first: failing rows, faults, alerts, post-mortem."""
    lines = [f"{c.id}: {c.count} ({c.verdict.value}) " + " | ".join(c.examples[:3])
             for c in result.checks() if c.verdict is not Verdict.PASS]
    lines.append("faults: " + "; ".join(f"+{f.t_s:.1f}s {f.fault} {','.join(f.victims)}" for f in result.faults))
    lines += [f"{node}: {a['first'][0]}" for node, a in sorted(result.log_alerts.items())]
    for name, pm in list(result.postmortem.items())[:3]:
        events = "; ".join(f"{e.get('type')} by {e.get('by')} {e.get('detail') or ''}" for e in pm.get("events", []))
        lines.append(f"{name}: final {pm['final'].get('state')} ({pm['final'].get('reason')}); events: {events}")
    return "\n".join(lines)


def _run_soak(tmp_path, duration: float, seed: int) -> soak.SoakResult:
    namespaces = netns.unavailable_reason() is None
    cluster = _cluster(tmp_path, 3, 2, namespaces)
    try:
        opts = soak.SoakOptions(duration_s=duration, clients=6, seed=seed, settle_s=30.0)
        result = soak.Soak(cluster, opts).run()
    finally:
        cluster.close(keep_dir=True)
    soak.write_history(str(tmp_path / "history.ndjson"), result)
    expected = set(soak.FAULTS) - set(result.skipped)
    assert {f.fault for f in result.faults} == expected, result.faults
    assert not [f for f in result.faults if f.detail.startswith("not carried out")], result.faults
    if namespaces:
        assert not result.skipped and result.cluster["network"] == "namespaces"
    assert result.report.ops > 100 * duration / 60
    return result


def test_a_60s_soak_with_every_fault_passes_every_check(tmp_path):
    """3 servers + 2 client agents, 6 clients, every fault kind: nothing lost, nothing run twice,
    every pack linearizable, agents and replicas converged."""
    result = _run_soak(tmp_path, 60.0, seed=1)
    assert result.ok, _explain(result)


@pytest.mark.slow
def test_a_10_minute_soak_passes_every_check(tmp_path):
    result = _run_soak(tmp_path, 600.0, seed=int(os.environ.get("CANIDAE_SOAK_SEED", "7")))
    assert result.ok, _explain(result)


def test_the_checks_see_what_the_runner_observed(tmp_path):
    """A short calm soak, then final observations tampered with as a broken cluster would show them:
    an agent that runs nothing, a replica with another digest. Those checks, and only those, fail
    (packs acknowledged on that agent also count as not running)."""
    cluster = _cluster(tmp_path, 3, 1, namespaces=False)

    def broken(final: FinalObservations) -> FinalObservations:
        final = soak.drop_running("c1")(final)
        assert any(v.node == "c1" and v.state == "running" for v in final.state.values()), "nothing ran on c1"
        return replace(final, digests={**final.digests, "s2": "0:tampered"})

    try:
        result = soak.Soak(cluster, soak.SoakOptions(duration_s=6.0, clients=3, faults=(), exec_share=0.0)
                           ).run(tamper=broken)
    finally:
        cluster.close()
    verdicts = {c.id: c.verdict for c in result.checks()}
    failed = {k for k, v in verdicts.items() if v is not Verdict.PASS}
    assert {"missing", "replicas"} <= failed <= {"missing", "not_running", "replicas"}, _explain(result)
    assert "s2: " in result.report.replicas.examples[0]
    assert "assigned to c1" in result.report.missing.examples[0]
    assert not result.ok and result.postmortem


def _drill(*args: str, home) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "canidae", "drill", "soak", *args], check=False,
                          capture_output=True, text=True, env=env, timeout=180)


def test_drill_soak_cli_prints_one_json_document_and_exits_0_when_calm(tmp_path):
    p = _drill("--duration", "4", "--clients", "2", "--client-agents", "1", "--faults", "none", "--json",
               "--history", str(tmp_path / "h.ndjson"), home=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    assert doc["ok"] and doc["faults"] == [] and doc["ops"]["total"] > 0
    assert {c["check"] for c in doc["checks"]} >= {"linearizable", "lost_writes", "not_running", "duplicates",
                                                   "stale_reads", "replicas", "zombies", "missing", "settled",
                                                   "processes"}
    lines = (tmp_path / "h.ndjson").read_text().splitlines()
    assert sum(1 for line in lines if '"op"' in line) == doc["ops"]["total"]


def test_drill_soak_refuses_an_unknown_fault(tmp_path):
    p = _drill("--faults", "kill,meteor", home=tmp_path)
    assert p.returncode == 2 and "unknown fault 'meteor'" in p.stderr
