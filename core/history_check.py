"""The checker of a drill soak: a recorded history of pack operations, and what the cluster ended as.

This module owns the history model (``Op``), canidae's sequential model of one pack, the per-pack
linearizability check (on ``canidae.core.lincheck``) and the checks of the final observations,
gathered in one ``Report``. It must not run anything, read a clock or talk to a cluster: a
runner records operations and observations and hands them over as values.

Theory of operation.

*History.* Each ``Op`` is one client call: process, kind, key (the pack's name), invoke and
complete times on the runner's one clock, and an outcome: ``ok`` (acknowledged), ``fail`` (a
definite refusal: it did not happen) or ``info`` (unknown: a timeout, a lost connection; Jepsen's
semantics: it may take effect at any time after its invocation, or never). Retries inside one
call must reuse its request id, so that the cluster applies it at most once.

*Model.* A pack is a register whose value only ever moves forward, ``absent -> live -> stopped``:

    op                    from absent        from live          from stopped
    spawn ok              -> live            impossible         impossible
    spawn fail exists     impossible         live (observed)    stopped (observed)
    spawn info            -> live or never   unchanged          unchanged
    stop ok               impossible         -> stopped         stopped (stop is idempotent)
    stop fail not_found   absent (observed)  impossible         impossible
    stop info             unchanged          -> stopped / never stopped
    read -> v             v == absent        v == live          v == stopped

A read answered ``not_found`` observes ``absent``. Any other definite failure (denied, invalid,
no leader) did not happen and says nothing about the pack; a read of unknown outcome says
nothing either; both are left out. ``stale_read`` (the ``--stale`` opt-out) promises no
linearizability and is not checked against the model.

*State map.* Reads return the real pack states; ``DEFAULT_STATE_MAP`` maps them onto the model:
created, pending, placed, running -> live (the cluster was asked to run it and nobody stopped it);
stopping, stopped -> stopped; failed -> stopped. The model has no transition of its own, so a pack
that fails by itself (its process exits, its restart policy gives up) reads as stopped without a
stop and its key is reported non-linearizable: run linearizability drills on the virtual driver,
whose packs never fail, or pass a map of your own.

*Checks.* Linearizability is local (Herlihy & Wing): a history of independent packs is
linearizable iff each pack's sub-history is, so each key is searched alone. The other checks read
the final observations (``FinalObservations``): lost acknowledged writes, acknowledged packs not
running, packs running twice, stale reads (a subset of what linearizability catches, counted for
the table), replica digests, and agents' running sets against the state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from canidae.core.errors import AlreadyExists, InvalidInput, NotFound
from canidae.core.lincheck import linearize
from canidae.core.types import PackState

DEFAULT_BUDGET = 1_000_000  # search steps per pack before its answer is "unknown"
DEFAULT_EXAMPLES = 5


class OpKind(StrEnum):
    SPAWN = "spawn"
    STOP = "stop"
    READ = "read"              # linearizable read of one pack
    STALE_READ = "stale_read"  # local read (--stale): recorded, not checked against the model


class Outcome(StrEnum):
    OK = "ok"      # acknowledged
    FAIL = "fail"  # definitely did not happen
    INFO = "info"  # unknown: may take effect at any time after invoke, or never


class Value(StrEnum):
    """A pack in the model. Declared in the only order the model moves through."""

    ABSENT = "absent"
    LIVE = "live"
    STOPPED = "stopped"


_RANK = {Value.ABSENT: 0, Value.LIVE: 1, Value.STOPPED: 2}

DEFAULT_STATE_MAP: Mapping[str, Value] = MappingProxyType({
    "absent": Value.ABSENT,
    PackState.CREATED.value: Value.LIVE,
    PackState.PENDING.value: Value.LIVE,
    PackState.PLACED.value: Value.LIVE,
    PackState.RUNNING.value: Value.LIVE,
    PackState.STOPPING.value: Value.STOPPED,
    PackState.STOPPED.value: Value.STOPPED,
    PackState.FAILED.value: Value.STOPPED,
})

# States in which the cluster expects the assigned node to run a pack.
ASSIGNED_STATES = frozenset({PackState.PLACED.value, PackState.RUNNING.value})

_EXISTS, _NOT_FOUND = AlreadyExists.code, NotFound.code
_READS = (OpKind.READ, OpKind.STALE_READ)


@dataclass(frozen=True, slots=True)
class Op:
    """One client call as recorded. ``complete`` may be None only for an ``info`` outcome.

    ``output`` is what a read returned (a pack state or "absent"); ``error`` the wire code of a
    failure ("exists", "not_found", "timeout", ...); ``input`` is free text the model ignores.
    """

    process: int
    kind: OpKind
    key: str
    outcome: Outcome
    invoke: int
    complete: int | None = None
    output: str | None = None
    error: str | None = None
    input: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, OpKind) or not isinstance(self.outcome, Outcome):
            raise InvalidInput(f"op kind and outcome must be OpKind and Outcome, got {self.kind!r}, "
                               f"{self.outcome!r}")
        if not isinstance(self.key, str) or not self.key:
            raise InvalidInput(f"op key must be a pack name, got {self.key!r}")
        if self.complete is None and self.outcome is not Outcome.INFO:
            raise InvalidInput(f"a {self.outcome} op needs a completion time")
        if self.complete is not None and self.complete < self.invoke:
            raise InvalidInput(f"op completes at {self.complete}, before its invocation at {self.invoke}")
        if self.kind in _READS and self.outcome is Outcome.OK and self.output is None:
            raise InvalidInput("an acknowledged read needs its output")

    def describe(self) -> str:
        what = f"{self.kind} {self.key}"
        if self.kind in _READS and self.outcome is Outcome.OK:
            what += f" -> {self.output}"
        how = self.outcome.value if self.error is None else f"{self.outcome.value} {self.error}"
        end = "..." if self.complete is None or self.outcome is Outcome.INFO else str(self.complete)
        return f"p{self.process} {what} {how} [{self.invoke}, {end}]"

    def to_dict(self) -> dict[str, Any]:
        return {"process": self.process, "kind": self.kind.value, "key": self.key,
                "outcome": self.outcome.value, "invoke": self.invoke, "complete": self.complete,
                "output": self.output, "error": self.error, "input": self.input}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Op:
        try:
            kind, outcome = OpKind(d["kind"]), Outcome(d["outcome"])
        except (KeyError, ValueError) as e:
            raise InvalidInput(f"bad op {dict(d)!r}: {e}") from None
        return Op(d.get("process", 0), kind, d.get("key", ""), outcome, d.get("invoke", 0),
                  d.get("complete"), d.get("output"), d.get("error"), d.get("input"))


def model_value(raw: str, state_map: Mapping[str, Value] = DEFAULT_STATE_MAP) -> Value:
    """The model's value for a pack state as read from the cluster (or "absent")."""
    try:
        return state_map[raw]
    except KeyError:
        raise InvalidInput(f"no model value for pack state {raw!r}") from None


