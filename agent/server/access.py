"""API tokens on a server agent: finding them in the local replica and deciding their requests.

A server holds the token records and policies in its replica of the cluster state
(``canidae.core.state``). ``TokenAccess.find_token`` maps a bearer secret to its token (by the
HMAC of the secret under each key of the ``token`` keyring that still verifies, the key the
record names: ``canidae.agent.keyring``) and refuses, naming why, a revoked or expired one. ``decide`` evaluates one request with a
``DecisionCache`` keyed by (accessor, policy version); the policy version is the state's revision
of the last token or policy change, so a change is in force at the next request after this
replica applied it, and every request checks the current token record before the cache.

This module owns no policy logic (``canidae.core.acl``) and no HTTP (``canidae.agent.httpedge``).
Everything runs on the agent's event loop thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from canidae.agent.identity import Kind, Principal
from canidae.agent.keyring import ClusterKeys, token_pepper
from canidae.core.acl import (
    SECRET_RE,
    Capability,
    Decision,
    DecisionCache,
    PolicySet,
    ResourceKind,
    check_token,
)
from canidae.core.errors import NotAuthenticated
from canidae.core.state import ClusterState
from canidae.core.tokens import TokenRecord

MAX_POLICY_SETS = 10_000


def wall_ms() -> int:
    return int(time.time() * 1000)


class TokenAccess:
    """Finds API tokens in the local replica and decides their requests, with a decision cache."""

    def __init__(self, state: Callable[[], ClusterState], keys: ClusterKeys, *, clock: Callable[[], int] = wall_ms,
                 cache: DecisionCache | None = None) -> None:
        self._state, self.keys, self._clock = state, keys, clock
        self.cache = cache or DecisionCache()
        self._sets: dict[str, tuple[int, PolicySet]] = {}  # accessor -> (policy version, its compiled policies)

    def _keys_in_step(self, st: ClusterState) -> None:
        # The keeper refreshes the keys from the replica once a period; a token made (or keys
        # rotated) since must not be refused meanwhile, so a lookup first takes what the replica
        # holds. Free when nothing changed (one version compared).
        if st.keyrings.version != self.keys.rings.version or not self.keys.updated:
            try:
                doc = st.keyrings.to_dict()
            except RuntimeError:  # the Raft thread changed the keyrings while they were read
                return  # the keeper's next refresh (under the replica's lock) takes them
            self.keys.update(doc)

    def hash(self, secret: str) -> tuple[str, str]:
        """(key id, hash) of a new token's secret, under the active token key."""
        self._keys_in_step(self._state())
        return self.keys.token_hash(secret)

    def find_token(self, secret: str) -> Principal | None:
        if not SECRET_RE.fullmatch(secret):
            return None
        st = self._state()
        self._keys_in_step(st)
        first = self.keys.first_token_key()
        for kid, h in self.keys.token_hashes(secret):
            rec = st.find_token(h)
            # The record names the key its hash was made with: a hash under another key is no match.
            if rec is not None and (rec.key or first) == (kid or first):
                break
        else:
            return None
        check_token(rec, self._clock())
        return Principal(Kind.TOKEN, rec.name, rec.accessor)

    def record(self, accessor: str) -> TokenRecord:
        """The current record of a token, refused if it may no longer be used."""
        rec = self._state().tokens.get(accessor)
        if rec is None:
            raise NotAuthenticated(f"token {accessor} no longer exists")
        check_token(rec, self._clock())
        return rec

    def decide(self, who: Principal, kind: ResourceKind, name: str, capability: Capability) -> Decision:
        st = self._state()
        rec = self.record(who.public_id)
        version = st.acl_version
        now = self._clock()
        key = (rec.accessor, version, kind, name, capability)
        decision = self.cache.get(key, now)
        if decision is None:
            decision = self.policy_set(rec, st).evaluate(kind, name, capability)
            self.cache.put(key, decision, now)
        return decision

    def policy_set(self, rec: TokenRecord, st: ClusterState) -> PolicySet:
        held = self._sets.get(rec.accessor)
        if held is not None and held[0] == st.acl_version:
            return held[1]
        if len(self._sets) >= MAX_POLICY_SETS:
            self._sets.clear()
        compiled = PolicySet.for_token(rec, st.policies)
        self._sets[rec.accessor] = (st.acl_version, compiled)
        return compiled

    def stats(self) -> dict[str, Any]:
        return {"cached": len(self.cache), "hits": self.cache.hits, "misses": self.cache.misses}


__all__ = ["TokenAccess", "token_pepper"]
