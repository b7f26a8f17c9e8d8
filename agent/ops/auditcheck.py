"""Checking an agent's audit log on the auditor's side: fetched from the agent, or read from a data dir.

The log's bytes come either from the agent (``GET /v1/audit?raw``, exactly as stored) or from a
copy of its data dir (``<dir>/audit/seg-*.log`` and ``key.pub``); the signed heads come from the
cluster's replicated state (``GET /v1/audit/checkpoints``) or from a file holding that answer.
``check`` then runs ``canidae.core.auditseg.check_log`` with the Ed25519 keys the cluster
registered, so nothing the audited agent says about itself is trusted but its bytes. The heads
are fetched before the log, so every committed head is one the fetched log must contain.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from canidae.agent.client import Client
from canidae.core.audit import Checkpoint
from canidae.core.audit_heads import public_key_bytes
from canidae.core.auditseg import LogCheck, check_log, first_seq_of
from canidae.core.errors import InvalidInput, NotFound

AUDIT_DIR = "audit"
PUBLIC_FILE = "key.pub"


def fetch_heads(c: Client, agent: str) -> dict[str, Any]:
    return c.request("GET", "/v1/audit/checkpoints", params={"agent": agent})  # type: ignore[no-any-return]


def fetch_log(c: Client, agent: str | None) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """(what the agent says of its log: agent, key_id, head; its segments as stored)."""
    params: dict[str, Any] = {"raw": 1}
    if agent:
        params["agent"] = agent
    meta = c.request("GET", "/v1/audit", params=params, timeout=60.0)
    segments = []
    for name in meta["segments"]:
        got = c.request("GET", "/v1/audit", params={**params, "segment": name}, timeout=60.0)
        segments.append((name, base64.b64decode(got["data_b64"])))
    return meta, segments


def read_dir(data_dir: str) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The same from a copy of an agent's data dir (or its ``audit`` dir)."""
    d = data_dir if os.path.exists(os.path.join(data_dir, PUBLIC_FILE)) else os.path.join(data_dir, AUDIT_DIR)
    try:
        names = sorted(n for n in os.listdir(d) if first_seq_of(n) is not None)
    except FileNotFoundError:
        raise NotFound(f"{data_dir} holds no audit log (no {AUDIT_DIR}/ dir)") from None
    meta: dict[str, Any] = {"agent": "", "key_id": ""}
    try:
        with open(os.path.join(d, PUBLIC_FILE), "rb") as f:
            pub = json.loads(f.read())
        meta.update(agent=str(pub["node"]), key_id=str(pub["key_id"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no key: the chain is checked, checkpoints cannot be matched to the log
    segments = []
    for name in names:
        with open(os.path.join(d, name), "rb") as f:
            segments.append((name, f.read()))
    return meta, segments


def read_heads_file(path: str) -> dict[str, Any]:
    """A saved ``GET /v1/audit/checkpoints`` answer (``canidae audit checkpoints --json``)."""
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"--checkpoints {path}: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("keys"), list):
        raise InvalidInput(f"--checkpoints {path}: not the output of 'canidae audit checkpoints --json'")
    return d


def check(segments: list[tuple[str, bytes]], key_id: str, heads: dict[str, Any] | None) -> tuple[LogCheck, dict[str, Any]]:
    """Verify the log, and its checkpoints when ``heads`` (the cluster's record) is given.

    A log whose key the cluster does not know, while the cluster knows other keys of the agent,
    is refused: a replaced log must not pass for the one the checkpoints pin."""
    keys = {k["key_id"]: k for k in (heads or {}).get("keys", [])}
    info: dict[str, Any] = {"key_id": key_id, "cluster_keys": list(keys)}
    if heads is None:
        info["checkpoints"] = "not checked (no record of signed heads)"
        return check_log(segments), info
    if key_id not in keys:
        result = check_log(segments)
        if keys:
            from canidae.core.audit import Problem, VerifyResult
            r = result.result
            bad = VerifyResult(False, r.checked, r.head_seq, r.head_hash, Problem.BAD_SIGNATURE, None, None,
                               f"the log is signed by key {key_id or '(none)'}, which the cluster never registered "
                               f"for this agent (it knows {', '.join(keys)}): the log was replaced")
            return LogCheck(bad), info
        info["checkpoints"] = "none committed yet"
        return result, info
    publics = {k: Ed25519PublicKey.from_public_bytes(public_key_bytes(v["public_key"])) for k, v in keys.items()}

    def verify_sig(kid: str, message: bytes, signature: bytes) -> bool:
        key = publics.get(kid)
        if key is None:
            return False
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            return False

    cps = [Checkpoint.from_dict(c) for c in keys[key_id]["checkpoints"]]
    info["newest_checkpoint"] = cps[-1].to_dict() if cps else None
    return check_log(segments, cps, verify_sig), info


__all__ = ["check", "fetch_heads", "fetch_log", "read_dir", "read_heads_file"]
