"""The drill soak checker: the pack model, per-pack linearizability, and the final-state checks."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace

import pytest
from canidae.core.errors import InvalidInput
from canidae.core.history_check import (
    DEFAULT_STATE_MAP,
    FinalObservations,
    Op,
    OpKind,
    Outcome,
    PackView,
    Report,
    Value,
    Verdict,
    check_agents,
    check_duplicates,
    check_history,
    check_linearizability,
    check_lost_writes,
    check_not_running,
    check_replicas,
    check_stale_reads,
    linearize_keys,
    model_step,
    model_value,
    observed,
    report_rows,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

SPAWN, STOP, READ, STALE = OpKind.SPAWN, OpKind.STOP, OpKind.READ, OpKind.STALE_READ
OK, FAIL, INFO = Outcome.OK, Outcome.FAIL, Outcome.INFO
ABSENT, LIVE, STOPPED = Value.ABSENT, Value.LIVE, Value.STOPPED


def spawn(p: int, t0: int, t1: int | None, outcome: Outcome = OK, error: str | None = None, key: str = "web") -> Op:
    return Op(p, SPAWN, key, outcome, t0, t1, error=error)


def stop(p: int, t0: int, t1: int | None, outcome: Outcome = OK, error: str | None = None, key: str = "web") -> Op:
    return Op(p, STOP, key, outcome, t0, t1, error=error)


def read(p: int, t0: int, t1: int, output: str, key: str = "web", kind: OpKind = READ) -> Op:
    return Op(p, kind, key, OK, t0, t1, output=output)


def valid(ops: list[Op], key: str = "web") -> bool | None:
    [res] = [r for r in linearize_keys(ops) if r.key == key]
    return res.valid


# ---- the model -------------------------------------------------------------------------------

# The docstring's table, written out again: (op, from) -> to, None where impossible.
TABLE = {
    ("spawn ok", ABSENT): LIVE, ("spawn ok", LIVE): None, ("spawn ok", STOPPED): None,
    ("spawn exists", ABSENT): None, ("spawn exists", LIVE): LIVE, ("spawn exists", STOPPED): STOPPED,
    ("spawn info", ABSENT): LIVE, ("spawn info", LIVE): LIVE, ("spawn info", STOPPED): STOPPED,
    ("stop ok", ABSENT): None, ("stop ok", LIVE): STOPPED, ("stop ok", STOPPED): STOPPED,
    ("stop not_found", ABSENT): ABSENT, ("stop not_found", LIVE): None, ("stop not_found", STOPPED): None,
    ("stop info", ABSENT): ABSENT, ("stop info", LIVE): STOPPED, ("stop info", STOPPED): STOPPED,
    ("read absent", ABSENT): ABSENT, ("read absent", LIVE): None, ("read absent", STOPPED): None,
    ("read running", ABSENT): None, ("read running", LIVE): LIVE, ("read running", STOPPED): None,
    ("read stopping", ABSENT): None, ("read stopping", LIVE): None, ("read stopping", STOPPED): STOPPED,
    ("read not_found", ABSENT): ABSENT, ("read not_found", LIVE): None, ("read not_found", STOPPED): None,
    ("spawn unavailable", ABSENT): ABSENT, ("spawn unavailable", LIVE): LIVE,
    ("spawn unavailable", STOPPED): STOPPED, ("stop denied", ABSENT): ABSENT, ("stop denied", LIVE): LIVE,
    ("stop denied", STOPPED): STOPPED, ("read info", ABSENT): ABSENT, ("read info", LIVE): LIVE,
    ("read info", STOPPED): STOPPED, ("stale absent", ABSENT): ABSENT, ("stale absent", LIVE): LIVE,
    ("stale absent", STOPPED): STOPPED,
}

TABLE_OPS = {
    "spawn ok": spawn(1, 0, 1), "spawn exists": spawn(1, 0, 1, FAIL, "exists"),
    "spawn info": spawn(1, 0, None, INFO), "stop ok": stop(1, 0, 1),
    "stop not_found": stop(1, 0, 1, FAIL, "not_found"), "stop info": stop(1, 0, 1, INFO, "timeout"),
    "read absent": read(1, 0, 1, "absent"), "read running": read(1, 0, 1, "running"),
    "read stopping": read(1, 0, 1, "stopping"), "read not_found": Op(1, READ, "web", FAIL, 0, 1, error="not_found"),
    "spawn unavailable": spawn(1, 0, 1, FAIL, "unavailable"), "stop denied": stop(1, 0, 1, FAIL, "denied"),
    "read info": Op(1, READ, "web", INFO, 0, None), "stale absent": read(1, 0, 1, "absent", kind=STALE),
}


@pytest.mark.parametrize(("op", "start"), sorted(TABLE, key=str))
def test_model_step_follows_the_table(op: str, start: Value) -> None:
    assert model_step(start, TABLE_OPS[op]) is TABLE[(op, start)]


def test_state_map_sends_real_states_onto_the_model() -> None:
    assert {s for s, v in DEFAULT_STATE_MAP.items() if v is LIVE} == {"created", "pending", "placed", "running"}
    assert {s for s, v in DEFAULT_STATE_MAP.items() if v is STOPPED} == {"stopping", "stopped", "failed"}
    assert model_value("absent") is ABSENT
    with pytest.raises(InvalidInput):
        model_value("exploded")
    assert observed(spawn(1, 0, 1)) is None


def test_ops_are_validated_and_round_trip_through_dicts() -> None:
    with pytest.raises(InvalidInput):
        spawn(1, 5, 4)
    with pytest.raises(InvalidInput):
        spawn(1, 5, None, OK)
    with pytest.raises(InvalidInput):
        Op(1, READ, "web", OK, 0, 1)
    with pytest.raises(InvalidInput):
        Op(1, "spawn", "web", OK, 0, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        Op.from_dict({"kind": "delete", "outcome": "ok", "key": "web"})
    for op in (spawn(3, 0, None, INFO, "timeout"), read(2, 4, 9, "placed"), stop(1, 1, 2)):
        assert Op.from_dict(json.loads(json.dumps(op.to_dict()))) == op


# ---- linearizability, by hand --------------------------------------------------------------------


def test_sequential_spawn_read_stop_read_is_linearizable() -> None:
    ops = [read(1, 0, 1, "absent"), spawn(1, 2, 3), read(2, 4, 5, "placed"), read(1, 6, 7, "running"),
           stop(2, 8, 9), read(1, 10, 11, "stopped"), stop(1, 12, 13), spawn(2, 14, 15, FAIL, "exists")]
    [res] = linearize_keys(ops)
    assert res.valid is True and res.order == tuple(ops) and res.state is STOPPED


def test_read_absent_after_an_acknowledged_spawn_completed_is_not_linearizable() -> None:
    ops = [spawn(1, 0, 10), read(2, 20, 30, "absent")]
    [res] = linearize_keys(ops)
    assert res.valid is False
    assert res.order == (ops[0],) and res.state is LIVE and res.unplaced == (ops[1],)
    assert "cannot place p2 read web -> absent" in res.describe()


def test_read_absent_concurrent_with_the_spawn_is_linearizable() -> None:
    assert valid([spawn(1, 0, 10), read(2, 5, 30, "absent")]) is True


def test_two_acknowledged_spawns_of_one_name_are_not_linearizable() -> None:
    assert valid([spawn(1, 0, 10), spawn(2, 0, 10)]) is False
    assert valid([spawn(1, 0, 10), spawn(2, 20, 30)]) is False
    assert valid([spawn(1, 0, 10), spawn(2, 20, 30, FAIL, "exists")]) is True


def test_live_read_after_an_acknowledged_stop_is_not_linearizable() -> None:
    ops = [spawn(1, 0, 1), stop(1, 2, 3), read(2, 4, 5, "running")]
    [res] = linearize_keys(ops)
    assert res.valid is False and res.state is STOPPED and res.unplaced == (ops[2],)


def test_exists_reveals_presence_and_not_found_reveals_absence() -> None:
    assert valid([spawn(1, 0, 1, FAIL, "exists")]) is False
    assert valid([spawn(1, 0, 1), stop(2, 2, 3, FAIL, "not_found")]) is False
    assert valid([stop(2, 0, 1, FAIL, "not_found"), spawn(1, 2, 3)]) is True
    assert valid([spawn(1, 0, 1), Op(2, READ, "web", FAIL, 2, 3, error="not_found")]) is False


def test_a_definite_failure_did_not_happen() -> None:
    assert valid([spawn(1, 0, 1, FAIL, "no_leader"), read(2, 2, 3, "absent")]) is True
    assert valid([spawn(1, 0, 1, FAIL, "no_leader"), read(2, 2, 3, "absent"), read(2, 4, 5, "running")]) is False


def test_an_unknown_spawn_may_take_effect_late() -> None:
    ops = [spawn(1, 0, None, INFO), read(2, 10, 20, "absent"), read(2, 1000, 1001, "running")]
    res = linearize_keys(ops)[0]
    assert res.valid is True and res.order == (ops[1], ops[0], ops[2])


def test_an_unknown_spawn_may_never_take_effect() -> None:
    assert valid([spawn(1, 0, 5, INFO, "timeout"), read(2, 10, 20, "absent"), read(2, 30, 40, "absent")]) is True


def test_an_unknown_op_never_takes_effect_before_it_was_invoked() -> None:
    assert valid([read(2, 0, 10, "running"), spawn(1, 20, None, INFO)]) is False


def test_an_unknown_stop_is_monotone_once_seen() -> None:
    ops = [spawn(1, 0, 1), stop(1, 2, None, INFO), read(2, 3, 4, "running"), read(2, 5, 6, "stopped")]
    assert valid(ops) is True
    assert valid(ops + [read(2, 7, 8, "running")]) is False


def test_overlapping_ops_linearizable_in_one_order_only() -> None:
    # The spawn spans both reads: absent-then-live fits (spawn between them), live-then-absent cannot.
    assert valid([spawn(1, 0, 100), read(2, 10, 20, "absent"), read(3, 30, 40, "running")]) is True
    assert valid([spawn(1, 0, 100), read(2, 10, 20, "running"), read(3, 30, 40, "absent")]) is False
    # Two concurrent readers and a concurrent stop: the witness puts the stop between them.
    ops = [spawn(1, 0, 1), stop(1, 10, 50), read(2, 12, 45, "stopped"), read(3, 11, 48, "running")]
    res = linearize_keys(ops)[0]
    assert res.valid is True and res.order.index(ops[3]) < res.order.index(ops[1]) < res.order.index(ops[2])


def test_touching_intervals_are_concurrent() -> None:
    assert valid([spawn(1, 0, 10), read(2, 10, 20, "absent")]) is True
    assert valid([spawn(1, 0, 9), read(2, 10, 20, "absent")]) is False


def test_stale_reads_are_not_checked_against_the_model() -> None:
    assert valid([spawn(1, 0, 1), read(2, 5, 6, "absent", kind=STALE), read(2, 7, 8, "running")]) is True


def test_keys_are_checked_independently() -> None:
    ops = [spawn(1, 0, 1, key="a"), read(2, 2, 3, "absent", key="a"), spawn(1, 0, 1, key="b"),
           read(2, 2, 3, "running", key="b")]
    assert [(r.key, r.valid) for r in linearize_keys(ops)] == [("a", False), ("b", True)]


def test_failed_packs_read_as_stopped_unless_the_map_says_otherwise() -> None:
    ops = [spawn(1, 0, 1), read(2, 2, 3, "failed")]
    assert valid(ops) is False
    mine = {**DEFAULT_STATE_MAP, "failed": LIVE}
    assert linearize_keys(ops, mine)[0].valid is True


def test_linearizability_check_counts_keys_and_reports_unknown() -> None:
    bad = [spawn(1, 0, 1, key="a"), read(2, 2, 3, "absent", key="a")]
    busy = [spawn(p, 0, 100, INFO, key="b") for p in range(4)] + [read(9, 200, 201, "stopped", key="b")]
    check = check_linearizability(linearize_keys(bad + busy, budget=3))
    assert (check.count, check.verdict) == (1, Verdict.FAIL) and check.examples[0].startswith("a: after")
    undecided = check_linearizability(linearize_keys(busy, budget=3))
    assert (undecided.count, undecided.verdict) == (0, Verdict.UNKNOWN)
    assert check_linearizability(linearize_keys(busy)).verdict is Verdict.FAIL


# ---- linearizability, by property ----------------------------------------------------------------

LIVE_STATES, STOPPED_STATES = ("created", "pending", "placed", "running"), ("stopping", "stopped", "failed")


@dataclass
class Planned:
    process: int
    kind: OpKind
    key: str
    invoke: int
    at: int          # when it takes effect (the linearization point), if it does
    complete: int
    fate: str        # "ok" (answered), "lost" (info, took effect), "dropped" (info, no effect), "refused"
    raw: int         # picks a real state among those the model value allows


@st.composite
def histories(draw: st.DrawFn, max_ops: int = 30) -> list[Op]:
    """Run the real semantics (not the model's table) at random linearization points."""
    keys = draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True))
    processes = draw(st.integers(1, 5))
    free = [0] * processes
    plan: list[Planned] = []
    for _ in range(draw(st.integers(1, max_ops))):
        p = draw(st.integers(0, processes - 1))
        invoke = free[p] + draw(st.integers(0, 3))
        at = invoke + draw(st.integers(0, 6))
        complete = at + draw(st.integers(0, 6))
        free[p] = complete + 1
        kind = draw(st.sampled_from([SPAWN, SPAWN, STOP, READ, READ, READ, STALE]))
        fate = draw(st.sampled_from(["ok"] * 6 + ["lost", "dropped", "refused"]))
        plan.append(Planned(p, kind, draw(st.sampled_from(keys)), invoke, at, complete, fate, draw(st.integers(0, 9))))
    ops: list[Op] = []
    state: dict[str, Value] = {}
    order = sorted(range(len(plan)), key=lambda i: plan[i].at)
    for i in order:
        pl = plan[i]
        now = state.get(pl.key, ABSENT)
        if pl.fate in ("dropped", "refused"):
            ops.append(Op(pl.process, pl.kind, pl.key, INFO if pl.fate == "dropped" else FAIL, pl.invoke,
                          None if pl.fate == "dropped" and pl.raw % 2 else pl.complete, error="timeout" if pl.fate == "dropped" else "denied"))
            continue
        outcome = INFO if pl.fate == "lost" else OK
        if pl.kind is SPAWN:
            if now is ABSENT:
                state[pl.key] = LIVE
            else:
                outcome, error = (outcome if outcome is INFO else FAIL), "exists"
                ops.append(Op(pl.process, SPAWN, pl.key, outcome, pl.invoke, pl.complete, error=error))
                continue
        elif pl.kind is STOP:
            if now is ABSENT:
                ops.append(Op(pl.process, STOP, pl.key, INFO if outcome is INFO else FAIL, pl.invoke, pl.complete,
                              error="not_found"))
                continue
            state[pl.key] = STOPPED
        elif outcome is OK:
            raw = "absent" if now is ABSENT else (LIVE_STATES if now is LIVE else STOPPED_STATES[:2])[pl.raw % 2]
            if pl.kind is STALE:  # a local read may lag: any state will do
                raw = ["absent", "running", "stopped"][pl.raw % 3]
            ops.append(Op(pl.process, pl.kind, pl.key, OK, pl.invoke, pl.complete, output=raw))
            continue
        ops.append(Op(pl.process, pl.kind, pl.key, outcome, pl.invoke, None if outcome is INFO else pl.complete))
    # The checker must not depend on the order ops are handed over in.
    return [ops[j] for j in draw(st.permutations(range(len(ops))))]


