"""``canidae fleet bootstrap|status|upgrade|remove``: agents on many hosts over SSH, from an
inventory file.

This module reads the options, asks before changing hosts (and for the sudo password, once, when
a host needs one), and prints the per-host table; the work is ``canidae.agent.ops.fleet``
(asyncssh is imported only when a run starts).
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

_STYLE = {"ok": "green", "unchanged": "dim", "failed": "red", "unreachable": "red", "skipped": "yellow",
          "removed": "green"}

SudoFileOption = Annotated[Path | None, typer.Option(
    "--sudo-password-file", metavar="FILE",
    help="The sudo password of the hosts whose login is not root, for scripts (or $CANIDAE_SUDO_PASSWORD); "
         "on a terminal it is asked once when a host needs it.")]
AcceptNewOption = Annotated[bool, typer.Option(
    "--accept-new", help="Record the host key of a host not yet in known_hosts (a changed key is always "
                         "refused).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing the hosts.")]


def _sudo(path: Path | None) -> Any:
    import getpass

    from canidae.agent.ops.fleet.sudo import SudoPassword

    def ask() -> str:
        return getpass.getpass("sudo password for the fleet's hosts: ")
    return SudoPassword.from_options(str(path) if path else None, ask if sys.stdin.isatty() else None)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput(f"{question} stdin is not a terminal: pass --yes")
    if not typer.confirm(question, default=False, err=True):
        raise typer.Abort()


def _say(json: bool) -> Any:
    return (lambda line: err_console.print(line, markup=False)) if not wants_json(json) else (lambda line: None)


def _table(rows: list[dict[str, Any]], version: bool = False) -> Table:
    t = Table("host", "role", "address", "result", "step", "detail", *(["version"] if version else []))
    for o in rows:
        detail = o["error"] or (", ".join(o.get("changed") or o.get("steps") or []))
        extra = [f"{o.get('version_before') or '-'} -> {o.get('version') or '-'}"] if version else []
        t.add_row(o["host"], o["role"], o["address"], f"[{_STYLE[o['status']]}]{o['status']}[/]", o["step"], detail,
                  *extra)
    return t


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
    accept_new: AcceptNewOption = False,
    wheelhouse: Annotated[Path | None, typer.Option(
        "--wheelhouse", metavar="DIR",
        help="Install from these wheels (canidae's and its dependencies'); default: build them from the "
             "source tree.")] = None,
    source: Annotated[Path | None, typer.Option(
        "--source", metavar="DIR",
        help="Build the wheels from this canidae source tree (default: the one this command runs from, "
             "when it runs from one).")] = None,
    sudo_password_file: SudoFileOption = None,
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
    _confirm(f"Bootstrap {len(hosts)} host(s) of {inv.name}?", yes)
    from canidae.agent.ops.fleet.wheelhouse import prepare
    sudo = _sudo(sudo_password_file)
    identity, keys = bs.open_state(inv)
    wheels = prepare(os.path.join(inv.state_dir, "wheelhouse"), str(wheelhouse) if wheelhouse else None,
                     source=str(source) if source else None)
    runner = bs.Bootstrap(inv, identity, keys, wheels, accept_new=accept_new, parallel=parallel, say=_say(json),
                          sudo=sudo)
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
        console.print(_table(result["hosts"]))
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


@app.command("upgrade", epilog="Example: canidae fleet upgrade hosts.toml --source ../canidae --yes")
def fleet_upgrade(
    inventory: InventoryArg,
    wheel: Annotated[Path | None, typer.Option(
        "--wheel", metavar="PATH",
        help="Upgrade to this canidae wheel (the other wheels stay those of the last bootstrap), or to this "
             "directory of wheels.")] = None,
    source: Annotated[Path | None, typer.Option(
        "--source", metavar="DIR", help="Upgrade to canidae built from this source tree (default: the one "
                                        "this command runs from).")] = None,
    parallel: Annotated[int, typer.Option("--parallel", metavar="N", min=1, max=1000,
                                          help="Clients upgraded at once (servers always go one by one).")] = 1,
    yes: YesOpt = False,
    accept_new: AcceptNewOption = False,
    sudo_password_file: SudoFileOption = None,
    json: JsonOption = False,
) -> None:
    """Upgrade every host of INVENTORY to a new canidae, rolling, keeping a leader throughout.

    Servers one at a time (the leader last), each only while the others keep quorum, and the next
    only once it rejoined, applied the log and the group has a leader again; then clients, N at a time, each drained first (as node drain) and made ready again after. Hosts already running the target are skipped (unchanged); the first failure stops the run (the rest are skipped) and exits 1.
    """
    if wheel is not None and source is not None:
        raise InvalidInput("give --wheel or --source, not both")
    inv = load_inventory(str(inventory))
    from canidae.agent.ops.fleet import bootstrap as bs
    from canidae.agent.ops.fleet import wheelhouse as wh
    _confirm(f"Upgrade {len(inv.hosts)} host(s) of {inv.name}, one server at a time?", yes)
    sudo = _sudo(sudo_password_file)
    identity, keys = bs.open_state(inv)
    dest = os.path.join(inv.state_dir, "wheelhouse")
    if wheel is not None and wheel.is_file():
        wheels = wh.with_wheel(dest, str(wheel), dest)
    else:
        wheels = wh.prepare(dest, str(wheel) if wheel else None, source=str(source) if source else None)
    from canidae.agent.ops.fleet.upgrade import Upgrade
    runner = bs.Bootstrap(inv, identity, keys, wheels, accept_new=accept_new, say=_say(json), sudo=sudo)
    import asyncio
    result: dict[str, Any] = asyncio.run(Upgrade(runner, batch=parallel).run(list(inv.hosts)))

    def human() -> None:
        console.print(_table(result["hosts"], version=True))
        console.print(f"target {result['target']['canidae']} (wheels {result['target']['wheels'][:12]}): "
                      f"{result['upgraded']} upgraded, {result['unchanged']} already there, "
                      f"{len(result['failed'])} failed, {len(result['skipped'])} skipped; {result['seconds']:.1f} s")
        if result["stopped"]:
            console.print(f"[red]stopped: {result['stopped']}[/]; fix it and run the upgrade again (done hosts "
                          "are skipped)")
    emit(result, json, human)
    if result["stopped"]:
        raise typer.Exit(1)


@app.command("remove", epilog="Example: canidae fleet remove c7 hosts.toml --yes")
def fleet_remove(
    host: Annotated[str, typer.Argument(metavar="HOST", help="The host to remove (a client).", show_default=False)],
    inventory: InventoryArg,
    yes: YesOpt = False,
    accept_new: AcceptNewOption = False,
    sudo_password_file: SudoFileOption = None,
    json: JsonOption = False,
) -> None:
    """Take a client host out of the cluster: drain it, stop its agent, forget the node, uninstall.

    Servers are refused (exit 2): the Raft group's membership is fixed, so a server cannot leave a running cluster. Exits 1 when a step failed (a re-run finishes the job). Remove the host from INVENTORY afterwards, or the next bootstrap brings it back.
    """
    inv = load_inventory(str(inventory))
    h = inv.host(host)
    from canidae.agent.ops.fleet import bootstrap as bs
    from canidae.agent.ops.fleet.removal import Removal, refuse_server
    from canidae.agent.ops.fleet.wheelhouse import Wheelhouse
    refuse_server(h)
    _confirm(f"Remove {h.name} ({h.address}) from {inv.name}: drain it, stop its agent and uninstall it?", yes)
    sudo = _sudo(sudo_password_file)
    identity, keys = bs.open_state(inv)
    runner = bs.Bootstrap(inv, identity, keys, Wheelhouse("", (), ""), accept_new=accept_new, say=_say(json),
                          sudo=sudo)
    import asyncio
    row: dict[str, Any] = asyncio.run(Removal(runner, h).run())

    def human() -> None:
        console.print(_table([row]))
        if row["status"] == "removed":
            console.print(f"{h.name} removed; delete it from {inventory}, or the next bootstrap brings it back")
    emit({"inventory": inv.path, **row}, json, human)
    if row["status"] != "removed":
        raise typer.Exit(1)
