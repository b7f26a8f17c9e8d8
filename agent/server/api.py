"""The agent's HTTP API (``/v1/...``), served with Starlette on uvicorn.

This module owns the edge: bearer-token authentication (constant-time comparison; every route
but ``/v1/health``), the body size limit (413), JSON parsing and validation with clear 4xx
answers ``{"error": {"code", "message"}}``, and the OpenAPI document. What a request means is
decided by the ``Agent`` (``canidae.agent.daemon``) and by ``canidae.core``; nothing here
touches state directly. A client agent (not a Raft member) forwards every cluster route to a
server.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from canidae.core.errors import CanidaeError, InvalidInput, NotAuthenticated, NotFound, PayloadTooLarge
from canidae.core.types import NodeState, PackSpec, PackState, validate_name

if TYPE_CHECKING:
    from canidae.agent.daemon import Agent

log = logging.getLogger("canidae.api")

Handler = Callable[[Request], Awaitable[Response]]


def error_response(err: CanidaeError) -> JSONResponse:
    return JSONResponse(err.to_wire(), status_code=err.http_status)


async def read_json(request: Request, limit: int) -> Any:
    """Read and parse the body, refusing more than ``limit`` bytes (413) and non-JSON (400)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"malformed JSON body: {e}") from None


def expect_object(body: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}")
    missing = sorted(required - set(body))
    if missing:
        raise InvalidInput(f"missing field {missing[0]!r}")
    return body


SPEC_FIELDS = {"name", "driver", "command", "members", "cpu", "mem", "restart", "env", "constraints"}


def parse_spec(d: Any) -> PackSpec:
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
    if "constraints" in spec:
        expect_object(spec["constraints"], {"zone", "region", "cell", "node", "spread", "group"})
    return PackSpec.from_dict(spec)


def query_bool(request: Request, key: str) -> bool:
    v = request.query_params.get(key)
    return v is not None and v.lower() in ("1", "true", "yes", "")


def query_int(request: Request, key: str, default: int, lo: int, hi: int) -> int:
    v = request.query_params.get(key)
    if v is None:
        return default
    if not v.isdigit() or not lo <= int(v) <= hi:
        raise InvalidInput(f"query parameter {key} must be an integer {lo}..{hi}")
    return int(v)


def request_id(request: Request, body: Mapping[str, Any] | None = None) -> str:
    rid = (body or {}).get("request_id") or request.headers.get("x-request-id") or uuid.uuid4().hex
    if not isinstance(rid, str) or not 1 <= len(rid) <= 128 or not rid.isprintable():
        raise InvalidInput("request_id must be 1-128 printable characters")
    return rid