def observed(op: Op, state_map: Mapping[str, Value] = DEFAULT_STATE_MAP) -> Value | None:
    """What a read saw of its pack, or None if ``op`` is not a read that answered."""
    if op.kind not in _READS:
        return None
    if op.outcome is Outcome.OK:
        assert op.output is not None
        return model_value(op.output, state_map)
    if op.outcome is Outcome.FAIL and op.error == _NOT_FOUND:
        return Value.ABSENT
    return None


# A move is what an op does to the model: a tag and, for observations, the value seen.
_Move = tuple[str, Value | None]


def _move(op: Op, state_map: Mapping[str, Value]) -> _Move | None:
    """The op's move in the model, or None when it carries no information (see the table)."""
    if op.kind is OpKind.STALE_READ:
        return None
    if op.kind is OpKind.READ:
        seen = observed(op, state_map)
        return None if seen is None else ("see", seen)
    if op.outcome is Outcome.FAIL:
        if op.kind is OpKind.SPAWN and op.error == _EXISTS:
            return ("present", None)
        if op.kind is OpKind.STOP and op.error == _NOT_FOUND:
            return ("see", Value.ABSENT)
        return None
    return (op.kind.value + ("?" if op.outcome is Outcome.INFO else ""), None)


def _apply(state: Value, move: _Move) -> Value | None:
    tag, seen = move
    if tag == "see":
        return state if state is seen else None
    if tag == "present":
        return state if state is not Value.ABSENT else None
    if tag == "spawn":
        return Value.LIVE if state is Value.ABSENT else None
    if tag == "spawn?":
        return Value.LIVE if state is Value.ABSENT else state
    if tag == "stop":
        return Value.STOPPED if state is not Value.ABSENT else None
    assert tag == "stop?"
    return Value.STOPPED if state is not Value.ABSENT else state


