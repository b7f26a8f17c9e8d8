"""The replicated record of every agent's audit chain heads: keys and signed checkpoints.

Each agent signs the head of its audit log (``canidae.core.audit.Checkpoint``) with its own
Ed25519 audit key and commits it through Raft (``CommitAuditCheckpoint``). This module owns what
the cluster remembers of that: per node, the public key of each audit log it has had (a key is
registered by the first checkpoint signed with it; a new key means a new log, as after its data
dir was wiped, and that change is itself on the record) and the newest ``MAX_CHECKPOINTS``
checkpoints of each. A checkpoint pins its record's hash and so, through the chain, every record
before it: the newest one alone finds a rewrite anywhere before it; older ones narrow down where.

Apply is pure and deterministic: it checks shapes, that the key id is the one the public key
names, that heads only move forward, and that a head at a seq already checkpointed is the same
hash (two different signed hashes for one seq are refused: one of them is a forgery or a
rewrite). Signatures are checked by the agent before it proposes (``cryptography``, outside
core) and again by every verifier; core only keeps the key that checks them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

from canidae.core.audit import Checkpoint
from canidae.core.errors import InvalidInput, WrongState
from canidae.core.types import validate_name

MAX_CHECKPOINTS = 32    # kept per audit key (the newest pins the whole log; older ones only localise a rewrite)
MAX_KEYS = 16           # audit keys remembered per node (the oldest retired one goes first)


def public_key_bytes(public_key: str) -> bytes:
    """The 32 raw bytes of a base64url Ed25519 public key; ``InvalidInput`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(public_key + "=" * (-len(public_key) % 4))
    except (binascii.Error, ValueError, TypeError):
        raise InvalidInput("audit public key is not base64url") from None
    if len(raw) != 32:
        raise InvalidInput("audit public key must be 32 bytes (Ed25519)")
    return raw


def key_id_for(node: str, public_key: str) -> str:
    """``node/`` and 16 hex digits of the key's SHA-256: names the log and the key that signs it."""
    return f"{node}/{hashlib.sha256(public_key_bytes(public_key)).hexdigest()[:16]}"


@dataclass(slots=True)
class AuditKey:
    """One audit log of one node: its key, when it was first seen, its newest checkpoints."""

    key_id: str
    public_key: str
    registered_at: int
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "public_key": self.public_key, "registered_at": self.registered_at,
                "checkpoints": [c.to_dict() for c in self.checkpoints]}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> AuditKey:
        return AuditKey(d["key_id"], d["public_key"], d["registered_at"],
                        [Checkpoint.from_dict(c) for c in d["checkpoints"]])


class AuditHeads:
    """node -> key id -> ``AuditKey``, in registration order."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, AuditKey]] = {}

    def commit(self, node: str, public_key: str, cp: Checkpoint, at: int) -> dict[str, Any]:
        """Record a signed head (the signature was checked by the proposer). Raises a typed error."""
        validate_name("node", node)
        if cp.key_id != key_id_for(node, public_key):
            raise InvalidInput(f"checkpoint key id {cp.key_id!r} is not node {node}'s key {key_id_for(node, public_key)}")
        keys = self.nodes.setdefault(node, {})
        log = keys.get(cp.key_id)
        created = log is None
        if log is None:
            log = AuditKey(cp.key_id, public_key, at)
            keys[cp.key_id] = log
            while len(keys) > MAX_KEYS:
                del keys[next(iter(keys))]
        last = log.checkpoints[-1] if log.checkpoints else None
        if last is not None:
            if cp.seq < last.seq:
                raise WrongState(f"audit head of {cp.key_id} at seq {cp.seq} is older than the one committed "
                                 f"(seq {last.seq})")
            if cp.seq == last.seq:
                if cp.head_hash != last.head_hash:
                    raise WrongState(f"audit head of {cp.key_id} at seq {cp.seq} differs from the one committed: "
                                     "refused (one of the two logs was rewritten)")
                return {"ok": True, "checkpoint": last.to_dict(), "unchanged": True}
        log.checkpoints.append(cp)
        if len(log.checkpoints) > MAX_CHECKPOINTS:
            del log.checkpoints[0]
        return {"ok": True, "checkpoint": cp.to_dict(), "new_key": created}

    def view(self, node: str) -> list[dict[str, Any]]:
        """Every audit key of ``node`` (oldest first) with its checkpoints; the last is current."""
        return [k.to_dict() for k in self.nodes.get(node, {}).values()]

    def to_snapshot(self) -> dict[str, Any]:
        return {n: [k.to_dict() for k in keys.values()] for n, keys in sorted(self.nodes.items())}

    @staticmethod
    def from_snapshot(d: dict[str, Any]) -> AuditHeads:
        heads = AuditHeads()
        for node, keys in d.items():
            heads.nodes[node] = {k["key_id"]: AuditKey.from_dict(k) for k in keys}
        return heads


__all__ = ["MAX_CHECKPOINTS", "MAX_KEYS", "AuditHeads", "AuditKey", "key_id_for", "public_key_bytes"]
