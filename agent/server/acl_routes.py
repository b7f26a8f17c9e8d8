"""The access control routes (``/v1/acl/...``): tokens and policies, on a server agent.

Creating a token draws its accessor id and secret here, proposes only the secret's hash
(``CreateToken``) and answers the secret once. Revoking one (and changing policies) answers
after every reachable server applied the change, so the next request is refused on every agent
(client agents pass API tokens on to servers). ``/v1/acl/token/self`` says who the caller is
and, with ``can``, whether it may do something and why. On a client agent these routes are
passed on to a server by the edge.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route

from canidae.agent.client import schema
from canidae.agent.httpedge import Edge, principal_of, read_body, request_id
from canidae.agent.identity import Kind
from canidae.agent.server.access import TokenAccess
from canidae.core.acl import (
    MANAGEMENT,
    READ_ONLY,
    Capability,
    Policy,
    ResourceKind,
    format_accessor,
    format_secret,
    kind_of,
)
from canidae.core.commands import ApplyPolicy, CreateToken, DeletePolicy, RevokeToken
from canidae.core.errors import CanidaeError, InvalidInput, NotFound, PermissionDenied
from canidae.core.tokens import ACCESSOR_RE
from canidae.core.types import validate_name

if TYPE_CHECKING:
    from canidae.agent.server.control import ControlPlane

MAX_TTL_MS = 10 * 365 * 86_400_000
PEERS_WAIT_S = 5.0
OPERATOR = ResourceKind.OPERATOR


def _view(rec: Any, now: int) -> dict[str, Any]:
    d: dict[str, Any] = rec.to_dict(with_hash=False)
    d["expired"] = rec.expires_at_ms is not None and now >= rec.expires_at_ms
    return d


async def in_force_everywhere(plane: ControlPlane) -> dict[str, Any]:
    """Wait (bounded) until every other server applied what this one has; say which did."""
    assert plane.replica is not None
    target = plane.replica.raft_status()["last_applied"]
    pending = {s.id: s.api for s in plane.cfg.servers if s.raft != plane.cfg.raft}
    deadline = time.monotonic() + PEERS_WAIT_S
    while pending and time.monotonic() < deadline:
        for ident, api in list(pending.items()):
            try:
                st = await plane.link.call("GET", "/v1/status", prefer=api, timeout=1.0)
            except CanidaeError:
                continue
            if st.get("node") == ident and st.get("last_applied", 0) >= target:
                del pending[ident]
        if pending:
            await asyncio.sleep(0.02)
    return {"in_force_on_all_servers": not pending, "not_confirmed": sorted(pending)}


def acl_routes(plane: ControlPlane | None, edge: Edge, access: TokenAccess | None) -> list[Route]:
    limit = edge.limit
    endpoint = edge.endpoint
    agent: Any = plane  # None on a client agent: the edge forwards before a handler runs

    def now() -> int:
        return int(time.time() * 1000)

    async def create_token(request: Request) -> Any:
        assert access is not None
        body = await read_body(request, limit, schema.CreateToken)
        name, policies, ttl = body.name, body.policies, body.ttl_s
        who = principal_of(request)
        if MANAGEMENT.name in policies and who.kind is Kind.TOKEN:
            # A token that may make tokens must not mint itself more rights than it has.
            edge.require(request, OPERATOR, "", Capability.KEYS)
        stamp = agent.stamp()
        accessor, secret = format_accessor(secrets.token_bytes(16)), format_secret(secrets.token_bytes(32))
        key, secret_hash = access.hash(secret)
        answer = await agent.propose(CreateToken(
            id=request_id(request, body.request_id), **stamp, by=who.public_id, accessor=accessor, key=key,
            secret_hash=secret_hash, name=name, policies=tuple(policies),
            expires_at=stamp["at"] + ttl * 1000 if ttl is not None else None))
        missing = [p for p in policies if p not in agent.state.policies and p not in (MANAGEMENT.name, READ_ONLY.name)]
        return {**answer, "secret": secret, "policies_not_found": missing}

    async def list_tokens(request: Request) -> Any:
        st = await agent.read_state(False)
        t = now()
        return {"tokens": [_view(st.tokens[k], t) for k in sorted(st.tokens, key=lambda a: (st.tokens[a].name, a))]}

    def accessor_of(request: Request) -> str:
        accessor = request.path_params["accessor"]
        if not ACCESSOR_RE.match(accessor):
            raise InvalidInput(f"{accessor!r} is not an accessor id (ca_ and 32 hex digits)")
        return accessor

    async def show_token(request: Request) -> Any:
        accessor = accessor_of(request)
        st = await agent.read_state(False)
        rec = st.tokens.get(accessor)
        if rec is None:
            raise NotFound(f"no token {accessor}")
        return {"token": _view(rec, now())}

    async def revoke_token(request: Request) -> Any:
        accessor = accessor_of(request)
        answer = await agent.propose(RevokeToken(id=request_id(request), **agent.stamp(), accessor=accessor,
                                                 by=principal_of(request).public_id))
        return {**answer, **await in_force_everywhere(agent)}

    async def token_self(request: Request) -> Any:
        who = principal_of(request)
        out: dict[str, Any] = {"kind": who.kind.value, "name": who.name, "accessor": who.public_id}
        if who.kind is Kind.TOKEN:
            assert access is not None
            out["token"] = _view(access.record(who.public_id), now())
        can = request.query_params.get("can")
        if can is not None:
            try:
                capability = Capability(can)
            except ValueError:
                raise InvalidInput(f"unknown capability {can!r}: one of {', '.join(c.value for c in Capability)}") from None
            kind_text = request.query_params.get("kind")
            try:
                kind = ResourceKind(kind_text) if kind_text else kind_of(capability)
            except ValueError:
                raise InvalidInput(f"unknown resource kind {kind_text!r}: pack, node, operator or audit") from None
            name = request.query_params.get("name", "")
            if kind in (ResourceKind.PACK, ResourceKind.NODE):
                validate_name(kind.value, name)
            if who.kind is Kind.TOKEN:
                assert access is not None
                out["decision"] = access.decide(who, kind, name, capability).to_dict()
            else:
                out["decision"] = {"allowed": who.is_admin, "capability": capability.value,
                                   "resource": {"kind": kind.value, "name": name},
                                   "explanation": f"{'allowed' if who.is_admin else 'denied'}: "
                                                  f"{who.describe()} is {'' if who.is_admin else 'not '}an "
                                                  "administrator (policies apply to API tokens)"}
        return out

    async def apply_policy(request: Request) -> Any:
        body = await read_body(request, limit, schema.ApplyPolicy)
        policy = Policy.from_toml_dict(body.policy)  # refused here, with its message, before the log
        answer = await agent.propose(ApplyPolicy(id=request_id(request, body.request_id), **agent.stamp(),
                                                 policy=policy.to_dict(), by=principal_of(request).public_id))
        return {**answer, **await in_force_everywhere(agent)}

    async def list_policies(request: Request) -> Any:
        st = await agent.read_state(False)
        builtin = [{"name": p.name, "description": p.description, "builtin": True} for p in (MANAGEMENT, READ_ONLY)]
        return {"policies": builtin + [{"name": p.name, "description": p.description, "builtin": False,
                                        "rules": len(p.rules)} for _, p in sorted(st.policies.items())]}

    async def show_policy(request: Request) -> Any:
        name = validate_name("policy", request.path_params["name"])
        builtin = {MANAGEMENT.name: MANAGEMENT, READ_ONLY.name: READ_ONLY}
        st = await agent.read_state(False)
        policy = builtin.get(name) or st.policies.get(name)
        if policy is None:
            raise NotFound(f"no policy {name!r}")
        users = sorted(r.accessor for r in st.tokens.values() if name in r.policies and not r.revoked)
        return {"policy": policy.to_dict(), "builtin": name in builtin,
                "rules": [r.describe() for r in policy.rules], "tokens": users}

    async def delete_policy(request: Request) -> Any:
        name = validate_name("policy", request.path_params["name"])
        if name in (MANAGEMENT.name, READ_ONLY.name):
            raise PermissionDenied(f"policy {name!r} is built in and cannot be deleted")
        answer = await agent.propose(DeletePolicy(id=request_id(request), **agent.stamp(), name=name,
                                                  by=principal_of(request).public_id))
        return {**answer, **await in_force_everywhere(agent)}

    read = (OPERATOR, Capability.READ, None)
    tokens = (OPERATOR, Capability.TOKENS, None)
    policies = (OPERATOR, Capability.POLICIES, None)
    return [
        Route("/v1/acl/tokens", endpoint(create_token, need=tokens), methods=["POST"]),
        Route("/v1/acl/tokens", endpoint(list_tokens, need=read), methods=["GET"]),
        Route("/v1/acl/tokens/{accessor}", endpoint(show_token, need=read), methods=["GET"]),
        Route("/v1/acl/tokens/{accessor}", endpoint(revoke_token, need=tokens), methods=["DELETE"]),
        Route("/v1/acl/token/self", endpoint(token_self, nodes="read", need="handler"), methods=["GET"]),
        Route("/v1/acl/policies", endpoint(apply_policy, need=policies), methods=["POST"]),
        Route("/v1/acl/policies", endpoint(list_policies, need=read), methods=["GET"]),
        Route("/v1/acl/policies/{name}", endpoint(show_policy, need=read), methods=["GET"]),
        Route("/v1/acl/policies/{name}", endpoint(delete_policy, need=policies), methods=["DELETE"]),
    ]


__all__ = ["acl_routes", "in_force_everywhere"]