def _before(a: Op, b: Op) -> bool:
    return a.outcome is not INFO and a.complete is not None and a.complete < b.invoke


@settings(max_examples=200, deadline=None)
@given(histories())
def test_histories_of_a_sequential_run_are_linearizable(ops: list[Op]) -> None:
    for res in linearize_keys(ops):
        assert res.valid is True, res.describe()
        # The witness is a legal run of the model that respects real time.
        state: Value | None = ABSENT
        for op in res.order:
            state = model_step(state, op)  # type: ignore[arg-type]
            assert state is not None
        for a, b in itertools.combinations(res.order, 2):
            assert not _before(b, a)


RANK = {ABSENT: 0, LIVE: 1, STOPPED: 2}
RAW = {ABSENT: "absent", LIVE: "running", STOPPED: "stopped"}


def _bounds(ops: list[Op], r: Op) -> tuple[int, int]:
    """Ranks the pack surely had at least when ``r`` began, and at most when it ended (monotone model)."""
    lo, hi = 0, 0
    for op in ops:
        if op is r or op.key != r.key:
            continue
        if _before(op, r):
            if op.kind is SPAWN and (op.outcome is OK or op.error == "exists"):
                lo = max(lo, 1)
            elif op.kind is STOP and op.outcome is OK:
                lo = max(lo, 2)
            elif op.kind is READ and (seen := observed(op)) is not None:
                lo = max(lo, RANK[seen])
        if op.invoke <= r.complete and op.outcome is not FAIL:  # type: ignore[operator]
            hi = max(hi, {SPAWN: 1, STOP: 2}.get(op.kind, 0))  # type: ignore[call-overload]
    return lo, hi


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_a_read_changed_to_an_impossible_value_is_caught(ops: list[Op], data: st.DataObject) -> None:
    candidates = []
    for i, op in enumerate(ops):
        if op.kind is READ and op.outcome is OK:
            lo, hi = _bounds(ops, op)
            candidates += [(i, v) for v in Value if not lo <= RANK[v] <= hi]
    assume(candidates)
    i, v = data.draw(st.sampled_from(candidates))
    mutated = ops[:i] + [replace(ops[i], output=RAW[v])] + ops[i + 1:]
    [res] = [r for r in linearize_keys(mutated) if r.key == ops[i].key]
    assert res.valid is False


