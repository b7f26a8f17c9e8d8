"""``canidae agent run|init|doctor``: the agent daemon of this host and its config file."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.agent.config import AgentConfig, ServerPeer, config_to_mapping, load_config, write_config
from canidae.cli.output import JsonOption, console, emit, err_console
from canidae.cli.params import (
    AgentCellOpt, AgentRegionOpt, AgentZoneOpt, CapCpuOpt, CapMemOpt, DataDirOpt, ListenOpt, NodeNameOpt,
)
from canidae.core.errors import AlreadyExists, InvalidInput
from canidae.core.types import Resources, Role

app = typer.Typer(help="Run, set up and check the agent daemon of this host.", no_args_is_help=True,
                  add_completion=False)

ConfigFileOpt = Annotated[Path, typer.Option("--config", "-c", metavar="FILE", help="The agent's TOML config.")]
RaftOpt = Annotated[str | None, typer.Option("--raft", metavar="HOST:PORT", help="Raft address (servers).")]
PeerOpt = Annotated[list[str] | None, typer.Option(
    "--peer", metavar="ID=API,RAFT",
    help="A server of the cluster, e.g. s1=10.0.0.1:7100,10.0.0.1:7200; repeatable; include this one.")]


@app.command("run")
def agent_run(
    config: ConfigFileOpt = Path("agent.toml"),
    data_dir: DataDirOpt = None,
    listen: ListenOpt = None,
    name: NodeNameOpt = None,
) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT (systemd-friendly; logs to stderr and a file).

    Settings come from defaults < the config file < CANIDAE_* environment < these flags.
    """
    from canidae.agent.daemon import run_agent
    cfg = load_config(str(config), env=os.environ,
                      overrides={"data_dir": str(data_dir) if data_dir else None, "api": listen, "node_id": name})
    raise typer.Exit(run_agent(cfg))


def _parse_peer(text: str) -> ServerPeer:
    ident, sep, rest = text.partition("=")
    api, sep2, raft = rest.partition(",")
    if not sep or not sep2:
        raise InvalidInput(f"--peer {text!r}: expected ID=API_HOST:PORT,RAFT_HOST:PORT")
    return ServerPeer(ident, api, raft)


