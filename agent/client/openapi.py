"""The OpenAPI 3.1 document of the agent API, generated from the wire schema and the route table.

``OPERATIONS`` lists every route an agent serves: method, path, summary, query parameters, the
request struct and the response struct (``canidae.agent.client.schema``). ``openapi_document``
turns it into the document served at ``/v1/openapi.json``: schemas by
``msgspec.json.schema_components``, path parameters with their patterns, and the error answers
every route may give (400, 401, 403, 404, 405 with ``Allow``, 409, 413, 429 with ``Retry-After``,
503, 504). A test checks that
the routes the agent registers and the operations listed here are the same set.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from canidae.agent.client import schema as s

REF = "#/components/schemas/{name}"

Flag = Annotated[str, Meta(pattern=r"^(|0|1|true|false|yes|no)\Z", description="1, true or yes: on")]
Uint62 = Annotated[int, Meta(ge=0, le=2**62)]
Stale = {"stale": Flag}

PATH_PARAMS: dict[str, Any] = {
    "node": s.Name, "name": s.Name, "pack": s.Name, "accessor": s.Accessor,
    "action": Literal["stop", "place", "migrate"], "id": s.DecisionId,
}


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    response: Any = None  # a struct; None: JSON of no fixed form
    body: Any = None  # the request struct
    query: dict[str, Any] = field(default_factory=dict)
    body_required: bool = False
    text: str | None = None  # a non-JSON answer's media type (besides JSON)
    public: bool = False  # answers without a credential


OPERATIONS: tuple[Op, ...] = (
    Op("GET", "/v1/health", "liveness: without a credential only {\"ok\": true}; with one, also the agent's "
       "Raft view and auth_failures", s.Health, public=True),
    Op("GET", "/v1/openapi.json", "this document", None),
    Op("GET", "/v1/status", "Raft and cluster status", s.Status),
    Op("GET", "/v1/digest", "this replica's state digest (servers only)", s.Digest),
    Op("GET", "/v1/metrics", "this agent's metrics: Prometheus text, or format=json", s.MetricsJson,
       query={"format": Literal["prometheus", "json"]}, text="text/plain"),
    Op("GET", "/v1/metrics/cluster", "the cluster's metrics tree, by level, with sampled packs", s.MetricsTree,
       query={"by": Literal["cluster", "zone", "region", "cell", "node"],
              "packs": Annotated[int, Meta(ge=0, le=1000)],
              "sort": Literal["cpu", "mem", "restarts", "yips", "name"],
              "zone": s.Name, "cell": Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,200}\Z")]}),
    Op("GET", "/v1/nodes", "list nodes", s.NodeList, query=Stale),
    Op("POST", "/v1/nodes", "register a node (a client agent registers itself)", s.WriteAnswer,
       s.RegisterNode, body_required=True),
    Op("GET", "/v1/nodes/{node}", "show a node", s.NodeShow, query=Stale),
    Op("DELETE", "/v1/nodes/{node}", "forget a node that is draining or down (its agent stopped first)",
       s.WriteAnswer, s.WriteIn),
    Op("POST", "/v1/nodes/{node}/revoke", "refuse a client agent's node credential cluster-wide (admin token only)",
       s.WriteAnswer, s.RevokeNodeIn),
    Op("POST", "/v1/nodes/{node}/state", "cordon, uncordon, drain or down a node (plan: what it would do)",
       s.WriteAnswer, s.SetNodeState, body_required=True),
    Op("POST", "/v1/nodes/{node}/heartbeat", "an agent's heartbeat", s.HeartbeatAnswer, s.Heartbeat),
    Op("GET", "/v1/nodes/{node}/assignments", "what changed for a node after a revision (wait=S long-polls)",
       s.Assignments, query={"after": Uint62, "wait": Annotated[int, Meta(ge=0, le=30)]}),
    Op("POST", "/v1/nodes/{node}/assignments", "resynchronise: everything the node holds", s.Assignments,
       s.Resync, body_required=True),
    Op("POST", "/v1/nodes/{node}/reports", "an agent reports pack states", s.WriteAnswer, s.Reports,
       body_required=True),
    Op("GET", "/v1/packs", "list packs (paged; total=0 skips counting the matches)", s.PackList,
       query={**Stale, "node": s.Name, "after": s.Name, "limit": Annotated[int, Meta(ge=1, le=10_000)],
              "total": Annotated[int, Meta(ge=0, le=1)],
              "state": Literal["created", "pending", "placed", "running", "stopping", "stopped", "failed",
                               "crashlooping"]}),
    Op("POST", "/v1/packs", "create, place or spawn packs", s.WriteAnswer, s.CreatePacks, body_required=True),
    Op("DELETE", "/v1/packs", "delete packs (their history stays)", s.WriteAnswer, s.DeletePacks,
       body_required=True),
    Op("GET", "/v1/packs/{name}", "show a pack", s.PackShow, query=Stale),
    Op("GET", "/v1/packs/{name}/history", "a pack's events (since=MS: from that time)", s.PackHistory,
       query={"since": Uint62}),
    Op("POST", "/v1/packs/{name}/{action}", "stop, place or migrate a pack", s.WriteAnswer, s.PackActionIn),
    Op("POST", "/v1/rebalance", "plan or make the minimal moves onto joined nodes", s.WriteAnswer, s.Rebalance),
    Op("GET", "/v1/ring", "the live ring: share, vnodes, load per node", s.RingView, query=Stale),
    Op("GET", "/v1/ring/lookup/{name}", "where the ring puts a name", s.RingLookup, query=Stale),
    Op("GET", "/v1/events", "durable events after=SEQ or the last=N, filtered by pack, node, type; "
       "wait=S long-polls", s.EventList,
       query={"after": Uint62, "last": Annotated[int, Meta(ge=1, le=10_000)],
              "limit": Annotated[int, Meta(ge=1, le=10_000)], "pack": s.Name, "node": s.Name,
              "type": Annotated[str, Meta(pattern=r"^[A-Za-z0-9]+(,[A-Za-z0-9]+)*\Z")],
              "wait": Annotated[int, Meta(ge=0, le=30)]}),
    Op("GET", "/v1/history/verify", "rebuild the projections from the event log and compare them with the "
       "live state (full=1: from the first event)", s.HistoryVerify, query={"full": Flag, "pack": s.Name}),
    Op("GET", "/v1/history/stats", "this server's event store: segments, sizes, gaps, snapshots",
       s.HistoryStats),
    Op("POST", "/v1/acl/tokens", "create an API token (its secret is answered once)", s.TokenCreated,
       s.CreateToken, body_required=True),
    Op("GET", "/v1/acl/tokens", "list API tokens", s.TokenList),
    Op("GET", "/v1/acl/tokens/{accessor}", "show an API token", s.TokenShow),
    Op("DELETE", "/v1/acl/tokens/{accessor}", "revoke an API token, in force on every server", s.InForce),
    Op("GET", "/v1/acl/token/self", "who the caller is; can= (with kind=, name=): may it, and why",
       s.TokenSelf, query={"can": Annotated[str, Meta(max_length=64)],
                           "kind": Literal["pack", "node", "operator", "audit"], "name": s.Name}),
    Op("POST", "/v1/acl/policies", "create or replace a policy", s.InForce, s.ApplyPolicy, body_required=True),
    Op("GET", "/v1/acl/policies", "list policies", s.PolicyList),
    Op("GET", "/v1/acl/policies/{name}", "show a policy, its rules and the tokens using it", s.PolicyShow),
    Op("DELETE", "/v1/acl/policies/{name}", "delete a policy", s.InForce),
    Op("GET", "/v1/autoscale", "the autoscaler's policy, pause and last decisions", None,
       query={"last": Annotated[int, Meta(ge=0, le=1000)]}),
    Op("POST", "/v1/autoscale/policy", "set the autoscale policy", s.WriteAnswer, s.AutoscalePolicyIn,
       body_required=True),
    Op("POST", "/v1/autoscale/pause", "pause the autoscaler", s.WriteAnswer, s.AutoscalePause),
    Op("POST", "/v1/autoscale/resume", "resume the autoscaler", s.WriteAnswer, s.AutoscalePause),
    Op("POST", "/v1/autoscale/decisions", "record a decision (the controller)", s.WriteAnswer, s.AutoscaleRecord,
       body_required=True),
    Op("GET", "/v1/autoscale/decisions", "decisions after since=ID", s.DecisionList,
       query={"since": Uint62, "limit": Annotated[int, Meta(ge=1, le=1000)]}),
    Op("GET", "/v1/autoscale/decisions/{id}", "one decision", s.DecisionShow),
    Op("POST", "/v1/autoscale/decisions/{id}/outcome", "record what came of a decision", s.WriteAnswer,
       s.AutoscaleOutcome, body_required=True),
    Op("GET", "/v1/audit", "an agent's audit records (agent=N: another agent's; wait=S long-polls; raw: its "
       "segments, as stored)", None,
       query={"agent": s.Name, "raw": Flag, "segment": Annotated[str, Meta(pattern=r"^seg-[0-9]{20}\.log\Z")],
              "after": Uint62, "limit": Annotated[int, Meta(ge=1, le=1000)], "newest": Flag,
              "token": Annotated[str, Meta(pattern=r"^ca_[0-9a-f]{32}\Z")], "action": Annotated[str, Meta(max_length=64)],
              "since": Uint62, "outcome": Literal["ok", "failed", "denied"]}),
    Op("POST", "/v1/audit/checkpoint", "sign this agent's (or agent=N's) audit head and commit it now", None,
       query={"agent": s.Name}),
    Op("POST", "/v1/audit/checkpoints", "commit an agent's signed audit head (the agent itself)", s.WriteAnswer,
       s.AuditCheckpointIn, body_required=True),
    Op("GET", "/v1/audit/checkpoints", "the committed audit heads of agent=N", None, query={"agent": s.Name}),
    Op("GET", "/v1/keys", "the keyrings: every key's id, purpose and state", None),
    Op("GET", "/v1/keys/status", "rotations under way, rewrap progress, keys in use", None),
    Op("POST", "/v1/keys/rotate", "rotate keyrings (publish, then activate, by region if asked)", None,
       s.KeysRotateIn),
    Op("POST", "/v1/keys/retire", "retire a key that nothing needs any more", None, s.KeyRetireIn,
       body_required=True),
    Op("GET", "/v1/keys/sealed", "the keyrings wrapped under the cluster's key-encryption key (agents)", None),
    Op("POST", "/v1/acl/bootstrap", "replace the management token's hash (token rotate-bootstrap)", None,
       s.AdminHashIn, body_required=True),
    Op("GET", "/v1/exec/info", "this agent's isolation mechanism, settings and clock", s.ExecInfo),
    Op("GET", "/v1/exec/packs/{pack}", "the processes of a pack on its node", s.ExecStatus),
    Op("GET", "/v1/exec/packs/{pack}/logs", "members' output (wait=S long-polls)", s.ExecLogs,
       query={"member": Annotated[int, Meta(ge=0, le=63)], "tail": Annotated[int, Meta(ge=0, le=1_000_000)],
              "cursor": Annotated[str, Meta(pattern=r"^([0-9]+:[0-9]+)(,[0-9]+:[0-9]+)*\Z")],
              "wait": Annotated[int, Meta(ge=0, le=30)]}),
    Op("POST", "/v1/exec/packs/{pack}/kill", "send a signal to a pack's members", None, s.Kill),
    Op("GET", "/v1/agent/running", "what this agent's node runtime runs", s.Running),
    Op("POST", "/v1/yips/{pack}", "send yips to a pack's mailbox (the admin token or a pack token)", s.YipSent,
       s.YipSend, body_required=True),
    Op("GET", "/v1/yips/{pack}", "receive yips after=SEQ (wait=S long-polls), ack=SEQ acknowledges first",
       s.YipsReceived, query={"after": Uint62, "ack": Uint62, "wait": Annotated[int, Meta(ge=0, le=60)],
                              "max": Annotated[int, Meta(ge=1, le=1000)]}),
    Op("POST", "/v1/yips/{pack}/ack", "acknowledge yips through a seq", s.YipAcked, s.YipAck, body_required=True),
)

ERRORS = {
    "400": "invalid input (the message names the field)",
    "401": "missing or wrong credential",
    "403": "the credential may not do this",
    "404": "no such resource",
    "409": "conflict: the resource is in another state, or exists",
    "413": "the body is larger than the agent takes",
    "503": "no leader, or the node is unavailable: retry",
    "504": "no answer in time: the outcome is unknown (retry with the same request_id)",
}


def path_params(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def _json_pattern(node: Any) -> Any:
    """Patterns as JSON Schema reads them: Python's end-of-string ``\\Z`` is JSON Schema's ``$``."""
    if isinstance(node, dict):
        return {k: (v[:-2] + "$" if k == "pattern" and isinstance(v, str) and v.endswith("\\Z")
                    else _json_pattern(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_json_pattern(v) for v in node]
    return node


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document (built once: it depends on nothing but this module and the schema)."""
    types: list[Any] = [s.Error]
    for op in OPERATIONS:
        types += [t for t in (op.body, op.response) if t is not None]
        types += [PATH_PARAMS[p] for p in path_params(op.path)]
        types += list(op.query.values())
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = dict(zip(map(id, types), refs))

    def sch(t: Any) -> dict[str, Any]:
        return schema_of[id(t)]  # type: ignore[no-any-return]

    error = {"content": {"application/json": {"schema": sch(s.Error)}}}
    allow_header = {"Allow": {"description": "the methods the path takes", "schema": {"type": "string"}}}
    answers = {code: {**error, "description": what} for code, what in ERRORS.items()}
    answers["405"] = {**error, "description": "the path does not take this method", "headers": allow_header}
    answers["429"] = {**error, "description": "overloaded: refused for load before anything was done; retry "
                                              "after the Retry-After header's seconds",
                      "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        ok: dict[str, Any] = {"description": "ok", "content": {
            "application/json": {"schema": sch(op.response) if op.response is not None else {}}}}
        if op.text:
            ok["content"][op.text] = {"schema": {"type": "string"}}
        responses: dict[str, Any] = {"200": ok, **{code: {"$ref": f"#/components/responses/{code}"}
                                                   for code in sorted(answers)}}
        o: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method.lower()} {op.path}",
                             "responses": responses}
        if op.public:
            o["security"] = [{}, {"bearer": []}]
        parameters = [{"name": p, "in": "path", "required": True, "schema": sch(PATH_PARAMS[p])}
                      for p in path_params(op.path)]
        parameters += [{"name": q, "in": "query", "required": False, "schema": sch(t)} for q, t in op.query.items()]
        if parameters:
            o["parameters"] = parameters
        if op.body is not None:
            o["requestBody"] = {"required": op.body_required,
                                "content": {"application/json": {"schema": sch(op.body)}}}
        paths.setdefault(op.path, {})[op.method.lower()] = o
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "canidae agent API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": components, "responses": answers},
        "security": [{"bearer": []}],
        "paths": paths,
    }
    return _json_pattern(doc)  # type: ignore[no-any-return]


def document_bytes() -> bytes:
    return _encoded()


@functools.cache
def _encoded() -> bytes:
    return msgspec.json.encode(openapi_document())
