"""``canidae fleet bootstrap``: agents on many hosts over SSH, from an inventory file.

This module reads the options, asks before changing hosts, and prints the per-host table; the
work is ``canidae.agent.ops.fleet`` (asyncssh is imported only when a run starts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.ops.fleet.inventory import load_inventory, select_hosts
from canidae.cli.output import GLOBALS, JsonOption, console, emit, err_console, wants_json
from canidae.core.errors import InvalidInput

app = typer.Typer(help="Set up agents on many hosts at once, over SSH.", no_args_is_help=True,
                  add_completion=False)

InventoryArg = Annotated[Path, typer.Argument(metavar="INVENTORY", help="The inventory file (TOML): hosts and "
                                              "cluster settings.", show_default=False)]

_STYLE = {"ok": "green", "unchanged": "dim", "failed": "red", "unreachable": "red"}


@app.command("bootstrap", epilog="Example: canidae fleet bootstrap hosts.toml --accept-new --yes")
def fleet_bootstrap(
    inventory: InventoryArg,
    plan: Annotated[bool, typer.Option("--plan", help="Print what would be done on each host; connect to none.")]
    = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing the hosts.")] = False,
    parallel: Annotated[int, typer.Option("--parallel", metavar="N", min=1, max=1000,
                                          help="Hosts worked on at once.")] = 32,
    limit: Annotated[str | None, typer.Option(
        "--limit", metavar="HOSTS|@failed",
        help="Only these hosts (comma-separated names), or @failed: those that failed last time.")] = None,
    accept_new: Annotated[bool, typer.Option(
        "--accept-new", help="Record the host key of a host not yet in known_hosts (a changed key is always "
                             "refused).")] = False,
    wheelhouse: Annotated[Path | None, typer.Option(
        "--wheelhouse", metavar="DIR",
        help="Install from these wheels (canidae's and its dependencies'); default: build them from the "
             "source tree.")] = None,
    source: Annotated[Path | None, typer.Option(
        "--source", metavar="DIR",
        help="Build the wheels from this canidae source tree (default: the one this command runs from, "
             "when it runs from one).")] = None,
    json: JsonOption = False,
) -> None:
    """Install and start an agent on every host of INVENTORY, servers first, then clients; write the
    client config (mode 0600).

    Idempotent: a host whose agent runs with the same config hash is left alone. Each host ends ok, unchanged, failed (with the step and the remote stderr) or unreachable; failed hosts are recorded for --limit @failed. Exits 1 when any host failed.
    """
    inv = load_inventory(str(inventory))
    from canidae.agent.ops.fleet import bootstrap as bs
    previous = bs.read_failed(inv)
    hosts = select_hosts(inv, [limit] if limit else None, previous)
    if not hosts:
        emit({"inventory": inv.path, "hosts": [], "failed": []}, json,
             lambda: console.print("no host selected (no failed host is recorded)" if limit else "no host"))
        return
    if plan:
        rows = bs.plan(inv, hosts)

        def human_plan() -> None:
            for r in rows:
                console.print(f"[bold]{r['host']}[/] {r['role']} ssh {r['ssh']} api {r['api']}"
                              + (f" raft {r['raft']}" if r["raft"] else "") + f" labels {r['labels']} "
                              f"capacity {r['capacity']} in {r['install_dir']}")
                for i, step in enumerate(r["steps"], 1):
                    console.print(f"  {i}. {step}")
        emit({"inventory": inv.path, "plan": rows}, json, human_plan)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidInput(f"would change {len(hosts)} host(s) and stdin is not a terminal: pass --yes")
        if not typer.confirm(f"Bootstrap {len(hosts)} host(s) of {inv.name}?", default=False, err=True):
            raise typer.Abort()
    from canidae.agent.ops.fleet.wheelhouse import prepare
    identity, keys = bs.open_state(inv)
    wheels = prepare(os.path.join(inv.state_dir, "wheelhouse"), str(wheelhouse) if wheelhouse else None,
                     source=str(source) if source else None)
    say = (lambda line: err_console.print(line, markup=False)) if not wants_json(json) else (lambda line: None)
    runner = bs.Bootstrap(inv, identity, keys, wheels, accept_new=accept_new, parallel=parallel, say=say)
    import asyncio
    result: dict[str, Any] = asyncio.run(runner.run(hosts))
    selected = {h.name for h in hosts}
    bs.write_failed(inv, sorted((set(previous) - selected) | set(result["failed"])))
    if result["leader"] is not None:
        from canidae.agent.ops.localcluster import write_cli_config
        write_cli_config(str(GLOBALS.config_path), [h.api for h in inv.servers], identity.admin_token,
                         inv.state_dir, ca=bs.ca_file(inv))
        result["config"] = str(GLOBALS.config_path)

    def human() -> None:
        t = Table("host", "role", "address", "result", "step", "detail")
        for o in result["hosts"]:
            detail = o["error"] or (", ".join(o["changed"]) if o["changed"] else "")
            t.add_row(o["host"], o["role"], o["address"], f"[{_STYLE[o['status']]}]{o['status']}[/]", o["step"],
                      detail)
        console.print(t)
        if not result["changed"] and not result["failed"]:
            console.print(f"nothing changed: {result['unchanged']} host(s) already run this config")
        console.print(f"leader {result['leader'] or 'none'}; {len(result['failed'])} failed; "
                      f"{result['seconds']:.1f} s" + (f"; client config {result['config']}" if "config" in result
                                                       else ""))
        if result["failed"]:
            console.print(f"retry the failed hosts with: canidae fleet bootstrap {inventory} --limit @failed")
    emit(result, json, human)
    if result["failed"]:
        raise typer.Exit(1)


@app.command("status")
def fleet_status(inventory: InventoryArg, json: JsonOption = False) -> None:
    """Show each host's agent: up or not, role, version, Raft state (asked of its API; no SSH).

    Exits 3 when any host's agent does not answer.
    """
    inv = load_inventory(str(inventory))
    from canidae.agent.ops.fleet import bootstrap as bs
    identity, _ = bs.open_state(inv)
    import asyncio
    rows = asyncio.run(bs.status(inv, identity.admin_token))
    down = [r["host"] for r in rows if not r["up"]]

    def human() -> None:
        t = Table("host", "role", "api", "up", "version", "raft", "detail")
        for r in rows:
            t.add_row(r["host"], r["role"], r["api"], "yes" if r["up"] else "[red]no[/]", str(r.get("version") or "-"),
                      str(r.get("raft_state") or "-"), r.get("error", ""))
        console.print(t)
    emit({"inventory": inv.path, "hosts": rows, "down": down}, json, human)
    if down:
        raise typer.Exit(3)