def model_step(state: Value, op: Op, state_map: Mapping[str, Value] = DEFAULT_STATE_MAP) -> Value | None:
    """One op of the model (the table above): the next value, or None if the op is impossible."""
    move = _move(op, state_map)
    return state if move is None else _apply(state, move)


@dataclass(frozen=True, slots=True)
class KeyResult:
    """Linearizability of one pack's sub-history.

    ``valid`` True: ``order`` is a witness linearization. False: ``order`` is the longest prefix
    found, ``state`` the value after it, and ``unplaced`` the acknowledged or refused ops due next,
    none of which could follow it. None: the search budget ran out.
    """

    key: str
    valid: bool | None
    order: tuple[Op, ...]
    state: Value
    unplaced: tuple[Op, ...]
    ops: int
    explored: int

    def describe(self, last: int = 3) -> str:
        if self.valid is None:
            return f"{self.key}: undecided after {self.explored} search steps ({self.ops} ops)"
        if self.valid:
            return f"{self.key}: linearizable ({self.ops} ops)"
        shown = [op.describe() for op in self.order[-last:]]
        if len(self.order) > last:
            shown.insert(0, f"{len(self.order) - last} earlier")
        after = f"after {'; '.join(shown)}" if shown else "from the start"
        blocked = "; ".join(op.describe() for op in self.unplaced)
        return f"{self.key}: {after} the pack is {self.state}; cannot place {blocked}"


def linearize_keys(
    ops: Iterable[Op], state_map: Mapping[str, Value] = DEFAULT_STATE_MAP, budget: int | None = DEFAULT_BUDGET,
) -> tuple[KeyResult, ...]:
    """Search each pack's sub-history for a linearization; one result per key, sorted by key."""
    by_key: dict[str, list[tuple[Op, _Move]]] = {}
    for op in ops:
        move = _move(op, state_map)
        if move is not None:
            by_key.setdefault(op.key, []).append((op, move))
    out = []
    for key in sorted(by_key):
        items = by_key[key]
        moves = [m for _, m in items]

        def step(state: Value, i: int, moves: list[_Move] = moves) -> Value | None:
            return _apply(state, moves[i])

        intervals = [(op.invoke, None if op.outcome is Outcome.INFO else op.complete) for op, _ in items]
        read_only = [tag in ("see", "present") for tag, _ in moves]
        res = linearize(intervals, Value.ABSENT, step, budget, read_only)
        out.append(KeyResult(key, res.valid, tuple(items[i][0] for i in res.order), res.state,
                             tuple(items[i][0] for i in res.unplaced), len(items), res.explored))
    return tuple(out)


