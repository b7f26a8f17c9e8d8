"""Pre-vote: a member cut off from the leader cannot raise its term, so when it returns it follows
the healthy leader instead of deposing it. Real replicas over real TCP (the cut drops messages
while the connections stay up), then the rules themselves against a fake member."""

from __future__ import annotations

import math
from typing import Any

import pytest
from canidae.agent.server.prevote import PRE_VOTE, PRE_VOTE_ANSWER, PreVote
from canidae.core.commands import CreatePacks
from canidae.core.types import PackSpec
from raft_group import Group, wait_until

ROUNDS = 5  # pre-vote rounds the cut-off member runs (several election timeouts) before healing


def _write(g: Group, via, name: str) -> None:
    [res] = g.propose(via, [CreatePacks(id=name, at=1, specs=(PackSpec(name),), place=False)])
    assert res.get("ok"), res


@pytest.mark.parametrize("cut", ["isolated", "cut-from-leader"])
def test_a_cut_off_member_returns_as_follower_and_the_leader_keeps_its_term(tmp_path, cut):
    with Group(str(tmp_path)) as g:
        lead = g.leader()
        term = lead.current_term()
        victim, other = g.followers()
        # Counters run from the start: the group formed by pre-vote too.
        rounds, won = victim._prevote.rounds_started, victim._prevote.rounds_won
        grants, denials = other._prevote.grants_given, other._prevote.denials_given
        if cut == "isolated":
            g.isolate(g.index(victim))
        else:  # it still reaches the other follower, which hears the leader and says no
            g.cut(g.index(victim), g.index(lead))
        _write(g, lead, "during")
        wait_until(lambda: victim._prevote.rounds_started >= rounds + ROUNDS, 30, f"{ROUNDS} pre-vote rounds")
        assert victim.current_term() == term, "the cut-off member raised its term"
        assert victim._prevote.rounds_won == won
        if cut == "cut-from-leader":
            assert other._prevote.denials_given > denials and other._prevote.grants_given == grants

        g.heal()
        wait_until(lambda: victim.leader_address() == lead.selfNode.address and "during" in victim.state.packs,
                   20, "the returning member to follow the leader and catch up")
        _write(g, lead, "after")
        wait_until(lambda: all("after" in r.state.packs for r in g.live()), 10, "the next write everywhere")
        assert g.leader() is lead
        assert [r.current_term() for r in g.live()] == [term] * 3


def test_without_pre_vote_the_returning_member_deposes_the_leader(tmp_path):
    # The scenario above is real: plain pysyncobj elections disrupt a healthy leader.
    with Group(str(tmp_path), pre_vote=False) as g:
        lead = g.leader()
        term = lead.current_term()
        victim = g.followers()[0]
        g.isolate(g.index(victim))
        wait_until(lambda: victim.current_term() >= term + 2, 30, "the cut-off member to campaign")
        g.heal()
        wait_until(lambda: lead.current_term() > term, 20, "the leader to adopt the returning member's term")


def test_a_dead_leader_is_replaced_after_a_won_pre_vote(tmp_path):
    with Group(str(tmp_path)) as g:
        old = g.leader()
        term = old.current_term()
        g.stop(g.index(old))
        new = g.leader()
        assert new.current_term() > term  # more than one if two survivors campaigned at once
        assert new._prevote.rounds_won >= 1
        _write(g, new, "after")


def test_leadership_transfer_skips_pre_vote(tmp_path):
    # TimeoutNow: every peer has just heard the leader and would refuse a pre-vote.
    with Group(str(tmp_path)) as g:
        old = g.leader()
        target = g.followers()[0]
        rounds = target._prevote.rounds_started  # it may have run some while the group formed

        def moved() -> bool:
            old.transferLeadership(target.selfNode.address)
            return g.leader(timeout=2) is target  # a Timeout from it is "not yet"
        wait_until(moved, 20, "leadership to move")
        assert target._prevote.rounds_started == rounds


# --------------------------------------------------------------------- the rules, one member


class FakeView:
    def __init__(self, peers: int = 2) -> None:
        self.leader = False
        self.current_term = 5
        self.log = (5, 100)
        self.nodes = [f"p{i}" for i in range(peers)]
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self.connected = True
        self.transfer = False

    def is_leader(self) -> bool:
        return self.leader

    def term(self) -> int:
        return self.current_term

    def last_log(self) -> tuple[int, int]:
        return self.log

    def peers(self) -> list[Any]:
        return list(self.nodes)

    def send(self, node: Any, message: dict[str, Any]) -> None:
        self.sent.append((node, message))

    def may_campaign(self) -> bool:
        return self.connected

    def transfer_pending(self) -> bool:
        return self.transfer

    def new_timeout(self) -> float:
        return 0.3


def _request(term: int = 6, log: tuple[int, int] = (5, 100)) -> dict[str, Any]:
    return {"type": PRE_VOTE, "round": 7, "term": term, "last_log_term": log[0], "last_log_index": log[1]}


