"""What this agent's node runtime runs, as it sees it (admin token; never forwarded):

    GET /v1/agent/running   {"node", "rev", "digest", "corrected", "running": {pack: generation}}

Checks and drills compare this with the replicated state: the contract is that every agent runs
exactly what the state assigns to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route

from canidae.agent.httpedge import Edge
from canidae.core.state import running_digest

if TYPE_CHECKING:
    from canidae.agent.node.runtime import NodeRuntime


def routes(node: NodeRuntime, edge: Edge) -> list[Route]:
    async def running(request: Request) -> Any:
        rec = node.reconciler
        now = rec.running()
        return {"node": node.cfg.node_id, "rev": rec.rev, "digest": running_digest(now.items()),
                "corrected": rec.corrected, "running": now}

    return [Route("/v1/agent/running", edge.endpoint(running, forward=False), methods=["GET"])]
