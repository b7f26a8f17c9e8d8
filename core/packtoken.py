"""Pack tokens: the bearer token a pack's members use to reach their own mailbox and send yips.

A pack token is ``pk.<pack>.<mac>`` where ``mac`` is an HMAC-SHA256 of the pack name keyed with the
cluster's agent token. Every agent holds that token, so any agent can verify a pack token without
asking anyone, and a pack cannot forge the token of another pack. This module owns the format
and the check; what a token may do is decided where it is used (``canidae.agent.server.yips``).
"""

from __future__ import annotations

import hashlib
import hmac

from canidae.core.types import NAME_RE

PREFIX = "pk."
_DOMAIN = b"canidae pack token v1\0"


def _mac(agent_token: str, pack: str) -> str:
    return hmac.new(agent_token.encode(), _DOMAIN + pack.encode(), hashlib.sha256).hexdigest()[:40]


def pack_token(agent_token: str, pack: str) -> str:
    """The token of ``pack`` in the cluster whose agents hold ``agent_token``."""
    return f"{PREFIX}{pack}.{_mac(agent_token, pack)}"


def verify(agent_token: str, token: str) -> str | None:
    """The pack a token belongs to, or None when it is not a valid pack token."""
    if not token.startswith(PREFIX):
        return None
    pack, sep, mac = token[len(PREFIX):].rpartition(".")
    if not sep or not NAME_RE.match(pack):
        return None
    return pack if hmac.compare_digest(mac.encode(), _mac(agent_token, pack).encode()) else None
