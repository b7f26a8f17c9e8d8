"""The cluster routes of the agent API (``/v1/...``) over the ``ControlPlane``.

What a request means is decided by the ``ControlPlane`` (``canidae.agent.server.control``) and
by ``canidae.core``; this module parses and validates the request (clear 4xx answers) and calls
it. Authentication, forwarding from client agents and error answers are the ``Edge``'s
(``canidae.agent.httpedge``). On a client agent there is no control plane: every route here is
passed on to a server by the edge before its handler would run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from canidae.agent.client import schema
from canidae.agent.client.openapi import document_bytes
from canidae.agent.httpedge import (
    HANDLER,
    Edge,
    principal_of,
    query_bool,
    query_int,
    read_body,
    request_id,
)
from canidae.core.acl import Capability, ResourceKind
from canidae.core.errors import InvalidInput, NotFound, PermissionDenied
from canidae.core.types import (
    NodeState,
    PackSpec,
    PackState,
    validate_env_name,
    validate_name,
)

if TYPE_CHECKING:
    from canidae.agent.server.control import ControlPlane


def parse_spec(spec: schema.SpecIn, seal: Callable[[dict[str, str]], dict[str, str]]) -> PackSpec:
    """Core's spec of a decoded request spec; its plain ``secrets`` are sealed by ``seal`` (the
    loader variables a spec may not set are refused first, by core, before anything is sealed)."""
    for k in spec.secrets:
        validate_env_name("secret", k)
    return spec.to_core(seal(spec.secrets) if spec.secrets else None)


def by(request: Request) -> str:
    """Who acts, as events record it: the public id of the request's credential."""
    return principal_of(request).public_id


METRICS_LEVELS = ("cluster", "zone", "region", "cell", "node")
PACK_SORTS = ("cpu", "mem", "restarts", "yips", "name")


def metrics_query(request: Request) -> dict[str, Any]:
    """``by`` (level), ``zone`` and ``cell`` filters, ``packs`` (how many sampled packs, 0..1000)
    and ``sort`` (their order) of ``GET /v1/metrics/cluster``, checked."""
    q = request.query_params
    by = q.get("by", "cell")
    if by not in METRICS_LEVELS:
        raise InvalidInput(f"by must be one of {', '.join(METRICS_LEVELS)}")
    out: dict[str, Any] = {"by": by, "packs": query_int(request, "packs", 0, 0, 1000)}
    sort = q.get("sort", "cpu")
    if sort not in PACK_SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(PACK_SORTS)}")
    out["sort"] = sort
    for key in ("zone", "cell"):
        if q.get(key):
            value = q[key]
            for part in value.split("/"):
                validate_name(key, part)
            out[key] = value
    return out


MAX_WAIT_S = 60  # the longest a blocking read waits
DEFAULT_WAIT_S = 30  # what it waits when the request gives an index but no wait
INDEX_HEADER = "X-Canidae-Index"


def blocking_query(request: Request) -> tuple[int | None, float]:
    """``index`` and ``wait`` (whole seconds, at most ``MAX_WAIT_S``) of a blocking read, checked:
    (None, 0) for a plain read. ``wait`` without ``index`` is refused: it would wait for nothing."""
    q = request.query_params
    if "index" not in q:
        if "wait" in q:
            raise InvalidInput("wait needs index: the modify index the answer must be newer than")
        return None, 0.0
    return query_int(request, "index", 0, 0, 2**62), float(query_int(request, "wait", DEFAULT_WAIT_S, 0, MAX_WAIT_S))


def with_index(result: dict[str, Any]) -> Response:
    """A read that carries a modify index: in the body (``index``) and in ``X-Canidae-Index``."""
    return Response(msgspec.json.encode(result), media_type="application/json",
                    headers={INDEX_HEADER: str(result["index"])})