@app.command("init")
def agent_init(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="Where to write the config.")] = Path(
        "agent.toml"),
    data_dir: DataDirOpt = None,
    listen: ListenOpt = None,
    raft: RaftOpt = None,
    peer: PeerOpt = None,
    server: Annotated[bool, typer.Option("--server/--client",
                                         help="Be a Raft voter holding cluster state, or only run packs.")] = True,
    name: NodeNameOpt = None,
    zone: AgentZoneOpt = None,
    region: AgentRegionOpt = None,
    cell: AgentCellOpt = None,
    cpu: CapCpuOpt = None,
    mem: CapMemOpt = None,
    max_packs: Annotated[int, typer.Option("--max-packs", min=1, help="Packs this node takes at most.")] = 1000,
    identity: Annotated[Path, typer.Option(
        "--identity", metavar="FILE",
        help="The cluster's identity (signing key, Raft password, admin token; mode 0600), made when missing: "
             "a new cluster. Keep it with the operators; give the same file to init every agent of the cluster."
    )] = Path("identity.toml"),
    ca: Annotated[Path | None, typer.Option(
        "--ca", metavar="DIR",
        help="Where the cluster's TLS CA is kept (ca.pem, and ca.key mode 0600), made when missing; default: "
             "the identity file's directory. Keep it with the operators: no agent gets ca.key.")] = None,
    san: Annotated[list[str] | None, typer.Option(
        "--san", metavar="NAME",
        help="Another IP or DNS name the agent is reached by, for its certificate; repeatable "
             "(needed when --listen is 0.0.0.0).")] = None,
    insecure_http: Annotated[bool, typer.Option(
        "--insecure-http",
        help="Serve plain HTTP, no certificate: for a throwaway cluster on loopback only (refused elsewhere).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json: JsonOption = False,
) -> None:
    """Write an agent config (TOML, mode 0600) for this host, with its own node credential and TLS certificate.

    The config holds this agent's credential (it acts only as this node), the public half of the
    cluster's key and the admin token's hash; on a server, the Raft password. Never the admin
    token or the signing key: those stay in the identity file (the admin token is for the CLI).

    Next to the config go the cluster CA's certificate (ca.pem) and this agent's certificate and
    key (NAME.pem, NAME.key mode 0600), issued by the cluster CA for the agent's address (and
    --san names); never the CA's key.
    """
    from canidae.agent import certs
    from canidae.agent.identity import Identity
    if out.exists() and not force:
        raise AlreadyExists(f"{out} exists (use --force to overwrite)")
    made = not identity.exists()
    ident = Identity.new() if made else Identity.load(str(identity))
    node_id = name or socket.gethostname().split(".")[0]
    api = listen or "127.0.0.1:7100"
    role = Role.SERVER if server else Role.CLIENT
    peers = tuple(_parse_peer(p) for p in (peer or []))
    raft_addr = raft or ("127.0.0.1:7200" if server else "")
    if server and not any(p.raft == raft_addr for p in peers):
        peers = peers + (ServerPeer(node_id, api, raft_addr),)
    ncpu = (os.cpu_count() or 1) * 1000
    mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    cfg = AgentConfig(node_id=node_id, role=role, api=api, raft=raft_addr if server else "",
                      zone=zone or "z1", region=region or "r1", cell=cell or "c1",
                      data_dir=str(data_dir or Path("canidae-data").absolute()),
                      token=ident.node_credential(node_id, role), identity_public_key=ident.public_key,
                      admin_token_hash=ident.admin_hash, cluster_password=ident.cluster_password if server else "",
                      servers=peers, capacity=Resources(cpu or ncpu, mem or mem_mib, max_packs),
                      insecure_http=insecure_http)
    tls = None if insecure_http else certs.AgentTLS.in_dir(str(out.absolute().parent), node_id)
    if tls is not None:
        cfg = replace(cfg, tls_ca=tls.ca, tls_cert=tls.cert, tls_key=tls.key)
    # Validate exactly as 'agent run' will, so a written file always starts.
    from canidae.agent.config import config_from_mapping
    config_from_mapping(config_to_mapping(cfg))
    names = [] if tls is None else certs.names_for(api, san or [])
    if made:
        ident.write(str(identity))
    ca_made = False
    if tls is not None:
        authority, ca_made = certs.ClusterCA.open_or_create(str(ca or identity.absolute().parent))
        certs.write_agent_files(authority, node_id, names, str(out.absolute().parent), node_id)
    else:
        err_console.print("warning: --insecure-http: this agent serves plain HTTP (no TLS); "
                          "for a throwaway loopback cluster only", markup=False)
    write_config(cfg, str(out))
    keys = _ensure_secret_keys(cfg.data_dir)
    shown: dict[str, Any] = {k: v for k, v in config_to_mapping(cfg).items()
                             if k not in ("token", "cluster_password")}
    emit({"written": str(out), "identity": str(identity), "identity_created": made, "config": shown,
          "secret_keys": keys, "tls": None if tls is None else {**tls.__dict__, "names": names, "ca_created": ca_made}},
         json,
         lambda: console.print(f"wrote {out} (mode 0600) for {role.value} {node_id}"
                               + (f"; new cluster identity in {identity} (mode 0600: the admin token is there)"
                                  if made else "")
                               + ("" if tls is None else f"; certificate {tls.cert} for {', '.join(names)}"
                                  + (" from a new cluster CA (keep ca.key with the operators)" if ca_made else ""))
                               + f"; pack secrets are sealed with {keys}: every agent of the cluster needs the same file"))


def _ensure_secret_keys(data_dir: str) -> str:
    """The cluster's secret key file in the data dir: kept when it exists, else made (mode 0600)."""
    from canidae.agent.secretbox import Keyring, key_file
    path = key_file(data_dir)
    if not os.path.exists(path):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        Keyring.new().save(path)
    return path


@app.command("doctor", help=(
    "Check that this host can run its agent: pack isolation (cgroup v2, cgroup v1 or rlimits), per-pack "
    "users, rlimits, ports, the data dir, the TLS files, the clock and the peers.\n\n"
    "With the agent running, it reports the isolation the agent chose at start; otherwise the one it would "
    "choose. Exits 1 when a check fails (warnings do not)."))
def agent_doctor(config: ConfigFileOpt = Path("agent.toml"), json: JsonOption = False) -> None:
    from canidae.agent.ops.doctor import run_checks
    cfg = load_config(str(config), env=os.environ)
    checks = run_checks(cfg, str(config))
    failed = [c for c in checks if c["status"] == "fail"]

    def human() -> None:
        t = Table("check", "status", "detail")
        style = {"ok": "green", "warn": "yellow", "fail": "red"}
        for c in checks:
            t.add_row(c["check"], f"[{style[c['status']]}]{c['status']}[/]", c["detail"])
        console.print(t)
    emit({"node": cfg.node_id, "ok": not failed, "checks": checks}, json, human)
    if failed:
        raise typer.Exit(1)
