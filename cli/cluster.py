"""``canidae cluster up|down|status|rotate-raft-password``: a local cluster of agents on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.ops import localcluster
from canidae.cli.connect import client
from canidae.cli.output import GLOBALS, JsonOption, TimeoutOption, console, emit, err_console
from canidae.cli.params import DataDirOpt
from canidae.core.errors import CanidaeError
from canidae.core.types import Resources

app = typer.Typer(help="Start, stop and inspect a local cluster of agents.", no_args_is_help=True,
                  add_completion=False)


def _data_dir(data_dir: Path | None) -> str:
    """--data-dir, else the one recorded in the client config by 'cluster up', else the default."""
    if data_dir:
        return str(data_dir)
    from canidae.agent.client import read_cli_config
    recorded = read_cli_config(str(GLOBALS.config_path)).get("data_dir")
    return str(recorded) if recorded else localcluster.default_data_dir()


@app.command("up")
def cluster_up(
    servers: Annotated[int, typer.Option("--servers", "--agents", min=1,
                                         help="Server agents (Raft voters): 1, 3, 5 or 7.")] = 3,
    clients: Annotated[int, typer.Option("--clients", min=0, help="Client agents that only run packs.")] = 0,
    zones: Annotated[int, typer.Option("--zones", min=1, help="Spread the agents over this many zones.")] = 1,
    data_dir: DataDirOpt = None,
    base_port: Annotated[int, typer.Option("--base-port", metavar="PORT",
                                           help="First API port; Raft ports are +100, clients +200.")] = 7100,
    cpu: Annotated[int, typer.Option("--cpu", metavar="MILLICORES", min=1,
                                     help="CPU each agent offers (default: room for many virtual packs).")] = 1_000_000,
    mem: Annotated[int, typer.Option("--mem", metavar="MIB", min=1, help="Memory each agent offers.")] = 1_048_576,
    max_packs: Annotated[int, typer.Option("--max-packs", min=1, help="Packs each agent takes at most.")] = 50_000,
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http", help="Plain HTTP instead of TLS: for a throwaway cluster on this host only.")] = False,
    timeout: TimeoutOption = 30.0,
    json: JsonOption = False,
) -> None:
    """Start agents on loopback as daemons, wait for a leader, and write the client config (0600).

    Every agent serves TLS with a certificate from a new cluster CA (ca.pem and ca.key in the data
    dir); the client config names ca.pem, and the CLI checks every agent against it.
    """
    layout = localcluster.ClusterLayout(servers=servers, clients=clients, base_port=base_port, zones=zones,
                                        capacity=Resources(cpu, mem, max_packs))
    if insecure_http:
        err_console.print("warning: --insecure-http: the agents speak plain HTTP (no TLS); anyone on this host "
                          "can read their traffic", markup=False)
    result = localcluster.LocalCluster.start(layout, _data_dir(data_dir), cli_config=str(GLOBALS.config_path),
                                             timeout=timeout, insecure_http=insecure_http).info

    def human() -> None:
        console.print(f"cluster up in {result['ready_s']:.2f} s: {servers} server(s), {clients} client(s); "
                      f"leader {result['leader']}")
        console.print(f"data dir {result['data_dir']}; client config {result['config']}")
        console.print(f"TLS: agents' certificates from the cluster CA {result['ca']}" if result["tls"]
                      else "plain HTTP (--insecure-http)")
    emit(result, json, human)


@app.command("down")
def cluster_down(data_dir: DataDirOpt = None, json: JsonOption = False) -> None:
    """Stop exactly the agents started by 'cluster up' (SIGTERM, then SIGKILL after 10 s)."""
    result = localcluster.LocalCluster.open(_data_dir(data_dir)).stop()
    emit(result, json, lambda: console.print(
        f"stopped {len(result['stopped'])} agent(s)" + (f", killed {result['killed']}" if result["killed"] else "")))


@app.command("rotate-raft-password", epilog="Example: canidae cluster rotate-raft-password")
def cluster_rotate_raft_password(data_dir: DataDirOpt = None, timeout: TimeoutOption = 60.0,
                                 json: JsonOption = False) -> None:
    """Change the servers' Raft password (a new random one): every server is stopped, given it and
    started again (a short outage of the servers; pysyncobj takes one password at a time)."""
    from canidae.agent.ops.raftpassword import change_raft_password
    result = change_raft_password(localcluster.LocalCluster.open(_data_dir(data_dir)), timeout=timeout)
    emit(result, json, lambda: console.print(
        f"Raft password changed on {', '.join(result['servers'])}; leader {result['leader']} "
        f"after {result['outage_s']:.2f} s"))


@app.command("status")
def cluster_status(json: JsonOption = False) -> None:
    """Show the leader, its term and commit index, and each server's health."""
    with client() as c:
        st: dict[str, Any] = c.status()
        health = []
        for p in st["peers"]:
            try:
                h = _health(c, p["api"])
                health.append({**p, "up": True, "raft_state": h.get("raft", {}).get("state"),
                               "term": h.get("raft", {}).get("term"), "commit_index": h.get("raft", {}).get("commit_index")})
            except CanidaeError as e:  # an unreachable peer is what status shows
                health.append({**p, "up": False, "error": str(e)})
    st["peers"] = health

    def human() -> None:
        console.print(f"leader [bold]{st['leader_api'] or 'none'}[/] term {st['term']} "
                      f"commit {st['commit_index']}; {st['nodes']} node(s) ({st['nodes_down']} down), "
                      f"{st['packs']} pack(s)")
        t = Table("server", "api", "raft", "up", "raft state", "term", "commit")
        for p in health:
            t.add_row(p["id"], p["api"], p["raft"], "yes" if p["up"] else "[red]no[/]",
                      str(p.get("raft_state") or "-"), str(p.get("term") or "-"), str(p.get("commit_index") or "-"))
        console.print(t)
    emit(st, json, human)


def _health(c: Any, api: str) -> dict[str, Any]:
    return c.ask(api, "GET", "/v1/health", timeout=1.0)  # type: ignore[no-any-return]