def build_app(agent: Agent, extra_routes: Callable[[Any], list[Route]] | None = None) -> Starlette:
    """The agent's Starlette app. ``extra_routes(endpoint)`` adds routes of other modules (drivers,
    mailboxes, the event store), wrapped by the same ``endpoint`` (auth, errors, forwarding)."""
    token = agent.cfg.token.encode()
    limit = agent.cfg.max_body_bytes

    def endpoint(fn: Callable[[Request], Awaitable[Any]], *, auth: bool = True, forward: bool = True
                 ) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                if auth:
                    header = request.headers.get("authorization", "")
                    given = header[7:].encode() if header.lower().startswith("bearer ") else b""
                    if not hmac.compare_digest(given, token):
                        raise NotAuthenticated("missing or wrong bearer token")
                if forward and agent.replica is None:
                    return await agent.forward(request, limit)
                result = await fn(request)
                if isinstance(result, Response):
                    return result
                return JSONResponse(result)
            except CanidaeError as e:
                return error_response(e)
            except Exception as e:  # a bug must answer 500, never take the agent down
                log.exception("internal error on %s %s", request.method, request.url.path)
                return JSONResponse({"error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}},
                                    status_code=500)
        return handler

    async def health(request: Request) -> Any:
        return agent.health()

    async def status(request: Request) -> Any:
        return await agent.cluster_status()

    async def list_nodes(request: Request) -> Any:
        return await agent.list_nodes(stale=query_bool(request, "stale"))

    async def show_node(request: Request) -> Any:
        return await agent.show_node(validate_name("node", request.path_params["node"]),
                                     stale=query_bool(request, "stale"))

    async def register_node(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"node", "request_id"}, {"node"})
        return await agent.register_node(body["node"], request_id(request, body))

    async def set_node_state(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"state", "reason", "request_id", "plan"}, {"state"})
        try:
            state = NodeState(body["state"])
        except ValueError:
            raise InvalidInput("state must be ready, cordoned, draining or down") from None
        if not isinstance(body.get("plan", False), bool):
            raise InvalidInput("plan must be true or false")
        return await agent.set_node_state(validate_name("node", request.path_params["node"]), state,
                                          str(body.get("reason", "")), request_id(request, body),
                                          plan=bool(body.get("plan", False)))

    async def heartbeat(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"rev", "running"})
        return await agent.heartbeat(validate_name("node", request.path_params["node"]), body)

    async def assignments(request: Request) -> Any:
        node = validate_name("node", request.path_params["node"])
        after = query_int(request, "after", 0, 0, 2**62)
        wait = query_int(request, "wait", 0, 0, 30)
        return await agent.assignments(node, after, float(wait))

    async def reports(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"reports", "request_id"}, {"reports"})
        return await agent.report_packs(validate_name("node", request.path_params["node"]), body["reports"],
                                        request_id(request, body))

    async def create_packs(request: Request) -> Any:
        body = expect_object(await read_json(request, limit),
                             {"spec", "specs", "count", "place", "request_id"})
        if ("spec" in body) == ("specs" in body):
            raise InvalidInput("give exactly one of 'spec' or 'specs'")
        specs = [parse_spec(body["spec"])] if "spec" in body else None
        if specs is None:
            if not isinstance(body["specs"], list) or not body["specs"]:
                raise InvalidInput("specs must be a non-empty list")
            specs = [parse_spec(s) for s in body["specs"]]
        count = body.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInput("count must be a non-negative integer")
        place = body.get("place", True)
        if not isinstance(place, bool):
            raise InvalidInput("place must be true or false")
        return await agent.create_packs(specs, count, place, request_id(request, body))

    async def list_packs(request: Request) -> Any:
        node = request.query_params.get("node")
        state = request.query_params.get("state")
        try:
            pstate = PackState(state) if state else None
        except ValueError:
            raise InvalidInput(f"unknown pack state {state!r}") from None
        after = request.query_params.get("after")
        return await agent.list_packs(
            node=validate_name("node", node) if node else None, state=pstate,
            after=validate_name("pack", after) if after else None,
            limit=query_int(request, "limit", 1000, 1, 10_000), stale=query_bool(request, "stale"))

    async def show_pack(request: Request) -> Any:
        return await agent.show_pack(validate_name("pack", request.path_params["name"]),
                                     stale=query_bool(request, "stale"))

    async def pack_action(request: Request) -> Any:
        name = validate_name("pack", request.path_params["name"])
        action = request.path_params["action"]
        if action not in ("stop", "place", "migrate"):
            raise NotFound(f"no action {action!r} for packs")
        body = expect_object(await read_json(request, limit), {"request_id", "to"} if action == "migrate"
                             else {"request_id"})
        if action == "migrate":
            to = body.get("to")
            return await agent.migrate_pack(name, validate_name("node", to) if to is not None else None,
                                            request_id(request, body))
        return await agent.pack_action(name, action, request_id(request, body))

    async def rebalance(request: Request) -> Any:
        body = expect_object(await read_json(request, limit), {"plan", "request_id"})
        if not isinstance(body.get("plan", False), bool):
            raise InvalidInput("plan must be true or false")
        return await agent.rebalance(bool(body.get("plan", False)), request_id(request, body))

    async def pack_history(request: Request) -> Any:
        since = query_int(request, "since", 0, 0, 1 << 62)  # ms since the epoch; 0: everything
        return await agent.pack_history(validate_name("pack", request.path_params["name"]), since_ms=since or None)

    async def ring(request: Request) -> Any:
        return await agent.ring_view(stale=query_bool(request, "stale"))

    async def ring_lookup(request: Request) -> Any:
        return await agent.ring_lookup(validate_name("pack", request.path_params["name"]),
                                       stale=query_bool(request, "stale"))

    async def digest(request: Request) -> Any:
        return agent.state_digest()

    async def openapi(request: Request) -> Any:
        return openapi_document()

    routes = [
        Route("/v1/health", endpoint(health, auth=False, forward=False), methods=["GET"]),
        Route("/v1/openapi.json", endpoint(openapi, forward=False), methods=["GET"]),
        Route("/v1/status", endpoint(status), methods=["GET"]),
        Route("/v1/digest", endpoint(digest, forward=False), methods=["GET"]),
        Route("/v1/nodes", endpoint(list_nodes), methods=["GET"]),
        Route("/v1/nodes", endpoint(register_node), methods=["POST"]),
        Route("/v1/nodes/{node}", endpoint(show_node), methods=["GET"]),
        Route("/v1/nodes/{node}/state", endpoint(set_node_state), methods=["POST"]),
        Route("/v1/nodes/{node}/heartbeat", endpoint(heartbeat), methods=["POST"]),
        Route("/v1/nodes/{node}/assignments", endpoint(assignments), methods=["GET"]),
        Route("/v1/nodes/{node}/reports", endpoint(reports), methods=["POST"]),
        Route("/v1/packs", endpoint(create_packs), methods=["POST"]),
        Route("/v1/packs", endpoint(list_packs), methods=["GET"]),
        Route("/v1/packs/{name}", endpoint(show_pack), methods=["GET"]),
        Route("/v1/packs/{name}/history", endpoint(pack_history), methods=["GET"]),
        Route("/v1/packs/{name}/{action}", endpoint(pack_action), methods=["POST"]),
        Route("/v1/ring", endpoint(ring), methods=["GET"]),
        Route("/v1/rebalance", endpoint(rebalance), methods=["POST"]),
        Route("/v1/ring/lookup/{name}", endpoint(ring_lookup), methods=["GET"]),
    ]

    if extra_routes is not None:
        routes.extend(extra_routes(endpoint))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(NotFound(f"no route {request.method} {request.url.path}"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": {"code": "method_not_allowed",
                                       "message": f"{request.method} is not allowed on {request.url.path}"}},
                            status_code=405)

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})


