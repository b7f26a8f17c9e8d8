"""Reading an agent's audit log over the API, and asking it for a checkpoint now.

    GET  /v1/audit?agent=N&after=S&limit=L&newest&token=A&action=X&since=MS&outcome=O&wait=W
         records of agent N's log (this agent's when N is absent), oldest first; ``newest`` for
         the last ``limit``; ``wait`` long-polls for records after ``after`` (``audit tail -f``)
    GET  /v1/audit?raw&agent=N[&segment=NAME]
         the log exactly as stored: the list of segments with the key that signs the log, or one
         segment's bytes (base64): what ``audit verify`` checks on the caller's side
    POST /v1/audit/checkpoint?agent=N
         sign this (or N's) head now and commit it through Raft

Reading needs the ``read`` capability on ``audit`` (admin token, server agents, or an API token
whose policies grant it; API tokens are checked by server agents only: ask a server). Another
agent's log is reached through the servers: a client agent passes the request on to a server,
which checks the caller and fetches the log from agent N with its own credential.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from canidae.agent.client.link import HOP, AgentHops, ServerLink
from canidae.agent.httpedge import Edge, query_bool, query_int
from canidae.agent.node.auditing import Checkpointer
from canidae.agent.node.auditlog import AuditLog
from canidae.core.acl import Capability, ResourceKind
from canidae.core.audit import AuditRecord, Outcome
from canidae.core.auditseg import first_seq_of
from canidae.core.errors import InvalidInput, NotFound, Unavailable
from canidae.core.tokens import ACCESSOR_RE
from canidae.core.types import validate_name

MAX_WAIT_S = 30
MAX_LIMIT = 1000


def record_filter(request: Request) -> Callable[[AuditRecord], bool]:
    """``token``, ``action`` (exact, or a prefix ending in ``*``), ``since`` (ms) and ``outcome``."""
    q = request.query_params
    token = q.get("token")
    if token is not None and not ACCESSOR_RE.match(token) and token != "":
        raise InvalidInput(f"token must be an accessor id (ca_ and 32 hex digits), got {token!r}")
    action = q.get("action")
    since = query_int(request, "since", 0, 0, 1 << 62)
    outcome = q.get("outcome")
    if outcome is not None and outcome not in {o.value for o in Outcome}:
        raise InvalidInput(f"outcome must be one of {', '.join(o.value for o in Outcome)}")

    def keep(r: AuditRecord) -> bool:
        if token is not None and r.accessor != token:
            return False
        if action:
            if action.endswith("*") and not r.action.startswith(action[:-1]):
                return False
            if not action.endswith("*") and r.action != action:
                return False
        if r.at_ms < since:
            return False
        return outcome is None or r.outcome.value == outcome
    return keep


def routes(audit_log: AuditLog | None, checkpointer: Checkpointer | None, edge: Edge, me: str, link: ServerLink,
           hops: AgentHops, address_of: Callable[[str], str | None] | None) -> list[Route]:
    """``address_of`` finds another agent's API address in this server's replica (None on a
    client agent, which passes requests for other agents on to a server)."""

    def target(request: Request) -> str | None:
        agent = request.query_params.get("agent")
        if agent is None or agent == me:
            return None
        validate_name("node", agent)
        if request.headers.get(HOP):
            raise NotFound(f"this is agent {me}, not {agent}")
        return agent

    async def elsewhere(request: Request, agent: str, timeout: float) -> Any:
        params = dict(request.query_params)
        if address_of is None:
            status, content = await link.pass_on(request.method, request.url.path, params=params, body=None,
                                                 auth=request.headers.get("authorization", ""), timeout=timeout)
            return Response(content, status_code=status, media_type="application/json")
        address = address_of(agent)
        if address is None:
            raise NotFound(f"no agent {agent!r} in the cluster")
        if not address:
            raise Unavailable(f"agent {agent} has no API address")
        return await hops.send(address, request.method, request.url.path, params=params, timeout=timeout)

    def local_log() -> AuditLog:
        if audit_log is None:
            raise Unavailable(f"agent {me} keeps no audit log")
        return audit_log

    async def read(request: Request) -> Any:
        wait = query_int(request, "wait", 0, 0, MAX_WAIT_S)
        agent = target(request)
        if agent is not None:
            return await elsewhere(request, agent, wait + 10.0)
        alog = local_log()
        if query_bool(request, "raw"):
            return raw(request, alog)
        after = query_int(request, "after", 0, 0, 1 << 62)
        limit = query_int(request, "limit", 100, 1, MAX_LIMIT)
        newest = query_bool(request, "newest")
        keep = record_filter(request)
        deadline = time.monotonic() + wait
        while True:
            changed, scanned = alog.appended, alog.durable_seq
            got = alog.records(after=after, keep=keep, limit=limit, newest=newest)
            left = deadline - time.monotonic()
            if got or left <= 0:
                break
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass
        head = {"seq": alog.durable_seq, "hash": alog.durable_hash}
        return {"agent": me, "key_id": alog.key_id, "head": head, "records": [r.to_dict() for r in got],
                # where a follower goes on from: past what this scan saw, matching or not
                "next_after": got[-1].seq if got and (len(got) == limit or newest) else max(after, scanned)}

    def raw(request: Request, alog: AuditLog) -> Any:
        segment = request.query_params.get("segment")
        if segment is None:
            return {"agent": me, "key_id": alog.key_id, "public_key": alog.public_key,
                    "head": {"seq": alog.durable_seq, "hash": alog.durable_hash},
                    "segments": [name for _, name in alog.segments()]}
        if first_seq_of(segment) is None:
            raise InvalidInput(f"{segment!r} is not a segment name")
        try:
            data = alog.read_segment(segment)
        except FileNotFoundError:
            raise NotFound(f"agent {me} has no segment {segment}") from None
        return {"agent": me, "segment": segment, "data_b64": base64.b64encode(data).decode("ascii")}

    async def checkpoint(request: Request) -> Any:
        agent = target(request)
        if agent is not None:
            return await elsewhere(request, agent, 15.0)
        if checkpointer is None:
            raise Unavailable(f"agent {me} keeps no audit log")
        return {"agent": me, **await checkpointer.commit_now()}

    need = (ResourceKind.AUDIT, Capability.READ, None)
    return [
        Route("/v1/audit", edge.endpoint(read, forward=False, need=need), methods=["GET"]),
        Route("/v1/audit/checkpoint", edge.endpoint(checkpoint, forward=False, need=need), methods=["POST"]),
    ]


__all__ = ["record_filter", "routes"]