def brute_force(ops: list[tuple[str, Op]]) -> bool:
    """Every order that respects real time, of the known ops and any subset of the unknown ones, on TABLE."""
    known = [i for i, (_, op) in enumerate(ops) if op.outcome is not INFO]
    unknown = [i for i, (_, op) in enumerate(ops) if op.outcome is INFO]
    for r in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, r):
            for order in itertools.permutations(known + list(extra)):
                if any(_before(ops[order[j]][1], ops[order[i]][1])
                       for i in range(len(order)) for j in range(i + 1, len(order))):
                    continue
                state: Value | None = ABSENT
                for i in order:
                    state = TABLE[(ops[i][0], state)]
                    if state is None:
                        break
                if state is not None:
                    return True
    return False


@st.composite
def small_histories(draw: st.DrawFn) -> list[tuple[str, Op]]:
    out: list[tuple[str, Op]] = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(sorted(TABLE_OPS)))
        invoke = draw(st.integers(0, 8))
        complete = invoke + draw(st.integers(0, 4))
        template = TABLE_OPS[name]
        end = None if template.complete is None else complete
        out.append((name, replace(template, process=len(out), invoke=invoke, complete=end)))
    return out


@settings(max_examples=500, deadline=None)
@given(small_histories())
def test_agrees_with_a_brute_force_over_the_table(ops: list[tuple[str, Op]]) -> None:
    results = linearize_keys([op for _, op in ops])
    expected = brute_force(ops)
    # A history of ops that say nothing has no key to check: vacuously linearizable.
    assert (results[0].valid if results else True) is expected