def _answer_to(view: FakeView, req: dict[str, Any], now: float, heard_at: float | None = None) -> bool:
    pv = PreVote(view, True, 0.25, now=0.0)
    if heard_at is not None:
        pv.heard_leader(heard_at)
    pv.on_message("cand", req, now)
    node, ans = view.sent[-1]
    assert node == "cand" and ans["type"] == PRE_VOTE_ANSWER and ans["round"] == req["round"]
    return bool(ans["granted"])


def test_a_voter_grants_only_without_a_live_leader_a_higher_term_and_a_log_as_recent():
    assert _answer_to(FakeView(), _request(), now=10.0)
    assert not _answer_to(FakeView(), _request(), now=10.0, heard_at=9.9)  # heard a leader lately
    assert _answer_to(FakeView(), _request(), now=10.0, heard_at=9.7)
    assert not _answer_to(FakeView(), _request(term=5), now=10.0)  # not above our term
    assert not _answer_to(FakeView(), _request(log=(5, 99)), now=10.0)  # shorter log
    assert not _answer_to(FakeView(), _request(log=(4, 500)), now=10.0)  # older last term
    assert _answer_to(FakeView(), _request(log=(6, 1)), now=10.0)  # newer last term
    leader = FakeView()
    leader.leader = True
    assert not _answer_to(leader, _request(), now=10.0)


def test_malformed_requests_are_ignored():
    view = FakeView()
    pv = PreVote(view, True, 0.25, now=0.0)
    pv.on_message("x", {"type": PRE_VOTE, "round": "7", "term": 6}, now=10.0)
    assert view.sent == []


def test_pysyncobj_sees_an_expired_deadline_only_after_a_won_round():
    view = FakeView(peers=2)
    pv = PreVote(view, True, 0.25, now=0.0)
    pv.set_by_pysyncobj(1.0)
    assert pv.visible_deadline(0.5) == 1.0
    assert pv.visible_deadline(1.5) == math.inf  # expired, but no round won
    pv.before_tick(1.5)
    assert [m["type"] for _, m in view.sent] == [PRE_VOTE, PRE_VOTE]
    rnd = view.sent[0][1]["round"]
    assert pv.deadline == pytest.approx(1.8)  # ask again after a timeout if nobody answers
    pv.on_message("p0", {"type": PRE_VOTE_ANSWER, "round": rnd + 1, "term": 6, "granted": True}, 1.51)
    assert pv.won_at is None  # another round's answer
    pv.on_message("p0", {"type": PRE_VOTE_ANSWER, "round": rnd, "term": 6, "granted": False}, 1.51)
    assert pv.won_at is None and pv.denials_received == 1
    pv.on_message("p1", {"type": PRE_VOTE_ANSWER, "round": rnd, "term": 6, "granted": True}, 1.52)
    assert pv.won_at == 1.52 and pv.visible_deadline(1.53) == 0.0  # campaign on the next tick
    pv.set_by_pysyncobj(1.9)  # pysyncobj campaigned and set its next deadline
    assert pv.visible_deadline(2.0) == math.inf


def test_a_won_round_goes_stale_and_a_leader_heard_meanwhile_cancels_it():
    view = FakeView(peers=2)
    pv = PreVote(view, True, 0.25, now=0.0)
    pv.set_by_pysyncobj(1.0)
    pv.before_tick(1.5)
    rnd = view.sent[0][1]["round"]
    pv.on_message("p0", {"type": PRE_VOTE_ANSWER, "round": rnd, "term": 6, "granted": True}, 1.5)
    assert pv.visible_deadline(1.6) == 0.0
    assert pv.visible_deadline(1.8) == math.inf  # not used within a minimum election timeout
    view.sent.clear()
    pv.before_tick(1.8)
    assert len(view.sent) == 2  # a fresh round


def test_no_round_while_leader_transferring_or_disconnected_and_a_group_of_one_wins_alone():
    view = FakeView(peers=2)
    pv = PreVote(view, True, 0.25, now=0.0)
    pv.set_by_pysyncobj(0.0)
    view.transfer = True
    assert pv.visible_deadline(1.0) == 0.0  # TimeoutNow: campaign at once
    pv.before_tick(1.0)
    view.transfer, view.connected = False, False
    pv.before_tick(1.0)
    assert view.sent == [] and pv.rounds_started == 0
    alone = FakeView(peers=0)
    pv = PreVote(alone, True, 0.25, now=0.0)
    pv.set_by_pysyncobj(0.5)
    pv.before_tick(1.0)
    assert pv.visible_deadline(1.0) == 0.0


def test_disabled_pre_vote_still_answers_but_never_holds_back_an_election():
    view = FakeView()
    pv = PreVote(view, False, 0.25, now=0.0)
    pv.set_by_pysyncobj(1.0)
    assert pv.visible_deadline(2.0) == 1.0
    pv.before_tick(2.0)
    assert view.sent == []
    pv.on_message("cand", _request(), 10.0)
    assert view.sent[-1][1]["granted"] is True


def test_a_stall_of_the_voter_does_not_count_as_time_without_a_leader():
    view = FakeView()
    pv = PreVote(view, True, 0.25, now=0.0)
    pv.heard_leader(9.9)
    pv.forgive(1.5)  # the voter's tick was busy 1.5 s: the leader's heartbeats may sit unread
    pv.on_message("cand", _request(), 11.5)
    assert view.sent[-1][1]["granted"] is False
