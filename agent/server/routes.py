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

from starlette.requests import Request
from starlette.routing import Route

from canidae.agent.httpedge import (
    HANDLER,
    Edge,
    expect_object,
    principal_of,
    query_bool,
    query_int,
    read_json,
    request_id,
)
from canidae.agent.server.openapi import openapi_document
from canidae.core.acl import Capability, ResourceKind
from canidae.core.commands import MAX_SERIES
from canidae.core.errors import InvalidInput, NotFound, PermissionDenied
from canidae.core.types import (
    CONSTRAINT_FIELDS,
    PACK_SPEC_FIELDS,
    NodeState,
    PackSpec,
    PackState,
    Role,
    validate_env_name,
    validate_name,
)

if TYPE_CHECKING:
    from canidae.agent.server.control import ControlPlane


SPEC_FIELDS = set(PACK_SPEC_FIELDS)


def parse_spec(d: Any, seal: Callable[[dict[str, str]], dict[str, str]]) -> PackSpec:
    """A spec of a request; its plain ``secrets`` are checked, then sealed by ``seal``."""
    spec = expect_object(d, SPEC_FIELDS, {"name"})
    validate_name("pack", spec["name"])
    for k in ("members", "cpu", "mem"):
        if k in spec and (isinstance(spec[k], bool) or not isinstance(spec[k], int)):
            raise InvalidInput(f"{k} must be an integer")
    if "command" in spec and (not isinstance(spec["command"], list)
                              or not all(isinstance(a, str) for a in spec["command"])):
        raise InvalidInput("command must be a list of strings")
    if "env" in spec and (not isinstance(spec["env"], dict)
                          or not all(isinstance(k, str) and isinstance(v, str) for k, v in spec["env"].items())):
        raise InvalidInput("env must be an object of strings")
    if "secrets" in spec:
        plain = spec["secrets"]
        if not isinstance(plain, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in plain.items()):
            raise InvalidInput("secrets must be an object of strings")
        for k in plain:
            validate_env_name("secret", k)
        spec = {**spec, "secrets": seal(plain) if plain else {}}
    if "constraints" in spec:
        expect_object(spec["constraints"], set(CONSTRAINT_FIELDS))
    return PackSpec.from_dict(spec)


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
        body = expect_object(await read_json(request, limit), {"node", "request_id"}, {"node"})
        who = principal_of(request)
        if not who.is_admin:  # a client agent registers itself, as a client, and nothing else
            node = body["node"]
            if not isinstance(node, dict) or node.get("id") != who.name or node.get("role", "client") != Role.CLIENT:
                raise PermissionDenied(f"the credential of {who.describe()} may only register client node {who.name}")
        return await agent.register_node(body["node"], request_id(request, body))

    async def set_node_state(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"state", "reason", "request_id", "plan"}, {"state"})
        try:
            state = NodeState(body["state"])
        except ValueError:
            raise InvalidInput("state must be ready, cordoned, draining or down") from None
        edge.require(request, ResourceKind.NODE, request.path_params["node"],
                     Capability.CORDON if state in (NodeState.READY, NodeState.CORDONED) else Capability.DRAIN)
        if not isinstance(body.get("plan", False), bool):
            raise InvalidInput("plan must be true or false")
        return await agent.set_node_state(validate_name("node", request.path_params["node"]), state,
                                          str(body.get("reason", "")), request_id(request, body),
                                          plan=bool(body.get("plan", False)), by=by(request))

    async def revoke_node(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"reason", "request_id"})
        who = principal_of(request)
        if not who.is_admin:  # an operator's act: not an API token's, whatever its policies
            raise PermissionDenied(f"only the admin token may revoke a node credential, not {who.describe()}")
        return await agent.revoke_node(validate_name("node", request.path_params["node"]),
                                       str(body.get("reason", "")), request_id(request, body), by=by(request))

    async def heartbeat(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"rev", "running", "digest", "corrected", "metrics"})
        return await agent.heartbeat(validate_name("node", request.path_params["node"]), body)

    async def assignments(request: Request) -> Any:
        node = validate_name("node", request.path_params["node"])
        after = query_int(request, "after", 0, 0, 2**62)
        wait = query_int(request, "wait", 0, 0, 30)
        return await agent.assignments(node, after, float(wait))

    async def resync(request: Request) -> Any:
        node = validate_name("node", request.path_params["node"])
        body = expect_object(await read_json(request, limit), {"running"}, {"running"})
        return await agent.resync(node, body["running"])

    async def reports(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"reports", "request_id"}, {"reports"})
        return await agent.report_packs(validate_name("node", request.path_params["node"]), body["reports"],
                                        request_id(request, body))

    async def create_packs(request: Request) -> Any:
        body = expect_object(await read_json(request, limit),
                             {"spec", "specs", "count", "place", "keep_pending", "request_id"})
        if ("spec" in body) == ("specs" in body):
            raise InvalidInput("give exactly one of 'spec' or 'specs'")
        specs = [parse_spec(body["spec"], agent.seal_secrets)] if "spec" in body else None
        if specs is None:
            if not isinstance(body["specs"], list) or not body["specs"]:
                raise InvalidInput("specs must be a non-empty list")
            specs = [parse_spec(s, agent.seal_secrets) for s in body["specs"]]
        if isinstance(body.get("count"), int) and body.get("count"):
            names = [f"{specs[0].name}-{i}" for i in range(min(int(body["count"]), MAX_SERIES))]
        else:
            names = [s.name for s in specs]
        for name in names:
            edge.require(request, ResourceKind.PACK, name, Capability.SPAWN)
        count = body.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_SERIES:
            raise InvalidInput(f"count must be an integer 0..{MAX_SERIES}")
        place = body.get("place", True)
        keep_pending = body.get("keep_pending", True)
        if not isinstance(place, bool) or not isinstance(keep_pending, bool):
            raise InvalidInput("place and keep_pending must be true or false")
        return await agent.create_packs(specs, count, place, request_id(request, body), keep_pending=keep_pending,
                                        by=by(request))

    async def delete_packs(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"names", "force", "request_id"}, {"names"})
        names = body["names"]
        if not isinstance(names, list) or not names or len(names) > 100_000:
            raise InvalidInput("names must be a non-empty list of pack names")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidInput("force must be true or false")
        for n in names:
            edge.require(request, ResourceKind.PACK, validate_name("pack", n), Capability.DELETE)
        return await agent.delete_packs([validate_name("pack", n) for n in names], force, request_id(request, body),
                                        by=by(request))

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
        return await agent.list_packs(
            node=validate_name("node", node) if node else None, state=pstate,
            after=validate_name("pack", after) if after else None,
            limit=query_int(request, "limit", 1000, 1, 10_000), stale=query_bool(request, "stale"),
            crashlooping=crashlooping, count=query_int(request, "total", 1, 0, 1) == 1)

    async def show_pack(request: Request) -> Any:
        return await agent.show_pack(validate_name("pack", request.path_params["name"]),
                                     stale=query_bool(request, "stale"))

    async def pack_action(request: Request) -> Any:
        name = validate_name("pack", request.path_params["name"])
        action = request.path_params["action"]
        if action not in ("stop", "place", "migrate"):
            raise NotFound(f"no action {action!r} for packs")
        edge.require(request, ResourceKind.PACK, name, {"stop": Capability.STOP, "place": Capability.SPAWN,
                                                         "migrate": Capability.MIGRATE}[action])
        body = expect_object(await read_json(request, limit), {"request_id", "to"} if action == "migrate"
                             else {"request_id", "keep_pending"} if action == "place" else {"request_id"})
        if action == "migrate":
            to = body.get("to")
            return await agent.migrate_pack(name, validate_name("node", to) if to is not None else None,
                                            request_id(request, body), by=by(request))
        keep_pending = body.get("keep_pending", True)
        if not isinstance(keep_pending, bool):
            raise InvalidInput("keep_pending must be true or false")
        return await agent.pack_action(name, action, request_id(request, body), keep_pending=keep_pending,
                                       by=by(request))

    async def rebalance(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"plan", "request_id"})
        if not isinstance(body.get("plan", False), bool):
            raise InvalidInput("plan must be true or false")
        return await agent.rebalance(bool(body.get("plan", False)), request_id(request, body), by=by(request))

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
        return openapi_document()

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