# ---- checks of one soak -----------------------------------------------------------------------


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the report: what was counted, how many, and a few examples."""

    id: str
    title: str
    count: int
    verdict: Verdict
    examples: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.id, "title": self.title, "count": self.count, "verdict": self.verdict.value,
                "examples": list(self.examples)}


def _check(ident: str, title: str, problems: Sequence[str], max_examples: int) -> Check:
    return Check(ident, title, len(problems), Verdict.FAIL if problems else Verdict.PASS,
                 tuple(problems[:max_examples]))


@dataclass(frozen=True, slots=True)
class PackView:
    """A pack in the final state, as read linearizably at the end of the soak."""

    state: str
    node: str | None
    generation: int


@dataclass(frozen=True, slots=True)
class FinalObservations:
    """What the runner read once the nemesis stopped and the cluster settled.

    ``state``: pack -> its final view. ``running``: node -> {pack: generation} each agent runs
    (an unreachable agent is left out and runs nothing). ``digests``: server -> state digest (None
    if it could not be read). ``processes``: node -> {pack: live processes} for exec packs.
    """

    state: Mapping[str, PackView]
    running: Mapping[str, Mapping[str, int]]
    digests: Mapping[str, str | None]
    processes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def _where(view: PackView) -> str:
    if view.node is None:
        return f"{view.state}, on no node"
    return f"{view.state} on {view.node} gen {view.generation}"


def check_linearizability(results: Sequence[KeyResult], max_examples: int = DEFAULT_EXAMPLES) -> Check:
    bad = [r.describe() for r in results if r.valid is False]
    undecided = [r.describe() for r in results if r.valid is None]
    check = _check("linearizable", "non-linearizable packs", bad, max_examples)
    if not bad and undecided:
        return Check(check.id, check.title, 0, Verdict.UNKNOWN, tuple(undecided[:max_examples]))
    return check


def check_lost_writes(
    ops: Iterable[Op], final: Mapping[str, PackView], state_map: Mapping[str, Value] = DEFAULT_STATE_MAP,
    max_examples: int = DEFAULT_EXAMPLES,
) -> Check:
    """Packs whose acknowledged spawn (or stop) the final state does not show."""
    spawned: dict[str, Op] = {}
    stopped: dict[str, Op] = {}
    for op in ops:
        if op.outcome is Outcome.OK and op.kind is OpKind.SPAWN:
            spawned.setdefault(op.key, op)
        elif op.outcome is Outcome.OK and op.kind is OpKind.STOP:
            stopped.setdefault(op.key, op)
    problems = []
    for key in sorted(spawned.keys() | stopped.keys()):
        view = final.get(key)
        now = Value.ABSENT if view is None else model_value(view.state, state_map)
        if key in spawned and now is Value.ABSENT:
            problems.append(f"{key}: {spawned[key].describe()}, absent at the end")
        elif key in stopped and now is Value.LIVE:
            assert view is not None
            problems.append(f"{key}: {stopped[key].describe()}, {view.state} at the end")
    return _check("lost_writes", "lost acknowledged writes", problems, max_examples)


def check_not_running(
    ops: Iterable[Op], final: Mapping[str, PackView], running: Mapping[str, Mapping[str, int]],
    max_examples: int = DEFAULT_EXAMPLES,
) -> Check:
    """Packs acknowledged, never stopped (not even possibly), that no agent runs at the end."""
    acked: set[str] = set()
    maybe_stopped: set[str] = set()
    for op in ops:
        if op.kind is OpKind.SPAWN and op.outcome is Outcome.OK:
            acked.add(op.key)
        elif op.kind is OpKind.STOP and op.outcome is not Outcome.FAIL:
            maybe_stopped.add(op.key)
    runs = {name for packs in running.values() for name in packs}
    problems = []
    for key in sorted(acked - maybe_stopped - runs):
        view = final.get(key)
        where = "absent from the state" if view is None else _where(view)
        problems.append(f"{key}: acknowledged, never stopped, runs on no agent ({where})")
    return _check("not_running", "acknowledged packs not running", problems, max_examples)


def check_duplicates(
    running: Mapping[str, Mapping[str, int]], processes: Mapping[str, Mapping[str, int]],
    max_examples: int = DEFAULT_EXAMPLES,
) -> Check:
    """Packs running on more than one node, by the agents' word or by their live processes."""
    where: dict[str, set[str]] = {}
    for node, packs in running.items():
        for name in packs:
            where.setdefault(name, set()).add(node)
    for node, counts in processes.items():
        for name, n in counts.items():
            if n > 0:
                where.setdefault(name, set()).add(node)
    problems = [f"{name} runs on {', '.join(sorted(nodes))}"
                for name, nodes in sorted(where.items()) if len(nodes) > 1]
    return _check("duplicates", "packs running twice", problems, max_examples)


def check_stale_reads(
    ops: Iterable[Op], state_map: Mapping[str, Value] = DEFAULT_STATE_MAP, max_examples: int = DEFAULT_EXAMPLES,
) -> Check:
    """Linearizable reads that saw a value older than a write acknowledged before they began."""
    writes: dict[str, list[tuple[int, int, Op]]] = {}
    reads: dict[str, list[tuple[int, Value, Op]]] = {}
    for op in ops:
        if op.kind is OpKind.READ:
            seen = observed(op, state_map)
            if seen is not None:
                reads.setdefault(op.key, []).append((op.invoke, seen, op))
        elif op.kind in (OpKind.SPAWN, OpKind.STOP) and op.outcome is Outcome.OK and op.complete is not None:
            value = Value.LIVE if op.kind is OpKind.SPAWN else Value.STOPPED
            writes.setdefault(op.key, []).append((op.complete, _RANK[value], op))
    problems = []
    for key in sorted(reads.keys() & writes.keys()):
        done = sorted(writes[key], key=lambda w: w[0])
        i, newest = 0, None
        for invoke, seen, read in sorted(reads[key], key=lambda r: r[0]):
            while i < len(done) and done[i][0] < invoke:  # strictly before: touching is concurrent
                if newest is None or done[i][1] > newest[1]:
                    newest = done[i]
                i += 1
            if newest is not None and _RANK[seen] < newest[1]:
                problems.append(f"{key}: {read.describe()} after {newest[2].describe()}")
    return _check("stale_reads", "stale reads", problems, max_examples)


