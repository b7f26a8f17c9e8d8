"""The cluster's keyrings: one per purpose, each key with an id and a state, in the replicated state.

Theory of operation. A purpose (``PURPOSES``) names what a key is for:

* ``token``: the HMAC key under which the state stores API token secrets (``core.tokens``);
* ``pack``: the key pack tokens are signed with (each node derives its own from it and its
  node credential, ``agent.keyring``);
* ``secrets``: the AES-256-GCM key pack secrets are sealed with at rest (``agent.secretbox``);
* ``audit``: a key for signing audit checkpoints (kept here so it rotates like the others; the
  audit trail signs with each agent's node key today).

A key moves one way through ``KeyState``: **prepublished** (every agent has it and accepts what
it signed; during a ``--by region`` rollout it signs in the regions listed in ``regions``),
**active** (signs and seals everywhere; one per purpose), **retiring** (no longer signs or
seals; still verifies and opens what it made), **retired** (refused; its material is dropped).
A rotation is ``publish`` (new key, prepublished) -> ``activate`` per region (optional) ->
``activate`` for all (the old active key becomes retiring) -> background work (secrets are
rewrapped under the new key) -> ``retire`` once nothing depends on the old key any more.

The state holds only *wrapped* material: each key sealed under a key-encryption key (KEK) that
every agent derives from the cluster key file in its data dir (``agent.keyring``), so the Raft
log and snapshots never hold a plain key, and neither does this module: it only keeps the
records, checks transitions, and answers which key signs, verifies or opens. Pure: no I/O, no
clock (``at`` comes from the command), no random (ids and material come in the command).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from canidae.core.errors import InvalidInput, NotFound, WrongState
from canidae.core.types import validate_name

PURPOSES = ("token", "pack", "secrets", "audit")
KEY_ID_RE = re.compile(r"^[0-9a-f]{8}$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_WRAPPED = 512


class KeyState(StrEnum):
    PREPUBLISHED = "prepublished"
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as the replicated state holds it: its material only wrapped under a KEK."""

    id: str
    purpose: str
    state: KeyState
    wrapped: str          # the material sealed under the KEK named by ``kek`` ("" once retired)
    kek: str              # id of the key-encryption key (a key of the agents' cluster key file)
    created_at: int
    changed_at: int
    # The regions switched to it one by one (``--by region``), in that order: a prepublished key
    # signs there already; an active key keeps the list as the record of its rollout.
    regions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not KEY_ID_RE.match(self.id):
            raise InvalidInput(f"key id must be 8 hex digits, got {self.id!r}")
        if self.purpose not in PURPOSES:
            raise InvalidInput(f"unknown key purpose {self.purpose!r}: one of {', '.join(PURPOSES)}")
        if not isinstance(self.wrapped, str) or len(self.wrapped) > MAX_WRAPPED:
            raise InvalidInput("wrapped key material must be a string of at most 512 characters")
        if (self.state is KeyState.RETIRED) != (self.wrapped == ""):
            raise InvalidInput(f"key {self.id}: a retired key, and only one, has no material")
        if not isinstance(self.kek, str) or len(self.kek) > 64:
            raise InvalidInput("kek must be a key id")
        for r in self.regions:
            validate_name("region", r)

    def to_dict(self, with_material: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "purpose": self.purpose, "state": self.state.value,
                             "created_at": self.created_at, "changed_at": self.changed_at,
                             "regions": list(self.regions)}
        if with_material:
            d["wrapped"], d["kek"] = self.wrapped, self.kek
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> KeyRecord:
        try:
            regions = d.get("regions", [])
            if not isinstance(regions, list):
                raise InvalidInput("regions must be a list")
            return KeyRecord(d["id"], d["purpose"], KeyState(d["state"]), d["wrapped"], d["kek"],
                             int(d["created_at"]), int(d["changed_at"]), tuple(regions))
        except KeyError as e:
            raise InvalidInput(f"key record is missing {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"invalid key record: {e}") from None


def parse_op(op: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a ``KeyringOp`` payload (the wire form) before it is proposed or applied."""
    if not isinstance(op, Mapping):
        raise InvalidInput("a keyring operation must be an object")
    kind = op.get("op")
    if kind in ("publish", "init"):
        keys = op.get("keys")
        if not isinstance(keys, list) or not keys:
            raise InvalidInput(f"{kind} needs a non-empty list of keys")
        return {"op": kind, "keys": [KeyRecord.from_dict(k).to_dict() for k in keys]}
    if kind in ("activate", "retire"):
        purpose, kid = op.get("purpose"), op.get("id")
        if purpose not in PURPOSES or not isinstance(kid, str) or not KEY_ID_RE.match(kid):
            raise InvalidInput(f"{kind} needs a purpose and a key id")
        out: dict[str, Any] = {"op": kind, "purpose": purpose, "id": kid}
        if kind == "activate" and op.get("regions") is not None:
            regions = op["regions"]
            if not isinstance(regions, list) or not regions:
                raise InvalidInput("regions must be a non-empty list (or absent: every region)")
            out["regions"] = [validate_name("region", r) for r in regions]
        return out
    if kind == "rewrap":
        packs = op.get("packs")
        if not isinstance(packs, Mapping) or not packs:
            raise InvalidInput("rewrap needs packs: {pack: {variable: [sealed value now, sealed again]}}")
        for name, secrets in packs.items():
            validate_name("pack", name)
            if not isinstance(secrets, Mapping) or not all(
                    isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in secrets.values()):
                raise InvalidInput(f"rewrap of {name}: each variable maps to [sealed value now, sealed again]")
        return {"op": kind, "packs": {k: {var: list(v) for var, v in vs.items()} for k, vs in packs.items()}}
    if kind == "admin":
        h = op.get("hash")
        if not isinstance(h, str) or not _HASH_RE.match(h):
            raise InvalidInput("admin needs the hash of the new admin token (64 hex digits)")
        return {"op": kind, "hash": h}
    raise InvalidInput(f"unknown keyring operation {kind!r}")


def sealed_key_id(value: str) -> str:
    """The key id inside a sealed secret (``sealed:v1:<id>:...``), "" when not shaped so."""
    parts = value.split(":", 3)
    return parts[2] if len(parts) == 4 else ""


class Keyrings:
    """Every purpose's keys, in the order they were published, and the admin token's hash.

    ``apply`` changes them (called by ``ClusterState`` for a ``KeyringOp``); the queries say which
    key signs (``signing``), which verify (``verifying``) and which open (``opening``)."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyRecord] = {}   # id -> record, in publication order
        self.admin_hash = ""                   # set by a bootstrap token rotation ("": the configs' hash)
        self.admin_epoch = 0                   # how many times it was rotated
        self.version = 0                       # bumped on every change: agents refresh on a new one

    # ------------------------------------------------------------------ queries

    def of(self, purpose: str) -> list[KeyRecord]:
        return [k for k in self.keys.values() if k.purpose == purpose]

    def active(self, purpose: str) -> KeyRecord | None:
        return next((k for k in self.of(purpose) if k.state is KeyState.ACTIVE), None)

    def signing(self, purpose: str, region: str = "") -> KeyRecord | None:
        """The key that signs or seals in ``region``: a prepublished key already switched there, else the active one."""
        for k in self.of(purpose):
            if k.state is KeyState.PREPUBLISHED and region and region in k.regions:
                return k
        return self.active(purpose)

    def verifying(self, purpose: str) -> list[KeyRecord]:
        """Keys whose signatures are accepted: active, retiring, and prepublished (an agent that
        switched earlier in a region-by-region rollout may already sign with it)."""
        return [k for k in self.of(purpose) if k.state is not KeyState.RETIRED]

    def opening(self, key_id: str) -> KeyRecord | None:
        """The key that opens what ``key_id`` sealed, unless it is retired (or unknown)."""
        k = self.keys.get(key_id)
        return None if k is None or k.state is KeyState.RETIRED else k

    def initialized(self, purpose: str) -> bool:
        return any(True for _ in self.of(purpose))

    # ------------------------------------------------------------------ changes

    def apply(self, op: Mapping[str, Any], at: int, in_use: Mapping[str, int]) -> dict[str, Any]:
        """Apply a parsed operation at ``at``; ``in_use`` counts, per key id, what still depends on
        it (sealed secrets, live tokens): a key still in use cannot be retired. Raises on refusal,
        changing nothing."""
        kind = op["op"]
        if kind == "init":
            return self._init(op, at)
        if kind == "publish":
            return self._publish(op, at)
        if kind == "activate":
            return self._activate(op, at)
        if kind == "retire":
            return self._retire(op, at, in_use)
        if kind == "admin":
            self.admin_hash, self.admin_epoch = op["hash"], self.admin_epoch + 1
            self.version += 1
            return {"ok": True, "admin_epoch": self.admin_epoch}
        raise InvalidInput(f"keyring operation {kind!r} is not applied here")

    def _init(self, op: Mapping[str, Any], at: int) -> dict[str, Any]:
        """The first keys of purposes that have none (the leader seeds them once); others are skipped."""
        before = {p for p in PURPOSES if self.initialized(p)}
        added = []
        for d in op["keys"]:
            rec = KeyRecord.from_dict(d)
            if rec.purpose in before or rec.id in self.keys:
                continue  # seeded already (a second leader raced the first): the first seeding stands
            if rec.state not in (KeyState.ACTIVE, KeyState.RETIRING) or rec.regions:
                raise InvalidInput(f"key {rec.id}: a seeded key is active or retiring")
            self.keys[rec.id] = replace(rec, created_at=at, changed_at=at)
            added.append(rec.purpose)
        if added:
            self.version += 1
        return {"ok": True, "initialized": sorted(set(added))}

    def _publish(self, op: Mapping[str, Any], at: int) -> dict[str, Any]:
        recs = [KeyRecord.from_dict(d) for d in op["keys"]]
        for rec in recs:
            if rec.state is not KeyState.PREPUBLISHED or rec.regions:
                raise InvalidInput(f"key {rec.id}: a new key is published prepublished, in no region yet")
            if rec.id in self.keys:
                raise WrongState(f"key {rec.id} exists already")
            if not self.initialized(rec.purpose):
                raise WrongState(f"the {rec.purpose} keyring is not initialized yet (no leader has seeded it)")
            pending = [k.id for k in self.of(rec.purpose) if k.state is KeyState.PREPUBLISHED]
            if pending:
                raise WrongState(f"a rotation of the {rec.purpose} keyring is under way (key {pending[0]} "
                                 f"is prepublished): let it finish first")
        if len({r.purpose for r in recs}) != len(recs):
            raise InvalidInput("one new key per purpose")
        for rec in recs:
            self.keys[rec.id] = replace(rec, created_at=at, changed_at=at)
        self.version += 1
        return {"ok": True, "published": [r.id for r in recs]}

    def _activate(self, op: Mapping[str, Any], at: int) -> dict[str, Any]:
        rec = self._get(op["purpose"], op["id"])
        regions = op.get("regions")
        if rec.state is KeyState.ACTIVE:
            return {"ok": True, "id": rec.id, "state": rec.state.value}  # already done: a retry
        if rec.state is not KeyState.PREPUBLISHED:
            raise WrongState(f"key {rec.id} is {rec.state.value}: only a prepublished key can be activated")
        if regions is not None:
            merged = rec.regions + tuple(r for r in regions if r not in rec.regions)
            self.keys[rec.id] = replace(rec, regions=merged, changed_at=at)
        else:
            old = self.active(rec.purpose)
            if old is not None:
                self.keys[old.id] = replace(old, state=KeyState.RETIRING, changed_at=at, regions=())
            self.keys[rec.id] = replace(rec, state=KeyState.ACTIVE, changed_at=at)
        self.version += 1
        now = self.keys[rec.id]
        return {"ok": True, "id": rec.id, "state": now.state.value, "regions": list(now.regions)}

    def _retire(self, op: Mapping[str, Any], at: int, in_use: Mapping[str, int]) -> dict[str, Any]:
        rec = self._get(op["purpose"], op["id"])
        if rec.state is KeyState.RETIRED:
            return {"ok": True, "id": rec.id, "state": rec.state.value}
        if rec.state is not KeyState.RETIRING:
            raise WrongState(f"key {rec.id} is {rec.state.value}: only a retiring key can be retired "
                             f"(rotate first)")
        uses = in_use.get(rec.id, 0)
        if uses:
            what = {"secrets": "sealed secrets", "token": "live API tokens"}.get(rec.purpose, "uses")
            raise WrongState(f"key {rec.id} still has {uses} {what} depending on it: wait for the rewrap "
                             f"(keys status) or for them to expire")
        self.keys[rec.id] = replace(rec, state=KeyState.RETIRED, wrapped="", changed_at=at)
        self.version += 1
        return {"ok": True, "id": rec.id, "state": KeyState.RETIRED.value}

    def _get(self, purpose: str, kid: str) -> KeyRecord:
        rec = self.keys.get(kid)
        if rec is None or rec.purpose != purpose:
            raise NotFound(f"no {purpose} key {kid}")
        return rec

    # ------------------------------------------------------------------ snapshots

    def to_dict(self) -> dict[str, Any]:
        return {"keys": [k.to_dict() for k in self.keys.values()], "admin_hash": self.admin_hash,
                "admin_epoch": self.admin_epoch, "version": self.version}

    @staticmethod
    def from_dict(d: Mapping[str, Any] | None) -> Keyrings:
        kr = Keyrings()
        if not d:
            return kr
        for kd in d.get("keys", []):
            rec = KeyRecord.from_dict(kd)
            kr.keys[rec.id] = rec
        kr.admin_hash, kr.admin_epoch = str(d.get("admin_hash", "")), int(d.get("admin_epoch", 0))
        kr.version = int(d.get("version", 0))
        return kr


def secrets_in_use(sealed_values: Iterable[str]) -> dict[str, int]:
    """How many sealed values each key id sealed."""
    out: dict[str, int] = {}
    for v in sealed_values:
        kid = sealed_key_id(v)
        out[kid] = out.get(kid, 0) + 1
    return out


__all__ = ["KEY_ID_RE", "PURPOSES", "KeyRecord", "KeyState", "Keyrings", "parse_op", "sealed_key_id",
           "secrets_in_use"]
