"""A long apply on the tick thread (a 100,000-pack bulk spawn takes about a second) must not make
followers campaign nor the leader step down (real replicas, real TCP)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from canidae.core.commands import Command, CreatePacks, Noop
from canidae.core.state import ClusterState
from canidae.core.types import PackSpec
from raft_group import Group, wait_until

SLOW_APPLY_S = 1.5


class SlowState(ClusterState):
    """A state machine whose ``Noop`` with an id starting ``slow-`` keeps the tick thread busy:
    sleeping (a stall: the thread neither polls nor ticks) or computing (as a bulk spawn does,
    competing for the interpreter with the other members in this process)."""

    mode = "sleep"

    def __init__(self) -> None:
        super().__init__()
        self.slow_applied = 0

    def apply(self, cmd: Command, entry_term: int | None = None) -> dict[str, Any]:
        if isinstance(cmd, Noop) and cmd.id.startswith("slow-"):
            if self.mode == "sleep":
                time.sleep(SLOW_APPLY_S)
            else:
                until = time.monotonic() + SLOW_APPLY_S
                while time.monotonic() < until:
                    sum(range(1000))
            self.slow_applied += 1
        return super().apply(cmd, entry_term)


class ComputingState(SlowState):
    mode = "compute"


@pytest.fixture(params=[SlowState, ComputingState], ids=["sleeping", "computing"])
def group(tmp_path, request):
    with Group(str(tmp_path), state_factory=request.param) as g:
        yield g


@pytest.fixture
def plain_group(tmp_path):
    with Group(str(tmp_path)) as g:
        yield g


def _views(g: Group) -> list[tuple[str | None, int]]:
    return [(r.leader_address(), r.current_term()) for r in g.live()]


def test_a_long_apply_leaves_the_leader_and_its_term_unchanged_on_every_member(group):
    g = group
    lead = g.leader()
    g.propose(lead, [CreatePacks(id="warm", at=1, specs=(PackSpec("warm"),), place=False)])
    before = _views(g)
    assert len(set(before)) == 1

    states_seen: list[list[tuple[str | None, int, bool]]] = []
    stop = threading.Event()

    def watch() -> None:  # records any election or step-down while the slow entry is applied
        while not stop.is_set():
            states_seen.append([(r.leader_address(), r.current_term(), r.is_leader()) for r in g.live()])
            time.sleep(0.02)

    # Links may drop on their idle timeout after the stall and reconnect (their deadlines are not
    # moved: that kept a dead connection and left a member behind for good): what counts is that
    # no member campaigned, stepped down or lost its leader.
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        [res] = g.propose(lead, [Noop(id="slow-1", at=2)], timeout=30)
        assert res.get("ok"), res
        wait_until(lambda: all(r.state.slow_applied == 1 for r in g.live()), 30, "the slow entry applied")
        # Long enough after the applies for any election they provoked to have started.
        g.propose(lead, [CreatePacks(id="after", at=3, specs=(PackSpec("after"),), place=False)], timeout=30)
        wait_until(lambda: all("after" in r.state.packs for r in g.live()), 10, "the next write applied")
    finally:
        stop.set()
        watcher.join()

    assert _views(g) == before
    leader_addr = lead.selfNode.address
    for snapshot in states_seen:
        for (seen_leader, term, is_leader), r in zip(snapshot, g.live()):
            assert term == before[0][1], "a member's term moved: there was an election"
            assert is_leader == (r is lead), "leadership moved"
            assert seen_leader == leader_addr, "a member lost or changed its leader"


def test_a_leader_stalled_alone_is_replaced_and_follows_the_new_leader_when_it_resumes(plain_group):
    # Forgiving our own stalls must not hide a leader that really stopped: followers that stay
    # live count its silence and elect another. The stall ends only once they have.
    g = plain_group
    old = g.leader()
    old_term = old.current_term()
    armed, release = threading.Event(), threading.Event()

    def stall_once() -> None:
        if armed.is_set():
            armed.clear()
            release.wait(30)

    old.addOnTickCallback(stall_once)
    armed.set()
    try:
        others = [r for r in g.live() if r is not old]
        new = wait_until(lambda: next((r for r in others if r.is_leader()), None), 20,
                         "a new leader while the old one is stalled")
        assert new.current_term() > old_term
    finally:
        release.set()
    assert g.leader() is new  # the resumed member follows it; the group has one leader again
    [res] = g.propose(old, [CreatePacks(id="after", at=3, specs=(PackSpec("after"),), place=False)])
    assert res.get("ok"), res
