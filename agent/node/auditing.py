"""What this agent audits, and when its audit head is signed and committed.

``Auditor`` is the ``Edge``'s audit hook (``canidae.agent.httpedge.Audit``). Around every route:

* before a state-changing request runs, ``admit`` makes sure the log can take its record
  (``AuditLog.prepare``): a log that cannot be written refuses the request (503
  ``audit_unavailable``) before anything is done;
* after it, ``record`` writes one record (time, accessor, agent, remote address, action,
  target, outcome, error code, request id, and the redacted request body as detail) and waits
  until it is durable before the answer goes out. If that fails, the answer is replaced by a
  503 saying the request was carried out but could not be audited (as an audit device does
  for responses; the request id lets the caller check and retry safely);
* refused requests (401, 403) are recorded whatever the method, at most ``denials_per_s`` a
  second (a bucket of ``denial_burst``): the ones beyond are counted and the count goes into
  the next denial written, or into an ``audit.denials_dropped`` record at the next checkpoint.

Not audited: reads that succeed, requests refused for load (429: nothing was done, and a
refusal under overload must stay cheap), and the agents' own machine traffic (heartbeats, reports,
assignment resyncs, yips, audit heads): their refusals still are. The action and target of a
request come from its route (``ACTIONS``); a state-changing route not listed there is audited
as ``"<METHOD> <path template>"``.

``Checkpointer`` signs the durable head every ``checkpoint_s`` when it moved (and on demand)
and commits it through a server (``POST /v1/audit/checkpoints``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from canidae.agent.config import AuditSettings
from canidae.agent.identity import public_id
from canidae.agent.node.auditlog import AuditLog
from canidae.core.audit import Checkpoint, Outcome, redact
from canidae.core.errors import AuditUnavailable, CanidaeError

log = logging.getLogger("canidae.audit")

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_DETAIL_CHARS = 4096
MAX_LIST_ITEMS = 20

# (method, route path) -> action; None: machine traffic, audited only when refused.
ACTIONS: dict[tuple[str, str], str | None] = {
    ("POST", "/v1/packs"): "pack.create",
    ("DELETE", "/v1/packs"): "pack.delete",
    ("POST", "/v1/packs/{name}/{action}"): "pack.{action}",
    ("POST", "/v1/exec/packs/{pack}/kill"): "pack.kill",
    ("POST", "/v1/nodes"): "node.register",
    ("POST", "/v1/nodes/{node}/state"): "node.state",
    ("POST", "/v1/rebalance"): "cluster.rebalance",
    ("POST", "/v1/acl/tokens"): "token.create",
    ("DELETE", "/v1/acl/tokens/{accessor}"): "token.revoke",
    ("POST", "/v1/acl/policies"): "policy.apply",
    ("DELETE", "/v1/acl/policies/{name}"): "policy.delete",
    ("POST", "/v1/audit/checkpoint"): "audit.checkpoint",
    ("DELETE", "/v1/nodes/{node}"): "node.remove",
    ("POST", "/v1/autoscale/policy"): "autoscale.policy",
    ("POST", "/v1/autoscale/pause"): "autoscale.pause",
    ("POST", "/v1/autoscale/resume"): "autoscale.resume",
    ("POST", "/v1/autoscale/decisions"): "autoscale.decision",
    ("POST", "/v1/autoscale/decisions/{id}/outcome"): "autoscale.outcome",
    ("POST", "/v1/nodes/{node}/heartbeat"): None,
    ("POST", "/v1/nodes/{node}/reports"): None,
    ("POST", "/v1/nodes/{node}/assignments"): None,
    ("POST", "/v1/yips/{pack}"): None,
    ("POST", "/v1/yips/{pack}/ack"): None,
    ("POST", "/v1/audit/checkpoints"): None,
}
_NODE_STATES = {"ready": "node.uncordon", "cordoned": "node.cordon", "draining": "node.drain", "down": "node.down"}


def wall_ms() -> int:
    return int(time.time() * 1000)


def text(v: Any) -> str:
    """A string a record can hold: lone surrogates (which JSON bodies may carry) replaced."""
    return str(v).encode("utf-8", "replace").decode("utf-8")


def bounded(value: Any, budget: int = MAX_DETAIL_CHARS) -> Any:
    """A redacted body small enough for a record, and plain JSON whatever the body held: long
    lists keep their first items and say how many there were, NaN and infinities become text,
    lone surrogates are replaced; a body still too large keeps only its scalar fields."""
    def trim(v: Any) -> Any:
        if isinstance(v, dict):
            return {text(k): trim(x) for k, x in v.items()}
        if isinstance(v, list):
            head = [trim(x) for x in v[:MAX_LIST_ITEMS]]
            return head if len(v) <= MAX_LIST_ITEMS else [*head, f"... {len(v)} in all"]
        if isinstance(v, str):
            return text(v if len(v) <= 256 else v[:256] + f"... ({len(v)} characters)")
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return v
    out = trim(redact(value))
    if len(json.dumps(out, default=str)) <= budget:
        return out
    if isinstance(out, dict):
        return {"truncated": True, **{k: v for k, v in out.items() if not isinstance(v, (dict, list))}}
    return {"truncated": True}


class DenialBudget:
    """A token bucket for refused requests."""

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s, self.burst, self._clock = per_s, burst, clock
        self.tokens, self.at = float(burst), clock()
        self.dropped = 0

    def take(self) -> bool:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False


class Auditor:
    """The edge's audit hook over this agent's ``AuditLog``."""

    def __init__(self, audit_log: AuditLog, agent: str, settings: AuditSettings,
                 clock: Callable[[], int] = wall_ms) -> None:
        self.log = audit_log
        self.agent = agent
        self.clock = clock
        self.denials = DenialBudget(settings.denials_per_s, settings.denial_burst)
        self.written = 0
        self.failed = 0

    @staticmethod
    def _route(request: Request) -> str:
        route = request.scope.get("route")
        return getattr(route, "path", request.url.path)

    def _action(self, request: Request) -> tuple[str | None, bool]:
        """(action, whether it is a state change we audit)."""
        key = (request.method, self._route(request))
        if key in ACTIONS:
            action = ACTIONS[key]
            if action is None:
                return None, False
            return action.format(**request.path_params) if "{" in action else action, True
        return f"{request.method} {key[1]}", request.method in WRITES

    async def admit(self, request: Request) -> None:
        if self._action(request)[1]:
            await self.log.prepare()

    async def record(self, request: Request, response: Response) -> Response:
        status = response.status_code
        action, audited = self._action(request)
        denied = status in (401, 403)
        if status == 429:  # refused for load before anything was done: cheap, and nothing to audit
            return response
        if not audited and not denied:
            return response
        if denied and not self.denials.take():
            return response
        try:
            rid = self._request_id(request)
            await self.log.append(self._fields(request, response, action, denied, rid))
            self.written += 1
            if rid.isascii() and rid.isprintable():  # a header cannot carry anything else
                response.headers["x-request-id"] = rid
            return response
        except CanidaeError as e:
            failure = e
        except Exception as e:  # an audit bug must not become a silent success
            log.exception("audit: recording %s %s failed", request.method, request.url.path)
            failure = AuditUnavailable(f"{type(e).__name__}: {e}")
        self.failed += 1
        if denied:
            return response  # refused anyway: nothing was done that needs a record
        return JSONResponse(AuditUnavailable(
            f"the request was carried out (HTTP {status}, request id {self._request_id(request)}) but its audit "
            f"record could not be written: {failure}").to_wire(), status_code=503)

    @staticmethod
    def _request_id(request: Request) -> str:
        rid = getattr(request.state, "request_id", None)
        if not rid:
            body = request_body(request)
            rid = (body.get("request_id") if isinstance(body, dict) else None) or request.headers.get("x-request-id")
            if not isinstance(rid, str) or not rid or len(rid) > 128:
                rid = uuid.uuid4().hex
            request.state.request_id = rid
        return text(rid)[:128]

    def _fields(self, request: Request, response: Response, action: str | None, denied: bool,
                rid: str) -> dict[str, Any]:
        raw = getattr(response, "body", b"") or b""
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        status = response.status_code
        code = ""
        if status >= 400:
            err = answer.get("error") if isinstance(answer, dict) else None
            code = str(err.get("code", "")) if isinstance(err, dict) else str(status)
        outcome = Outcome.DENIED if denied else Outcome.OK if status < 400 else Outcome.FAILED
        who = getattr(request.state, "principal", None)
        body = request_body(request)
        detail: dict[str, Any] = {"status": status, "method": request.method, "path": text(request.url.path)[:1024]}
        if who is not None:
            accessor, detail["principal"] = who.public_id, f"{who.kind.value} {who.name}"
        else:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            accessor = ""
            detail["caller"] = f"not identified here: {public_id(given)}" if given else "no credential"
        if body not in (None, {}):
            detail["body"] = bounded(body)
        if denied and self.denials.dropped:
            detail["denials_dropped"], self.denials.dropped = self.denials.dropped, 0
        if code:
            err = answer.get("error", {}) if isinstance(answer, dict) else {}
            detail["message"] = text(err.get("message", ""))[:512] if isinstance(err, dict) else ""
        action = action or f"{request.method} {self._route(request)}"
        if action == "node.state" and isinstance(body, dict):
            action = _NODE_STATES.get(str(body.get("state")), action)
        if action == "pack.create" and isinstance(body, dict) and body.get("place", True):
            action = "pack.spawn"
        client = request.client
        return {"at_ms": self.clock(), "accessor": accessor, "agent": self.agent,
                "remote": f"{client.host}:{client.port}" if client else "", "action": text(action)[:128],
                "target": text(_target(request, body, answer))[:1024], "outcome": outcome.value, "code": code,
                "request_id": rid, "detail": detail}

    async def note_dropped(self) -> None:
        """Write the count of denials dropped since the last denial written, if any."""
        if not self.denials.dropped:
            return
        n, self.denials.dropped = self.denials.dropped, 0
        await self.log.append({"at_ms": self.clock(), "agent": self.agent, "action": "audit.denials_dropped",
                               "outcome": Outcome.OK.value, "detail": {"denials_dropped": n}})


def request_body(request: Request) -> Any:
    """The request's JSON body as the edge read it, or None: parsed by ``read_json``, or the raw
    bytes a typed route decoded (``read_body``), parsed again here only for the record."""
    body = getattr(request.state, "body", None)
    if body is not None:
        return body
    raw = getattr(request.state, "raw_body", None)
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    request.state.body = body
    return body


def _target(request: Request, body: Any, answer: Any) -> str:
    p = request.path_params
    for key in ("name", "pack", "node", "accessor", "id"):
        if key in p:
            return str(p[key])
    if not isinstance(body, dict):
        return ""
    if isinstance(body.get("spec"), dict):
        name = str(body["spec"].get("name", ""))
        return f"{name}-0..{name}-{body['count'] - 1}" if isinstance(body.get("count"), int) and body["count"] else name
    if isinstance(body.get("specs"), list):
        return ",".join(str(s.get("name", "")) for s in body["specs"][:MAX_LIST_ITEMS] if isinstance(s, dict))
    if isinstance(body.get("names"), list):
        return ",".join(str(n) for n in body["names"][:MAX_LIST_ITEMS])
    if isinstance(body.get("policy"), dict):
        return str(body["policy"].get("name", ""))
    if isinstance(body.get("node"), dict):
        return str(body["node"].get("id", ""))
    token = answer.get("token") if isinstance(answer, dict) else None
    if isinstance(token, dict) and "accessor" in token:
        return str(token["accessor"])
    return ""


Commit = Callable[[dict[str, Any]], Awaitable[Any]]


class Checkpointer:
    """Signs the durable head and commits it through Raft, every ``checkpoint_s`` when it moved."""

    def __init__(self, auditor: Auditor, commit: Commit, every_s: float, clock: Callable[[], int] = wall_ms) -> None:
        self.auditor = auditor
        self.log = auditor.log
        self._commit = commit
        self.every_s = every_s
        self.clock = clock
        self.committed_seq = -1
        self.last: dict[str, Any] | None = None
        self.last_error = ""
        self._lock = asyncio.Lock()

    async def commit_now(self) -> dict[str, Any]:
        """Sign and commit the current durable head (the committed one again if it has not moved)."""
        async with self._lock:
            cp: Checkpoint = self.log.sign_head(self.clock())
            if cp.seq == self.committed_seq and self.last is not None:
                return self.last
            answer = await self._commit({"node": self.log.node, "public_key": self.log.public_key,
                                         "checkpoint": cp.to_dict()})
            self.committed_seq = cp.seq
            self.last = {"checkpoint": cp.to_dict(), "key_id": cp.key_id, "committed": answer}
            return self.last

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.auditor.note_dropped()
                if self.log.durable_seq != self.committed_seq and self.log.durable_seq > 0:
                    await self.commit_now()
                self.last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - retried at the next tick; the log says why
                if str(e) != self.last_error:
                    log.warning("audit: checkpoint not committed: %s", e)
                self.last_error = str(e)


__all__ = ["ACTIONS", "Auditor", "Checkpointer", "DenialBudget", "bounded"]
