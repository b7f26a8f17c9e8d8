"""Pack tokens: the bearer token a pack's members use to reach their own mailbox and send yips.

A pack token is ``pk~<pack>~<generation>~<node>~<mac>`` (``~`` is in no name, and is a token
character of RFC 6750): an HMAC-SHA256 of the pack, the
generation of its run and the node that runs it, keyed with that node's own secret (its agent's
node credential). Only that node's agent can make or check it, so a pack cannot forge the token
of another pack, and an agent cannot forge the tokens of packs on other nodes. A token is good
for one run: the agent accepts it only while it runs that pack at that generation, so it ends
with the run (a stop, a move, a new placement all change the generation; packs are never
deleted and renamed, so a pack and a generation name one run for good).

Since the keyrings (``canidae.core.keyring``, purpose ``pack``), a token names the key that
signed it: ``pk~<pack>~<generation>~<node>~<key id>~<mac>``, the mac keyed with the node's own
key derived from that cluster key and the node's credential (``canidae.agent.keyring``), so a
rotation changes every node's key while old tokens still verify until their key is retired. A
token without a key id (the first form) is checked against the node credential itself and is
taken as signed by the ``pack`` keyring's first key.

This module owns the format and the check of the signature; whether the run is still on is the
node's to say (``canidae.agent.node.yips``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from canidae.core.types import NAME_RE

PREFIX = "pk~"
_DOMAIN = b"canidae pack token v2\0"
MAX_GENERATION = 2**62
_KID_RE = re.compile(r"[0-9a-f]{8}")


@dataclass(frozen=True, slots=True)
class PackRun:
    """What a pack token speaks for: one run of one pack on one node."""

    pack: str
    generation: int
    node: str


def _mac(node_key: str, run: PackRun) -> str:
    msg = _DOMAIN + f"{run.pack}\0{run.generation}\0{run.node}".encode()
    return hmac.new(node_key.encode(), msg, hashlib.sha256).hexdigest()[:40]


def pack_token(node_key: str, pack: str, generation: int, node: str) -> str:
    """The token of ``pack``'s run ``generation`` on ``node``, whose agent's own secret is ``node_key``."""
    run = PackRun(pack, generation, node)
    return f"{PREFIX}{pack}~{generation}~{node}~{_mac(node_key, run)}"


def keyed_pack_token(node_key: str, key_id: str, pack: str, generation: int, node: str) -> str:
    """A token signed with ``node_key`` (the node's key derived from the pack keyring's key ``key_id``)."""
    run = PackRun(pack, generation, node)
    return f"{PREFIX}{pack}~{generation}~{node}~{key_id}~{_mac(node_key, run)}"


def key_id_of(token: str) -> str | None:
    """The key id a token names ("" for the first form, None when it is not a pack token)."""
    if not token.startswith(PREFIX):
        return None
    parts = token[len(PREFIX):].split("~")
    return "" if len(parts) == 4 else parts[3] if len(parts) == 5 and _KID_RE.fullmatch(parts[3]) else None


def parse(token: str) -> tuple[PackRun, str] | None:
    """The run a token names and its mac, or None when it is not shaped like a pack token."""
    if not token.startswith(PREFIX):
        return None
    parts = token[len(PREFIX):].split("~")
    if len(parts) == 5 and _KID_RE.fullmatch(parts[3]):
        parts = parts[:3] + parts[4:]
    if len(parts) != 4:
        return None
    pack, gen, node, mac = parts
    if (not NAME_RE.fullmatch(pack) or not NAME_RE.fullmatch(node) or not (gen.isascii() and gen.isdigit()) or len(gen) > 19
            or int(gen) > MAX_GENERATION or len(mac) != 40):
        return None
    return PackRun(pack, int(gen), node), mac


def verify(node_key: str, node: str, token: str) -> PackRun | None:
    """The run a token speaks for, if it is a pack token of ``node`` signed with its key; else None.
    (Whether that run is still on is for the caller to check.)"""
    parsed = parse(token)
    if parsed is None or parsed[0].node != node:
        return None
    run, mac = parsed
    return run if hmac.compare_digest(mac.encode(), _mac(node_key, run).encode()) else None


__all__ = ["PackRun", "key_id_of", "keyed_pack_token", "pack_token", "parse", "verify"]
