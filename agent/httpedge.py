"""The HTTP edge every room's routes share: authentication, body limits, JSON parsing, errors.

A route handler is a plain ``async fn(request) -> JSON-able | Response``; ``Edge.endpoint``
wraps it with what every route needs, in one place:

* authentication: the bearer credential names a principal (``canidae.agent.identity``), kept
  on ``request.state.principal``; failures are counted and logged, at most one line per
  ``AuthFailures.EVERY_S`` (``auth=False`` for routes that check tokens of their own, such as
  the yip routes that also take pack tokens);
* authorization by kind: the admin token and server agents may call every route; a client
  agent's node credential only the routes marked ``nodes=`` (``"self"``: the ``{node}`` in the
  path must be its own; ``"read"``: the lookups it routes yips and logs with);
* authorization by policy: an API token may call a route only if the route says what it
  needs (``need=(kind, capability, path parameter naming the resource)``, or ``HANDLER`` when
  the body names the resources and the handler calls ``Edge.require`` for each) and the
  token's policies grant it; the decision (``access``, a server's ``TokenAccess``) is cached.
  Routes without a ``need`` are for agents and the admin token only;
* on a client agent (which holds no replicated state), cluster routes are passed on to a server
  unchanged by the ``forward`` callable the composition root gives, API tokens included
  (the client agent cannot check them: the server does);
* admission control (``canidae.agent.admission``, when the composition root gives one): once the
  caller is known, the request takes a slot of its route's priority class or is refused with 429
  and ``Retry-After`` before anything is done or passed on;
* typed errors (``canidae.core.errors``) become ``{"error": {"code", "message"}}`` with their
  HTTP status; anything else is logged and answered 500, never taking the agent down;
* auditing (``audit``, the agent's ``canidae.agent.node.auditing.Auditor``): admitted before the
  handler runs (a log that cannot be written refuses a state change up front) and recorded,
  durably, before the answer is sent.

A body is read by ``read_body`` and decoded as a struct of the wire schema
(``canidae.agent.client.schema``), which refuses bad
input with ``InvalidInput`` (400) naming the field; oversized bodies are ``PayloadTooLarge``
(413). Answers are encoded with msgspec. The other parsing helpers (``query_int`` ...) refuse
bad query parameters the same way. This module decides
nothing about what a request means; its only state is the count of refused credentials.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Protocol, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from canidae.agent.admission import Admission, long_poll
from canidae.agent.client.schema import decode
from canidae.agent.identity import Authenticator, Kind, Principal
from canidae.core.acl import SECRET_RE, Capability, Decision, ResourceKind
from canidae.core.errors import (
    CanidaeError,
    InvalidInput,
    NotAuthenticated,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
)

log = logging.getLogger("canidae.api")

Handler = Callable[[Request], Awaitable[Response]]
Forward = Callable[[Request], Awaitable[Response]]
# What a route needs of an API token: the capability on the resource kind, and the path parameter
# naming the resource (None: every resource of the kind, as a listing reads them, shown as '*').
Need = tuple[ResourceKind, Capability, str | None]
HANDLER = "handler"  # the body names the resources: the handler calls Edge.require for each
EVERY = "*"


class Audit(Protocol):
    """Records requests in the agent's audit log (``canidae.agent.node.auditing.Auditor``)."""

    async def admit(self, request: Request) -> None: ...

    async def record(self, request: Request, response: Response) -> Response: ...


class Decider(Protocol):
    """Decides what an API token may do (a server agent's ``TokenAccess``)."""

    def decide(self, who: Principal, kind: ResourceKind, name: str, capability: Capability) -> Decision: ...


def error_response(err: CanidaeError) -> JSONResponse:
    headers = None
    if isinstance(err, Overloaded):  # HTTP wants whole seconds
        headers = {"retry-after": str(max(1, math.ceil(err.retry_after_s)))}
    return JSONResponse(err.to_wire(), status_code=err.http_status, headers=headers)


