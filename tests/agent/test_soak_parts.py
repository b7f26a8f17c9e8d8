"""The soak runner's own parts, without a cluster: options, the exec process check, the tamper used
to test the wiring, the history file, the agents' log alerts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from canidae.agent.ops import soak
from canidae.core.errors import InvalidInput
from canidae.core.history_check import FinalObservations, Op, OpKind, Outcome, PackView


def test_options_refuse_unknown_faults_and_empty_runs():
    soak.SoakOptions().validate()
    with pytest.raises(InvalidInput, match="unknown fault 'meteor'"):
        soak.SoakOptions(faults=("kill", "meteor")).validate()
    with pytest.raises(InvalidInput):
        soak.SoakOptions(clients=0).validate()
    with pytest.raises(InvalidInput):
        soak.SoakOptions(fault_every_s=(5.0, 1.0)).validate()


def _final(processes: dict[str, dict[str, int]]) -> FinalObservations:
    state = {"web": PackView("running", "c1", 2), "old": PackView("stopped", "c1", 1),
             "idle": PackView("running", "s1", 1)}
    return FinalObservations(state, {"c1": {"web": 2}, "s1": {"idle": 1}}, {"s1": "d"}, processes)


def test_exec_processes_must_match_the_state():
    members = {"web": 1, "old": 1}
    assert soak.process_problems(_final({"c1": {"web": 1}}), members) == []
    problems = soak.process_problems(_final({"c1": {"web": 1, "old": 1}, "c2": {"web": 1}}), members)
    assert problems == ["old: 1 process(es) on c1; state: stopped on c1",
                        "web: 1 process(es) on c2; state: running on c1"]
    assert soak.process_problems(_final({"c1": {}}), members) == [
        "web: 0 process(es) on c1, 1 member(s) expected"]


def test_drop_running_tampers_one_agent_only():
    final = _final({})
    assert soak.drop_running("c1")(final).running == {"c1": {}, "s1": {"idle": 1}}
    assert soak.drop_running("s1", "idle")(final).running == {"c1": {"web": 2}, "s1": {}}
    assert final.running["c1"] == {"web": 2}  # the original is left alone


def test_log_alerts_read_only_what_was_written_during_the_soak(tmp_path):
    out = tmp_path / "stdout.log"
    out.write_text("t s1 CRITICAL before the soak\n")
    start = out.stat().st_size
    with out.open("a") as f:
        f.write("t s1 INFO fine\nt s1 ERROR canidae.api: boom\nException in thread tick:\n"
                "Traceback (most recent call last):\n  File \"x.py\", line 1\n    raise KeyError(1)\n"
                "KeyError: 1\nt s1 INFO after\n")
    agents = [{"id": "s1", "config": str(tmp_path / "agent.toml")},
              {"id": "c1", "config": str(tmp_path / "c1" / "agent.toml")}]
    alerts = soak.log_alerts(agents, {"s1": start})
    assert alerts == {"s1": {"count": 3, "first": ["t s1 ERROR canidae.api: boom", "Exception in thread tick:",
                                                   "traceback: KeyError: 1"]}}


def test_the_history_file_holds_every_op_and_the_final_observations(tmp_path):
    from canidae.core.history_check import check_history

    ops = [Op(0, OpKind.SPAWN, "web", Outcome.OK, 1, 2), Op(1, OpKind.READ, "web", Outcome.OK, 3, 4, output="running")]
    final = _final({})
    result = soak.SoakResult(soak.SoakOptions(), ops, [soak.FaultEvent(1.0, "kill", ["s1"], "leader", 0.5)], {},
                             check_history(ops, final), (), final, {"settled": True}, {}, 1.0)
    path = tmp_path / "h.ndjson"
    soak.write_history(str(path), result)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"fault": {"t_s": 1.0, "fault": "kill", "victims": ["s1"], "detail": "leader", "took_s": 0.5, "leader_s": None}}
    assert [Op.from_dict(d["op"]) for d in lines[1:3]] == ops
    assert lines[3]["final"]["state"]["web"] == ["running", "c1", 2]
    assert result.op_counts()["read"] == {"ok": 1, "fail": 0, "info": 0}
    assert result.write_gap() is None  # one acknowledged write: no gap to speak of
    more = [*ops, Op(2, OpKind.STOP, "web", Outcome.OK, 5, 3_000_000_005)]
    assert replace(result, ops=more).write_gap() == {"s": 3.0, "from_s": 0.0}