def openapi_document() -> dict[str, Any]:
    """A hand-kept OpenAPI 3.1 description of the routes above."""
    err = {"$ref": "#/components/schemas/Error"}

    def op(summary: str, body: str | None = None, params: list[str] | None = None) -> dict[str, Any]:
        o: dict[str, Any] = {"summary": summary, "responses": {
            "200": {"description": "ok"},
            "400": {"description": "invalid input", "content": {"application/json": {"schema": err}}},
            "401": {"description": "missing or wrong token"},
            "404": {"description": "not found"}, "409": {"description": "conflict"},
            "413": {"description": "body too large"}, "503": {"description": "no leader / unavailable"}}}
        if body:
            o["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body}"}}}}
        if params:
            o["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                               for p in params]
        return o

    spec_schema = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"},
        "driver": {"enum": ["virtual", "exec"]}, "command": {"type": "array", "items": {"type": "string"}},
        "members": {"type": "integer", "minimum": 1, "maximum": 64},
        "cpu": {"type": "integer", "minimum": 0}, "mem": {"type": "integer", "minimum": 0},
        "restart": {"enum": ["never", "on-failure", "always"]},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "constraints": {"type": "object", "additionalProperties": False, "properties": {
            k: {"type": "string"} for k in ("zone", "region", "cell", "node", "spread", "group")}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "canidae agent API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}}}},
                "PackSpec": spec_schema,
                "CreatePacks": {"type": "object", "additionalProperties": False, "properties": {
                    "spec": {"$ref": "#/components/schemas/PackSpec"},
                    "specs": {"type": "array", "items": {"$ref": "#/components/schemas/PackSpec"}},
                    "count": {"type": "integer", "minimum": 0}, "place": {"type": "boolean"},
                    "request_id": {"type": "string"}}},
                "NodeState": {"type": "object", "required": ["state"], "properties": {
                    "state": {"enum": ["ready", "cordoned", "draining", "down"]},
                    "reason": {"type": "string"}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/health": {"get": op("liveness (no token needed)")},
            "/v1/status": {"get": op("Raft and cluster status")},
            "/v1/digest": {"get": op("this replica's state digest (servers only)")},
            "/v1/nodes": {"get": op("list nodes"), "post": op("register a node")},
            "/v1/nodes/{node}": {"get": op("show a node", params=["node"])},
            "/v1/nodes/{node}/state": {"post": op("cordon/uncordon/drain a node", "NodeState", ["node"])},
            "/v1/nodes/{node}/heartbeat": {"post": op("agent heartbeat", params=["node"])},
            "/v1/nodes/{node}/assignments": {"get": op("packs assigned to a node (long-poll)", params=["node"])},
            "/v1/nodes/{node}/reports": {"post": op("an agent reports pack states", params=["node"])},
            "/v1/packs": {"get": op("list packs (paged)"), "post": op("create, place or spawn packs", "CreatePacks")},
            "/v1/packs/{name}": {"get": op("show a pack", params=["name"])},
            "/v1/packs/{name}/history": {"get": op("a pack's events (since=MS: from that time)", params=["name"])},
            "/v1/packs/{name}/{action}": {"post": op("stop, place or migrate a pack", params=["name", "action"])},
            "/v1/rebalance": {"post": op("plan or run the minimal moves onto joined nodes")},
            "/v1/ring": {"get": op("the live ring: share, vnodes, load per node")},
            "/v1/ring/lookup/{name}": {"get": op("where the ring puts a name", params=["name"])},
            "/v1/events": {"get": op("durable events after=SEQ or the last=N, filtered by pack, node, type; "
                                     "wait=S long-polls")},
            "/v1/history/verify": {"get": op("rebuild the projections from the event log (full=1: from the "
                                             "first event) and compare them with the live state")},
            "/v1/history/stats": {"get": op("this server's event store: segments, sizes, gaps, snapshots")},
        },
    }