# ---- the final-state checks -----------------------------------------------------------------------

ACKED = [spawn(1, 0, 1, key="a"), spawn(1, 2, 3, key="b"), spawn(2, 0, 3, key="c"), stop(2, 4, 5, key="c")]


def test_lost_writes() -> None:
    whole = {"a": PackView("running", "n1", 1), "b": PackView("placed", "n2", 1), "c": PackView("stopped", None, 1)}
    assert check_lost_writes(ACKED, whole).verdict is Verdict.PASS
    lost = {"a": PackView("running", "n1", 1), "c": PackView("running", "n3", 1)}
    check = check_lost_writes(ACKED, lost)
    assert (check.count, check.verdict) == (2, Verdict.FAIL)
    assert check.examples[0].startswith("b: p1 spawn b ok") and "absent at the end" in check.examples[0]
    assert check.examples[1].startswith("c: p2 stop c ok") and "running at the end" in check.examples[1]
    # An unknown spawn is not acknowledged: losing it loses nothing.
    assert check_lost_writes([spawn(1, 0, None, INFO, key="d")], {}).count == 0


def test_acknowledged_packs_not_running() -> None:
    final = {"a": PackView("running", "n1", 1), "b": PackView("pending", None, 0), "c": PackView("stopped", None, 1)}
    check = check_not_running(ACKED, final, {"n1": {"a": 1}, "n2": {}})
    assert (check.count, check.examples) == (1, ("b: acknowledged, never stopped, runs on no agent (pending, on no node)",))
    assert check_not_running(ACKED, final, {"n1": {"a": 1}, "n2": {"b": 1}}).verdict is Verdict.PASS
    # A stop of unknown outcome may have happened: the pack is excused; a refused stop did not.
    maybe = ACKED + [stop(3, 9, None, INFO, key="b")]
    assert check_not_running(maybe, final, {"n1": {"a": 1}}).count == 0
    refused = ACKED + [stop(3, 9, 10, FAIL, "denied", key="b")]
    assert check_not_running(refused, final, {"n1": {"a": 1}}).count == 1


