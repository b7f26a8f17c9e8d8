"""A linearizability search over any sequential model: Wing & Gong's algorithm with Lowe's memo.

This module owns the generic search only. It knows nothing of packs: the caller hands it one
interval per operation and a ``step`` function that applies operation ``i`` to a model state
(returning the new state, or ``None`` if the operation's recorded outcome is impossible from that
state). ``canidae.core.history_check`` builds canidae's model on top of it. Pure: no I/O, no
clocks; the same input always explores the same states in the same order.

Theory of operation. A history is linearizable if its operations can be put in one sequential
order that (1) respects real time: an operation that completed before another was invoked comes
first, and (2) is a legal run of the sequential model. Wing & Gong search that order directly:
lay the call and return events of all operations on one timeline in a doubly linked list; an
operation may be linearized next iff its call comes before the first return still in the list
(nothing still pending has already completed before it began). Take the first such call whose
step is legal, remove its call and return from the list ("lift"), and start again from the head;
on reaching a return instead, the operation it belongs to could not be placed in time: pop the
last choice, put it back ("unlift") and try the next call after it. Lowe's improvement memoizes
each (set of linearized operations, model state) reached: arriving there again by another order
cannot succeed where the first arrival failed, which turns the search from factorial into, for
most real histories, nearly linear.

Operations of unknown outcome (Jepsen's ``:info``: a timeout, a lost connection) may take effect
at any time after their invocation, or never. They get no return event, so they never force
anything to happen before them, and the search ends successfully as soon as every operation with
a known outcome is linearized: an unknown one left over is one that never took effect. One sound
shortcut keeps histories with many of them tractable: an unknown operation whose step would not
change the state is not linearized there, since leaving it pending keeps strictly more futures
open than spending it on a no-op.

A second shortcut keeps many concurrent reads tractable, for operations the caller marks
``read_only`` (they never change any state: a read). A known read-only operation that is due and
fits the state is *forced*: placed at once, with no alternative tried. Any linearization from that
point can be rearranged to start with it (it changes nothing wherever it goes, and nothing still
pending completed before it began), so if placing it first fails, every order fails from there
and the search backs up past it. This needs the operation to be read-only everywhere, not merely
a no-op here: a write of the value already held changes the state elsewhere in the order.

Events at the same time are ordered calls first, so two intervals that touch are concurrent:
coarse clocks make ties common and treating them as ordered could report a false violation.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from canidae.core.errors import InvalidInput

S = TypeVar("S", bound=Hashable)

_CALL, _RETURN = 0, 1
_NONE = -1  # end of the linked list


@dataclass(frozen=True, slots=True)
class Linearization(Generic[S]):
    """The answer of ``linearize`` for one history.

    ``valid`` is True (``order`` is a witness: indices of the operations in linearization order,
    unknown ones that never took effect left out), False (``order`` is the longest prefix the
    search could linearize and ``unplaced`` the operations with a known outcome that were due
    next, none of which can follow it), or None when ``budget`` ran out first. ``state`` is the
    model state after ``order``; ``explored`` counts the steps the search took forward.
    """

    valid: bool | None
    order: tuple[int, ...]
    state: S
    unplaced: tuple[int, ...]
    explored: int


class _Timeline:
    """The call and return events of a history, as a doubly linked list that lifts and unlifts.

    Node 0 is the head; nodes 1..m are the events sorted by time (calls first on ties).
    """

    __slots__ = ("kind", "nxt", "op", "prv", "ret")

    def __init__(self, intervals: Sequence[tuple[int, int | None]]) -> None:
        events: list[tuple[int, int, int]] = []
        for i, (invoke, complete) in enumerate(intervals):
            if complete is not None and complete < invoke:
                raise InvalidInput(f"operation {i} completes at {complete}, before its invocation {invoke}")
            events.append((invoke, _CALL, i))
            if complete is not None:
                events.append((complete, _RETURN, i))
        events.sort()
        m = len(events)
        self.kind = [_CALL] * (m + 1)
        self.op = [_NONE] * (m + 1)
        self.ret = [_NONE] * (m + 1)  # for a call node: the node of its return (or _NONE)
        ret_of = [_NONE] * len(intervals)
        for k, (_, kind, i) in enumerate(events, start=1):
            self.kind[k], self.op[k] = kind, i
            if kind == _RETURN:
                ret_of[i] = k
        for k in range(1, m + 1):
            if self.kind[k] == _CALL:
                self.ret[k] = ret_of[self.op[k]]
        self.nxt = list(range(1, m + 2))
        self.nxt[m] = _NONE
        self.prv = list(range(-1, m))

    def _unlink(self, k: int) -> None:
        nxt, prv = self.nxt, self.prv
        nxt[prv[k]] = nxt[k]
        if nxt[k] != _NONE:
            prv[nxt[k]] = prv[k]

    def _relink(self, k: int) -> None:
        # A removed node keeps its old neighbours, so undoing removals in reverse order is exact.
        nxt, prv = self.nxt, self.prv
        nxt[prv[k]] = k
        if nxt[k] != _NONE:
            prv[nxt[k]] = k

    def lift(self, call: int) -> None:
        self._unlink(call)
        if self.ret[call] != _NONE:
            self._unlink(self.ret[call])

    def unlift(self, call: int) -> None:
        if self.ret[call] != _NONE:
            self._relink(self.ret[call])
        self._relink(call)

    def due(self) -> list[int]:
        """The call nodes that may be linearized next: those before the first return."""
        out, k = [], self.nxt[0]
        while k != _NONE and self.kind[k] == _CALL:
            out.append(k)
            k = self.nxt[k]
        return out


def linearize(
    intervals: Sequence[tuple[int, int | None]],
    init: S,
    step: Callable[[S, int], S | None],
    budget: int | None = None,
    read_only: Sequence[bool] | None = None,
) -> Linearization[S]:
    """Search a linearization of the operations ``0..len(intervals)-1``.

    ``intervals[i]`` is ``(invoke, complete)`` of operation ``i`` on one clock, ``complete`` None
    for an operation of unknown outcome. ``step(state, i)`` applies operation ``i`` with its
    recorded outcome; it must be deterministic and model states must be hashable values.
    ``budget`` caps the steps forward (None: no cap); past it the answer is unknown.
    ``read_only[i]`` says operation ``i`` never changes any state (see the shortcuts above).
    """
    tl = _Timeline(intervals)
    definite = sum(1 for _, complete in intervals if complete is not None)
    seen: set[tuple[int, S]] = set()
    stack: list[tuple[int, S, bool]] = []  # (call node linearized, state before it, forced)
    # The order linearized so far as a cons list, so remembering the longest one costs O(1).
    chain: tuple[int, object] | None = None
    best_chain, best_depth, best_state = chain, 0, init
    linearized, state, pending, explored = 0, init, definite, 0
    entry = tl.nxt[0]
    while pending:
        if entry != _NONE and tl.kind[entry] == _CALL:
            i = tl.op[entry]
            new = step(state, i)
            known = tl.ret[entry] != _NONE
            if new is None or (not known and new == state):
                entry = tl.nxt[entry]
                continue
            key = (linearized | (1 << i), new)
            forced = read_only is not None and read_only[i] and known and new == state
            if key not in seen:
                seen.add(key)
                explored += 1
                if budget is not None and explored > budget:
                    return Linearization(None, _unroll(best_chain), best_state, (), explored)
                stack.append((entry, state, forced))
                chain = (i, chain)
                state, linearized = new, key[0]
                pending -= known
                tl.lift(entry)
                if len(stack) > best_depth:
                    best_chain, best_depth, best_state = chain, len(stack), state
                entry = tl.nxt[0]
                continue
            if not forced:
                entry = tl.nxt[entry]
                continue
            # A forced op whose successor state already failed: this state fails too.
        # Here either a return came first (the list never ends while a known operation is pending,
        # as its return follows its call): that operation could not be placed before it completed;
        # or a forced op failed. Undo the last choice, and the forced ones before it.
        while True:
            if not stack:
                return _failure(tl, best_chain, best_state, explored)
            entry, state, forced = stack.pop()
            i = tl.op[entry]
            linearized &= ~(1 << i)
            pending += tl.ret[entry] != _NONE
            assert chain is not None
            chain = chain[1]  # type: ignore[assignment]
            tl.unlift(entry)
            if not forced:
                break
        entry = tl.nxt[entry]
    return Linearization(True, _unroll(chain), state, (), explored)


def _unroll(chain: tuple[int, object] | None) -> tuple[int, ...]:
    out: list[int] = []
    while chain is not None:
        out.append(chain[0])
        chain = chain[1]  # type: ignore[assignment]
    return tuple(reversed(out))


def _failure(tl: _Timeline, best: tuple[int, object] | None, state: S, explored: int) -> Linearization[S]:
    """Replay the longest prefix on the (fully restored) timeline to name what was due after it."""
    order = _unroll(best)
    call_of = {tl.op[k]: k for k in range(1, len(tl.kind)) if tl.kind[k] == _CALL}
    for i in order:
        tl.lift(call_of[i])
    # Unknown operations are never "unplaced": they could always have not happened.
    unplaced = tuple(tl.op[k] for k in tl.due() if tl.ret[k] != _NONE)
    return Linearization(False, order, state, unplaced, explored)
