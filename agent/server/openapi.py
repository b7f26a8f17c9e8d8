"""The OpenAPI 3.1 document of the agent API, served at ``/v1/openapi.json``."""

from __future__ import annotations

from typing import Any


def openapi_document() -> dict[str, Any]:
    """A hand-kept OpenAPI 3.1 description of the routes above."""
    err = {"$ref": "#/components/schemas/Error"}

    def op(summary: str, body: str | None = None, params: list[str] | None = None) -> dict[str, Any]:
        o: dict[str, Any] = {"summary": summary, "responses": {
            "200": {"description": "ok"},
            "400": {"description": "invalid input", "content": {"application/json": {"schema": err}}},
            "401": {"description": "missing or wrong token"},
            "403": {"description": "the credential may not do this (a node acts only for itself)"},
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
        "env": {"type": "object", "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
                "additionalProperties": {"type": "string"}},
        # Plain values in a request; sealed at once by the agent, shown as "***" in every answer.
        "secrets": {"type": "object", "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
                    "additionalProperties": {"type": "string"}},
        "network": {"enum": ["host", "none"]},
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
                    "keep_pending": {"type": "boolean"}, "request_id": {"type": "string"}}},
                "DeletePacks": {"type": "object", "required": ["names"], "additionalProperties": False,
                                "properties": {"names": {"type": "array", "items": {"type": "string"}},
                                               "force": {"type": "boolean"}, "request_id": {"type": "string"}}},
                "NodeState": {"type": "object", "required": ["state"], "properties": {
                    "state": {"enum": ["ready", "cordoned", "draining", "down"]},
                    "reason": {"type": "string"}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/health": {"get": op("liveness (no token needed): without one only {\"ok\": true}; "
                                      "with one, also the agent's Raft view and auth_failures")},
            "/v1/status": {"get": op("Raft and cluster status")},
            "/v1/digest": {"get": op("this replica's state digest (servers only)")},
            "/v1/nodes": {"get": op("list nodes"), "post": op("register a node")},
            "/v1/nodes/{node}": {"get": op("show a node", params=["node"])},
            "/v1/nodes/{node}/state": {"post": op("cordon/uncordon/drain a node", "NodeState", ["node"])},
            "/v1/nodes/{node}/heartbeat": {"post": op("agent heartbeat", params=["node"])},
            "/v1/nodes/{node}/assignments": {"get": op("packs assigned to a node (long-poll)", params=["node"])},
            "/v1/nodes/{node}/reports": {"post": op("an agent reports pack states", params=["node"])},
            "/v1/packs": {"get": op("list packs (paged; total counts the packs matching the filters, total=0 skips that count)"),
                          "post": op("create, place or spawn packs", "CreatePacks"),
                          "delete": op("delete packs: {names, force}; their history stays", "DeletePacks")},
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
