"""The cluster's record of audit chain heads, on a server agent (client agents pass these on).

    POST /v1/audit/checkpoints  {"node", "public_key", "checkpoint"}   an agent commits its signed head
    GET  /v1/audit/checkpoints?agent=N                                  agent N's keys and checkpoints

A head is committed only by the agent it belongs to (its node credential acts for itself only)
or the admin, and only once its Ed25519 signature checks against the public key it comes with;
``canidae.core.audit_heads`` decides the rest in apply (the key id matches the key, heads only
move forward, one hash per seq). Reading needs ``read`` on ``audit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.requests import Request
from starlette.routing import Route

from canidae.agent.client import schema
from canidae.agent.httpedge import Edge, principal_of, read_body, request_id
from canidae.core.acl import Capability, ResourceKind
from canidae.core.audit import Checkpoint
from canidae.core.audit_heads import public_key_bytes
from canidae.core.commands import CommitAuditCheckpoint
from canidae.core.errors import InvalidInput, PermissionDenied
from canidae.core.types import validate_name

if TYPE_CHECKING:
    from canidae.agent.server.control import ControlPlane


def check_signature(public_key: str, cp: Checkpoint) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key_bytes(public_key)).verify(bytes.fromhex(cp.signature),
                                                                                 cp.message())
    except (InvalidSignature, ValueError):
        raise InvalidInput(f"checkpoint at seq {cp.seq}: the signature does not verify with the key given") from None


def routes(plane: ControlPlane | None, edge: Edge) -> list[Route]:
    agent: Any = plane  # None on a client agent: the edge forwards before a handler runs

    async def commit(request: Request) -> Any:
        body = await read_body(request, edge.limit, schema.AuditCheckpointIn)
        node = body.node
        who = principal_of(request)
        if not who.may_act_for_node(node):
            raise PermissionDenied(f"the credential of {who.describe()} may not commit node {node}'s audit head")
        cp = Checkpoint.from_dict(body.checkpoint)
        check_signature(body.public_key, cp)
        rid = request_id(request, body.request_id) if body.request_id else f"audit-{cp.key_id}-{cp.seq}-{cp.at_ms}"
        return await agent.propose(CommitAuditCheckpoint(id=rid, **agent.stamp(), by=who.public_id, node_id=node,
                                                         public_key=body.public_key, checkpoint=cp.to_dict()))

    async def listing(request: Request) -> Any:
        node = validate_name("node", request.query_params.get("agent", ""))
        st = await agent.read_state(False)
        return {"agent": node, "keys": st.audit.view(node)}

    return [
        Route("/v1/audit/checkpoints", edge.endpoint(commit, nodes="self"), methods=["POST"]),
        Route("/v1/audit/checkpoints", edge.endpoint(listing, need=(ResourceKind.AUDIT, Capability.READ, None)),
              methods=["GET"]),
    ]


__all__ = ["check_signature", "routes"]
