"""``canidae autoscale``: the policy, pause and resume, recorded decisions, plans, and the controller.

* ``plan`` evaluates now, from the live cluster (node views, the leader's ``by=node`` metrics
  tree, pending packs) and the decisions recorded so far, with the cluster's policy or one from a
  file, and prints every step; it records nothing and changes nothing.
* ``run`` is the controller (``canidae.agent.ops.autoscaler``): every ``evaluation_interval_s`` it
  evaluates, records the decision in the cluster, acts through a node provider (``local``: client
  agents of a ``cluster up`` cluster; ``command``: the operator's executable) and records the outcome.
* ``status``, ``explain`` read what was recorded; ``pause``/``resume`` and ``policy apply`` change
  the replicated policy and pause flag, which every controller reads at each evaluation.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from canidae.cli.connect import client
from canidae.cli.output import JsonOption, console, emit, sigterm_as_interrupt
from canidae.core.autoscale import evaluate, explain
from canidae.core.autoscale_inputs import ClusterInputs, Usage
from canidae.core.autoscale_policy import DEFAULT_POLICY, Policy
from canidae.core.autoscale_state import history_from_records
from canidae.core.errors import InvalidInput, NotFound
from canidae.core.types import validate_name

app = typer.Typer(help="Autoscaling: policy, decisions and their reasons, pause/resume, and the controller.",
                  no_args_is_help=True, add_completion=False)

NO_HISTORY = ("no decision recorded yet: cooldown, scale-down window and scale-up rate limits "
              "have nothing to count from, and the forecast has no samples")

NODES_SHOWN = 20  # per-node rows printed for people; --json has them all

PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", metavar="FILE", show_default=False,
                 help="Autoscale policy as TOML (every key optional); default: the cluster's policy."),
]
UsageOpt = Annotated[
    Usage,
    typer.Option("--usage", help="CPU and memory used: measured in the packs' cgroups, or reserved by their specs."),
]


def load_policy(path: Path | None) -> Policy:
    """The policy in ``path`` (TOML), or the default one; ``InvalidInput`` names the file and the field."""
    if path is None:
        return DEFAULT_POLICY
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read policy file {str(path)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"policy file {str(path)!r} is not UTF-8 text") from None
    try:
        return Policy.from_toml(text)
    except InvalidInput as e:
        raise InvalidInput(f"{path}: {e.message}") from None


def read_inputs(usage: Usage, now_ms: int) -> ClusterInputs:
    """The cluster's nodes, metrics tree and pending packs, summed into a decision's inputs."""
    from canidae.agent.ops.autoscaler import read_inputs as read
    with client() as c:
        return read(c, usage, now_ms)


def plan_document(policy: Policy, inputs: ClusterInputs, now_ms: int,
                  records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The decision on ``inputs`` after the recorded decisions ``records`` (oldest first), as the
    JSON ``plan`` prints."""
    history = history_from_records(records or [])
    decision = evaluate(policy, inputs.metrics, history, now_ms)
    notes = [n for n in (inputs.note, None if records else NO_HISTORY) if n]
    return {"decision": decision.to_dict(), "inputs": inputs.to_dict(), "explain": explain(decision),
            "notes": notes, "recorded": len(records or []), "changed": False}


def cluster_policy(status: dict[str, Any]) -> Policy:
    """The policy the cluster's controllers use now (paused when an operator paused it)."""
    doc = dict(status["policy"])
    if status["paused"]:
        doc["paused"] = True
    return Policy.from_dict(doc)


def all_records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with client() as c:
        since = 0
        while True:
            page = c.autoscale_records(since=since)
            out += page["records"]
            if not page["records"] or page["records"][-1]["id"] >= page["last_id"]:
                return out
            since = page["records"][-1]["id"]


@app.command("plan", epilog="Examples: canidae autoscale plan; canidae autoscale plan --policy autoscale.toml --json")
def plan(policy: PolicyOpt = None, usage: UsageOpt = Usage.MEASURED, json: JsonOption = False) -> None:
    """Show what the autoscaler would decide now (add nodes, remove nodes or hold) from the cluster's
    current CPU, memory, packs per node and node count and the decisions recorded so far: each
    check's proposal, the winner and why, every clamp. Records nothing and changes nothing."""
    chosen = load_policy(policy) if policy is not None else None  # refused before the cluster is asked
    if chosen is None:
        with client() as c:
            chosen = cluster_policy(c.autoscale_status(last=0))
    records = all_records()
    now_ms = int(time.time() * 1000)
    doc = plan_document(chosen, read_inputs(usage, now_ms), now_ms, records)

    def human() -> None:
        for line in doc["explain"]:
            console.print(line, markup=False)
        rows = doc["inputs"]["nodes"]
        for row in rows[:NODES_SHOWN]:
            used = (f"cpu {row['cpu_used_m']:,}/{row['cpu_capacity_m']:,} m, "
                    f"mem {row['mem_used_mib']:,}/{row['mem_capacity_mib']:,} MiB"
                    if row["cpu_used_m"] is not None else "no metrics summary")
            console.print(f"  node {row['node']} ({row['state']}): {row['packs']:,} packs, {used}", markup=False)
        if len(rows) > NODES_SHOWN:
            console.print(f"  ... and {len(rows) - NODES_SHOWN:,} more nodes (--json lists every one)", markup=False)
        for note in doc["notes"]:
            console.print(f"note: {note}", markup=False)
        console.print(f"plan only ({usage.value} usage, "
                      f"{'policy ' + str(policy) if policy else 'the cluster policy'}, "
                      f"{doc['recorded']} recorded decisions): nothing changed", markup=False)
    emit(doc, json, human)


