"""The soak runner's own parts, without a cluster: options, the exec process check, the tamper used
to test the wiring, the history file, the agents' log alerts."""

from __future__ import annotations

import json

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
    log = tmp_path / "agent.log"
    log.write_text("t s1 CRITICAL before the soak\n")
    start = log.stat().st_size
    with log.open("a") as f:
        f.write("t s1 INFO fine\nt s1 ERROR canidae.api: boom\nt s1 CRITICAL pysyncobj: truncating\n")
    alerts = soak.log_alerts([{"id": "s1", "log": str(log)}, {"id": "c1", "log": str(tmp_path / "none")}],
                             {"s1": start})
    assert alerts == {"s1": {"count": 2, "first": ["t s1 ERROR canidae.api: boom",
                                                   "t s1 CRITICAL pysyncobj: truncating"]}}


def test_the_history_file_holds_every_op_and_the_final_observations(tmp_path):
    from canidae.core.history_check import check_history

    ops = [Op(0, OpKind.SPAWN, "web", Outcome.OK, 1, 2), Op(1, OpKind.READ, "web", Outcome.OK, 3, 4, output="running")]
    final = _final({})
    result = soak.SoakResult(soak.SoakOptions(), ops, [soak.FaultEvent(1.0, "kill", ["s1"], "leader", 0.5)], {},
                             check_history(ops, final), (), final, {"settled": True}, {}, 1.0)
    path = tmp_path / "h.ndjson"
    soak.write_history(str(path), result)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"fault": {"t_s": 1.0, "fault": "kill", "victims": ["s1"], "detail": "leader", "took_s": 0.5}}
    assert [Op.from_dict(d["op"]) for d in lines[1:3]] == ops
    assert lines[3]["final"]["state"]["web"] == ["running", "c1", 2]
    assert result.op_counts()["read"] == {"ok": 1, "fail": 0, "info": 0}