def check_replicas(digests: Mapping[str, str | None], max_examples: int = DEFAULT_EXAMPLES) -> Check:
    """Servers whose state digest differs from the most common one (or could not be read)."""
    votes = Counter(d for d in digests.values() if d is not None)
    if not votes:
        return Check("replicas", "replicas diverged", 0, Verdict.UNKNOWN, ("no digest read",))
    majority, n = max(votes.items(), key=lambda kv: (kv[1], kv[0]))
    problems = [f"{server}: " + ("no digest" if d is None else f"{d[:12]} vs {majority[:12]} on {n}")
                for server, d in sorted(digests.items()) if d != majority]
    return _check("replicas", "replicas diverged", problems, max_examples)


def check_agents(
    final: Mapping[str, PackView], running: Mapping[str, Mapping[str, int]],
    max_examples: int = DEFAULT_EXAMPLES, assigned_states: frozenset[str] = ASSIGNED_STATES,
) -> tuple[Check, Check]:
    """Agents' running sets against the state: (zombies, missing), one count per (node, pack).

    A zombie runs on a node that the state does not assign it to (in ``assigned_states``) with
    that generation; a missing pack is assigned to a node that does not run that generation. A
    pack running an old generation on its assigned node is therefore both.
    """
    assigned: dict[str, dict[str, int]] = {}
    for name, view in final.items():
        if view.node is not None and view.state in assigned_states:
            assigned.setdefault(view.node, {})[name] = view.generation
    zombies, missing = [], []
    for node in sorted(running):
        for name, gen in sorted(running[node].items()):
            if assigned.get(node, {}).get(name) != gen:
                seen = final.get(name)
                said = "absent from the state" if seen is None else f"state: {_where(seen)}"
                zombies.append(f"{name} gen {gen} runs on {node}; {said}")
    for node in sorted(assigned):
        for name, gen in sorted(assigned[node].items()):
            has = running.get(node, {}).get(name)
            if has != gen:
                how = "not running there" if has is None else f"it runs gen {has}"
                missing.append(f"{name} gen {gen} assigned to {node} ({final[name].state}); {how}")
    return (_check("zombies", "packs running unassigned", zombies, max_examples),
            _check("missing", "assigned packs not running", missing, max_examples))


@dataclass(frozen=True, slots=True)
class Report:
    """Every check of one soak. ``ok`` when all pass."""

    ops: int
    keys: int
    unknown_ops: int
    linearizable: Check
    lost_writes: Check
    not_running: Check
    duplicates: Check
    stale_reads: Check
    replicas: Check
    zombies: Check
    missing: Check

    def checks(self) -> tuple[Check, ...]:
        return (self.linearizable, self.lost_writes, self.not_running, self.duplicates, self.stale_reads,
                self.replicas, self.zombies, self.missing)

    @property
    def ok(self) -> bool:
        return all(c.verdict is Verdict.PASS for c in self.checks())

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "ops": self.ops, "keys": self.keys, "unknown_ops": self.unknown_ops,
                "checks": [c.to_dict() for c in self.checks()]}


def check_history(
    ops: Sequence[Op], final: FinalObservations, *, state_map: Mapping[str, Value] = DEFAULT_STATE_MAP,
    max_examples: int = DEFAULT_EXAMPLES, budget: int | None = DEFAULT_BUDGET,
) -> Report:
    """Run every check over a soak's history and final observations."""
    zombies, missing = check_agents(final.state, final.running, max_examples)
    return Report(
        ops=len(ops),
        keys=len({op.key for op in ops}),
        unknown_ops=sum(1 for op in ops if op.outcome is Outcome.INFO),
        linearizable=check_linearizability(linearize_keys(ops, state_map, budget), max_examples),
        lost_writes=check_lost_writes(ops, final.state, state_map, max_examples),
        not_running=check_not_running(ops, final.state, final.running, max_examples),
        duplicates=check_duplicates(final.running, final.processes, max_examples),
        stale_reads=check_stale_reads(ops, state_map, max_examples),
        replicas=check_replicas(final.digests, max_examples),
        zombies=zombies,
        missing=missing,
    )


def report_rows(report: Report) -> list[tuple[str, int, str, str]]:
    """The report as table rows: (check, count, verdict, first example or "")."""
    return [(c.title, c.count, c.verdict.value, c.examples[0] if c.examples else "") for c in report.checks()]
