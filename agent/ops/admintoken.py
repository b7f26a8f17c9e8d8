"""Rotating the bootstrap (admin) token: a new one made here, only its hash sent to the cluster.

``rotate_admin_token`` makes a new admin token (256 random bits, ``cs_...``), has the cluster
replace the admin token's hash (``POST /v1/acl/bootstrap``, a ``KeyringOp`` ``admin``: in force on
every server once applied, answered after every reachable server applied it), then writes the
new token where the operator's old one was: the CLI config, the cluster's ``identity.toml`` and
``cluster.json`` in the data dir the config names (``cluster up``'s). Client agents take the new
hash from the servers within a second (and keep it in their data dir across restarts); this
waits until each client agent the cluster lists takes the new token. The old token is refused
from then on by every agent; the new one never leaves this machine.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

import tomli_w

from canidae.agent.client import Client, Target
from canidae.agent.client.calls import read_cli_config
from canidae.agent.identity import Identity, admin_token_hash
from canidae.core.errors import CanidaeError
from canidae.core.tokens import format_secret

CLIENTS_WAIT_S = 10.0


def _write_toml(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(doc, f)
    os.replace(tmp, path)


def _client_agents_take(target: Target, new: str, timeout: float) -> tuple[list[str], list[str]]:
    """(confirmed, not confirmed): client agents that answer an authenticated health with the new token."""
    with Client(target._replace(token=new), timeout=1.0) as c:
        nodes = [n for n in c.nodes() if n.get("role") == "client" and n.get("state") != "down"]
        pending = {n["id"]: n["address"] for n in nodes}
        confirmed: list[str] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for node, addr in list(pending.items()):
                try:  # the agent itself, not failed over: only its own answer confirms it
                    if c.ask(addr, "GET", "/v1/health").get("node") == node:
                        confirmed.append(node)
                        del pending[node]
                except CanidaeError:
                    pass
            if pending:
                time.sleep(0.1)
    return confirmed, sorted(pending)


def rotate_admin_token(target: Target, config_path: str) -> dict[str, Any]:
    new = format_secret(secrets.token_bytes(32))
    with Client(target) as c:
        answer = c.rotate_admin_hash(admin_token_hash(new))
    written: list[str] = []
    cfg = read_cli_config(config_path)
    if cfg.get("token") == target.token:
        _write_toml(config_path, {**cfg, "token": new})
        written.append(config_path)
    data_dir = cfg.get("data_dir")
    if isinstance(data_dir, str) and data_dir:
        ident_path = os.path.join(data_dir, "identity.toml")
        if os.path.exists(ident_path):
            ident = Identity.load(ident_path)
            if ident.admin_token == target.token:
                Identity(ident.signing_key, ident.cluster_password, new).write(ident_path)
                written.append(ident_path)
        state_path = os.path.join(data_dir, "cluster.json")
        if os.path.exists(state_path):
            with open(state_path) as f:
                st = json.load(f)
            if st.get("token") == target.token:
                st["token"] = new
                fd = os.open(state_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(st, f, indent=1)
                os.replace(state_path + ".tmp", state_path)
                written.append(state_path)
    confirmed, pending = _client_agents_take(target, new, CLIENTS_WAIT_S)
    out: dict[str, Any] = {"ok": True, "admin_epoch": answer.get("admin_epoch"), "written": written,
                           "in_force_on_all_servers": answer.get("in_force_on_all_servers", False),
                           "not_confirmed": answer.get("not_confirmed", []),
                           "client_agents_confirmed": confirmed, "client_agents_not_confirmed": pending}
    if config_path not in written:
        # The token came from elsewhere (CANIDAE_TOKEN, --token): it is shown, or it would be lost.
        out["token"] = new
    return out


__all__ = ["rotate_admin_token"]