def _when(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at_ms / 1000))


def _decision_line(d: dict[str, Any]) -> str:
    out = f" -> {d['outcome']}" if d.get("outcome") else ""
    nodes = f" ({', '.join(d['nodes'])})" if d.get("nodes") else ""
    return f"#{d['id']} {_when(d['at_ms'])} {d['reason']}{out}{nodes}"


@app.command("status", epilog="Examples: canidae autoscale status; canidae autoscale status --last 50 --json")
def status(last: Annotated[int, typer.Option("--last", min=0, max=720, help="How many recent decisions to list.")] = 10,
           json: JsonOption = False) -> None:
    """Show the policy in force, whether autoscaling is paused (by whom, why), and the last
    decisions: what each decided, why, and what came of it."""
    with client() as c:
        doc = c.autoscale_status(last=last)

    def human() -> None:
        p = doc["policy"]
        console.print(f"policy: {'applied' if doc['policy_set'] else 'default (the seed numbers)'}; "
                      f"nodes {p['nodes']['min']}..{p['nodes']['max']}, cpu {p['cpu']['down']:g}-{p['cpu']['up']:g} %, "
                      f"memory {p['memory']['down']:g}-{p['memory']['up']:g} %, {p['packs']['per_node']} packs per node, "
                      f"cooldown {p['cooldown_s']} s, every {p['evaluation_interval_s']} s"
                      f"{', dry run' if p['dry_run'] else ''}", markup=False)
        if doc["paused"]:
            who = f" by {doc['paused_by']}" if doc["paused_by"] else ""
            why = f": {doc['paused_reason']}" if doc["paused_reason"] else ""
            console.print(f"paused{who}{why}", markup=False)
        else:
            console.print("active", markup=False)
        if not doc["decisions"]:
            console.print("no decision recorded yet (is 'canidae autoscale run' running?)", markup=False)
        for d in doc["decisions"]:
            console.print(_decision_line(d), markup=False)
    emit(doc, json, human)


@app.command("explain", epilog="Examples: canidae autoscale explain; canidae autoscale explain 42 --json")
def explain_cmd(decision_id: Annotated[int | None, typer.Argument(metavar="[DECISION]", min=1, show_default=False,
                                                                 help="A decision id (default: the last one).")] = None,
                json: JsonOption = False) -> None:
    """Explain one recorded decision: its inputs, each check's proposal, the winner and why, every
    clamp (min/max, stabilisation window, rate limits, cooldown, pause, dry run) and the outcome."""
    with client() as c:
        if decision_id is None:
            last = c.autoscale_status(last=1)["decisions"]
            if not last:
                raise NotFound("no autoscale decision recorded yet")
            decision_id = int(last[0]["id"])
        rec = c.autoscale_decision(decision_id)
    d = rec["decision"]
    lines = _explain_record(d)
    doc = {"record": rec, "explain": lines}

    def human() -> None:
        console.print(f"decision #{rec['id']} at {_when(rec['at_ms'])} by controller {rec['controller']}", markup=False)
        for line in lines:
            console.print(line, markup=False)
        out = rec.get("outcome")
        if out is None:
            console.print("outcome: none recorded" + (" (nothing to do)" if d["action"] == "hold" else
                                                       " (the controller may have stopped while acting)"), markup=False)
        else:
            console.print(f"outcome: {out['status']}" + (f", nodes {', '.join(out['nodes'])}" if out["nodes"] else "")
                          + (f": {out['error']}" if out["error"] else ""), markup=False)
    emit(doc, json, human)


def _explain_record(d: dict[str, Any]) -> list[str]:
    """The lines ``explain`` prints, from the recorded dict (proposals and clamps as recorded)."""
    lines = []
    m = d.get("metrics")
    if m:
        lines.append(f"inputs: {m['nodes_ready']} ready nodes (+{m.get('nodes_starting', 0)} starting), "
                     f"cpu {m['cpu_used_m']:,}/{m['cpu_total_m']:,} m, memory {m['mem_used_mib']:,}/{m['mem_total_mib']:,} MiB, "
                     f"{m['packs']:,} packs, {m.get('packs_pending', 0):,} pending")
    for p in d.get("proposals", []):
        lines.append(f"check {p['check']}: {p.get('reason', '')} -> {p['desired']} nodes"
                     + ("" if p.get("acting", True) else " (not acting)"))
    if d.get("winner"):
        lines.append(f"winner: {d['winner_reason']}")
    for c in d.get("clamps", []):
        lines.append(f"clamp {c['kind']}: {c['before']} -> {c['after']}: {c['why']}")
    if d.get("forecast_note"):
        lines.append(d["forecast_note"])
    lines.append(f"result: {d['reason']}")
    return lines


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept with the pause, shown by status).")]


