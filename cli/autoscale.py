"""``canidae autoscale plan``: what the autoscaler would decide now, read from the live cluster.

This module reads the cluster through the client (node views, the leader's ``by=node`` metrics
tree, the count of pending packs), sums them into the autoscaler's inputs
(``canidae.core.autoscale_inputs``), runs the pure decision (``canidae.core.autoscale.evaluate``)
with the default policy or one from a TOML file, and prints every step: the inputs, each check's
proposal, the winner and why, every clamp. It changes nothing: no state is written, no node is
started or stopped.

No decision has been recorded before a plan, so it is evaluated with an empty history: the
cooldown, the scale-down stabilisation window and the scale-up rate limits have nothing to count
from, and the forecast has no samples. The output says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from canidae.cli.connect import client
from canidae.cli.output import JsonOption, console, emit
from canidae.core.autoscale import AutoscaleHistory, evaluate, explain
from canidae.core.autoscale_inputs import ClusterInputs, Usage, cluster_inputs
from canidae.core.autoscale_policy import DEFAULT_POLICY, Policy
from canidae.core.errors import InvalidInput

app = typer.Typer(help="See what the autoscaler would decide, from the cluster's live metrics.",
                  no_args_is_help=True, add_completion=False)

NO_HISTORY = ("no decision recorded yet: cooldown, scale-down window and scale-up rate limits "
              "have nothing to count from, and the forecast has no samples")

NODES_SHOWN = 20  # per-node rows printed for people; --json has them all

PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", metavar="FILE", show_default=False,
                 help="Autoscale policy as TOML (every key optional); default: the built-in policy."),
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
    with client() as c:
        nodes = c.nodes()
        tree = c.metrics_cluster("node")["tree"]
        pending = int(c.status().get("pack_states", {}).get("pending", 0))
    return cluster_inputs(nodes, tree, pending, usage, now_ms)


def plan_document(policy: Policy, inputs: ClusterInputs, now_ms: int) -> dict[str, Any]:
    """The decision on ``inputs`` with an empty history, as the JSON ``plan`` prints."""
    decision = evaluate(policy, inputs.metrics, AutoscaleHistory(), now_ms)
    notes = [n for n in (inputs.note, NO_HISTORY) if n]
    return {"decision": decision.to_dict(), "inputs": inputs.to_dict(), "explain": explain(decision),
            "notes": notes, "changed": False}


@app.command("plan", epilog="Examples: canidae autoscale plan; canidae autoscale plan --policy autoscale.toml --json")
def plan(policy: PolicyOpt = None, usage: UsageOpt = Usage.MEASURED, json: JsonOption = False) -> None:
    """Show what the autoscaler would decide now (add nodes, remove nodes or hold) from the cluster's
    current CPU, memory, packs per node and node count: each check's proposal, the winner and why,
    every clamp. Changes nothing."""
    chosen = load_policy(policy)
    now_ms = int(time.time() * 1000)
    doc = plan_document(chosen, read_inputs(usage, now_ms), now_ms)

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
                      f"{'policy ' + str(policy) if policy else 'default policy'}): nothing changed", markup=False)
    emit(doc, json, human)
