"""Typed, versioned commands: the only things that change the replicated cluster state.

Every command carries an envelope stamped by the agent that proposes it: ``id`` (a request id,
used to make retries idempotent), ``at`` (milliseconds since the epoch, taken at the API so that
apply never reads a clock), ``term`` (the Raft term of the proposing leader, so that apply can
reject a deposed leader's decisions) and ``by`` (the principal, for history and audit).

Commands travel in batches (group commit: one Raft log entry carries many commands). The wire
form is canonical JSON, ``{"v": 1, "cmds": [{"t": "CreatePacks", ...}, ...]}``, with sorted keys
and no whitespace, so the same batch always encodes to the same bytes. Never pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar

from canidae.core.errors import InvalidInput
from canidae.core.types import Node, NodeState, PackSpec, validate_name

WIRE_VERSION = 1
MAX_SERIES = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Envelope common to every command."""

    TYPE: ClassVar[str] = ""
    LEADER_ONLY: ClassVar[bool] = False  # decisions only the current leader may take (term-checked)

    id: str
    at: int
    term: int = 0
    by: str = ""

    def payload(self) -> dict[str, Any]:
        return {}

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"t": self.TYPE, "id": self.id, "at": self.at}
        if self.term:
            d["term"] = self.term
        if self.by:
            d["by"] = self.by
        d.update(self.payload())
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class Noop(Command):
    """Changes nothing. Used as a read barrier: once it is applied, a local read is linearizable."""

    TYPE = "Noop"


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterNode(Command):
    """A node joins, or re-registers with new capacity or address. A DOWN node returning is READY again."""

    TYPE = "RegisterNode"
    node: Node

    def payload(self) -> dict[str, Any]:
        return {"node": self.node.to_dict()}