@app.command("pause", epilog="Example: canidae autoscale pause --reason 'maintenance window'")
def pause(reason: ReasonOpt = "", json: JsonOption = False) -> None:
    """Pause autoscaling cluster-wide: controllers keep evaluating and recording, but act on
    nothing until resumed."""
    with client() as c:
        doc = c.set_autoscale_paused(True, reason)
    emit(doc, json, lambda: console.print("autoscaling paused" + ("" if doc.get("changed") else " (it already was)"),
                                          markup=False))


@app.command("resume", epilog="Example: canidae autoscale resume")
def resume(json: JsonOption = False) -> None:
    """Resume autoscaling after a pause (a policy with paused = true stays paused)."""
    with client() as c:
        doc = c.set_autoscale_paused(False)
    emit(doc, json, lambda: console.print("autoscaling resumed" + ("" if doc.get("changed") else " (it was not paused)"),
                                          markup=False))


policy_app = typer.Typer(help="The autoscale policy the cluster's controllers use (TOML, replicated).",
                         no_args_is_help=True, add_completion=False)
app.add_typer(policy_app, name="policy")


@policy_app.command("apply", epilog="Example: canidae autoscale policy apply autoscale.toml")
def policy_apply(path: Annotated[Path, typer.Argument(metavar="FILE", help="The policy as TOML (every key optional).")],
                 json: JsonOption = False) -> None:
    """Replace the cluster's autoscale policy (keys left out take the seed's defaults)."""
    chosen = load_policy(path)
    with client() as c:
        doc = c.set_autoscale_policy(chosen.to_dict())
    emit(doc, json, lambda: console.print(f"autoscale policy applied from {path}", markup=False))


@policy_app.command("show", epilog="Examples: canidae autoscale policy show; canidae autoscale policy show --json")
def policy_show(json: JsonOption = False) -> None:
    """Print the cluster's autoscale policy as TOML (every key, defaults included)."""
    with client() as c:
        st = c.autoscale_status(last=0)
    doc = {"policy": st["policy"], "policy_set": st["policy_set"]}
    emit(doc, json, lambda: console.print(Policy.from_dict(st["policy"]).to_toml(), markup=False, end=""))


class Provider(StrEnum):
    LOCAL = "local"
    COMMAND = "command"


@app.command("run", epilog="Examples: canidae autoscale run --provider local --data-dir ./cluster; "
                           "canidae autoscale run --provider command --command ./nodes.sh --once --json")
def run(provider: Annotated[Provider, typer.Option("--provider", help="Where nodes come from.")],
        data_dir: Annotated[Path | None, typer.Option("--data-dir", metavar="DIR", show_default=False,
                                                      help="local provider: the cluster's data dir (cluster up).")] = None,
        command: Annotated[str | None, typer.Option("--command", metavar="EXE", show_default=False,
                                                    help="command provider: the executable (JSON on stdin and stdout).")] = None,
        name: Annotated[str, typer.Option("--name", help="This controller's name in the records.")] = "controller",
        once: Annotated[bool, typer.Option("--once", help="Evaluate (and act) once, then exit.")] = False,
        interval: Annotated[float | None, typer.Option("--interval", min=0.1, show_default=False,
                                                       help="Seconds between evaluations (default: the policy's).")] = None,
        usage: UsageOpt = Usage.MEASURED, json: JsonOption = False) -> None:
    """Run the autoscaling controller: evaluate, record the decision in the cluster, act through
    the node provider, record the outcome; every evaluation interval until stopped (Ctrl-C)."""
    from canidae.agent.ops.autoscaler import AutoscaleController, provider_for
    validate_name("controller", name)
    chosen = provider_for(provider.value, data_dir=str(data_dir) if data_dir else None,
                          command=[command] if command else [])
    with client() as c, sigterm_as_interrupt():
        ctl = AutoscaleController(c, chosen, name=name, usage=usage)
        try:
            while True:
                started = time.monotonic()
                result = ctl.step()
                doc = result.to_dict()
                line = {"id": doc["id"], "action": result.decision.action.value, "count": result.decision.count,
                        "reason": result.decision.reason, "outcome": result.outcome, "nodes": result.nodes,
                        "error": result.error}

                def human(line: dict[str, Any] = line) -> None:
                    tail = f" -> {line['outcome']}" if line["outcome"] else ""
                    nodes = f" ({', '.join(line['nodes'])})" if line["nodes"] else ""
                    err = f": {line['error']}" if line["error"] else ""
                    console.print(f"#{line['id']} {line['reason']}{tail}{nodes}{err}", markup=False)
                emit(doc if once else line, json, human)
                if once:
                    return
                wait = interval if interval is not None else ctl.policy().evaluation_interval_s
                time.sleep(max(0.0, wait - (time.monotonic() - started)))
        except KeyboardInterrupt:
            return
