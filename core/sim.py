"""The deterministic simulator: a fleet, its packs and a scheduler, driven by scenario steps.

This module owns the simulated world and its invariants, not the policy (``core.scheduler``)
nor the text format (``core.scenario``). It is pure: a virtual clock in milliseconds that only
steps move, one ``random.Random(seed)`` for the random picks (over sorted candidates), no
sockets, no threads. So a scenario run twice with the same seed, in any process and whatever
``PYTHONHASHSEED``, ends with the same ``digest``.

After every step the checker recomputes the truth from the simulator's own records (which pack
is where, with which spec) and compares it with the scheduler's view:

* capacity: no node holds more cpu, memory or packs than it has, and the scheduler's usage of
  every node equals the sum of the packs recorded there;
* liveness: every pack is on a known node that is READY or CORDONED, or is unplaced with a reason;
  no pack is both; pins are honoured;
* movement: a step moves only what it must. Spawns, revivals, cordons, stops and checks move no
  pack; a node or zone failure moves only the packs of the nodes that failed; a join moves packs
  only onto the newcomers.

A violation is a line of text in ``SimResult.violations``; the run goes on, so one scenario
reports every broken step.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from canidae.core.errors import InvalidInput
from canidae.core.scenario import Step, parse_scenario
from canidae.core.scheduler import Scheduler
from canidae.core.topology import build_nodes
from canidae.core.types import Constraints, Level, Location, Node, NodeState, PackSpec, Resources

LIVE = (NodeState.READY, NodeState.CORDONED)


@dataclass(frozen=True, slots=True)
class StepLog:
    """What one step did, at which virtual time, and how the world looked after it."""

    line: int
    step: str
    at_ms: int
    detail: str
    placed: int
    unplaced: int
    moved: int
    violations: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "step": self.step,
            "at_ms": self.at_ms,
            "detail": self.detail,
            "placed": self.placed,
            "unplaced": self.unplaced,
            "moved": self.moved,
            "violations": self.violations,
        }


@dataclass(frozen=True, slots=True)
class SimResult:
    """The outcome of a run: counts, invariant violations (empty when fine), the log, a digest."""

    seed: int
    clock_ms: int
    nodes: int
    ready: int
    down: int
    packs: int
    placed: int
    unplaced: int
    moves: int
    balance: float  # max / mean packs over READY nodes (0 when there are none)
    violations: tuple[str, ...]
    log: tuple[StepLog, ...]
    digest: str
    unplaced_reasons: Mapping[str, int] = field(default_factory=dict)  # reason -> packs

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "clock_ms": self.clock_ms,
            "nodes": self.nodes,
            "ready": self.ready,
            "down": self.down,
            "packs": self.packs,
            "placed": self.placed,
            "unplaced": self.unplaced,
            "moves": self.moves,
            "balance": self.balance,
            "ok": self.ok,
            "violations": list(self.violations),
            "unplaced_reasons": dict(self.unplaced_reasons),
            "log": [s.to_dict() for s in self.log],
            "digest": self.digest,
        }


class Simulation:
    """The simulated world. ``apply`` runs one step; ``check`` lists invariant violations."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock_ms = 0
        self.scheduler: Scheduler | None = None
        self.nodes: dict[str, Node] = {}
        self.specs: dict[str, PackSpec] = {}
        self.where: dict[str, str] = {}  # placed pack -> node
        self.unplaced: dict[str, str] = {}  # unplaced pack -> reason
        self.capacity = Resources(1, 1, 1)  # default for joins, from the topology line
        self.moves = 0
        self.violations: list[str] = []
        self.log: list[StepLog] = []
        self._spawned = 0
        self._joined = 0
        self._calls = 0

    # ------------------------------------------------------------------ running

    def run(self, steps: Sequence[Step]) -> SimResult:
        for step in steps:
            self.apply(step)
        return self.result()

    def apply(self, step: Step) -> None:
        """Run one step, then check every invariant; violations are recorded, not raised."""
        if step.op != "topology" and self.scheduler is None:
            raise InvalidInput(f"line {step.line}: {step.op} before any topology line")
        before = dict(self.where)
        handler = getattr(self, f"_op_{step.op}")
        detail, allowed = handler(step)
        moved, found = self._movement(before, allowed, step)
        found += self.check()
        if step.op == "expect":
            found += self._expect(step, self.log[-1].moved if self.log else 0)
        where = f"line {step.line} ({step.text or step.op})"
        self.violations.extend(f"{where}: {v}" for v in found)
        self.moves += moved
        self.log.append(
            StepLog(
                step.line,
                step.text or step.op,
                self.clock_ms,
                detail,
                len(self.where),
                len(self.unplaced),
                moved,
                len(found),
            )
        )

    def result(self) -> SimResult:
        counts = self._state_counts()
        reasons: dict[str, int] = {}
        for r in self.unplaced.values():
            reasons[r] = reasons.get(r, 0) + 1
        return SimResult(
            seed=self.seed,
            clock_ms=self.clock_ms,
            nodes=len(self.nodes),
            ready=counts[NodeState.READY],
            down=counts[NodeState.DOWN],
            packs=len(self.specs),
            placed=len(self.where),
            unplaced=len(self.unplaced),
            moves=self.moves,
            balance=self.balance(),
            violations=tuple(self.violations),
            log=tuple(self.log),
            digest=self.digest(),
            unplaced_reasons={k: reasons[k] for k in sorted(reasons)},
        )

    # ------------------------------------------------------------------ operations
    # Each returns (what happened, which moves are allowed). "allowed" is None for "no pack may
    # move", or (packs that may move, nodes they may move to; None meaning anywhere).

    def _op_topology(self, step: Step) -> tuple[str, Any]:
        a = step.args
        self.capacity = Resources(a["cpu"], a["mem"], a["packs"])
        self.scheduler = Scheduler(load_factor=a.get("load", 1.25), vnodes=a.get("vnodes", 160))
        for node in build_nodes(a["zones"], a["regions"], a["cells"], a["nodes"], self.capacity):
            self.nodes[node.id] = node
            self.scheduler.add_node(node)
        return f"{len(self.nodes)} nodes in {a['zones']} zones", None

    def _op_spawn(self, step: Step) -> tuple[str, Any]:
        a = step.args
        total = step.count or 0
        spread = Level(a["spread"]) if "spread" in a else None
        constraints = Constraints(
            zone=a.get("zone"),
            region=a.get("region"),
            cell=a.get("cell"),
            node=a.get("node"),
            spread=spread,
            group=a.get("group"),
        )
        res = Resources(a.get("cpu", 100), a.get("mem", 64), 1)
        prefix = a.get("prefix", "p")
        batch = a.get("batch", 1000)
        over = a.get("over", 0)
        start = self.clock_ms
        new: list[PackSpec] = []
        for _ in range(total):
            self._spawned += 1
            name = f"{prefix}{self._spawned:06d}"
            if name in self.specs:
                raise InvalidInput(f"line {step.line}: pack {name} exists already (use another prefix=)")
            new.append(PackSpec(name, resources=res, constraints=constraints))
        placed = 0
        batches = max(1, -(-total // batch))
        for b, i in enumerate(range(0, total, batch)):
            # A ramp: batch b arrives at start + over * b / batches on the virtual clock.
            self.clock_ms = start + over * b // batches
            chunk = new[i : i + batch]
            for spec in chunk:
                self.specs[spec.name] = spec
            placed += self._place(chunk)
        self.clock_ms = start + over
        return f"spawned {total}: {placed} placed, {total - placed} unplaced", None

    def _op_kill(self, step: Step) -> tuple[str, Any]:
        a = step.args
        assert self.scheduler is not None
        if "node" in a and a["node"] == "random":
            alive = sorted(k for k, n in self.nodes.items() if n.state is not NodeState.DOWN)
            count = min(a.get("count", 1), len(alive))
            victims = sorted(self.rng.sample(alive, count))
        elif "node" in a:
            victims = [self._known(a["node"], step)]
        else:
            level, gid = next((Level(k), a[k]) for k in ("zone", "region", "cell") if k in a)
            victims = sorted(k for k, n in self.nodes.items() if n.location.at(level) == gid)
            if not victims:
                raise InvalidInput(f"line {step.line}: no {level.value} {gid!r} in the simulated fleet")
        victims = [v for v in victims if self.nodes[v].state is not NodeState.DOWN]
        for v in victims:
            self._set_state(v, NodeState.DOWN)
        down = set(victims)
        orphans = sorted(k for k, n in self.where.items() if n in down)
        for name in orphans:
            spec = self.specs[name]
            self.scheduler.release(self.where.pop(name), spec.resources, spec)
        placed = self._place([self.specs[n] for n in orphans], exclude=frozenset(down))
        return (
            f"killed {len(victims)} nodes: {len(orphans)} packs re-placed, {len(orphans) - placed} unplaced",
            (set(orphans), None),
        )

    def _op_revive(self, step: Step) -> tuple[str, Any]:
        a = step.args
        if a.get("node") == "all":
            ids = sorted(k for k, n in self.nodes.items() if n.state is NodeState.DOWN)
        elif "node" in a:
            ids = [self._known(a["node"], step)]
        else:
            ids = sorted(k for k, n in self.nodes.items() if n.location.zone == a["zone"])
        ids = [k for k in ids if self.nodes[k].state is NodeState.DOWN]
        for k in ids:
            self._set_state(k, NodeState.READY)
        placed = self._retry()
        # A node that comes back is empty (its packs moved away when it went down): it is a
        # newcomer, and only moves onto it are allowed.
        moved = self._rebalance(ids)
        return (
            f"revived {len(ids)} nodes: {placed} pending packs placed, {moved} packs moved onto them",
            (None, set(ids)),
        )

    def _op_cordon(self, step: Step) -> tuple[str, Any]:
        a = step.args
        if a["node"] == "random":
            ready = sorted(k for k, n in self.nodes.items() if n.state is NodeState.READY)
            ids = sorted(self.rng.sample(ready, min(a.get("count", 1), len(ready))))
        else:
            ids = [self._known(a["node"], step)]
        ids = [k for k in ids if self.nodes[k].state is NodeState.READY]
        for k in ids:
            self._set_state(k, NodeState.CORDONED)
        return f"cordoned {len(ids)} nodes", None

    def _op_uncordon(self, step: Step) -> tuple[str, Any]:
        a = step.args
        if a["node"] == "all":
            ids = sorted(k for k, n in self.nodes.items() if n.state is NodeState.CORDONED)
        else:
            ids = [self._known(a["node"], step)]
        ids = [k for k in ids if self.nodes[k].state is NodeState.CORDONED]
        for k in ids:
            self._set_state(k, NodeState.READY)
        placed = self._retry()
        return f"uncordoned {len(ids)} nodes: {placed} pending packs placed", None

    def _op_join(self, step: Step) -> tuple[str, Any]:
        a = step.args
        assert self.scheduler is not None
        cap = Resources(
            a.get("cpu", self.capacity.cpu),
            a.get("mem", self.capacity.mem),
            a.get("packs", self.capacity.packs),
        )
        if "cell" in a:
            homes = [Location(a["zone"], a["region"], a["cell"])]
        else:
            cells = sorted({n.location.at(Level.CELL): n.location for n in self.nodes.values()}.items())
            homes = [loc for _, loc in cells if "zone" not in a or loc.zone == a["zone"]]
            if not homes:
                homes = [Location(a["zone"], "r1", "c1")]
        new_ids: list[str] = []
        for i in range(a["nodes"]):
            self._joined += 1
            node = Node(f"j{self._joined:05d}", homes[i % len(homes)], cap, weight=a.get("weight", 1.0))
            self.nodes[node.id] = node
            self.scheduler.add_node(node)
            new_ids.append(node.id)
        # Capacity arrived: pending packs first (they have nowhere to run), then the rebalance.
        placed = self._retry()
        moved = self._rebalance(new_ids)
        return (
            f"joined {len(new_ids)} nodes: {placed} pending packs placed, {moved} packs moved onto them",
            (None, set(new_ids)),
        )

    def _op_stop(self, step: Step) -> tuple[str, Any]:
        assert self.scheduler is not None
        names = sorted(self.specs)
        victims = sorted(self.rng.sample(names, min(step.args["count"], len(names))))
        for name in victims:
            spec = self.specs.pop(name)
            node = self.where.pop(name, None)
            if node is not None:
                self.scheduler.release(node, spec.resources, spec)
            self.unplaced.pop(name, None)
        placed = self._retry()
        return f"stopped {len(victims)} packs: {placed} pending packs placed", None

    def _op_advance(self, step: Step) -> tuple[str, Any]:
        self.clock_ms += step.count or 0
        return f"clock at {self.clock_ms} ms", None

    def _op_check(self, step: Step) -> tuple[str, Any]:
        return (
            f"{len(self.where)} placed, {len(self.unplaced)} unplaced, balance {self.balance():.3f}",
            None,
        )

    def _op_expect(self, step: Step) -> tuple[str, Any]:
        return "expectations", None

    # ------------------------------------------------------------------ helpers

    def _place(self, specs: list[PackSpec], exclude: frozenset[str] = frozenset()) -> int:
        assert self.scheduler is not None
        if not specs:
            return 0
        self._calls += 1
        # The seed of each call is derived from the run's seed and the call's rank, as the state
        # machine derives it from a command id.
        plan = self.scheduler.place(specs, seed=self.seed * 1_000_003 + self._calls, exclude=exclude)
        for p in plan.placements:
            self.where[p.pack] = p.node
            self.unplaced.pop(p.pack, None)
        for u in plan.unplaced:
            self.unplaced[u.pack] = u.reason
        return len(plan.placements)

    def _rebalance(self, newcomers: list[str]) -> int:
        assert self.scheduler is not None
        if not newcomers:
            return 0
        moves = self.scheduler.rebalance_plan(self.where, self.specs, newcomers=newcomers)
        for m in moves:
            self.where[m.pack] = m.target
        return len(moves)

    def _retry(self) -> int:
        if not self.unplaced:
            return 0
        return self._place([self.specs[n] for n in sorted(self.unplaced)])

    def _set_state(self, node_id: str, state: NodeState) -> None:
        assert self.scheduler is not None
        n = self.nodes[node_id]
        node = Node(n.id, n.location, n.capacity, n.weight, state, n.role, n.address)
        self.nodes[node_id] = node
        self.scheduler.update_node(node)

    def _known(self, node_id: str, step: Step) -> str:
        if node_id not in self.nodes:
            raise InvalidInput(f"line {step.line}: no node {node_id!r} in the simulated fleet")
        return node_id

    def _state_counts(self) -> dict[NodeState, int]:
        counts = dict.fromkeys(NodeState, 0)
        for n in self.nodes.values():
            counts[n.state] += 1
        return counts

    def balance(self) -> float:
        """Max over mean of pack counts on READY nodes (weighted nodes count per unit of weight)."""
        ready = [n for n in self.nodes.values() if n.state is NodeState.READY]
        if not ready:
            return 0.0
        counts: dict[str, int] = {}
        for node in self.where.values():
            counts[node] = counts.get(node, 0) + 1
        total = sum(counts.get(n.id, 0) for n in ready)
        weight = sum(n.weight for n in ready)
        if total == 0:
            return 0.0
        return round(max(counts.get(n.id, 0) / n.weight for n in ready) / (total / weight), 6)

    # ------------------------------------------------------------------ invariants

    def check(self) -> list[str]:
        """Every invariant that holds between steps, as a list of violations (empty when fine)."""
        found: list[str] = []
        if self.scheduler is None:
            return found
        used: dict[str, list[int]] = {k: [0, 0, 0] for k in self.nodes}
        for name, node_id in self.where.items():
            spec = self.specs.get(name)
            node = self.nodes.get(node_id)
            if spec is None:
                found.append(f"pack {name} is placed but was never spawned or was stopped")
                continue
            if node is None:
                found.append(f"pack {name} is on unknown node {node_id}")
                continue
            if node.state not in LIVE:
                found.append(f"pack {name} is on node {node_id}, which is {node.state.value}")
            if name in self.unplaced:
                found.append(f"pack {name} is both on node {node_id} and unplaced")
            if not _honours(node, spec.constraints):
                found.append(
                    f"pack {name} is on node {node_id} ({node.location.at(Level.CELL)}), "
                    f"against its constraints {spec.constraints.to_dict()}"
                )
            u = used[node_id]
            u[0] += spec.resources.cpu
            u[1] += spec.resources.mem
            u[2] += 1
        for name, reason in sorted(self.unplaced.items()):
            if name not in self.specs:
                found.append(f"pack {name} is unplaced but was never spawned or was stopped")
            if not reason:
                found.append(f"pack {name} is unplaced without a reason")
        missing = len(self.specs) - len(self.where) - len(self.unplaced)
        if missing:
            found.append(f"{missing} packs are neither placed nor unplaced")
        for node_id in sorted(self.nodes):
            cap = self.nodes[node_id].capacity
            cpu, mem, packs = used[node_id]
            if cpu > cap.cpu or mem > cap.mem or packs > cap.packs:
                found.append(
                    f"node {node_id} over capacity: cpu {cpu}/{cap.cpu}, mem {mem}/{cap.mem}, "
                    f"packs {packs}/{cap.packs}"
                )
            seen = self.scheduler.usage(node_id)
            if (seen.cpu, seen.mem, seen.packs) != (cpu, mem, packs):
                found.append(
                    f"node {node_id}: the scheduler counts cpu={seen.cpu} mem={seen.mem} "
                    f"packs={seen.packs}, its packs add up to cpu={cpu} mem={mem} packs={packs}"
                )
        return found

    def _movement(self, before: Mapping[str, str], allowed: Any, step: Step) -> tuple[int, list[str]]:
        """Count the packs this step moved and report those it had no business moving."""
        may_move, targets = allowed if allowed is not None else (set(), set())
        moved = 0
        found: list[str] = []
        for name, node in before.items():
            now = self.where.get(name)
            if now == node:
                continue
            if now is None and name not in self.specs:
                continue  # stopped
            moved += now is not None
            if may_move is not None and name not in may_move:
                found.append(
                    f"pack {name} moved from {node} to {now or 'unplaced'}, but {step.op} "
                    f"may only move the packs it displaced"
                )
            elif targets is not None and now not in targets:
                found.append(f"pack {name} moved from {node} to {now or 'unplaced'}, not onto a newcomer")
        return moved, found[:20] + ([f"... and {len(found) - 20} more moves"] if len(found) > 20 else [])

    def _expect(self, step: Step, moved: int) -> list[str]:
        counts = self._state_counts()
        actual: dict[str, float] = {
            "placed": len(self.where),
            "unplaced": len(self.unplaced),
            "packs": len(self.specs),
            "nodes": len(self.nodes),
            "ready": counts[NodeState.READY],
            "down": counts[NodeState.DOWN],
            "cordoned": counts[NodeState.CORDONED],
            "moved": moved,
            "balance": self.balance(),
        }
        found = []
        for key, (cmp, value) in step.expect.items():
            got = actual[key]
            ok = got == value if cmp == "=" else got <= value if cmp == "<=" else got >= value
            if not ok:
                found.append(f"expected {key}{cmp}{value:g}, got {got:g}")
        return found

    def digest(self) -> str:
        """SHA-256 of the world: where every pack is, why the others are not, every node's state."""
        doc = {
            "clock_ms": self.clock_ms,
            "where": sorted(self.where.items()),
            "unplaced": sorted(self.unplaced.items()),
            "nodes": sorted((k, n.state.value) for k, n in self.nodes.items()),
        }
        return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


def _honours(node: Node, c: Constraints) -> bool:
    loc = node.location
    return (
        (c.zone is None or loc.zone == c.zone)
        and (c.region is None or loc.region == c.region)
        and (c.cell is None or loc.cell == c.cell)
        and (c.node is None or node.id == c.node)
    )


def run_scenario(text_or_steps: str | Sequence[Step], seed: int) -> SimResult:
    """Parse (if given text) and run a scenario from a fresh world; see ``SimResult``."""
    steps = parse_scenario(text_or_steps) if isinstance(text_or_steps, str) else list(text_or_steps)
    if not steps or steps[0].op != "topology":
        raise InvalidInput("a scenario must start with a topology step")
    return Simulation(seed).run(steps)


__all__ = ["SimResult", "Simulation", "StepLog", "run_scenario"]
