"""Pre-vote for pysyncobj: a member campaigns only when a majority would vote for it.

Why. pysyncobj has no pre-vote (Raft thesis, section 9.6). A member cut off from the leader but
able to reach someone campaigns again and again, raising its term each time; when the partition
heals, its higher term reaches the healthy leader, which steps down: an election, writes failing
meanwhile, for nothing. With pre-vote, before a real election the member asks its peers whether
they would vote for it in the next term, without changing anything on either side. A peer says
yes only if it has not heard from a leader within the minimum election timeout (so a peer that
follows a live leader always says no), the proposed term is above its own, and the candidate's
log is at least as up to date as its own. Only with a majority of yeses does the real election
start; otherwise the member waits one more election timeout and asks again, its term unchanged.
When the partition heals it simply receives the leader's append-entries and follows.

How it sits in pysyncobj (``Replica`` wires it). pysyncobj decides to campaign at the top of a
tick by reading its election deadline, the only place it reads it. ``Replica`` holds that deadline
here (a property over pysyncobj's attribute), and pysyncobj reads an expired deadline only once a
pre-vote round was won; otherwise it sees none expired. Rounds start in ``before_tick``, called
just before pysyncobj's tick; the requests and answers are our own message types, sent over
pysyncobj's transport (so they are encrypted with the cluster password like everything else)
and taken out of the message stream before pysyncobj sees them. A won round expires the
deadline at once, so the real election starts on the next tick: pre-vote adds one round trip.
A leadership transfer (pysyncobj's TimeoutNow) skips pre-vote, as it must: every peer has just
heard from the leader and would say no.

Members without pre-vote (``enabled=False``) still answer pre-vote requests; they only campaign
the plain way.
"""

from __future__ import annotations

import math
import random
from typing import Any, Protocol

PRE_VOTE = "canidae_pre_vote"
PRE_VOTE_ANSWER = "canidae_pre_vote_answer"
MESSAGE_TYPES = frozenset({PRE_VOTE, PRE_VOTE_ANSWER})


class RaftView(Protocol):
    """What pre-vote needs to see and do of a pysyncobj member (its tick thread only)."""

    def is_leader(self) -> bool: ...
    def term(self) -> int: ...
    def last_log(self) -> tuple[int, int]: ...  # (term, index) of the last entry
    def peers(self) -> list[Any]: ...
    def send(self, node: Any, message: dict[str, Any]) -> None: ...
    def may_campaign(self) -> bool: ...  # pysyncobj's own conditions: a voter, connected to someone
    def transfer_pending(self) -> bool: ...
    def new_timeout(self) -> float: ...


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class PreVote:
    """Pre-vote rounds of one member, and its answers to others'. Runs on the tick thread only."""

    def __init__(self, view: RaftView, enabled: bool, min_timeout_s: float, now: float) -> None:
        self.view = view
        self.enabled = enabled
        self.min_timeout_s = min_timeout_s
        self.deadline = now + min_timeout_s  # pysyncobj's election deadline; it sets its own at once
        self.won_at: float | None = None
        self.round = 0
        self.proposed_term = 0
        self.grants: set[Any] = set()
        self.leader_heard_at = -math.inf
        self._rng = random.Random()
        # Counters, for tests and status.
        self.rounds_started = 0
        self.rounds_won = 0
        self.denials_received = 0
        self.grants_given = 0
        self.denials_given = 0

    # ------------------------------------------------------------ pysyncobj's deadline

    def visible_deadline(self, now: float) -> float:
        """The deadline pysyncobj sees: an expired one only when it may campaign right now."""
        if not self.enabled or self.deadline >= now or self.view.transfer_pending() or self._won(now):
            return self.deadline
        return math.inf

    def set_by_pysyncobj(self, deadline: float) -> None:
        # pysyncobj sets a new deadline when it campaigns, grants a vote, hears a leader or is asked
        # to campaign by its leader: each of these ends what a won round allowed.
        self.deadline = deadline
        self.won_at = None

    def forgive(self, seconds: float, deadline: bool = True) -> None:
        """Time in which this member could not listen (a stall) is not silence: the election
        deadline moves later by it, and so does the last time a leader was heard, since what the
        leader sent meanwhile may still sit unread behind a peer's pre-vote request."""
        if deadline:
            self.deadline += seconds
        self.leader_heard_at += seconds

    def _won(self, now: float) -> bool:
        # A won round is good for one minimum election timeout: the answers describe that moment.
        return self.won_at is not None and now - self.won_at < self.min_timeout_s

    # ------------------------------------------------------------ the tick

    def before_tick(self, now: float) -> None:
        """Start a round if pysyncobj would campaign now and no recent round was won."""
        v = self.view
        if not self.enabled or self.deadline >= now or self._won(now) or v.transfer_pending():
            return
        if v.is_leader() or not v.may_campaign():
            return
        self.won_at = None
        self.round = self._rng.getrandbits(62)  # unique per round, also across restarts
        self.rounds_started += 1
        self.proposed_term = v.term() + 1
        self.grants = set()
        self.deadline = now + v.new_timeout()  # no answer in time: ask again after a timeout
        if self._majority():  # a group of one
            self._win(now)
            return
        last_term, last_index = v.last_log()
        request = {"type": PRE_VOTE, "round": self.round, "term": self.proposed_term,
                   "last_log_term": last_term, "last_log_index": last_index}
        for node in v.peers():
            v.send(node, request)

    def _majority(self) -> bool:
        return len(self.grants) + 1 > (len(self.view.peers()) + 1) / 2

    def _win(self, now: float) -> None:
        self.rounds_won += 1
        self.won_at = now
        self.deadline = 0.0  # campaign on the next tick

    # ------------------------------------------------------------ messages

    def heard_leader(self, now: float) -> None:
        """A leader's append-entries of our term or newer arrived (pysyncobj will follow it)."""
        self.leader_heard_at = now

    def on_message(self, node: Any, message: dict[str, Any], now: float) -> None:
        if message.get("type") == PRE_VOTE:
            self._answer(node, message, now)
        else:
            self._count(node, message, now)

    def _answer(self, node: Any, req: dict[str, Any], now: float) -> None:
        fields = (req.get("round"), req.get("term"), req.get("last_log_term"), req.get("last_log_index"))
        if not all(_is_int(f) for f in fields):
            return
        v = self.view
        granted = (not v.is_leader()
                   and now - self.leader_heard_at >= self.min_timeout_s
                   and req["term"] > v.term()
                   and (req["last_log_term"], req["last_log_index"]) >= v.last_log())
        if granted:
            self.grants_given += 1
        else:
            self.denials_given += 1
        v.send(node, {"type": PRE_VOTE_ANSWER, "round": req["round"], "term": req["term"],
                      "granted": granted})

    def _count(self, node: Any, ans: dict[str, Any], now: float) -> None:
        if ans.get("round") != self.round or ans.get("term") != self.proposed_term or self.won_at is not None:
            return  # an answer to an older round, or this one is already decided
        if self.view.term() + 1 != self.proposed_term or self.view.is_leader():
            return  # our term moved since we asked: the round is moot
        if ans.get("granted") is not True:
            self.denials_received += 1
            return
        self.grants.add(node)
        if self._majority():
            self._win(now)

    def status(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "rounds_started": self.rounds_started, "rounds_won": self.rounds_won,
                "denials_received": self.denials_received, "grants_given": self.grants_given,
                "denials_given": self.denials_given}