@dataclass(frozen=True, slots=True, kw_only=True)
class SetNodeState(Command):
    """Cordon, uncordon, drain, or declare a node down (the leader's failure detector)."""

    TYPE = "SetNodeState"
    LEADER_ONLY = True
    node_id: str
    state: NodeState
    reason: str = ""

    def payload(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "state": self.state.value, "reason": self.reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveNode(Command):
    TYPE = "RemoveNode"
    node_id: str

    def payload(self) -> dict[str, Any]:
        return {"node_id": self.node_id}


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatePacks(Command):
    """Create packs; with ``place`` the scheduler places them in the same step (``pack spawn``)."""

    TYPE = "CreatePacks"
    specs: tuple[PackSpec, ...]
    place: bool = True
    count: int = 0  # > 0: one template spec NAME expands to NAME-0 .. NAME-(count-1) (a tiny log entry)
    # False: when any pack fits nowhere, create nothing and answer no_capacity (``pack spawn``
    # without --keep-pending); True: such packs are created pending and placed when room appears.
    keep_pending: bool = True

    def payload(self) -> dict[str, Any]:
        d: dict[str, Any] = {"specs": [s.to_dict() for s in self.specs], "place": self.place}
        if self.count:
            d["count"] = self.count
        if not self.keep_pending:
            d["keep_pending"] = False
        return d

    def expanded(self) -> tuple[PackSpec, ...]:
        if not self.count:
            return self.specs
        from dataclasses import replace
        t = self.specs[0]
        return tuple(replace(t, name=f"{t.name}-{i}") for i in range(self.count))


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacePacks(Command):
    """Ask the scheduler to place created (or pending) packs."""

    TYPE = "PlacePacks"
    names: tuple[str, ...]
    keep_pending: bool = True  # False: a pack that fits nowhere stays as it was (no_capacity)

    def payload(self) -> dict[str, Any]:
        d: dict[str, Any] = {"names": list(self.names)}
        if not self.keep_pending:
            d["keep_pending"] = False
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class StopPacks(Command):
    """Desired state becomes stopped; the node's agent stops the members and reports."""

    TYPE = "StopPacks"
    names: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        return {"names": list(self.names)}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletePacks(Command):
    """Remove packs from the state (their history stays). A pack that holds a node (placed,
    running, stopping) is refused unless ``force``: then it is removed at once, and its node's
    agent, told the pack no longer exists, stops it and removes its files."""

    TYPE = "DeletePacks"
    names: tuple[str, ...]
    force: bool = False

    def payload(self) -> dict[str, Any]:
        d: dict[str, Any] = {"names": list(self.names)}
        if self.force:
            d["force"] = True
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class MigratePacks(Command):
    """Move running packs: each to its named target, or (target None) wherever the scheduler says,
    never back onto the node it leaves. A pack that fits nowhere stays where it is."""

    TYPE = "MigratePacks"
    moves: tuple[tuple[str, str | None], ...]
    reason: str = "migrate"

    def payload(self) -> dict[str, Any]:
        return {"moves": [list(m) for m in self.moves], "reason": self.reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rebalance(Command):
    """Minimal moves onto nodes that joined (core's sticky bounded-load rebalance)."""

    TYPE = "Rebalance"
    LEADER_ONLY = True


class ReportState(StrEnum):
    """What an agent reports of a pack it was told to run.

    ``stopped`` only ever follows an instruction to stop (the agent stopped it); ``exited`` is a
    pack that ended by itself and, under its restart policy, is not restarted (a batch job done);
    ``failed`` is a pack that ended in failure and that its restart policy gave up on;
    ``crashloop`` is a pack whose members keep failing and are being restarted.
    """

    RUNNING = "running"
    STOPPED = "stopped"
    EXITED = "exited"
    FAILED = "failed"
    # A member keeps failing soon after it starts and is being restarted (with backoff): the pack
    # still holds its node and still runs; ``running`` again once its members stay up.
    CRASHLOOP = "crashloop"


@dataclass(frozen=True, slots=True)
class PackReport:
    """What a node's agent observed of one pack at one placement generation."""

    name: str
    generation: int
    state: ReportState
    reason: str = ""

    def to_wire(self) -> list[Any]:
        return [self.name, self.generation, self.state.value, self.reason]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportPacks(Command):
    """A node's agent reports started / failed / stopped packs. Stale generations are ignored."""

    TYPE = "ReportPacks"
    node_id: str
    reports: tuple[PackReport, ...]

    def payload(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "reports": [r.to_wire() for r in self.reports]}


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateToken(Command):
    """A new API token: its public accessor id and the hash of its secret (never the secret),
    the policies it acts under and, with a TTL, when it expires (``at`` is its creation time)."""

    TYPE = "CreateToken"
    accessor: str
    secret_hash: str
    name: str
    policies: tuple[str, ...]
    expires_at: int | None = None
    key: str = ""  # the token keyring's key the hash is made with ("": the first one)

    def payload(self) -> dict[str, Any]:
        d: dict[str, Any] = {"accessor": self.accessor, "secret_hash": self.secret_hash, "name": self.name,
                             "policies": list(self.policies)}
        if self.expires_at is not None:
            d["expires_at"] = self.expires_at
        if self.key:
            d["key"] = self.key
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeToken(Command):
    """The token is refused from the next request on (its record stays, marked revoked)."""

    TYPE = "RevokeToken"
    accessor: str

    def payload(self) -> dict[str, Any]:
        return {"accessor": self.accessor}


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeNode(Command):
    """A client agent's node credential is refused from the next request on, and the node is down
    (its packs move). For good: the node id is retired (a host comes back under a new name)."""

    TYPE = "RevokeNode"
    LEADER_ONLY = True
    node_id: str
    reason: str = ""

    def payload(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "reason": self.reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyPolicy(Command):
    """Create or replace a policy; ``policy`` is its TOML form (``canidae.core.acl.Policy``)."""

    TYPE = "ApplyPolicy"
    policy: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"policy": dict(self.policy)}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletePolicy(Command):
    """Remove a policy; tokens that name it lose what it granted (default deny)."""

    TYPE = "DeletePolicy"
    name: str

    def payload(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitAuditCheckpoint(Command):
    """A node's signed audit chain head (``canidae.core.audit.Checkpoint`` as a dict) and the public
    key that checks it (``canidae.core.audit_heads``); the proposer checked the signature."""

    TYPE = "CommitAuditCheckpoint"
    node_id: str
    public_key: str
    checkpoint: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "public_key": self.public_key, "checkpoint": dict(self.checkpoint)}


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyringOp(Command):
    """A change of the cluster's keyrings (``canidae.core.keyring``: publish, activate, retire,
    rewrap, admin); ``op`` is its wire form, validated by ``keyring.parse_op``."""

    TYPE = "KeyringOp"
    op: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"op": dict(self.op)}


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAutoscalePolicy(Command):
    """Replace the autoscale policy; ``policy`` is its nested TOML form (``core.autoscale_policy``)."""

    TYPE = "SetAutoscalePolicy"
    policy: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"policy": dict(self.policy)}


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAutoscalePaused(Command):
    """Pause (no action is taken, decisions are still recorded) or resume the autoscaler."""

    TYPE = "SetAutoscalePaused"
    paused: bool
    reason: str = ""

    def payload(self) -> dict[str, Any]:
        return {"paused": self.paused, "reason": self.reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordAutoscaleDecision(Command):
    """Keep one evaluation (``Decision.to_dict``) taken by the controller ``controller``."""

    TYPE = "RecordAutoscaleDecision"
    decision: Mapping[str, Any]
    controller: str

    def payload(self) -> dict[str, Any]:
        return {"decision": dict(self.decision), "controller": self.controller}


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAutoscaleOutcome(Command):
    """What came of acting on a recorded decision: done, failed (with the error) or skipped."""

    TYPE = "SetAutoscaleOutcome"
    decision_id: int
    status: str
    nodes: tuple[str, ...] = ()
    error: str = ""

    def payload(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "status": self.status, "nodes": list(self.nodes),
                "error": self.error}


COMMAND_TYPES: dict[str, type[Command]] = {
    c.TYPE: c for c in (Noop, RegisterNode, SetNodeState, RemoveNode, CreatePacks, PlacePacks,
                        StopPacks, ReportPacks, MigratePacks, Rebalance, DeletePacks,
                        CreateToken, RevokeToken, RevokeNode, ApplyPolicy, DeletePolicy, CommitAuditCheckpoint,
                        SetAutoscalePolicy, SetAutoscalePaused, RecordAutoscaleDecision, SetAutoscaleOutcome,
                        KeyringOp)
}


def _str_tuple(kind: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidInput(f"{kind} must be a list of names")
    return tuple(validate_name(kind, v) for v in value)


def command_from_wire(d: Mapping[str, Any]) -> Command:
    """Rebuild a typed command from its wire dict; raises ``InvalidInput`` on anything malformed."""
    if not isinstance(d, Mapping):
        raise InvalidInput("a command must be an object")
    cls = COMMAND_TYPES.get(d.get("t"))  # type: ignore[arg-type]
    if cls is None:
        raise InvalidInput(f"unknown command type {d.get('t')!r}")
    env = {"id": d.get("id"), "at": d.get("at"), "term": d.get("term", 0), "by": d.get("by", "")}
    if not isinstance(env["id"], str) or not env["id"] or len(env["id"]) > 128:
        raise InvalidInput("command id must be a non-empty string of at most 128 characters")
    if isinstance(env["at"], bool) or not isinstance(env["at"], int):
        raise InvalidInput("command 'at' must be an integer (ms)")
    try:
        if cls is Noop:
            return Noop(**env)
        if cls is RegisterNode:
            return RegisterNode(**env, node=Node.from_dict(d["node"]))
        if cls is SetNodeState:
            return SetNodeState(**env, node_id=validate_name("node", d["node_id"]),
                                state=NodeState(d["state"]), reason=str(d.get("reason", "")))
        if cls is RemoveNode:
            return RemoveNode(**env, node_id=validate_name("node", d["node_id"]))
        if cls is CreatePacks:
            specs = d["specs"]
            if not isinstance(specs, list):
                raise InvalidInput("specs must be a list")
            count = d.get("count", 0)
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_SERIES:
                raise InvalidInput(f"count must be an integer 0..{MAX_SERIES}")
            if count and len(specs) != 1:
                raise InvalidInput("count needs exactly one template spec")
            parsed = tuple(PackSpec.from_dict(s) for s in specs)
            if count:
                # Every expanded name must itself be valid (NAME-<count-1> within 63 characters).
                PackSpec.from_dict({**specs[0], "name": f"{parsed[0].name}-{count - 1}"})
            return CreatePacks(**env, specs=parsed, place=bool(d.get("place", True)), count=count,
                               keep_pending=bool(d.get("keep_pending", True)))
        if cls is PlacePacks:
            return PlacePacks(**env, names=_str_tuple("pack", d["names"]),
                              keep_pending=bool(d.get("keep_pending", True)))
        if cls is DeletePacks:
            return DeletePacks(**env, names=_str_tuple("pack", d["names"]), force=bool(d.get("force", False)))
        if cls is StopPacks:
            return StopPacks(**env, names=_str_tuple("pack", d["names"]))
        if cls is MigratePacks:
            moves = d["moves"]
            if not isinstance(moves, list) or not moves:
                raise InvalidInput("moves must be a non-empty list")
            parsed_moves = tuple((validate_name("pack", m[0]), None if m[1] is None else validate_name("node", m[1]))
                                 for m in moves)
            return MigratePacks(**env, moves=parsed_moves, reason=str(d.get("reason", "migrate")))
        if cls is Rebalance:
            return Rebalance(**env)
        if cls is ReportPacks:
            reports = tuple(PackReport(validate_name("pack", r[0]), int(r[1]), ReportState(r[2]), str(r[3]))
                            for r in d["reports"])
            return ReportPacks(**env, node_id=validate_name("node", d["node_id"]), reports=reports)
        if cls is CreateToken:
            policies = d["policies"]
            if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
                raise InvalidInput("policies must be a list of names")
            expires = d.get("expires_at")
            if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
                raise InvalidInput("expires_at must be an integer (ms)")
            return CreateToken(**env, accessor=str(d["accessor"]), secret_hash=str(d["secret_hash"]),
                               name=validate_name("token", d["name"]), policies=tuple(policies), expires_at=expires,
                               key=str(d.get("key", "")))
        if cls is RevokeToken:
            return RevokeToken(**env, accessor=str(d["accessor"]))
        if cls is RevokeNode:
            return RevokeNode(**env, node_id=validate_name("node", d["node_id"]), reason=str(d.get("reason", "")))
        if cls is ApplyPolicy:
            if not isinstance(d["policy"], Mapping):
                raise InvalidInput("policy must be an object")
            return ApplyPolicy(**env, policy=d["policy"])
        if cls is DeletePolicy:
            return DeletePolicy(**env, name=validate_name("policy", d["name"]))
        if cls is CommitAuditCheckpoint:
            if not isinstance(d["checkpoint"], Mapping) or not isinstance(d["public_key"], str):
                raise InvalidInput("checkpoint must be an object and public_key a string")
            return CommitAuditCheckpoint(**env, node_id=validate_name("node", d["node_id"]),
                                         public_key=d["public_key"], checkpoint=d["checkpoint"])
        if cls is KeyringOp:
            from canidae.core.keyring import parse_op
            return KeyringOp(**env, op=parse_op(d["op"]))
        if cls is SetAutoscalePolicy:
            if not isinstance(d["policy"], Mapping):
                raise InvalidInput("policy must be an object")
            return SetAutoscalePolicy(**env, policy=d["policy"])
        if cls is SetAutoscalePaused:
            if not isinstance(d["paused"], bool) or not isinstance(d.get("reason", ""), str):
                raise InvalidInput("paused must be a boolean and reason a string")
            return SetAutoscalePaused(**env, paused=d["paused"], reason=d.get("reason", ""))
        if cls is RecordAutoscaleDecision:
            if not isinstance(d["decision"], Mapping):
                raise InvalidInput("decision must be an object")
            return RecordAutoscaleDecision(**env, decision=d["decision"],
                                           controller=validate_name("controller", d["controller"]))
        if cls is SetAutoscaleOutcome:
            did = d["decision_id"]
            if isinstance(did, bool) or not isinstance(did, int) or did < 1:
                raise InvalidInput("decision_id must be a positive integer")
            if not isinstance(d.get("error", ""), str) or not isinstance(d["status"], str):
                raise InvalidInput("status and error must be strings")
            return SetAutoscaleOutcome(**env, decision_id=did, status=d["status"],
                                       nodes=_str_tuple("node", d.get("nodes", [])), error=d.get("error", ""))
    except KeyError as e:
        raise InvalidInput(f"{cls.TYPE} is missing {e.args[0]!r}") from None
    except (TypeError, ValueError, IndexError) as e:
        raise InvalidInput(f"malformed {cls.TYPE}: {e}") from None
    raise AssertionError(cls)  # every registered type is handled above


def encode_batch(cmds: Sequence[Command]) -> bytes:
    """Canonical bytes of a batch (sorted keys, no whitespace)."""
    return json.dumps({"v": WIRE_VERSION, "cmds": [c.to_wire() for c in cmds]},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode_batch(data: bytes) -> list[Command]:
    doc = json.loads(data)
    if doc.get("v") != WIRE_VERSION:
        raise InvalidInput(f"unsupported command batch version {doc.get('v')!r}")
    return [command_from_wire(c) for c in doc["cmds"]]


def command_fields(cls: type[Command]) -> list[str]:
    """The payload field names of a command type (used by docs and tests)."""
    return [f.name for f in fields(cls) if f.name not in ("id", "at", "term", "by")]


__all__ = [
    "COMMAND_TYPES",
    "WIRE_VERSION",
    "ApplyPolicy",
    "Command",
    "CommitAuditCheckpoint",
    "CreatePacks",
    "CreateToken",
    "DeletePacks",
    "DeletePolicy",
    "KeyringOp",
    "MigratePacks",
    "Noop",
    "PackReport",
    "PlacePacks",
    "Rebalance",
    "RecordAutoscaleDecision",
    "RegisterNode",
    "RemoveNode",
    "ReportPacks",
    "RevokeNode",
    "RevokeToken",
    "SetAutoscaleOutcome",
    "SetAutoscalePaused",
    "SetAutoscalePolicy",
    "SetNodeState",
    "StopPacks",
    "command_fields",
    "command_from_wire",
    "decode_batch",
    "encode_batch",
]
