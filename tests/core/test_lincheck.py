"""The generic Wing & Gong search, against a brute force over every order, on a plain register."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Sequence

import pytest
from canidae.core.errors import InvalidInput
from canidae.core.lincheck import linearize
from hypothesis import given, settings
from hypothesis import strategies as st

Interval = tuple[int, int | None]


def brute_force(intervals: Sequence[Interval], init: Hashable, step: Callable[[Hashable, int], Hashable | None]) -> bool:
    """Try every subset of the unknown ops and every order that respects real time."""
    known = [i for i, (_, c) in enumerate(intervals) if c is not None]
    unknown = [i for i, (_, c) in enumerate(intervals) if c is None]

    def before(a: int, b: int) -> bool:
        complete = intervals[a][1]
        return complete is not None and complete < intervals[b][0]

    for r in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, r):
            for order in itertools.permutations(known + list(extra)):
                if any(before(order[j], order[i]) for i in range(len(order)) for j in range(i + 1, len(order))):
                    continue
                state: Hashable | None = init
                for i in order:
                    state = step(state, i)
                    if state is None:
                        break
                if state is not None:
                    return True
    return False


# A register of small ints: ("w", v) writes v, ("r", v) reads v.
RegOp = tuple[str, int]


def register_step(ops: Sequence[RegOp]) -> Callable[[int, int], int | None]:
    def step(state: int, i: int) -> int | None:
        kind, v = ops[i]
        if kind == "w":
            return v
        return state if state == v else None
    return step


@st.composite
def register_histories(draw: st.DrawFn) -> tuple[list[Interval], list[RegOp]]:
    n = draw(st.integers(0, 6))
    intervals: list[Interval] = []
    ops: list[RegOp] = []
    for _ in range(n):
        invoke = draw(st.integers(0, 8))
        kind = draw(st.sampled_from(["w", "r"]))
        unknown = kind == "w" and draw(st.booleans())
        complete = None if unknown else invoke + draw(st.integers(0, 4))
        intervals.append((invoke, complete))
        ops.append((kind, draw(st.integers(0, 2))))
    return intervals, ops


def respects_real_time(intervals: Sequence[Interval], order: Sequence[int]) -> bool:
    pos = {i: k for k, i in enumerate(order)}
    for a, (_, complete) in enumerate(intervals):
        for b, (invoke, _) in enumerate(intervals):
            if complete is not None and complete < invoke and a in pos and b in pos and pos[a] > pos[b]:
                return False
    return True


@settings(max_examples=500, deadline=None)
@given(register_histories())
def test_agrees_with_brute_force_on_a_register(history: tuple[list[Interval], list[RegOp]]) -> None:
    intervals, ops = history
    step = register_step(ops)
    res = linearize(intervals, 0, step, read_only=[kind == "r" for kind, _ in ops])
    assert res.valid is brute_force(intervals, 0, step)  # type: ignore[arg-type]
    if res.valid:
        known = {i for i, (_, c) in enumerate(intervals) if c is not None}
        assert known <= set(res.order)
        assert respects_real_time(intervals, res.order)
        state: int | None = 0
        for i in res.order:
            state = step(state, i)  # type: ignore[arg-type]
            assert state is not None
        assert state == res.state


def test_a_read_of_a_value_never_written_is_unplaced() -> None:
    ops: list[RegOp] = [("w", 1), ("r", 1), ("r", 2)]
    res = linearize([(0, 1), (2, 3), (4, 5)], 0, register_step(ops))
    assert res.valid is False
    assert res.order == (0, 1) and res.state == 1 and res.unplaced == (2,)


def test_unplaced_lists_every_op_due_at_the_dead_end() -> None:
    # Two concurrent reads of different values after a write of 1: neither 2 nor 3 fits.
    ops: list[RegOp] = [("w", 1), ("r", 2), ("r", 3)]
    res = linearize([(0, 1), (2, 5), (3, 6)], 0, register_step(ops))
    assert res.valid is False and res.order == (0,) and set(res.unplaced) == {1, 2}


def test_unplaced_leaves_out_ops_that_began_after_the_dead_end() -> None:
    ops: list[RegOp] = [("w", 1), ("r", 2), ("r", 1)]
    res = linearize([(0, 1), (2, 3), (4, 5)], 0, register_step(ops))
    assert res.valid is False and res.order == (0,) and res.unplaced == (1,)


def test_unknown_ops_that_change_nothing_are_not_tried() -> None:
    # 12 unknown writes of 1 next to a known one, then an impossible read: only the first write of
    # 1 can change the state, so the search need not try the 2^13 subsets of writes.
    ops: list[RegOp] = [("w", 1)] * 13 + [("r", 7)]
    intervals: list[Interval] = [(0, None) for _ in range(12)]
    intervals += [(0, 5), (6, 7)]
    res = linearize(intervals, 0, register_step(ops))
    assert res.valid is False and res.explored < 100


def test_many_concurrent_reads_are_placed_without_trying_their_orders() -> None:
    # 40 concurrent reads of 1 around a write of 1 and an impossible read: 2^40 subsets of reads,
    # unless a read that fits is placed at once.
    ops: list[RegOp] = [("w", 1)] + [("r", 1)] * 40 + [("r", 5)]
    intervals: list[Interval] = [(0, 1)]
    intervals += [(2, 50) for _ in range(40)] + [(51, 52)]
    read_only = [kind == "r" for kind, _ in ops]
    res = linearize(intervals, 0, register_step(ops), read_only=read_only)
    assert res.valid is False and res.unplaced == (41,) and res.explored < 100


def test_a_write_that_changes_nothing_here_is_not_forced() -> None:
    # Writing 0 over 0 changes nothing now, but the only linearization writes 1 first: w1 w0 r0 r0.
    ops: list[RegOp] = [("r", 0), ("w", 0), ("r", 0), ("w", 1)]
    intervals: list[Interval] = [(1, 1), (0, 0), (0, 0), (0, 0)]
    res = linearize(intervals, 0, register_step(ops), read_only=[kind == "r" for kind, _ in ops])
    assert res.valid is True and res.order.index(3) < res.order.index(1)


def test_touching_intervals_are_concurrent() -> None:
    # The read completes at 5, when the write is invoked: either may come first.
    ops: list[RegOp] = [("r", 1), ("w", 1)]
    assert linearize([(0, 5), (5, 9)], 0, register_step(ops)).valid is True
    assert linearize([(0, 4), (5, 9)], 0, register_step(ops)).valid is False


def test_an_unknown_write_takes_effect_late_or_never() -> None:
    ops: list[RegOp] = [("w", 1), ("r", 0), ("r", 1)]
    assert linearize([(0, None), (5, 6), (7, 8)], 0, register_step(ops)).valid is True
    assert linearize([(0, None), (5, 6)], 0, register_step(ops[:2])).valid is True
    # ... but not before it was invoked.
    assert linearize([(9, None), (5, 6), (7, 8)], 0, register_step(ops)).valid is False


def test_no_ops_is_linearizable() -> None:
    res = linearize([], 0, register_step([]))
    assert res.valid is True and res.order == () and res.state == 0


def test_a_small_budget_gives_an_unknown_answer() -> None:
    ops: list[RegOp] = [("w", 1), ("w", 2), ("w", 3), ("r", 3)]
    intervals: list[Interval] = [(0, 10), (0, 10), (0, 10), (11, 12)]
    assert linearize(intervals, 0, register_step(ops), budget=2).valid is None
    assert linearize(intervals, 0, register_step(ops)).valid is True


def test_completion_before_invocation_is_refused() -> None:
    with pytest.raises(InvalidInput):
        linearize([(5, 4)], 0, register_step([("w", 1)]))


def test_memo_bounds_the_search_of_concurrent_writes() -> None:
    # 10 concurrent writes of distinct values, then a read of a value none wrote: every order fails.
    # Without the memo that is 10! orders; with it, at most one state per (set written, last value).
    k = 10
    ops: list[RegOp] = [("w", v) for v in range(1, k + 1)] + [("r", 99)]
    intervals: list[Interval] = [(0, 100) for _ in range(k)]
    intervals.append((101, 102))
    res = linearize(intervals, 0, register_step(ops))
    assert res.valid is False and res.unplaced == (k,)
    assert res.explored <= k * 2 ** (k - 1)