def test_duplicates_by_agents_and_by_processes() -> None:
    assert check_duplicates({"n1": {"a": 1}, "n2": {"b": 1}}, {}).verdict is Verdict.PASS
    check = check_duplicates({"n1": {"a": 1}, "n2": {"a": 2, "b": 1}}, {})
    assert (check.count, check.examples) == (1, ("a runs on n1, n2",))
    by_process = check_duplicates({"n1": {"b": 1}}, {"n1": {"b": 2}, "n3": {"b": 1, "c": 0}})
    assert (by_process.count, by_process.examples) == (1, ("b runs on n1, n3",))
    assert check_duplicates({"n1": {"b": 1}}, {"n2": {"b": 0}}).verdict is Verdict.PASS


def test_stale_reads_are_counted() -> None:
    ops = [spawn(1, 0, 10), read(2, 5, 6, "absent"), read(2, 11, 12, "absent"), stop(1, 20, 30),
           read(3, 31, 32, "running"), read(3, 25, 40, "running"), read(3, 50, 51, "absent", kind=STALE),
           Op(4, READ, "web", FAIL, 41, 42, error="not_found")]
    check = check_stale_reads(ops)
    assert check.count == 3 and check.verdict is Verdict.FAIL
    assert check.examples[0] == "web: p2 read web -> absent ok [11, 12] after p1 spawn web ok [0, 10]"
    assert check.examples[2] == "web: p4 read web fail not_found [41, 42] after p1 stop web ok [20, 30]"
    assert check_stale_reads(ops[:2]).verdict is Verdict.PASS
    # Invoked as the write completed: concurrent, not stale.
    assert check_stale_reads([spawn(1, 0, 10), read(2, 10, 12, "absent")]).verdict is Verdict.PASS