async def read_raw(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (413) and nesting deeper than ``MAX_NESTING`` (400)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
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
    # Only a body with more than MAX_NESTING opening brackets can be nested that deep.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING:
        try:
            deep = nested_deeper(json.loads(raw), MAX_NESTING)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput(f"malformed JSON body: {e}") from None
        except RecursionError:  # 100,000 "[" used to end here as a 500
            deep = True
        if deep:
            raise InvalidInput(f"JSON body nested deeper than {MAX_NESTING} levels")
    request.state.raw_body = raw  # what the audit record shows of the request (decoded, redacted)
    return raw


async def read_json(request: Request, limit: int) -> Any:
    """Read and parse a body of no fixed form (an empty one is ``{}``); see ``read_raw``."""
    raw = await read_raw(request, limit)
    if not raw:
        request.state.body = {}
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"malformed JSON body: {e}") from None
    request.state.body = body
    return body


T = TypeVar("T")


async def read_body(request: Request, limit: int, type: type[T]) -> T:
    """Read the body and decode it as ``type`` (a struct of ``canidae.agent.client.schema``): the
    one place a body is validated. An empty body is ``{}``; a refusal names the field."""
    return decode(await read_raw(request, limit) or b"{}", type)


MAX_NESTING = 400


def nested_deeper(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests lists and objects more than ``limit`` deep. Everything handed a
    body (handlers, encoders, pickle on the Raft path) may recurse over it; the parser alone
    stops near 1,000 levels. Level by level, without recursion; it costs about what parsing did."""
    level = [value] if type(value) in (list, dict) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        deeper: list[Any] = []
        for v in level:
            deeper.extend([c for c in (v.values() if type(v) is dict else v) if type(c) in (list, dict)])
        level = deeper
    return False


def query_bool(request: Request, key: str) -> bool:
    v = request.query_params.get(key)
    return v is not None and v.lower() in ("1", "true", "yes", "")


def query_int(request: Request, key: str, default: int, lo: int, hi: int) -> int:
    v = request.query_params.get(key)
    if v is None:
        return default
    # ASCII digits only: str.isdigit() also holds for "²", which int() refuses (a 500 once)
    if not (v.isascii() and v.isdigit()) or not lo <= int(v) <= hi:
        raise InvalidInput(f"query parameter {key} must be an integer {lo}..{hi}")
    return int(v)


def request_id(request: Request, given: Mapping[str, Any] | str | None = None) -> str:
    """The request id a body gives (``given``: the body, or its decoded ``request_id``), else the
    ``x-request-id`` header's, else a new one."""
    rid = (given.get("request_id") if isinstance(given, Mapping) else given) or request.headers.get(
        "x-request-id") or uuid.uuid4().hex
    if not isinstance(rid, str) or not 1 <= len(rid) <= 128 or not rid.isprintable():
        raise InvalidInput("request_id must be 1-128 printable characters")
    request.state.request_id = rid  # the audit record names the id the command carried
    return rid


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else ""


class AuthFailures:
    """Refused credentials: counted, and logged at most once per ``EVERY_S`` (a flood of guesses
    must not flood the log), each line saying how many were refused since the last one."""

    EVERY_S = 10.0

    def __init__(self) -> None:
        self.total = 0
        self._unlogged = 0
        self._logged_at = float("-inf")

    def record(self, request: Request, given: bool) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= self.EVERY_S:
            peer = request.client.host if request.client else "?"
            log.warning("refused %d request(s) with a %s credential (last: %s %s from %s; %d in all)",
                        self._unlogged, "wrong" if given else "missing", request.method, request.url.path,
                        peer, self.total)
            self._unlogged, self._logged_at = 0, now


def principal_of(request: Request) -> Principal:
    """The principal an authenticated route runs for."""
    return request.state.principal  # type: ignore[no-any-return]


class Edge:
    """Wraps route handlers with authentication, authorization by kind, forwarding and error answers."""

    def __init__(self, auth: Authenticator, max_body_bytes: int, forward: Forward | None = None,
                 access: Decider | None = None, admission: Admission | None = None,
                 audit: Audit | None = None) -> None:
        self.auth = auth
        self.admission = admission
        self.audit = audit
        self.access = access
        self.limit = max_body_bytes
        self._forward = forward
        self.failures = AuthFailures()

    def identify(self, request: Request) -> Principal | None:
        """The principal of the request's credential, None (and counted) if it names none; no
        credential at all is None without counting (an unauthenticated health probe)."""
        try:
            return self.authenticate(request, count_missing=False)
        except NotAuthenticated:
            return None

    def authenticate(self, request: Request, count_missing: bool = True) -> Principal:
        given = bearer(request)
        if not given:
            if count_missing:
                self.failures.record(request, False)
            raise NotAuthenticated("missing or wrong bearer token")
        try:
            who = self.auth.identify(given)
        except NotAuthenticated:  # a known token that may no longer be used: says why
            self.failures.record(request, True)
            raise
        if who is None:
            self.failures.record(request, True)
            raise NotAuthenticated("missing or wrong bearer token")
        return who

    def require(self, request: Request, kind: ResourceKind, name: str, capability: Capability) -> None:
        """Refuse (403, naming the capability and the rules consulted) unless the request's principal
        may ``capability`` on the resource. Agents and the admin token were authorized by kind."""
        who = principal_of(request)
        if who.kind is not Kind.TOKEN:
            return
        if self.access is None:
            raise PermissionDenied("this agent cannot check API tokens")
        self.access.decide(who, kind, name, capability).require()

    def _passes_on(self, request: Request) -> bool:
        """Whether a client agent passes the request on unchecked: an API token it cannot check
        (only servers hold the token records), never a credential it can."""
        given = bearer(request)
        return (self._forward is not None and self.access is None and SECRET_RE.fullmatch(given) is not None
                and self.auth.identify(given) is None)

    def authorize(self, request: Request, who: Principal, nodes: str, need: Need | str | None = None) -> None:
        if who.is_admin:
            return
        if who.kind is Kind.TOKEN:
            if need is None:
                raise PermissionDenied(f"{request.method} {request.url.path} is for agents and the admin token: "
                                       f"token {who.public_id} ({who.name}) may not call it")
            if need == HANDLER:
                return
            assert not isinstance(need, str)
            kind, capability, param = need
            request.state.principal = who
            self.require(request, kind, request.path_params[param] if param else EVERY, capability)
            return
        node = request.path_params.get("node")
        if nodes == "read" or (nodes == "self" and (node is None or who.may_act_for_node(node))):
            return
        raise PermissionDenied(f"the credential of {who.describe()} may not {request.method} {request.url.path}"
                               + (" (a node acts only for itself)" if nodes == "self" else ""))

    def _admit(self, request: Request) -> AbstractAsyncContextManager[Any]:
        if self.admission is None:
            return nullcontext()
        route = request.scope.get("route")
        return self.admission.admit(request.method, getattr(route, "path", None),
                                    long_poll(request.query_params.multi_items()))

    def endpoint(self, fn: Callable[[Request], Awaitable[Any]], *, auth: bool = True, forward: bool = True,
                 nodes: str = "", need: Need | str | None = None) -> Handler:
        """``nodes``: what a client agent's credential may do here: "" nothing, "self" act for its
        own node (the path's ``{node}``, or the handler checks the body), "read" a lookup.
        ``need``: what an API token must be granted here (see the module docstring)."""
        async def handler(request: Request) -> Response:
            if self.audit is None:
                return await answer(request)
            try:
                await self.audit.admit(request)
            except CanidaeError as e:
                return error_response(e)
            return await self.audit.record(request, await answer(request))

        async def answer(request: Request) -> Response:
            try:
                if auth:
                    if forward and self._passes_on(request):
                        async with self._admit(request):
                            return await self._forward(request)  # type: ignore[misc]
                    who = self.authenticate(request)
                    self.authorize(request, who, nodes, need)
                    request.state.principal = who
                async with self._admit(request):
                    if forward and self._forward is not None:
                        return await self._forward(request)
                    result = await fn(request)
                if isinstance(result, Response):
                    return result
                return Response(msgspec.json.encode(result), media_type="application/json")
            except CanidaeError as e:
                return error_response(e)
            except Exception as e:  # a bug must answer 500, never take the agent down
                log.exception("internal error on %s %s", request.method, request.url.path)
                return JSONResponse({"error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}},
                                    status_code=500)
        return handler
