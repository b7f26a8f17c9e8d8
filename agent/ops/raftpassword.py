"""Changing the Raft transport password of a local cluster: a coordinated restart of the servers.

pysyncobj encrypts its peer traffic with one password and takes no second one, so servers with the
old and the new password cannot talk: a rolling change would split the group. The change is
therefore a short full outage of the servers (client agents keep running their packs and retry):

1. check the keyrings are seeded (API token hashes no longer depend on the password, see
   ``canidae.agent.keyring``; before they are, a change would orphan every API token);
2. stop every server (SIGTERM: each flushes its journal);
3. write every server's ``agent.toml`` with the new ``cluster_password`` (all files first to
   ``.new``, then renamed, so a failure leaves the old configs) and the operator's
   ``identity.toml``;
4. start every server again and wait for a leader and for each server to be ready.

The journal and snapshots are not encrypted with the password (only the wire is), so the state
survives as it is. A fleet outside ``cluster up`` follows the same steps by hand (README, "Keys").
"""

from __future__ import annotations

import os
import secrets
import time
import tomllib
from typing import Any

import tomli_w

from canidae.agent.identity import Identity
from canidae.agent.ops.localcluster import IDENTITY_FILE, LocalCluster
from canidae.agent.ops.waiting import wait_until
from canidae.core.errors import WrongState


def _rewrite(path: str, password: str) -> str:
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    doc["cluster_password"] = password
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(doc, f)
    return tmp


def change_raft_password(cluster: LocalCluster, new: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Change the servers' Raft password by a coordinated restart; returns what was done."""
    with cluster.client() as c:
        purposes = {k["purpose"] for k in c.keys()}
    if "token" not in purposes:
        raise WrongState("the token keyring is not seeded yet (a leader does it at once): try again in a moment")
    password = new or secrets.token_urlsafe(32)
    servers = cluster.servers()
    staged = [(_rewrite(a["config"], password), a["config"]) for a in servers]  # before anything stops
    t0 = time.monotonic()
    for a in servers:
        if cluster.alive(a):
            os.kill(a["pid"], 15)
    for a in servers:
        wait_until(lambda a=a: not cluster.alive(a), timeout, f"server {a['id']} stopped")
    for tmp, path in staged:
        os.replace(tmp, path)
    ident_path = os.path.join(cluster.data_dir, IDENTITY_FILE)
    if os.path.exists(ident_path):
        ident = Identity.load(ident_path)
        Identity(ident.signing_key, password, ident.admin_token).write(ident_path)
    for a in servers:
        cluster.restart(a)
    leader = cluster.wait_leader(timeout)
    with cluster.client(timeout=5.0) as c:
        wait_until(lambda: c.status(), timeout, "the cluster answers a linearizable read")
    return {"ok": True, "servers": [a["id"] for a in servers], "leader": leader,
            "outage_s": round(time.monotonic() - t0, 3)}


__all__ = ["change_raft_password"]