def test_replicas_converged() -> None:
    assert check_replicas({"s1": "abc", "s2": "abc", "s3": "abc"}).verdict is Verdict.PASS
    check = check_replicas({"s1": "abc", "s2": "abd", "s3": "abc"})
    assert (check.count, check.examples) == (1, ("s2: abd vs abc on 2",))
    assert check_replicas({"s1": "abc", "s2": None}).examples == ("s2: no digest",)
    assert check_replicas({}).verdict is Verdict.UNKNOWN


def test_agents_equal_to_state() -> None:
    final = {"a": PackView("running", "n1", 2), "b": PackView("placed", "n2", 1), "c": PackView("stopped", "n1", 1),
             "d": PackView("stopping", "n2", 1)}
    zombies, missing = check_agents(final, {"n1": {"a": 2}, "n2": {"b": 1}})
    assert zombies.verdict is Verdict.PASS and missing.verdict is Verdict.PASS
    zombies, missing = check_agents(final, {"n1": {"a": 1, "c": 1}, "n2": {"d": 1, "e": 4}})
    assert zombies.examples == ("a gen 1 runs on n1; state: running on n1 gen 2",
                                "c gen 1 runs on n1; state: stopped on n1 gen 1",
                                "d gen 1 runs on n2; state: stopping on n2 gen 1",
                                "e gen 4 runs on n2; absent from the state")
    assert missing.examples == ("a gen 2 assigned to n1 (running); it runs gen 1",
                                "b gen 1 assigned to n2 (placed); not running there")


