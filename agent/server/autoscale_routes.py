"""The autoscale routes (``/v1/autoscale/...``) on a server agent: policy, pause, decisions.

The controller (``canidae autoscale run``, ``canidae.agent.ops.autoscaler``) evaluates outside the
servers, as the Nomad Autoscaler does, and keeps every evaluation here: it records the decision
before acting and the outcome after, so the cluster holds what was decided, why, and what came
of it, whichever controller took it and however often controllers restart. Everything written
goes through Raft (``core.autoscale_state``); reads are linearizable. On a client agent these
routes are passed on to a server by the edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route

from canidae.agent.client import schema
from canidae.agent.httpedge import Edge, principal_of, query_int, read_body, request_id
from canidae.core.acl import Capability, ResourceKind
from canidae.core.autoscale_policy import Policy
from canidae.core.autoscale_state import DECISIONS_KEPT
from canidae.core.commands import (
    RecordAutoscaleDecision,
    SetAutoscaleOutcome,
    SetAutoscalePaused,
    SetAutoscalePolicy,
)
from canidae.core.errors import InvalidInput

if TYPE_CHECKING:
    from canidae.agent.server.control import ControlPlane


def autoscale_routes(plane: ControlPlane | None, edge: Edge) -> list[Route]:
    limit = edge.limit
    endpoint = edge.endpoint
    agent: Any = plane  # None on a client agent: the edge forwards before a handler runs

    async def status(request: Request) -> Any:
        last = query_int(request, "last", 10, 0, DECISIONS_KEPT)
        st = await agent.read_state(False)
        return st.autoscale.status(last)

    async def list_decisions(request: Request) -> Any:
        since = query_int(request, "since", 0, 0, 2**62)
        limit_n = query_int(request, "limit", DECISIONS_KEPT, 1, DECISIONS_KEPT)
        st = await agent.read_state(False)
        recs = [r for i, r in st.autoscale.decisions.items() if i > since][:limit_n]
        return {"records": recs, "last_id": st.autoscale.seq}

    async def show_decision(request: Request) -> Any:
        text = request.path_params["id"]
        if not text.isdigit() or len(text) > 12:
            raise InvalidInput(f"{text!r} is not a decision id (a positive integer)")
        st = await agent.read_state(False)
        return {"record": st.autoscale.get(int(text))}

    async def set_policy(request: Request) -> Any:
        body = await read_body(request, limit, schema.AutoscalePolicyIn)
        policy = Policy.from_dict(body.policy)  # refused here, with its message, before the log
        return await agent.propose(SetAutoscalePolicy(
            id=request_id(request, body.request_id), **agent.stamp(), policy=policy.to_dict(),
            by=principal_of(request).public_id))

    async def pause(request: Request, paused: bool) -> Any:
        body = await read_body(request, limit, schema.AutoscalePause)
        return await agent.propose(SetAutoscalePaused(
            id=request_id(request, body.request_id), **agent.stamp(), paused=paused, reason=body.reason,
            by=principal_of(request).public_id))

    async def pause_route(request: Request) -> Any:
        return await pause(request, True)

    async def resume_route(request: Request) -> Any:
        return await pause(request, False)

    async def record(request: Request) -> Any:
        body = await read_body(request, limit, schema.AutoscaleRecord)
        return await agent.propose(RecordAutoscaleDecision(
            id=request_id(request, body.request_id), **agent.stamp(), decision=body.decision,
            controller=body.controller, by=principal_of(request).public_id))

    async def outcome(request: Request) -> Any:
        text = request.path_params["id"]
        if not text.isdigit() or len(text) > 12 or int(text) < 1:
            raise InvalidInput(f"{text!r} is not a decision id (a positive integer)")
        body = await read_body(request, limit, schema.AutoscaleOutcome)
        return await agent.propose(SetAutoscaleOutcome(
            id=request_id(request, body.request_id), **agent.stamp(), decision_id=int(text), status=body.status,
            nodes=tuple(body.nodes), error=body.error,
            by=principal_of(request).public_id))

    o = ResourceKind.OPERATOR
    read = (o, Capability.READ, None)
    write = (o, Capability.AUTOSCALE, None)
    return [
        Route("/v1/autoscale", endpoint(status, need=read), methods=["GET"]),
        Route("/v1/autoscale/policy", endpoint(set_policy, need=write), methods=["POST"]),
        Route("/v1/autoscale/pause", endpoint(pause_route, need=write), methods=["POST"]),
        Route("/v1/autoscale/resume", endpoint(resume_route, need=write), methods=["POST"]),
        Route("/v1/autoscale/decisions", endpoint(record, need=write), methods=["POST"]),
        Route("/v1/autoscale/decisions", endpoint(list_decisions, need=read), methods=["GET"]),
        Route("/v1/autoscale/decisions/{id}", endpoint(show_decision, need=read), methods=["GET"]),
        Route("/v1/autoscale/decisions/{id}/outcome", endpoint(outcome, need=write), methods=["POST"]),
    ]


__all__ = ["autoscale_routes"]