def cluster_routes(plane: ControlPlane | None, edge: Edge, health: Any) -> list[Route]:
    """The cluster routes. ``plane`` is None on a client agent (the edge forwards these routes);
    ``health`` answers the liveness route (the whole story only to a credential)."""
    limit = edge.limit
    endpoint = edge.endpoint
    agent: Any = plane  # None on a client agent: the edge forwards before a handler runs

    async def health_route(request: Request) -> Any:
        # Without a credential: only that the agent is up (no pid, leader, term or index).
        return health() if edge.identify(request) is not None else {"ok": True}

    async def status(request: Request) -> Any:
        return await agent.cluster_status()

    async def list_nodes(request: Request) -> Any:
        return await agent.list_nodes(stale=query_bool(request, "stale"))

    async def show_node(request: Request) -> Any:
        return await agent.show_node(validate_name("node", request.path_params["node"]),
                                     stale=query_bool(request, "stale"))

    async def register_node(request: Request) -> Any:
        body = await read_body(request, limit, schema.RegisterNode)
        who = principal_of(request)
        # a client agent registers itself, as a client, and nothing else
        if not who.is_admin and (body.node.id != who.name or body.node.role != "client"):
                raise PermissionDenied(f"the credential of {who.describe()} may only register client node {who.name}")
        return await agent.register_node(msgspec.to_builtins(body.node), request_id(request, body.request_id))

    async def set_node_state(request: Request) -> Any:
        body = await read_body(request, limit, schema.SetNodeState)
        state = NodeState(body.state)
        edge.require(request, ResourceKind.NODE, request.path_params["node"],
                     Capability.CORDON if state in (NodeState.READY, NodeState.CORDONED) else Capability.DRAIN)
        return await agent.set_node_state(validate_name("node", request.path_params["node"]), state,
                                          body.reason, request_id(request, body.request_id),
                                          plan=body.plan, by=by(request))

    async def remove_node(request: Request) -> Any:
        node = validate_name("node", request.path_params["node"])
        edge.require(request, ResourceKind.NODE, node, Capability.DRAIN)
        body = await read_body(request, limit, schema.WriteIn)
        return await agent.remove_node(node, request_id(request, body.request_id), by=by(request))

    async def revoke_node(request: Request) -> Any:
        body = await read_body(request, limit, schema.RevokeNodeIn)
        who = principal_of(request)
        if not who.is_admin:  # an operator's act: not an API token's, whatever its policies
            raise PermissionDenied(f"only the admin token may revoke a node credential, not {who.describe()}")
        return await agent.revoke_node(validate_name("node", request.path_params["node"]),
                                       body.reason, request_id(request, body.request_id), by=by(request))

    async def heartbeat(request: Request) -> Any:
        body = await read_body(request, limit, schema.Heartbeat)
        return await agent.heartbeat(validate_name("node", request.path_params["node"]), msgspec.to_builtins(body))

    async def assignments(request: Request) -> Any:
        node = validate_name("node", request.path_params["node"])
        after = query_int(request, "after", 0, 0, 2**62)
        wait = query_int(request, "wait", 0, 0, 30)
        return await agent.assignments(node, after, float(wait))

    async def resync(request: Request) -> Any:
        node = validate_name("node", request.path_params["node"])
        body = await read_body(request, limit, schema.Resync)
        return await agent.resync(node, body.running)

    async def reports(request: Request) -> Any:
        body = await read_body(request, limit, schema.Reports)
        return await agent.report_packs(validate_name("node", request.path_params["node"]), body.reports,
                                        request_id(request, body.request_id))

    async def create_packs(request: Request) -> Any:
        body = await read_body(request, limit, schema.CreatePacks)
        if (body.spec is None) == (body.specs is None):
            raise InvalidInput("give exactly one of 'spec' or 'specs'")
        given = [body.spec] if body.spec is not None else body.specs or []
        names = [f"{given[0].name}-{i}" for i in range(body.count)] if body.count else [s.name for s in given]
        for name in names:
            edge.require(request, ResourceKind.PACK, name, Capability.SPAWN)
        specs = [parse_spec(s, agent.seal_secrets) for s in given]
        return await agent.create_packs(specs, body.count, body.place, request_id(request, body.request_id),
                                        keep_pending=body.keep_pending, by=by(request))

    async def delete_packs(request: Request) -> Any:
        body = await read_body(request, limit, schema.DeletePacks)
        for n in body.names:
            edge.require(request, ResourceKind.PACK, n, Capability.DELETE)
        return await agent.delete_packs(body.names, body.force, request_id(request, body.request_id), by=by(request))

    async def list_packs(request: Request) -> Any:
        node = request.query_params.get("node")
        state = request.query_params.get("state")
        # crashlooping: running packs whose members keep failing (a condition, not a state)
        crashlooping = state == "crashlooping"
        try:
            pstate = PackState.RUNNING if crashlooping else PackState(state) if state else None
        except ValueError:
            raise InvalidInput(f"unknown pack state {state!r}: one of "
                               f"{', '.join([*(s.value for s in PackState), 'crashlooping'])}") from None
        after = request.query_params.get("after")
        index, wait = blocking_query(request)
        return with_index(await agent.list_packs(
            node=validate_name("node", node) if node else None, state=pstate,
            after=validate_name("pack", after) if after else None,
            limit=query_int(request, "limit", 1000, 1, 10_000), stale=query_bool(request, "stale"),
            crashlooping=crashlooping, count=query_int(request, "total", 1, 0, 1) == 1, index=index, wait=wait))

    async def show_pack(request: Request) -> Any:
        name = validate_name("pack", request.path_params["name"])
        index, wait = blocking_query(request)
        return with_index(await agent.show_pack(name, stale=query_bool(request, "stale"), index=index, wait=wait))

    async def pack_action(request: Request) -> Any:
        name = validate_name("pack", request.path_params["name"])
        action = request.path_params["action"]
        if action not in ("stop", "place", "migrate"):
            raise NotFound(f"no action {action!r} for packs")
        edge.require(request, ResourceKind.PACK, name, {"stop": Capability.STOP, "place": Capability.SPAWN,
                                                         "migrate": Capability.MIGRATE}[action])
        body = await read_body(request, limit, schema.PackActionIn)
        if body.to is not None and action != "migrate":
            raise InvalidInput(f"to: only migrate takes a node, not {action}")
        if body.keep_pending is not None and action != "place":
            raise InvalidInput(f"keep_pending: only place takes it, not {action}")
        if action == "migrate":
            return await agent.migrate_pack(name, body.to, request_id(request, body.request_id), by=by(request))
        return await agent.pack_action(name, action, request_id(request, body.request_id),
                                       keep_pending=body.keep_pending is not False, by=by(request))

    async def rebalance(request: Request) -> Any:
        body = await read_body(request, limit, schema.Rebalance)
        return await agent.rebalance(body.plan, request_id(request, body.request_id), by=by(request))

    async def pack_history(request: Request) -> Any:
        since = query_int(request, "since", 0, 0, 1 << 62)  # ms since the epoch; 0: everything
        return await agent.pack_history(validate_name("pack", request.path_params["name"]), since_ms=since or None)

    async def ring(request: Request) -> Any:
        return await agent.ring_view(stale=query_bool(request, "stale"))

    async def ring_lookup(request: Request) -> Any:
        return await agent.ring_lookup(validate_name("pack", request.path_params["name"]),
                                       stale=query_bool(request, "stale"))

    async def digest(request: Request) -> Any:
        if agent is None:
            raise NotFound("a client agent holds no replicated state")
        return agent.state_digest()

    async def metrics_cluster(request: Request) -> Any:
        return await agent.metrics_tree(metrics_query(request))

    async def openapi(request: Request) -> Any:
        return Response(document_bytes(), media_type="application/json")

    P, N, O = ResourceKind.PACK, ResourceKind.NODE, ResourceKind.OPERATOR
    read = Capability.READ
    routes = [
        Route("/v1/health", endpoint(health_route, auth=False, forward=False), methods=["GET"]),
        Route("/v1/openapi.json", endpoint(openapi, forward=False, need=HANDLER), methods=["GET"]),
        Route("/v1/status", endpoint(status, need=(O, read, None)), methods=["GET"]),
        Route("/v1/digest", endpoint(digest, forward=False, need=(O, read, None)), methods=["GET"]),
        Route("/v1/nodes", endpoint(list_nodes, need=(N, read, None)), methods=["GET"]),
        # What a client agent's own credential may do: act for its node, and look up where a pack
        # and a node are (to route yips and logs). Everything else takes the admin token or, for an
        # API token, what ``need`` names (the handler checks what the body names).
        Route("/v1/nodes", endpoint(register_node, nodes="self"), methods=["POST"]),
        Route("/v1/nodes/{node}", endpoint(show_node, nodes="read", need=(N, read, "node")), methods=["GET"]),
        Route("/v1/nodes/{node}", endpoint(remove_node, need=HANDLER), methods=["DELETE"]),
        Route("/v1/nodes/{node}/state", endpoint(set_node_state, need=HANDLER), methods=["POST"]),
        Route("/v1/nodes/{node}/revoke", endpoint(revoke_node, need=HANDLER), methods=["POST"]),
        Route("/v1/nodes/{node}/heartbeat", endpoint(heartbeat, nodes="self"), methods=["POST"]),
        Route("/v1/nodes/{node}/assignments", endpoint(assignments, nodes="self"), methods=["GET"]),
        Route("/v1/nodes/{node}/assignments", endpoint(resync, nodes="self"), methods=["POST"]),
        Route("/v1/nodes/{node}/reports", endpoint(reports, nodes="self"), methods=["POST"]),
        Route("/v1/packs", endpoint(create_packs, need=HANDLER), methods=["POST"]),
        Route("/v1/packs", endpoint(list_packs, need=(P, read, None)), methods=["GET"]),
        Route("/v1/packs", endpoint(delete_packs, need=HANDLER), methods=["DELETE"]),
        Route("/v1/packs/{name}", endpoint(show_pack, nodes="read", need=(P, read, "name")), methods=["GET"]),
        Route("/v1/packs/{name}/history", endpoint(pack_history, need=(P, read, "name")), methods=["GET"]),
        Route("/v1/packs/{name}/{action}", endpoint(pack_action, need=HANDLER), methods=["POST"]),
        Route("/v1/ring", endpoint(ring, need=(N, read, None)), methods=["GET"]),
        Route("/v1/rebalance", endpoint(rebalance, need=(O, Capability.REBALANCE, None)), methods=["POST"]),
        Route("/v1/ring/lookup/{name}", endpoint(ring_lookup, need=(P, read, "name")), methods=["GET"]),
        Route("/v1/metrics/cluster", endpoint(metrics_cluster, need=(N, read, None)), methods=["GET"]),
    ]

    return routes
