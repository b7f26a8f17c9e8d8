"""The OpenAPI 3.1 document of the agent API, served at ``/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from canidae.core.commands import MAX_SERIES
from canidae.core.packtoken import MAX_GENERATION
from canidae.core.types import MAX_AMOUNT

NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # canidae.core.types.NAME_RE: pack, node, zone ... names
ACTION = {"enum": ["stop", "place", "migrate"]}


def uint(hi: int, lo: int = 0) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def openapi_document() -> dict[str, Any]:
    """A hand-kept OpenAPI 3.1 description of the routes above."""
    err = {"$ref": "#/components/schemas/Error"}

    name = {"type": "string", "pattern": NAME_PATTERN}

    def op(summary: str, body: str | None = None, params: list[str] | None = None,
           query: dict[str, dict[str, Any]] | None = None, body_required: bool = True) -> dict[str, Any]:
        o: dict[str, Any] = {"summary": summary, "responses": {
            "200": {"description": "ok"},
            "400": {"description": "invalid input", "content": {"application/json": {"schema": err}}},
            "401": {"description": "missing or wrong token"},
            "403": {"description": "the credential may not do this (a node acts only for itself)"},
            "404": {"description": "not found"}, "409": {"description": "conflict"},
            "413": {"description": "body too large"}, "503": {"description": "no leader / unavailable"}}}
        if body:
            o["requestBody"] = {"required": body_required, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body}"}}}}
        parameters = [{"name": p, "in": "path", "required": True,
                       "schema": ACTION if p == "action" else name} for p in params or []]
        parameters += [{"name": q, "in": "query", "required": False, "schema": schema}
                       for q, schema in (query or {}).items()]
        if parameters:
            o["parameters"] = parameters
        return o

    flag = {"type": "string", "enum": ["1", "0", "true", "false"]}
    stale = {"stale": flag}

    spec_schema = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
        "name": name,
        "driver": {"enum": ["virtual", "exec"]}, "command": {"type": "array", "items": {"type": "string"}},
        "members": {"type": "integer", "minimum": 1, "maximum": 64},
        "cpu": uint(MAX_AMOUNT), "mem": uint(MAX_AMOUNT),
        "restart": {"enum": ["never", "on-failure", "always"]},
        "env": {"type": "object", "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
                "additionalProperties": {"type": "string"}},
        # Plain values in a request; sealed at once by the agent, shown as "***" in every answer.
        "secrets": {"type": "object", "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
                    "additionalProperties": {"type": "string"}},
        "network": {"enum": ["host", "none"]},
        "constraints": {"type": "object", "additionalProperties": False, "properties": {
            **{k: name for k in ("zone", "region", "cell", "node", "group")},
            "spread": {"enum": ["zone", "region", "cell"]}}}}}
    rid = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[ -~]+$"}
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
                    "specs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/PackSpec"}},
                    "count": uint(MAX_SERIES), "place": {"type": "boolean"},
                    "keep_pending": {"type": "boolean"}, "request_id": rid},
                    "oneOf": [{"required": ["spec"]}, {"required": ["specs"]}]},
                "DeletePacks": {"type": "object", "required": ["names"], "additionalProperties": False,
                                "properties": {"names": {"type": "array", "minItems": 1, "maxItems": 100_000,
                                                         "items": name},
                                               "force": {"type": "boolean"}, "request_id": rid}},
                "NodeRevoke": {"type": "object", "additionalProperties": False,
                               "properties": {"reason": {"type": "string"}, "request_id": rid}},
                "NodeState": {"type": "object", "required": ["state"], "additionalProperties": False,
                              "properties": {"state": {"enum": ["ready", "cordoned", "draining", "down"]},
                                             "reason": {"type": "string"}, "plan": {"type": "boolean"},
                                             "request_id": rid}},
                "RegisterNode": {"type": "object", "required": ["node"], "additionalProperties": False,
                                 "properties": {"node": {"type": "object"}, "request_id": rid}},
                "Heartbeat": {"type": "object", "additionalProperties": False, "properties": {
                    "rev": {"type": "integer"}, "running": {"type": "integer"}, "digest": {"type": "string"},
                    "corrected": {"type": "integer"}, "metrics": {"type": "object"}}},
                "Reports": {"type": "object", "required": ["reports"], "additionalProperties": False,
                            "properties": {"reports": {"type": "array", "minItems": 1, "items": {
                                "type": "array", "prefixItems": [
                                    name, uint(MAX_GENERATION),
                                    {"enum": ["running", "stopped", "exited", "failed", "crashloop"]},
                                    {"type": "string"}], "minItems": 4, "maxItems": 4}},
                                "request_id": rid}},
                "PackAction": {"type": "object", "additionalProperties": False, "properties": {
                    "request_id": rid, "keep_pending": {"type": "boolean"}, "to": name}},
                "Rebalance": {"type": "object", "additionalProperties": False, "properties": {
                    "plan": {"type": "boolean"}, "request_id": rid}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/health": {"get": op("liveness (no token needed): without one only {\"ok\": true}; "
                                      "with one, also the agent's Raft view and auth_failures")},
            "/v1/status": {"get": op("Raft and cluster status")},
            "/v1/digest": {"get": op("this replica's state digest (servers only)")},
            "/v1/nodes": {"get": op("list nodes", query=stale), "post": op("register a node", "RegisterNode")},
            "/v1/nodes/{node}": {"get": op("show a node", params=["node"], query=stale)},
            "/v1/nodes/{node}/state": {"post": op("cordon/uncordon/drain a node", "NodeState", ["node"])},
            "/v1/nodes/{node}/revoke": {"post": op("revoke a client agent's node credential (admin token only); "
                                                   "the node is down", "NodeRevoke", ["node"], body_required=False)},
            "/v1/nodes/{node}/heartbeat": {"post": op("agent heartbeat", "Heartbeat", ["node"], body_required=False)},
            "/v1/nodes/{node}/assignments": {"get": op("packs assigned to a node (wait=S long-polls, up to 30)", params=["node"],
                                                               query={"after": uint(2**62)})},
            "/v1/nodes/{node}/reports": {"post": op("an agent reports pack states", "Reports", ["node"])},
            "/v1/packs": {"get": op("list packs (paged; total counts the packs matching the filters, total=0 skips that count)",
                                      query={**stale, "node": name, "after": name, "limit": uint(10_000, 1),
                                             "total": uint(1), "state": {"enum": [
                                                 "created", "pending", "placed", "running", "stopping",
                                                 "stopped", "failed", "crashlooping"]}}),
                          "post": op("create, place or spawn packs", "CreatePacks"),
                          "delete": op("delete packs: {names, force}; their history stays", "DeletePacks")},
            "/v1/packs/{name}": {"get": op("show a pack", params=["name"], query=stale)},
            "/v1/packs/{name}/history": {"get": op("a pack's events (since=MS: from that time)", params=["name"],
                                                       query={"since": uint(2**62)})},
            "/v1/packs/{name}/{action}": {"post": op("stop, place or migrate a pack", "PackAction", ["name", "action"],
                                                     body_required=False)},
            "/v1/rebalance": {"post": op("plan or run the minimal moves onto joined nodes", "Rebalance",
                                            body_required=False)},
            "/v1/ring": {"get": op("the live ring: share, vnodes, load per node", query=stale)},
            "/v1/ring/lookup/{name}": {"get": op("where the ring puts a name", params=["name"], query=stale)},
            "/v1/events": {"get": op("durable events after=SEQ or the last=N, filtered by pack, node, type; "
                                     "wait=S long-polls (up to 30)",
                                     query={"after": uint(2**62), "last": uint(10_000, 1),
                                            "limit": uint(10_000, 1), "pack": name, "node": name,
                                            "type": {"type": "string", "pattern": "^[A-Za-z0-9]+(,[A-Za-z0-9]+)*$"}})},
            "/v1/history/verify": {"get": op("rebuild the projections from the event log (full=1: from the "
                                             "first event) and compare them with the live state",
                                            query={"full": flag, "pack": name})},
            "/v1/history/stats": {"get": op("this server's event store: segments, sizes, gaps, snapshots")},
        },
    }
