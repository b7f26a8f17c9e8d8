"""The autoscaling controller: evaluate, record, act, record the outcome; and its node providers.

``AutoscaleController.step`` is one evaluation, the loop of ``canidae autoscale run``:

1. read what the cluster holds: the policy in force (paused if an operator paused it) and every
   decision recorded since the last step (whoever recorded them), folded into the history the
   pure evaluation needs (``core.autoscale_state.history_from_records``);
2. read the inputs (nodes, the leader's metrics tree, pending packs: ``read_inputs``) and add the
   nodes the provider is still starting;
3. evaluate (``core.autoscale.evaluate``: pure) and record the decision in the cluster before
   acting, so a controller that dies mid-action leaves a decision without an outcome, not an
   action without a decision;
4. act through the provider and record the outcome: ``add`` asks it for N nodes; ``remove`` picks
   the emptiest nodes the provider can remove, drains them (the same ``SetNodeState draining``
   as ``canidae node drain``: every pack is re-placed in one committed step), waits until every
   pack that was on them runs elsewhere, and only then stops their agents and forgets the nodes.
   A drained node whose packs do not come up elsewhere in time is not removed: it is returned to
   service (``ready``) and the outcome says why. No pack is lost to a scale-down.

Providers (``NodeProvider``): ``LocalProvider`` starts and stops client agents of a local cluster
(``LocalCluster``: real processes); ``CommandProvider`` runs the operator's executable with a JSON
request on stdin, the hook for any cloud.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from canidae.agent.client import Client
from canidae.agent.ops.localcluster import LocalCluster
from canidae.agent.ops.waiting import wait_until
from canidae.core.autoscale import Action, AutoscaleHistory, Decision, evaluate, explain
from canidae.core.autoscale_inputs import ClusterInputs, Usage, cluster_inputs
from canidae.core.autoscale_policy import Policy
from canidae.core.autoscale_state import replayable
from canidae.core.errors import CanidaeError, InvalidInput, Timeout

HOLDING_STATES = ("placed", "running", "stopping")
COMMAND_TIMEOUT_S = 300.0


def read_inputs(c: Client, usage: Usage, now_ms: int) -> ClusterInputs:
    """The cluster's nodes, metrics tree and pending packs, summed into a decision's inputs."""
    nodes = c.nodes()
    tree = c.metrics_cluster("node")["tree"]
    pending = int(c.status().get("pack_states", {}).get("pending", 0))
    return cluster_inputs(nodes, tree, pending, usage, now_ms)


class NodeProvider(Protocol):
    """Where nodes come from and go to."""

    name: str

    def add(self, count: int) -> list[str]:
        """Start ``count`` nodes; return their node ids once they are registered (or raise)."""

    def removable(self, nodes: Sequence[str]) -> list[str]:
        """Which of ``nodes`` this provider can remove (it never removes what it cannot restart)."""

    def remove(self, nodes: Sequence[str]) -> None:
        """Stop the agents of ``nodes`` (already drained and empty)."""

    def starting(self) -> int:
        """Nodes asked for and not registered yet."""


@dataclass
class LocalProvider:
    """Client agents of a local cluster on this machine, started and stopped as real processes."""

    cluster: LocalCluster
    timeout_s: float = 60.0
    name: str = "local"

    def add(self, count: int) -> list[str]:
        return [self.cluster.add_client(timeout=self.timeout_s) for _ in range(count)]

    def removable(self, nodes: Sequence[str]) -> list[str]:
        # Only client agents: removing a server would shrink the Raft group.
        clients = {a["id"] for a in self.cluster.clients()}
        return [n for n in nodes if n in clients]

    def remove(self, nodes: Sequence[str]) -> None:
        for n in nodes:
            self.cluster.stop_agent(n)

    def starting(self) -> int:
        return 0  # add() returns only once the nodes are registered


@dataclass
class CommandProvider:
    """The operator's executable: called as ``EXE`` with one JSON request on stdin,
    ``{"action": "add", "count": N}`` or ``{"action": "remove", "nodes": [...]}`` (and
    ``{"action": "removable", "nodes": [...]}``), it answers one JSON object on stdout:
    ``{"nodes": [...]}`` (the nodes it started, or those it can remove). A non-zero exit is a
    failure, its stderr the reason."""

    argv: Sequence[str]
    timeout_s: float = COMMAND_TIMEOUT_S
    name: str = "command"
    _asked: int = 0

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            done = subprocess.run(list(self.argv), input=json.dumps(request).encode(), capture_output=True,
                                  timeout=self.timeout_s, check=False)
        except FileNotFoundError:
            raise InvalidInput(f"node provider command {self.argv[0]!r} not found") from None
        except subprocess.TimeoutExpired:
            raise Timeout(f"node provider command did not answer within {self.timeout_s:g} s") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise CanidaeError(f"node provider command exited {done.returncode}: "
                               f"{err[-1] if err else 'no message'}")
        try:
            answer = json.loads(done.stdout)
            nodes = answer["nodes"]
            if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
                raise ValueError("nodes must be a list of node names")
        except (ValueError, KeyError, TypeError) as e:
            raise CanidaeError(f"node provider command answered something that is not "
                               f'{{"nodes": [...]}}: {e}') from None
        return answer  # type: ignore[no-any-return]

    def add(self, count: int) -> list[str]:
        return list(self._call({"action": "add", "count": count})["nodes"])

    def removable(self, nodes: Sequence[str]) -> list[str]:
        allowed = set(self._call({"action": "removable", "nodes": list(nodes)})["nodes"])
        return [n for n in nodes if n in allowed]

    def remove(self, nodes: Sequence[str]) -> None:
        self._call({"action": "remove", "nodes": list(nodes)})

    def starting(self) -> int:
        return 0


@dataclass
class StepResult:
    """One evaluation: the decision, its id in the cluster, and what acting on it did."""

    decision: Decision
    decision_id: int
    outcome: str | None = None  # done, failed, skipped; None when the decision was to hold
    nodes: list[str] = field(default_factory=list)
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.decision_id, "decision": self.decision.to_dict(), "explain": explain(self.decision),
                "outcome": self.outcome, "nodes": self.nodes, "error": self.error, "notes": self.notes}


@dataclass
class AutoscaleController:
    """Evaluates, records and acts; see the module docstring. ``name`` identifies this controller
    in the records; ``clock`` returns seconds (tests and simulations pass their own)."""

    client: Client
    provider: NodeProvider
    name: str = "controller"
    usage: Usage = Usage.MEASURED
    drain_timeout_s: float = 120.0
    clock: Callable[[], float] = time.time
    history: AutoscaleHistory = field(default_factory=AutoscaleHistory)
    seen: int = 0  # the last recorded decision folded into ``history``

    def catch_up(self) -> None:
        """Fold every decision recorded since the last look into the history."""
        while True:
            page = self.client.autoscale_records(since=self.seen)
            for rec in page["records"]:
                decision = replayable(rec["decision"])
                self.history = self.history.record(decision, decision.metrics)
                self.seen = int(rec["id"])
            if not page["records"] or self.seen >= int(page["last_id"]):
                return

    def policy(self) -> Policy:
        status = self.client.autoscale_status(last=0)
        doc = dict(status["policy"])
        if status["paused"]:
            doc["paused"] = True
        return Policy.from_dict(doc)

    def step(self, act: bool = True) -> StepResult:
        """One evaluation; ``act=False`` records the decision but leaves the nodes alone (the
        outcome says skipped), which is what ``--once --no-act`` uses to show a decision."""
        self.catch_up()
        policy = self.policy()
        now_ms = int(self.clock() * 1000)
        inputs = read_inputs(self.client, self.usage, now_ms)
        metrics = inputs.metrics
        starting = self.provider.starting()
        if metrics is not None and starting:
            metrics = replace(metrics, nodes_starting=metrics.nodes_starting + starting)
        decision = evaluate(policy, metrics, self.history, now_ms)
        decision_id = self.client.record_autoscale_decision(decision.to_dict(), self.name)
        result = StepResult(decision, decision_id, notes=[inputs.note] if inputs.note else [])
        if decision.action is Action.HOLD:
            self.catch_up()
            return result
        if not act:
            result.outcome = "skipped"
            result.error = "not acting (--no-act)"
        else:
            try:
                if decision.action is Action.ADD:
                    result.nodes = self.provider.add(decision.count)
                else:
                    result.nodes, why = self._scale_down(inputs, decision.count)
                    if why:
                        result.notes.append(why)
                result.outcome = "done" if result.nodes else "failed"
                if not result.nodes:
                    result.error = result.notes[-1] if result.notes else "no node was changed"
            except CanidaeError as e:
                result.outcome, result.error = "failed", str(e)
        self.client.set_autoscale_outcome(decision_id, result.outcome, result.nodes, result.error)
        self.catch_up()
        return result

    # ------------------------------------------------------------------ scale-down

    def _scale_down(self, inputs: ClusterInputs, count: int) -> tuple[list[str], str]:
        """Drain and remove up to ``count`` of the emptiest removable nodes; returns those removed
        and, when fewer than asked, why."""
        ready = [n for n in inputs.nodes if n.state == "ready"]
        ready.sort(key=lambda n: (n.packs, n.node))
        candidates = self.provider.removable([n.node for n in ready])
        victims = candidates[:count]
        why = "" if len(victims) == count else (
            f"asked to remove {count} nodes, {len(candidates)} of the ready nodes can be removed by the "
            f"{self.provider.name} provider")
        removed: list[str] = []
        for node in victims:
            moved = self._drain(node)
            if moved is None:
                why = f"node {node}: its packs did not run elsewhere within {self.drain_timeout_s:g} s; put back in service"
                self.client.set_node_state(node, "ready", "autoscale: drain did not finish")
                continue
            self.provider.remove([node])
            self.client.remove_node(node)
            removed.append(node)
        return removed, why

    def _drain(self, node: str) -> list[str] | None:
        """Drain ``node`` and wait until it holds nothing and every pack it held runs elsewhere;
        None when that did not happen in time."""
        before = [p["name"] for p in self._packs_on(node)]
        self.client.drain(node)

        def settled() -> bool:
            if self._packs_on(node):
                return False
            for name in before:
                try:
                    p = self.client.pack(name)
                except CanidaeError:
                    continue  # deleted meanwhile: nothing to keep running
                if p["state"] != "running" or p.get("node") == node:
                    return False
            return True
        try:
            wait_until(settled, self.drain_timeout_s, f"the packs of {node} running elsewhere", interval=0.2)
        except Timeout:
            return None
        return before

    def _packs_on(self, node: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = self.client.packs(node=node, after=after)
            out += [p for p in page["packs"] if p["state"] in HOLDING_STATES]
            after = page.get("next")
            if not after:
                return out


def provider_for(kind: str, *, data_dir: str | None = None, command: Sequence[str] = ()) -> NodeProvider:
    """The provider named on the command line."""
    if kind == "local":
        if not data_dir or not os.path.isdir(data_dir):
            raise InvalidInput("the local provider needs the data dir of a cluster started by 'canidae cluster up' "
                               "(--data-dir)")
        return LocalProvider(LocalCluster.open(data_dir))
    if kind == "command":
        if not command:
            raise InvalidInput("the command provider needs --command EXE")
        return CommandProvider(list(command))
    raise InvalidInput(f"unknown provider {kind!r}: local or command")


__all__ = ["AutoscaleController", "CommandProvider", "LocalProvider", "NodeProvider", "StepResult",
           "provider_for", "read_inputs"]