def _clean() -> tuple[list[Op], FinalObservations]:
    ops = [spawn(1, 0, 1), read(2, 2, 3, "running"), spawn(1, 0, 1, key="api"), stop(2, 4, 5, key="api")]
    final = FinalObservations(
        state={"web": PackView("running", "n1", 1), "api": PackView("stopped", None, 1)},
        running={"n1": {"web": 1}, "n2": {}}, digests={"s1": "d", "s2": "d", "s3": "d"},
        processes={"n1": {"web": 1}})
    return ops, final


def test_a_clean_soak_passes_every_check() -> None:
    ops, final = _clean()
    report = check_history(ops, final)
    assert report.ok and (report.ops, report.keys, report.unknown_ops) == (4, 2, 0)
    rows = report_rows(report)
    assert len(rows) == 8 and all(count == 0 and verdict == "pass" and example == "" for _, count, verdict, example in rows)
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_a_broken_soak_fails_each_check_it_breaks() -> None:
    ops, final = _clean()
    ops = ops + [read(3, 10, 11, "absent"), spawn(4, 0, None, INFO, key="x")]
    final = replace(final, running={"n1": {"web": 1}, "n2": {"web": 1}}, digests={"s1": "d", "s2": "e", "s3": "d"})
    report: Report = check_history(ops, final, max_examples=1)
    failed = {c.id: c.count for c in report.checks() if c.verdict is Verdict.FAIL}
    assert failed == {"linearizable": 1, "stale_reads": 1, "duplicates": 1, "replicas": 1, "zombies": 1}
    assert not report.ok and report.unknown_ops == 1
    rows = {title: (count, verdict, example) for title, count, verdict, example in report_rows(report)}
    assert rows["packs running twice"] == (1, "fail", "web runs on n1, n2")
    assert all(len(c.examples) <= 1 for c in report.checks())
