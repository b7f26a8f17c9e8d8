"""API routes of the exec driver (admin token), each served by the pack's node:

    GET  /v1/exec/packs/{pack}/logs?member=I&tail=N&cursor=I:C,...&wait=S   member output
    POST /v1/exec/packs/{pack}/kill     {"signal": "KILL"|"TERM"|"INT"|"HUP"|...}
    GET  /v1/exec/packs/{pack}          processes of the pack here: pids, restarts, exits, limits
    GET  /v1/exec/info                  this agent's isolation mechanism, settings and clock

Any agent takes them and routes them (``canidae.agent.node.packroute``); the work is the exec
driver's (``canidae.agent.node.exec_driver``) and the log reading ``canidae.agent.node.packlogs``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from canidae.agent.client import schema
from canidae.agent.httpedge import Edge, query_int, read_body
from canidae.agent.node import packlogs
from canidae.core.errors import InvalidInput
from canidae.core.types import validate_name
from starlette.requests import Request
from starlette.routing import Route

if TYPE_CHECKING:
    from canidae.agent.node.runtime import NodeRuntime

MAX_WAIT_S = 30
SIGNALS = {"TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT"}


def digits(s: str) -> bool:
    """ASCII digits only: str.isdigit() also holds for "²", which int() refuses."""
    return s.isascii() and s.isdigit()


def parse_cursors(raw: str | None) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in (raw or "").split(","):
        if not part:
            continue
        m, sep, c = part.partition(":")
        if not sep or not digits(m) or not digits(c):
            raise InvalidInput("cursor must look like MEMBER:OFFSET[,MEMBER:OFFSET...]")
        out[int(m)] = int(c)
    return out


def routes(node: NodeRuntime, edge: Edge) -> list[Route]:
    router = node.router
    driver = node.exec_driver
    limit = edge.limit
    endpoint = edge.endpoint

    async def logs(request: Request) -> Any:
        pack = validate_name("pack", request.path_params["pack"])
        member = request.query_params.get("member")
        if member is not None and not digits(member):
            raise InvalidInput("member must be a member index (0, 1, ...)")
        tail = request.query_params.get("tail")
        if tail is not None and not digits(tail):
            raise InvalidInput("tail must be a number of lines")
        cursors = parse_cursors(request.query_params.get("cursor"))
        wait = query_int(request, "wait", 0, 0, MAX_WAIT_S)

        async def local() -> Any:
            d = driver.logs_dir(pack)
            members = [int(member)] if member is not None else packlogs.members_with_logs(d)
            if member is not None and int(member) not in packlogs.members_with_logs(d):
                raise InvalidInput(f"pack {pack} has no member {member} on node {router.me}")
            deadline = time.monotonic() + wait
            while True:
                out = []
                for i in members:
                    got = packlogs.read(d, i, cursor=cursors.get(i), tail=int(tail) if tail is not None else None)
                    out.append({"member": i, **got})
                if tail is not None or any(o["text"] or o["lost"] for o in out) or time.monotonic() >= deadline:
                    return {"pack": pack, "node": router.me, "members": out}
                await asyncio.sleep(0.05)
        return await router.route(request, pack, local, method="GET", path=f"/v1/exec/packs/{pack}/logs",
                                  params=dict(request.query_params), timeout=wait + 5.0, here=False)

    async def kill(request: Request) -> Any:
        pack = validate_name("pack", request.path_params["pack"])
        body = await read_body(request, limit, schema.Kill)
        name = body.signal.removeprefix("SIG")

        async def local() -> Any:
            return driver.kill(pack, signal.Signals[f"SIG{name}"])
        return await router.route(request, pack, local, method="POST", path=f"/v1/exec/packs/{pack}/kill",
                                  json={"signal": name})

    async def status(request: Request) -> Any:
        pack = validate_name("pack", request.path_params["pack"])

        async def local() -> Any:
            return {"status": driver.status(pack)}
        return await router.route(request, pack, local, method="GET", path=f"/v1/exec/packs/{pack}", here=False)

    async def info(request: Request) -> Any:
        return {"node": router.me, "time_ms": time.time() * 1000, "pid": os.getpid(), "exec": driver.describe(),
                "data_dir": node.cfg.data_dir}

    return [
        Route("/v1/exec/info", endpoint(info, forward=False, nodes="read"), methods=["GET"]),  # agent doctor
        Route("/v1/exec/packs/{pack}", endpoint(status, forward=False), methods=["GET"]),
        Route("/v1/exec/packs/{pack}/logs", endpoint(logs, forward=False), methods=["GET"]),
        Route("/v1/exec/packs/{pack}/kill", endpoint(kill, forward=False), methods=["POST"]),
    ]
