"""Typed calls of the exec and yip API over ``canidae.agent.client.Client``: what the CLI, tests and
benchmarks use for pack logs, signals, process status, agent info and yips. Nothing else here."""

from __future__ import annotations

import uuid
from typing import Any

from canidae.agent.client import Client
from canidae.agent.client.calls import segment


def pack_logs(c: Client, pack: str, *, member: int | None = None, tail: int | None = None,
              cursors: dict[int, int] | None = None, wait: int = 0) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if member is not None:
        params["member"] = member
    if tail is not None:
        params["tail"] = tail
    if cursors:
        params["cursor"] = ",".join(f"{m}:{c}" for m, c in sorted(cursors.items()))
    if wait:
        params["wait"] = wait
    return c.request("GET", f"/v1/exec/packs/{segment('pack', pack)}/logs", params=params, timeout=wait + 10.0)  # type: ignore[no-any-return]


def pack_kill(c: Client, pack: str, signal: str = "KILL") -> dict[str, Any]:
    return c.request("POST", f"/v1/exec/packs/{segment('pack', pack)}/kill", json={"signal": signal})  # type: ignore[no-any-return]


def pack_processes(c: Client, pack: str) -> dict[str, Any]:
    return c.request("GET", f"/v1/exec/packs/{segment('pack', pack)}")["status"]  # type: ignore[no-any-return]


def exec_info(c: Client) -> dict[str, Any]:
    return c.request("GET", "/v1/exec/info")  # type: ignore[no-any-return]


def yip_send(c: Client, pack: str, *, text: str | None = None, data: Any = None, yip_id: str | None = None,
             retry_for: float = 5.0) -> dict[str, Any]:
    """Send one yip; its id stays the same across retries, so the mailbox keeps it once."""
    body: dict[str, Any] = {"id": yip_id or "y-" + uuid.uuid4().hex[:20]}
    if text is not None:
        body["text"] = text
    else:
        body["data"] = data
    return c.request("POST", f"/v1/yips/{segment('pack', pack)}", json=body, retry_for=retry_for)  # type: ignore[no-any-return]


def yip_recv(c: Client, pack: str, *, after: int = 0, ack: int = 0, wait: int = 0, limit: int = 100
             ) -> dict[str, Any]:
    params: dict[str, Any] = {"after": after, "max": limit}
    if ack:
        params["ack"] = ack
    if wait:
        params["wait"] = wait
    return c.request("GET", f"/v1/yips/{segment('pack', pack)}", params=params, timeout=wait + 10.0)  # type: ignore[no-any-return]


def yip_ack(c: Client, pack: str, through: int) -> dict[str, Any]:
    return c.request("POST", f"/v1/yips/{segment('pack', pack)}/ack", json={"through": through}, retry_for=5.0)  # type: ignore[no-any-return]
