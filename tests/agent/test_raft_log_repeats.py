"""A follower keeps the entries a late, repeated append-entries carries (Raft deletes only from
the first conflicting entry); a real conflict is still cut. Real replicas over real TCP."""

from __future__ import annotations

import logging

import pytest
from canidae.core.commands import RegisterNode
from canidae.core.types import Location, Node, Resources
from raft_group import Group, wait_until


@pytest.fixture
def group(tmp_path):
    with Group(str(tmp_path)) as g:
        yield g


def _fill(g: Group, n: int) -> None:
    lead = g.leader()
    for i in range(n):
        node = Node(f"n{i}", Location("z1", "r1", "c1"), Resources(1000, 1000, 10))
        [res] = g.propose(lead, [RegisterNode(id=f"reg-{i}", at=1, node=node)])
        assert res.get("ok"), res


def _log(rep) -> list[tuple[int, int]]:
    return [(e[1], e[2]) for e in rep._SyncObj__getEntries(1)]


def _append(leader, prev, entries) -> dict:
    return {"type": "append_entries", "term": leader.raftCurrentTerm, "commit_index": leader.raftCommitIndex,
            "entries": entries, "prevLogIdx": prev[1], "prevLogTerm": prev[2]}


def test_a_repeated_append_entries_deletes_nothing_and_a_conflict_still_truncates(group):
    g = group
    _fill(g, 8)
    lead = g.leader()
    follower = g.followers()[0]
    wait_until(lambda: _log(follower) == _log(lead), 10, "the follower to hold the leader's log")
    g.isolate(g.index(follower))
    before = _log(follower)
    last = before[-1][0]
    assert last >= 8

    # A late repeat of two entries in the middle of what the follower holds.
    prev, *two = lead._SyncObj__getEntries(last - 4, 3)
    g.deliver(follower, lead, _append(lead, prev, list(two)))
    assert _log(follower) == before, "a repeat without conflict deleted entries"
    # A late heartbeat (no entries) from further back.
    [prev] = lead._SyncObj__getEntries(last - 2, 1)
    g.deliver(follower, lead, _append(lead, prev, []))
    assert _log(follower) == before

    # A real conflict: an entry of the same index from a later term replaces the tail from there.
    [prev, mine] = lead._SyncObj__getEntries(last - 3, 2)
    conflicting = (mine[0], mine[1], mine[2] + 1)
    g.deliver(follower, lead, _append(lead, prev, [conflicting]))
    assert _log(follower)[-1] == (mine[1], mine[2] + 1)
    assert len(_log(follower)) == len(before) - 2


def test_an_append_that_overlaps_the_end_and_goes_beyond_keeps_the_overlap_and_appends_the_rest(group, caplog):
    g = group
    _fill(g, 8)
    lead = g.leader()
    follower = g.followers()[0]
    wait_until(lambda: _log(follower) == _log(lead) and follower.raftLastApplied == _log(lead)[-1][0], 10,
               "the follower to hold and apply the leader's log")
    g.isolate(g.index(follower))
    _fill_partitioned = lead  # the leader goes on alone with the other follower
    node = Node("late", Location("z1", "r1", "c1"), Resources(1000, 1000, 10))
    [res] = g.propose(_fill_partitioned, [RegisterNode(id="reg-late", at=1, node=node)])
    assert res.get("ok"), res
    before = _log(follower)
    last = before[-1][0]
    # From three entries back, through the leader's new one: the overlap matches.
    prev, *rest = lead._SyncObj__getEntries(last - 3)
    assert rest[-1][1] == last + 1
    with caplog.at_level(logging.CRITICAL, logger="pysyncobj.syncobj"):
        g.deliver(follower, lead, _append(lead, prev, list(rest)))
    assert _log(follower) == before + [(rest[-1][1], rest[-1][2])]
    assert not [r for r in caplog.records if "truncating" in r.getMessage()], "applied entries were deleted"
