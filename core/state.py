"""The replicated cluster state and its one entry point, ``ClusterState.apply``.

Theory of operation. Every Raft replica holds one ``ClusterState`` and applies the same batches
of commands in the same order; ``apply`` dispatches on the command type to one small
``_apply_x`` method per command. Nothing here reads a clock, a random source, the environment or
anything local to one replica: time comes in the command's ``at``, randomness is seeded from the
command's ``id``, and every iteration runs over insertion-ordered dicts (whose order is itself
fixed by the log) or sorted keys. So all replicas reach byte-identical states, which
``digest()`` lets tests compare.

Placement happens inside apply, through the long-lived scheduler: the leader does not need to
track in-flight reservations, and two concurrent spawns can never both take the last slot of a
node. Pack placements carry a generation that increases on every move; reports from an agent
about an older generation are ignored, which is what fences a node that comes back after being
declared down.

Apply never raises for a bad command: it answers ``{"error": {...}}`` for that command and
changes nothing (a bulk command is all-or-nothing). Commands seen before (same ``id``) return
their first answer again, which makes client retries after a leader change idempotent.
Commands that only a leader may issue (``LEADER_ONLY``) are fenced by the Raft term. The replica
passes the term of the log entry being applied (``entry_term``): a command stamped by the leader
of term T but appended in term U != T was decided by a deposed leader (pysyncobj forwards a
queued command to whichever leader comes next, which appends it in its own term) and is rejected.
The entry's term is part of the replicated log, so every replica decides alike. Without an entry
term (simulations, unit tests) the weaker check applies: a term older than one already applied.

Applying also yields events (``drain_events``): the history of packs and nodes, numbered by a
replicated sequence so every replica numbers them alike.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import xxhash

from canidae.core.acl import Policy
from canidae.core.audit import MASK, Checkpoint
from canidae.core.audit_heads import AuditHeads
from canidae.core.autoscale_state import AutoscaleState
from canidae.core.commands import (
    ApplyPolicy,
    Command,
    CommitAuditCheckpoint,
    CreatePacks,
    CreateToken,
    DeletePacks,
    DeletePolicy,
    KeyringOp,
    MigratePacks,
    Noop,
    PlacePacks,
    Rebalance,
    RecordAutoscaleDecision,
    RegisterNode,
    RemoveNode,
    ReportPacks,
    ReportState,
    RevokeNode,
    RevokeToken,
    SetAutoscaleOutcome,
    SetAutoscalePaused,
    SetAutoscalePolicy,
    SetNodeState,
    StopPacks,
)
from canidae.core.errors import (
    AlreadyExists,
    CanidaeError,
    Conflict,
    InvalidInput,
    NoCapacity,
    NotFound,
    WrongState,
)
from canidae.core.keyring import Keyrings, sealed_key_id
from canidae.core.scheduler import Scheduler
from canidae.core.tokens import TokenKind, TokenRecord
from canidae.core.types import NO_CONSTRAINTS, Node, NodeState, PackSpec, PackState, Resources, Role

DEDUP_WINDOW = 20_000       # request ids remembered for idempotent retries
PENDING_RETRY_LIMIT = 5_000  # pending packs retried per capacity change (bounds apply time)
MAX_BATCH_SPECS = 100_000
# Deleted pack names remembered with their last placement generation: a pack created again under
# the same name continues from it, so an agent never mistakes the new pack for the old one.
DELETED_WINDOW = 100_000
DELETED_REASON = "the pack no longer exists"
# Every type of event apply yields (``events tail --type`` takes these).
EVENT_TYPES = (
    "PackCreated", "PackPending", "PackPlaced", "PackStarted", "PackCrashLooping", "PackRecovered", "PackMigrating",
    "PackMigrated", "PackStopping", "PackStopped", "PackFailed", "PackReasserted", "PackDeleted",
    "NodeJoined", "NodeReturned", "NodeDown", "NodeDraining", "NodeStateChanged", "NodeRemoved",
    "AutoscalePolicySet", "AutoscalePaused", "AutoscaleResumed", "AutoscaleDecision", "AutoscaleOutcome",
)  # why a resync tells an agent to stop a deleted pack

# Packs in these states hold a reservation on their node.
HOLDING = frozenset({PackState.PLACED, PackState.RUNNING, PackState.STOPPING})


class PackRecord:
    """One pack in the replicated state. Slotted: 100,000 of these must stay small."""

    __slots__ = ("crashloop", "created_at", "generation", "index", "node", "reason", "spec", "state", "updated_at")

    def __init__(self, spec: PackSpec, state: PackState, at: int) -> None:
        self.spec = spec
        self.state = state
        self.node: str | None = None
        self.generation = 0
        self.reason = ""
        self.created_at = at
        self.updated_at = at
        # A running pack whose members keep failing and are being restarted (``reason`` says how
        # the last one ended). A condition of a running pack, not a state: it still holds its node.
        self.crashloop = False
        # The modify index: the ``event_seq`` of the pack's latest event (every change of a pack
        # emits one), what a blocking read (``?index=N&wait=S``) compares against.
        self.index = 0

    def to_dict(self) -> dict[str, Any]:
        d = {"spec": self.spec.to_dict(), "state": self.state.value, "node": self.node,
             "generation": self.generation, "reason": self.reason,
             "created_at": self.created_at, "updated_at": self.updated_at, "index": self.index}
        if self.crashloop:
            d["crashloop"] = True
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PackRecord:
        r = PackRecord(PackSpec.from_dict(d["spec"]), PackState(d["state"]), d["created_at"])
        r.node, r.generation, r.reason, r.updated_at = d["node"], d["generation"], d["reason"], d["updated_at"]
        r.crashloop = bool(d.get("crashloop", False))
        r.index = d.get("index", 0)
        return r

    def view(self) -> dict[str, Any]:
        """The JSON shape the API shows for a pack."""
        d = self.spec.to_dict()
        if "secrets" in d:  # which secrets a pack has is shown, never their (sealed) values
            d["secrets"] = {k: MASK for k in d["secrets"]}
        d.update(state=self.state.value, node=self.node, generation=self.generation,
                 reason=self.reason, created_at=self.created_at, updated_at=self.updated_at,
                 crashlooping=self.crashloop)
        return d


def _seed(cmd: Command) -> int:
    return xxhash.xxh64_intdigest(cmd.id.encode())


class ClusterState:
    """Nodes, packs and the scheduler's view of them; changed only by ``apply``."""

    def __init__(self, load_factor: float = 1.25, vnodes: int = 160) -> None:
        self.load_factor = load_factor
        self.vnodes = vnodes
        self.nodes: dict[str, Node] = {}
        self.packs: dict[str, PackRecord] = {}
        self.by_node: dict[str, dict[str, None]] = {}
        self.pending: dict[str, None] = {}
        self.deleted: OrderedDict[str, int] = OrderedDict()  # name -> last generation (DELETED_WINDOW)
        self.scheduler = Scheduler(load_factor=load_factor, vnodes=vnodes)
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_term = 0
        self.event_seq = 0
        # The modify index of the pack list: the ``event_seq`` of the latest event of any pack
        # (creations and deletions included). Blocking list reads compare against it.
        self.packs_index = 0
        # A node's revision: the value of one cluster-wide counter (``rev_seq``) at the last change of
        # its assignments. One counter for all nodes means a revision never repeats, not even for
        # a node removed and registered again, so an agent can always tell an older view from a
        # newer one.
        self.rev_seq = 0
        self.node_rev: dict[str, int] = {}
        # Per node, the packs whose assignment changed, oldest first, with the rev of the change:
        # lets an agent fetch only what changed since the rev it has (``changes_since``). Derived
        # data, not part of snapshots; ``horizon`` is the oldest rev it can answer from.
        self.node_log: dict[str, dict[str, int]] = {}
        self.horizon: dict[str, int] = {}
        self.applied = 0  # commands applied (not log entries)
        # Access control: tokens by accessor (revoked ones stay, marked), their secret hashes, the
        # user policies, and the policy version (``applied`` at the last token or policy change)
        # that keys every agent's decision cache.
        self.tokens: dict[str, TokenRecord] = {}
        self.token_hashes: dict[str, str] = {}
        self.policies: dict[str, Policy] = {}
        self.acl_version = 0
        self.audit = AuditHeads()  # every agent's signed audit chain heads
        self.keyrings = Keyrings()  # wrapped keys per purpose, the admin token's hash (core.keyring)
        self.autoscale = AutoscaleState()
        # Client agents whose node credential is revoked (node id -> when): refused by every agent.
        self.revoked_nodes: dict[str, int] = {}
        self._events: list[dict[str, Any]] = []
        self._sorted_names: list[str] | None = None
        self._handlers: dict[type[Command], Callable[[Any], dict[str, Any]]] = {
            Noop: self._apply_noop, RegisterNode: self._apply_register_node,
            SetNodeState: self._apply_set_node_state, RemoveNode: self._apply_remove_node,
            CreatePacks: self._apply_create_packs, PlacePacks: self._apply_place_packs,
            StopPacks: self._apply_stop_packs, ReportPacks: self._apply_report_packs,
            MigratePacks: self._apply_migrate_packs, Rebalance: self._apply_rebalance,
            DeletePacks: self._apply_delete_packs,
            CreateToken: self._apply_create_token, RevokeToken: self._apply_revoke_token,
            RevokeNode: self._apply_revoke_node,
            ApplyPolicy: self._apply_policy, DeletePolicy: self._apply_delete_policy,
            CommitAuditCheckpoint: self._apply_audit_checkpoint,
            KeyringOp: self._apply_keyring_op,
            SetAutoscalePolicy: self._apply_autoscale_policy, SetAutoscalePaused: self._apply_autoscale_paused,
            RecordAutoscaleDecision: self._apply_autoscale_decision,
            SetAutoscaleOutcome: self._apply_autoscale_outcome,
        }

    # ------------------------------------------------------------------ apply

    def apply(self, cmd: Command, entry_term: int | None = None) -> dict[str, Any]:
        """Apply one command; return its answer (``{"ok": ...}`` or ``{"error": {...}}``).

        ``entry_term`` is the Raft term of the log entry carrying the command (None outside a
        replica): it fences ``LEADER_ONLY`` commands, see the module docstring.
        """
        seen = self.recent.get(cmd.id)
        if seen is not None:
            return {**seen, "duplicate": True}
        self.applied += 1
        self.max_term = max(self.max_term, cmd.term)
        fenced = self._fence(cmd, entry_term)
        if fenced is not None:
            # Not remembered for retries: the command did nothing, and a retry of the same request
            # restamped by the current leader must be able to succeed.
            return fenced
        try:
            result = self._handlers[type(cmd)](cmd)
        except CanidaeError as e:
            result = e.to_wire()
        if not isinstance(cmd, Noop):
            self.recent[cmd.id] = result
            if len(self.recent) > DEDUP_WINDOW:
                self.recent.popitem(last=False)
        return result

    def apply_batch(self, cmds: Iterable[Command], entry_term: int | None = None) -> list[dict[str, Any]]:
        """Apply the commands of one log entry in order (``entry_term``: that entry's Raft term)."""
        return [self.apply(c, entry_term) for c in cmds]

    def _fence(self, cmd: Command, entry_term: int | None) -> dict[str, Any] | None:
        """The rejection of a deposed leader's command, or None when the command may act."""
        if not cmd.LEADER_ONLY:
            return None
        if entry_term is not None:
            if cmd.term == entry_term:
                return None
            return WrongState(
                f"{cmd.TYPE} stamped by the leader of term {cmd.term}, appended in term {entry_term}: "
                "a deposed leader's command, rejected").to_wire()
        if cmd.term < self.max_term:
            return WrongState(
                f"{cmd.TYPE} from a deposed leader (term {cmd.term} < {self.max_term}) rejected").to_wire()
        return None

    # ------------------------------------------------------------- node commands

    def _apply_noop(self, cmd: Noop) -> dict[str, Any]:
        return {"ok": True}

    def _apply_register_node(self, cmd: RegisterNode) -> dict[str, Any]:
        node = cmd.node
        old = self.nodes.get(node.id)
        if old is None:
            if node.state is not NodeState.READY:
                node = _with_state(node, NodeState.READY)
            self.nodes[node.id] = node
            self.by_node[node.id] = {}
            self.rev_seq += 1
            self.node_rev[node.id] = self.rev_seq
            self.node_log[node.id] = {}
            self.horizon[node.id] = self.rev_seq
            self.scheduler.add_node(node)
            self._event(cmd, "NodeJoined", node=node.id, detail=node.to_dict())
        else:
            # A node that returns after being declared down is READY again; a cordoned or
            # draining node keeps that state across agent restarts.
            state = NodeState.READY if old.state is NodeState.DOWN else old.state
            node = _with_state(node, state)
            self.nodes[node.id] = node
            self.scheduler.update_node(node)
            self._touch(node.id)
            if old.state is NodeState.DOWN:
                self._event(cmd, "NodeReturned", node=node.id)
        self._retry_pending(cmd)
        return {"ok": True, "node": node.to_dict()}

    def _apply_set_node_state(self, cmd: SetNodeState) -> dict[str, Any]:
        node = self._node(cmd.node_id)
        if node.state is cmd.state:
            return {"ok": True, "node": node.to_dict(), "moved": []}
        node = _with_state(node, cmd.state)
        self.nodes[node.id] = node
        self.scheduler.update_node(node)
        self._touch(node.id)
        moved: list[dict[str, Any]] = []
        if cmd.state is NodeState.DOWN:
            self._event(cmd, "NodeDown", node=node.id, detail={"reason": cmd.reason})
            moved = self._evacuate(cmd, node.id, why=f"node {node.id} down")
        elif cmd.state is NodeState.DRAINING:
            # A drain moves every pack away in this one step (it survives any leader change);
            # the node stays up, takes nothing new, and its agent stops what it no longer holds.
            self._event(cmd, "NodeDraining", node=node.id, detail={"reason": cmd.reason})
            moved = self._evacuate(cmd, node.id, why=f"node {node.id} draining")
        else:
            self._event(cmd, "NodeStateChanged", node=node.id,
                        detail={"state": cmd.state.value, "reason": cmd.reason})
            if cmd.state is NodeState.READY:
                self._retry_pending(cmd)
        return {"ok": True, "node": node.to_dict(), "moved": moved}

    def _apply_remove_node(self, cmd: RemoveNode) -> dict[str, Any]:
        self._node(cmd.node_id)
        moved = self._evacuate(cmd, cmd.node_id, why=f"node {cmd.node_id} removed")
        for name in list(self.by_node[cmd.node_id]):
            # Only packs that could not move and are not holding anything remain; detach them.
            self.packs[name].node = None
        del self.by_node[cmd.node_id]
        self.node_rev.pop(cmd.node_id, None)
        self.node_log.pop(cmd.node_id, None)
        self.horizon.pop(cmd.node_id, None)
        del self.nodes[cmd.node_id]
        self.scheduler.remove_node(cmd.node_id)
        self._event(cmd, "NodeRemoved", node=cmd.node_id)
        return {"ok": True, "moved": moved}

    # ----------------------------------------------------------- access control

    def _apply_create_token(self, cmd: CreateToken) -> dict[str, Any]:
        if cmd.accessor in self.tokens:
            raise AlreadyExists(f"token {cmd.accessor} exists")
        if cmd.secret_hash in self.token_hashes:
            raise AlreadyExists("a token with this secret exists")
        rec = TokenRecord(cmd.accessor, cmd.secret_hash, cmd.name, TokenKind.CLIENT, cmd.policies,
                          created_at_ms=cmd.at, expires_at_ms=cmd.expires_at, key=cmd.key)
        self.tokens[rec.accessor] = rec
        self.token_hashes[rec.secret_hash] = rec.accessor
        self.acl_version = self.applied
        return {"ok": True, "token": rec.to_dict(with_hash=False)}

    def _apply_revoke_token(self, cmd: RevokeToken) -> dict[str, Any]:
        rec = self.tokens.get(cmd.accessor)
        if rec is None:
            raise NotFound(f"no token {cmd.accessor}")
        if not rec.revoked:
            self.tokens[rec.accessor] = rec = replace(rec, revoked=True)
            self.acl_version = self.applied
        return {"ok": True, "token": rec.to_dict(with_hash=False)}

    def _apply_revoke_node(self, cmd: RevokeNode) -> dict[str, Any]:
        """Refuse a client agent's credential from now on and declare its node down (its packs
        move: its agent can no longer heartbeat or report). A server's credential is not revocable:
        a server holds the Raft password and the whole state."""
        node = self.nodes.get(cmd.node_id)
        if node is not None and node.role is Role.SERVER:
            raise Conflict(f"{cmd.node_id} is a server: its credential cannot be revoked (take it out of the "
                           f"Raft group and rotate the cluster's identity)")
        moved: list[dict[str, Any]] = []
        if cmd.node_id not in self.revoked_nodes:
            self.revoked_nodes[cmd.node_id] = cmd.at
            if node is not None and node.state is not NodeState.DOWN:
                down = SetNodeState(id=cmd.id, at=cmd.at, term=cmd.term, by=cmd.by, node_id=cmd.node_id,
                                    state=NodeState.DOWN, reason=f"credential revoked: {cmd.reason or 'by an operator'}")
                moved = self._apply_set_node_state(down)["moved"]
        return {"ok": True, "node_id": cmd.node_id, "revoked_at": self.revoked_nodes[cmd.node_id], "moved": moved}

    def _apply_policy(self, cmd: ApplyPolicy) -> dict[str, Any]:
        policy = Policy.from_toml_dict(cmd.policy)
        created = policy.name not in self.policies
        self.policies[policy.name] = policy
        self.acl_version = self.applied
        return {"ok": True, "created": created, "policy": policy.to_dict()}

    def _apply_delete_policy(self, cmd: DeletePolicy) -> dict[str, Any]:
        if self.policies.pop(cmd.name, None) is None:
            raise NotFound(f"no policy {cmd.name!r}")
        self.acl_version = self.applied
        return {"ok": True, "deleted": cmd.name}

    def _apply_audit_checkpoint(self, cmd: CommitAuditCheckpoint) -> dict[str, Any]:
        self._node(cmd.node_id)
        return self.audit.commit(cmd.node_id, cmd.public_key, Checkpoint.from_dict(cmd.checkpoint), cmd.at)

    def _apply_keyring_op(self, cmd: KeyringOp) -> dict[str, Any]:
        op = cmd.op
        if op["op"] == "rewrap":
            return self._rewrap(op["packs"])
        in_use = self.keys_in_use(cmd.at) if op["op"] == "retire" else {}
        return self.keyrings.apply(op, cmd.at, in_use)

    def _rewrap(self, packs: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
        """Pack secrets sealed again under another key: each variable's value is replaced only if
        it is still the one that was resealed (a pack changed or made again meanwhile is skipped:
        the next pass sees it), by one sealed with a key that is not retired. The generation does
        not change, so nothing restarts."""
        done = 0
        for name, values in packs.items():
            rec = self.packs.get(name)
            if rec is None or dict(rec.spec.secrets) != {var: v[0] for var, v in values.items()}:
                continue
            if any(self.keyrings.opening(sealed_key_id(v[1])) is None for v in values.values()):
                raise InvalidInput(f"rewrap of {name}: a value is sealed with a key that is not in the keyring")
            rec.spec = replace(rec.spec, secrets=tuple(sorted((var, v[1]) for var, v in values.items())))
            done += 1
        return {"ok": True, "rewrapped": done}

    def keys_in_use(self, now_ms: int) -> dict[str, int]:
        """Per key id, what still needs it: sealed secret values, live API tokens' hashes."""
        out: dict[str, int] = {}
        for rec in self.packs.values():
            for _, v in rec.spec.secrets:
                kid = sealed_key_id(v)
                out[kid] = out.get(kid, 0) + 1
        first = next(iter(k.id for k in self.keyrings.of("token")), "")
        for t in self.tokens.values():
            if t.revoked or (t.expires_at_ms is not None and now_ms >= t.expires_at_ms):
                continue
            kid = t.key or first
            out[kid] = out.get(kid, 0) + 1
        return out

    # --------------------------------------------------------------- autoscale

    def _apply_autoscale_policy(self, cmd: SetAutoscalePolicy) -> dict[str, Any]:
        policy = self.autoscale.set_policy(cmd.policy)
        self._event(cmd, "AutoscalePolicySet")
        return {"ok": True, "policy": policy.to_dict()}

    def _apply_autoscale_paused(self, cmd: SetAutoscalePaused) -> dict[str, Any]:
        changed = self.autoscale.set_paused(cmd.paused, cmd.by, cmd.reason, cmd.at)
        if changed:
            self._event(cmd, "AutoscalePaused" if cmd.paused else "AutoscaleResumed",
                        detail={"reason": cmd.reason} if cmd.reason else None)
        return {"ok": True, "paused": self.autoscale.paused, "changed": changed}

    def _apply_autoscale_decision(self, cmd: RecordAutoscaleDecision) -> dict[str, Any]:
        rec = self.autoscale.record(cmd.decision, cmd.controller, cmd.at)
        d = rec["decision"]
        self._event(cmd, "AutoscaleDecision", detail={
            "id": rec["id"], "action": d["action"], "count": d["count"], "current": d["current"],
            "desired": d["desired"], "reason": d["reason"]})
        return {"ok": True, "id": rec["id"]}

    def _apply_autoscale_outcome(self, cmd: SetAutoscaleOutcome) -> dict[str, Any]:
        rec = self.autoscale.set_outcome(cmd.decision_id, cmd.status, cmd.nodes, cmd.error, cmd.at)
        detail: dict[str, Any] = {"id": rec["id"], "status": cmd.status, "nodes": list(cmd.nodes)}
        if cmd.error:
            detail["error"] = cmd.error[:200]
        self._event(cmd, "AutoscaleOutcome", detail=detail)
        return {"ok": True, "id": rec["id"]}

    def find_token(self, secret_hash: str) -> TokenRecord | None:
        """The token whose secret hashes to ``secret_hash`` (revoked and expired ones included)."""
        accessor = self.token_hashes.get(secret_hash)
        return None if accessor is None else self.tokens.get(accessor)

    def _evacuate(self, cmd: Command, node_id: str, why: str) -> list[dict[str, Any]]:
        """Move every pack holding a reservation on ``node_id`` elsewhere (or to pending)."""
        to_place: list[PackRecord] = []
        for name in list(self.by_node[node_id]):
            rec = self.packs[name]
            if rec.state not in HOLDING:
                continue
            self._release(rec)
            if rec.state is PackState.STOPPING:
                rec.state, rec.updated_at = PackState.STOPPED, cmd.at
                self._event(cmd, "PackStopped", pack=name, node=node_id, detail={"reason": why})
            else:
                to_place.append(rec)
        return self._place(cmd, to_place, exclude=frozenset({node_id}), why=why)

    # ------------------------------------------------------------- pack commands

    def _apply_create_packs(self, cmd: CreatePacks) -> dict[str, Any]:
        specs = cmd.expanded()
        if not specs:
            raise InvalidInput("no packs given")
        if len(specs) > MAX_BATCH_SPECS:
            raise InvalidInput(f"at most {MAX_BATCH_SPECS} packs per request")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise InvalidInput("the same pack name appears twice in one request")
        taken = [n for n in names if n in self.packs]
        if taken:
            shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
            raise AlreadyExists(f"pack {shown} already exists", {"names": taken[:100]})
        checked: set[int] = set()  # by identity: a bulk spawn's specs share one Constraints
        for n in specs:
            c = n.constraints
            if c is NO_CONSTRAINTS or id(c) in checked:
                continue
            checked.add(id(c))
            if c.node is not None and c.node not in self.nodes:
                raise NotFound(f"pack {n.name}: no node {c.node!r}")
            if (c.zone or c.region or c.cell) and not self.scheduler.scope_matches(c):
                pins = ", ".join(f"{k} {v!r}" for k, v in (("zone", c.zone), ("region", c.region),
                                                             ("cell", c.cell)) if v)
                raise NotFound(f"pack {n.name}: no {pins} in the cluster")
        if cmd.place and not cmd.keep_pending:
            self._place_all_or_nothing(cmd, list(specs))
        recs = []
        for spec in specs:
            rec = PackRecord(spec, PackState.CREATED, cmd.at)
            rec.generation = self.deleted.pop(spec.name, 0)
            self.packs[spec.name] = rec
            recs.append(rec)
            self._event(cmd, "PackCreated", pack=spec.name)
        self._sorted_names = None
        if not cmd.place:
            return {"ok": True, "created": names}
        placed = self._place(cmd, recs, exclude=frozenset(), why="")
        return {"ok": True, "placements": placed}

    def _place_all_or_nothing(self, cmd: Command, specs: list[PackSpec]) -> None:
        """Raise ``NoCapacity`` (changing nothing) when any of ``specs`` fits nowhere.

        A trial placement with the same seed as the real one: it reserves, so it is undone at once.
        The real placement that follows makes the same choices (same state, same seed).
        """
        plan = self.scheduler.place(specs, seed=_seed(cmd))
        by_name = {s.name: s for s in specs}
        for p in plan.placements:
            spec = by_name[p.pack]
            self.scheduler.release(p.node, spec.resources, spec)
        if plan.unplaced:
            u = plan.unplaced[0]
            more = f" (and {len(plan.unplaced) - 1} more)" if len(plan.unplaced) > 1 else ""
            raise NoCapacity(f"no node can take {u.pack}{more}: {u.reason}",
                             {"pack": u.pack, "levels": list(u.reasons), "unplaced": len(plan.unplaced)})

    def _apply_place_packs(self, cmd: PlacePacks) -> dict[str, Any]:
        recs = [self._pack(n) for n in cmd.names]
        wrong = [r.spec.name for r in recs if r.state not in (PackState.CREATED, PackState.PENDING,
                                                               PackState.STOPPED, PackState.FAILED)]
        if wrong:
            raise WrongState(f"pack {wrong[0]} is already placed ({self.packs[wrong[0]].state.value})")
        if not cmd.keep_pending:
            self._place_all_or_nothing(cmd, [r.spec for r in recs])
        return {"ok": True, "placements": self._place(cmd, recs, exclude=frozenset(), why="")}

    def _apply_delete_packs(self, cmd: DeletePacks) -> dict[str, Any]:
        recs = [self._pack(n) for n in dict.fromkeys(cmd.names)]
        holding = [r for r in recs if r.state in HOLDING]
        if holding and not cmd.force:
            r = holding[0]
            raise WrongState(f"pack {r.spec.name} is {r.state.value} on node {r.node}: stop it first "
                             "(or delete with force)", {"names": [h.spec.name for h in holding[:100]]})
        out = []
        for rec in recs:
            name = rec.spec.name
            self._release(rec)
            self.pending.pop(name, None)
            node = rec.node
            del self.packs[name]
            if node is not None and node in self.by_node:
                self.by_node[node].pop(name, None)
                # The node's agent learns the pack is gone: it stops it if it runs, and removes its files.
                self._touch(node, name)
            self.deleted.pop(name, None)
            self.deleted[name] = rec.generation
            if len(self.deleted) > DELETED_WINDOW:
                self.deleted.popitem(last=False)
            self._event(cmd, "PackDeleted", pack=name, node=node,
                        detail={"state": rec.state.value, "generation": rec.generation,
                                **({"force": True} if rec.state in HOLDING else {})})
            out.append({"name": name, "state": rec.state.value, "node": node})
        self._sorted_names = None
        if holding:
            self._retry_pending(cmd)  # a forced delete freed room
        return {"ok": True, "deleted": out}

    def _apply_stop_packs(self, cmd: StopPacks) -> dict[str, Any]:
        recs = [self._pack(n) for n in cmd.names]
        out = []
        for rec in recs:
            if rec.state in (PackState.PLACED, PackState.RUNNING):
                rec.state, rec.updated_at = PackState.STOPPING, cmd.at
                self._touch(rec.node, rec.spec.name)
                self._event(cmd, "PackStopping", pack=rec.spec.name, node=rec.node)
            elif rec.state in (PackState.CREATED, PackState.PENDING):
                self.pending.pop(rec.spec.name, None)
                rec.state, rec.updated_at = PackState.STOPPED, cmd.at
                self._event(cmd, "PackStopped", pack=rec.spec.name)
            out.append({"name": rec.spec.name, "state": rec.state.value, "node": rec.node})
        return {"ok": True, "packs": out}

    def _apply_report_packs(self, cmd: ReportPacks) -> dict[str, Any]:
        """What an agent saw of its packs. Reports never stop a pack the cluster wants running.

        ``running`` marks a placed pack running. ``stopped`` ends a pack that was stopping; for a
        pack the state still wants running it is not a stop (an agent stops a pack only when told,
        so this report comes from a stale view or a lost instruction): the pack stays as it is and
        its node's revision is bumped, which hands the agent the assignment again. ``exited`` (the
        pack ended by itself and its restart policy does not restart it) and ``failed`` (its
        restart policy gave up) end the pack. Every change of what a node should run bumps the
        node's revision, so an agent that restarted from an older view is told again.
        """
        self._node(cmd.node_id)
        accepted, stale, reasserted = 0, [], []
        freed = False
        for rep in cmd.reports:
            rec = self.packs.get(rep.name)
            if rec is None or rec.node != cmd.node_id or rec.generation != rep.generation \
                    or rec.state not in HOLDING:
                stale.append(rep.name)
                continue
            accepted += 1
            if rep.state in (ReportState.RUNNING, ReportState.CRASHLOOP):
                if rec.state is PackState.PLACED:
                    rec.state, rec.updated_at = PackState.RUNNING, cmd.at
                    self._event(cmd, "PackStarted", pack=rep.name, node=cmd.node_id,
                                detail={"generation": rep.generation})
                    if rec.reason:
                        # Only a move (migration, rebalance, evacuation) places with a reason: it is done.
                        self._event(cmd, "PackMigrated", pack=rep.name, node=cmd.node_id,
                                    detail={"generation": rep.generation, "reason": rec.reason})
                if rec.state is not PackState.RUNNING:
                    continue
                looping = rep.state == ReportState.CRASHLOOP
                if looping:
                    if not rec.crashloop:
                        self._event(cmd, "PackCrashLooping", pack=rep.name, node=cmd.node_id,
                                    detail={"generation": rep.generation, "reason": rep.reason})
                    rec.crashloop, rec.reason, rec.updated_at = True, rep.reason, cmd.at
                elif not looping and rec.crashloop:
                    rec.crashloop, rec.reason, rec.updated_at = False, "", cmd.at
                    self._event(cmd, "PackRecovered", pack=rep.name, node=cmd.node_id,
                                detail={"generation": rep.generation})
                continue
            if rep.state == ReportState.STOPPED and rec.state is not PackState.STOPPING:
                reasserted.append(rep.name)
                self._touch(cmd.node_id, rep.name)
                self._event(cmd, "PackReasserted", pack=rep.name, node=cmd.node_id,
                            detail={"generation": rep.generation, "reported": rep.reason})
                continue
            self._release(rec)
            freed = True
            rec.crashloop = False
            if rec.state is PackState.STOPPING or rep.state == ReportState.EXITED:
                final = PackState.STOPPED
            else:
                final = PackState.FAILED
            rec.state, rec.reason, rec.updated_at = final, rep.reason, cmd.at
            self._touch(cmd.node_id, rep.name)
            self._event(cmd, "PackFailed" if final is PackState.FAILED else "PackStopped",
                        pack=rep.name, node=cmd.node_id, detail={"reason": rep.reason})
        if freed:
            self._retry_pending(cmd)
        return {"ok": True, "accepted": accepted, "stale": stale, "reasserted": reasserted}

    def _apply_migrate_packs(self, cmd: MigratePacks) -> dict[str, Any]:
        recs = []
        for name, target in cmd.moves:
            rec = self._pack(name)
            if rec.state not in (PackState.PLACED, PackState.RUNNING):
                raise WrongState(f"pack {name} is {rec.state.value}; only placed or running packs migrate")
            if target is not None:
                tnode = self._node(target)
                if target == rec.node:
                    raise WrongState(f"pack {name} already runs on {target}")
                if not tnode.schedulable:
                    raise WrongState(f"node {target} is {tnode.state.value} and takes no packs")
            recs.append((rec, target))
        out: list[dict[str, Any]] = []
        for rec, target in recs:
            source = rec.node
            assert source is not None
            self._release(rec)
            spec = rec.spec if target is None else replace(
                rec.spec, constraints=replace(rec.spec.constraints, node=target))
            plan = self.scheduler.place([spec], seed=_seed(cmd), exclude=frozenset({source}))
            if not plan.placements:
                # Fits nowhere else: it stays where it runs, untouched.
                self.scheduler.reserve(source, rec.spec.resources, rec.spec)
                out.append({"name": rec.spec.name, "node": source, "moved": False,
                            "reason": plan.unplaced[0].reason if plan.unplaced else "no target"})
                continue
            dest = plan.placements[0].node
            self.by_node[source].pop(rec.spec.name, None)
            self._touch(source, rec.spec.name)
            rec.node, rec.generation = dest, rec.generation + 1
            rec.state, rec.reason, rec.updated_at = PackState.PLACED, cmd.reason, cmd.at
            self.by_node[dest][rec.spec.name] = None
            self._touch(dest, rec.spec.name)
            self._event(cmd, "PackMigrating", pack=rec.spec.name, node=dest,
                        detail={"source": source, "generation": rec.generation, "reason": cmd.reason})
            out.append({"name": rec.spec.name, "source": source, "node": dest, "moved": True,
                        "generation": rec.generation})
        return {"ok": True, "migrations": out}

    def _apply_rebalance(self, cmd: Rebalance) -> dict[str, Any]:
        assignment = {name: rec.node for name, rec in self.packs.items()
                      if rec.state in HOLDING and rec.node is not None}
        specs = {name: self.packs[name].spec for name in assignment}
        moves = self.scheduler.rebalance_plan(assignment, specs)
        out = []
        for m in moves:  # the scheduler has already moved the reservations
            rec = self.packs[m.pack]
            self.by_node[m.source].pop(m.pack, None)
            self._touch(m.source, m.pack)
            rec.node, rec.generation = m.target, rec.generation + 1
            rec.state, rec.reason, rec.updated_at = PackState.PLACED, "rebalance", cmd.at
            self.by_node[m.target][m.pack] = None
            self._touch(m.target, m.pack)
            self._event(cmd, "PackMigrating", pack=m.pack, node=m.target,
                        detail={"source": m.source, "generation": rec.generation, "reason": m.reason})
            out.append({"name": m.pack, "source": m.source, "node": m.target, "generation": rec.generation})
        return {"ok": True, "migrations": out}

    # ------------------------------------------------------------- placement

    def _place(self, cmd: Command, recs: list[PackRecord], exclude: frozenset[str], why: str
               ) -> list[dict[str, Any]]:
        if not recs:
            return []
        plan = self.scheduler.place([r.spec for r in recs], seed=_seed(cmd), exclude=exclude)
        out: list[dict[str, Any]] = []
        for p in plan.placements:
            rec = self.packs[p.pack]
            source = rec.node
            if source is not None and source in self.by_node:
                self.by_node[source].pop(p.pack, None)
                self._touch(source, p.pack)
            rec.node, rec.generation = p.node, rec.generation + 1
            self._touch(p.node, p.pack)
            rec.state, rec.reason, rec.updated_at = PackState.PLACED, why, cmd.at
            self.by_node[p.node][p.pack] = None
            self.pending.pop(p.pack, None)
            detail: dict[str, Any] = {"generation": rec.generation}
            if source is not None and source != p.node:
                detail.update(source=source, reason=why)
            self._event(cmd, "PackPlaced", pack=p.pack, node=p.node, detail=detail)
            moved = {"name": p.pack, "node": p.node, "generation": rec.generation}
            if source is not None:
                moved["source"] = source
            out.append(moved)
        for u in plan.unplaced:
            rec = self.packs[u.pack]
            source = rec.node
            if source is not None and source in self.by_node:
                self.by_node[source].pop(u.pack, None)
                self._touch(source, u.pack)
            rec.node = None
            rec.state, rec.updated_at = PackState.PENDING, cmd.at
            rec.reason = f"{why}: {u.reason}" if why else u.reason
            self.pending[u.pack] = None
            self._event(cmd, "PackPending", pack=u.pack, detail={"reason": rec.reason})
            out.append({"name": u.pack, "node": None, "pending": rec.reason,
                        **({"source": source} if source is not None else {})})
        return out

    def _retry_pending(self, cmd: Command) -> None:
        if not self.pending:
            return
        names = list(self.pending)[:PENDING_RETRY_LIMIT]
        recs = [self.packs[n] for n in names]
        plan = self.scheduler.place([r.spec for r in recs], seed=_seed(cmd))
        for p in plan.placements:
            rec = self.packs[p.pack]
            rec.node, rec.generation = p.node, rec.generation + 1
            self._touch(p.node, p.pack)
            rec.state, rec.reason, rec.updated_at = PackState.PLACED, "", cmd.at
            self.by_node[p.node][p.pack] = None
            del self.pending[p.pack]
            self._event(cmd, "PackPlaced", pack=p.pack, node=p.node,
                        detail={"generation": rec.generation, "reason": "capacity returned"})

    def _touch(self, node_id: str | None, pack: str | None = None) -> None:
        if node_id is None or node_id not in self.node_rev:
            return
        self.rev_seq += 1
        rev = self.node_rev[node_id] = self.rev_seq
        if pack is not None:
            log = self.node_log[node_id]
            log.pop(pack, None)
            log[pack] = rev
            if len(log) > 2 * len(self.by_node[node_id]) + 1024:
                # Forget the older half; agents behind the horizon get a full list instead.
                for name in list(log)[: len(log) // 2]:
                    self.horizon[node_id] = max(self.horizon[node_id], log.pop(name))

    def changes_since(self, node_id: str, after: int) -> tuple[bool, list[PackRecord | str]]:
        """What an agent at rev ``after`` must learn: (resync, items).

        Items are the packs (records) whose assignment changed since ``after``; a name (str) is a
        pack that no longer belongs to this node. ``resync`` (no items) means the changes since
        ``after`` are no longer all known here (a new agent, or one behind the horizon of the
        node's change log): the agent must resynchronise (``resync_view``). An agent *ahead* of
        this replica (``is_behind``) must not be answered from it at all.
        """
        self._node(node_id)
        if after <= 0 or after < self.horizon[node_id] or after > self.node_rev[node_id]:
            return True, []
        out: list[PackRecord | str] = []
        for name in reversed(self.node_log[node_id]):
            if self.node_log[node_id][name] <= after:
                break
            rec = self.packs.get(name)
            out.append(rec if rec is not None and rec.node == node_id and rec.state in HOLDING else name)
        out.reverse()
        return False, out

    def is_behind(self, node_id: str, after: int) -> bool:
        """True when an agent has seen a revision of its node newer than this replica holds."""
        return after > self.node_rev.get(node_id, 0)

    def held_by(self, node_id: str) -> list[PackRecord]:
        """Every pack this node should hold (placed, running or stopping on it)."""
        return [r for r in self.packs_on(node_id) if r.state in HOLDING]

    def resync_view(self, node_id: str, running: dict[str, int]) -> tuple[list[PackRecord], list[dict[str, Any]]]:
        """The packs ``node_id`` holds, and an explicit instruction for each pack the agent runs
        (``running``: name -> generation) that it does not hold at that generation, with why."""
        self._node(node_id)
        held = self.held_by(node_id)
        gone = []
        for name, gen in running.items():
            rec = self.packs.get(name)
            if rec is None:
                why = DELETED_REASON
            elif rec.node == node_id and rec.generation == gen and rec.state in HOLDING:
                continue
            elif rec.node == node_id and rec.state in HOLDING:
                why = f"replaced by generation {rec.generation} on this node"
            elif rec.node is not None and rec.state in HOLDING:
                why = f"moved to {rec.node} (generation {rec.generation})"
            else:
                why = f"the pack is {rec.state.value}"
            gone.append({"name": name, "generation": gen, "reason": why})
        return held, gone

    def _release(self, rec: PackRecord) -> None:
        if rec.node is not None and rec.state in HOLDING and rec.node in self.nodes:
            self.scheduler.release(rec.node, rec.spec.resources, rec.spec)

    # ------------------------------------------------------------- reads

    def _node(self, node_id: str) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}")
        return node

    def _pack(self, name: str) -> PackRecord:
        rec = self.packs.get(name)
        if rec is None:
            if name in self.deleted:
                raise NotFound(f"no pack {name!r}: it was deleted ('pack history {name}' still shows it)")
            raise NotFound(f"no pack {name!r}")
        return rec

    def get_pack(self, name: str) -> PackRecord:
        return self._pack(name)

    def get_node(self, node_id: str) -> Node:
        return self._node(node_id)

    def packs_on(self, node_id: str) -> list[PackRecord]:
        return [self.packs[n] for n in self.by_node.get(node_id, {})]

    def node_usage(self, node_id: str) -> Resources:
        return self.scheduler.usage(node_id)

    def sorted_pack_names(self) -> list[str]:
        if self._sorted_names is None:
            self._sorted_names = sorted(self.packs)
        return self._sorted_names

    def list_packs(self, *, node: str | None = None, state: PackState | None = None,
                   after: str | None = None, limit: int = 1000, crashlooping: bool = False,
                   count: bool = True) -> tuple[list[PackRecord], str | None, int | None]:
        """A page of packs sorted by name, after ``after``: the page, the next cursor and how many
        packs match the filters in all (``crashlooping``: only running packs in a crash loop).

        With filters, that count walks every pack: pollers that only need the page pass
        ``count=False`` (the count is then None)."""
        if node is not None:
            names: list[str] = sorted(self.by_node.get(node, {}))
        else:
            names = self.sorted_pack_names()

        def match(rec: PackRecord) -> bool:
            return (state is None or rec.state is state) and (not crashlooping or rec.crashloop)

        filtered = state is not None or crashlooping
        total: int | None = len(names)
        if filtered:
            total = sum(1 for n in names if match(self.packs[n])) if count else None
        start = bisect.bisect_right(names, after) if after else 0
        page: list[PackRecord] = []
        i = start
        while i < len(names) and len(page) < limit:
            rec = self.packs[names[i]]
            if match(rec):
                page.append(rec)
            i += 1
        next_cursor = page[-1].spec.name if page and i < len(names) else None
        return page, next_cursor, total

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.packs.values():
            out[rec.state.value] = out.get(rec.state.value, 0) + 1
        return out

    # ------------------------------------------------------------- events

    def _event(self, cmd: Command, kind: str, *, pack: str | None = None, node: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        self.event_seq += 1
        ev: dict[str, Any] = {"seq": self.event_seq, "at": cmd.at, "type": kind, "cause": cmd.id}
        if pack is not None:
            ev["pack"] = pack
            self.packs_index = self.event_seq
            rec = self.packs.get(pack)
            if rec is not None:
                rec.index = self.event_seq
        if node is not None:
            ev["node"] = node
        if cmd.by:
            ev["by"] = cmd.by
        if detail:
            ev["detail"] = detail
        self._events.append(ev)

    def drain_events(self) -> list[dict[str, Any]]:
        """Events produced since the last call (not replicated state: each replica yields its own copy)."""
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict[str, Any]:
        """Canonical JSON-able form of the whole replicated state."""
        return {
            "version": 1, "load_factor": self.load_factor, "vnodes": self.vnodes,
            "nodes": [self.nodes[k].to_dict() for k in sorted(self.nodes)],
            "packs": [self.packs[k].to_dict() for k in sorted(self.packs)],
            "placement_order": {k: list(v) for k, v in sorted(self.by_node.items())},
            "pending": list(self.pending),
            "recent": [[k, v] for k, v in self.recent.items()],
            "max_term": self.max_term, "event_seq": self.event_seq, "applied": self.applied,
            "node_rev": dict(sorted(self.node_rev.items())), "rev_seq": self.rev_seq,
            "deleted": [[k, v] for k, v in self.deleted.items()],
            "tokens": [self.tokens[k].to_dict() for k in sorted(self.tokens)],
            "policies": [self.policies[k].to_dict() for k in sorted(self.policies)],
            "acl_version": self.acl_version, "packs_index": self.packs_index,
            "audit": self.audit.to_snapshot(),
            "keyrings": self.keyrings.to_dict(),
            "autoscale": self.autoscale.to_snapshot(),
            **({"revoked_nodes": dict(sorted(self.revoked_nodes.items()))} if self.revoked_nodes else {}),
        }

    @staticmethod
    def from_snapshot(d: dict[str, Any]) -> ClusterState:
        if d.get("version") != 1:
            raise InvalidInput(f"unsupported snapshot version {d.get('version')!r}")
        st = ClusterState(load_factor=d["load_factor"], vnodes=d["vnodes"])
        for nd in d["nodes"]:
            node = Node.from_dict(nd)
            st.nodes[node.id] = node
            st.by_node[node.id] = {}
            st.scheduler.add_node(node)
        for pd in d["packs"]:
            rec = PackRecord.from_dict(pd)
            st.packs[rec.spec.name] = rec
        for node_id, names in d["placement_order"].items():
            st.by_node[node_id] = dict.fromkeys(names)
            for name in names:
                rec = st.packs[name]
                if rec.state in HOLDING:
                    st.scheduler.reserve(node_id, rec.spec.resources, rec.spec)
        st.pending = dict.fromkeys(d["pending"])
        st.recent = OrderedDict((k, v) for k, v in d["recent"])
        st.max_term, st.event_seq, st.applied = d["max_term"], d["event_seq"], d["applied"]
        st.node_rev = dict(d["node_rev"])
        st.rev_seq = d.get("rev_seq", max(st.node_rev.values(), default=0))
        st.deleted = OrderedDict((k, v) for k, v in d.get("deleted", []))
        for td in d.get("tokens", []):
            rec = TokenRecord.from_dict(td)
            st.tokens[rec.accessor] = rec
            st.token_hashes[rec.secret_hash] = rec.accessor
        for pd in d.get("policies", []):
            policy = Policy.from_toml_dict(pd)
            st.policies[policy.name] = policy
        st.acl_version = d.get("acl_version", 0)
        st.audit = AuditHeads.from_snapshot(d.get("audit", {}))
        st.keyrings = Keyrings.from_dict(d.get("keyrings"))
        st.autoscale = AutoscaleState.from_snapshot(d.get("autoscale"))
        st.packs_index = d.get("packs_index", 0)
        st.revoked_nodes = dict(d.get("revoked_nodes", {}))
        st.node_log = {n: {} for n in st.node_rev}
        st.horizon = dict(st.node_rev)
        return st

    def digest(self) -> str:
        """SHA-256 of the canonical snapshot: equal on every replica that applied the same log."""
        doc = self.to_snapshot()
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def iter_nodes(self) -> Iterator[Node]:
        for k in sorted(self.nodes):
            yield self.nodes[k]


def running_digest(items: Iterable[tuple[str, int]]) -> str:
    """An order-free digest of (pack, generation) pairs: agents and the leader compare theirs.

    A count and the XOR of each pair's xxh64: cheap to keep, and equal exactly when the sets are
    equal (up to hash collisions, which cost nothing worse than one needless resync).
    """
    n, acc = 0, 0
    for name, gen in items:
        n += 1
        acc ^= xxhash.xxh64_intdigest(f"{name}\0{gen}".encode())
    return f"{n}:{acc:016x}"


def _with_state(node: Node, state: NodeState) -> Node:
    return replace(node, state=state)


__all__ = [
    "DEDUP_WINDOW",
    "DELETED_REASON",
    "EVENT_TYPES",
    "HOLDING",
    "ClusterState",
    "PackRecord",
    "running_digest",
]
