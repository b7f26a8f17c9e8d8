"""The yip API: send to a pack's mailbox through any agent, receive (long-poll) and acknowledge.

    POST /v1/yips/{pack}          {"text": ...} | {"data": ...} [, "id"]  or  {"yips": [...]}
    GET  /v1/yips/{pack}?after=SEQ&ack=SEQ&wait=S&max=N   yips after SEQ (waits up to S s for one)
    POST /v1/yips/{pack}/ack      {"through": SEQ}

Who may do what is decided here, not by the API's admin-token check: the admin token may do
everything; a pack token (``canidae.core.packtoken``) may send to any pack (the yip is marked
``from`` that pack) and may receive from and acknowledge *its own* mailbox only. A pack token is
taken only by the agent of its node, only while that run is on (the pack assigned here at the
token's generation). An agent's own credential may hand on yips it took (relayed). Requests are
served by the node that holds the pack (``canidae.agent.node.packroute`` takes them there). Sends for
another node go through a ``Relay``: concurrent ones share a hop, each yip keeping its sender
(``"relayed": true`` with ``from`` per yip, accepted from an agent's credential or the admin
token only) and each request its own answer (``groups`` says how many yips each request holds). A relay that cannot reach
the pack's node sends again (the yips have ids: a resend is queued once) until the node answers,
the pack moves, or the node is really down (declared down by the servers, or silent for the whole
request timeout); only then does the sender get 503 ``unavailable``: "node X of pack P is down;
retry after its packs move".

A send request is queued whole or not at all, and is answered once its yips are on disk. The
mailbox itself (bounds, a sender's share, ids scoped by sender, the log on disk) is
``canidae.agent.node.mailbox``. A mailbox is dropped, files and all, when a request finds its
pack no longer assigned here; not before this agent has its first list of assignments, so that
a restarted agent never drops a mailbox it has not been told about yet.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from canidae.agent.client.link import HOP
from canidae.agent.client import schema
from canidae.agent.httpedge import Edge, query_int, read_body
from canidae.agent.node.mailbox import Mailbox, MailboxStore, new_id, parse_body
from canidae.agent.node.packroute import PackRouter
from canidae.core.errors import (CanidaeError, InvalidInput, NotAuthenticated, NotFound, PermissionDenied,
                                 Unavailable, WrongState)
from canidae.core.packtoken import PREFIX as PACK_TOKEN_PREFIX
from canidae.core.types import validate_name
from starlette.requests import Request
from starlette.routing import Route

if TYPE_CHECKING:
    from canidae.agent.node.runtime import NodeRuntime

ADMIN = "admin"
MAX_WAIT_S = 60
GC_EVERY_S = 5.0
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 0.5  # a relay's pause before it asks an unreachable node again


def routes(node: NodeRuntime, edge: Edge) -> list[Route]:
    router = node.router
    store: MailboxStore = node.mailboxes
    keys, me = node.keys, node.cfg.node_id  # pack tokens are signed with this agent's own key (agent.keyring)
    usage = node.usage
    limit = edge.limit
    endpoint = edge.endpoint
    last_gc = [time.monotonic()]

    def principal(request: Request) -> tuple[str, str, str]:
        """(who, the raw Authorization header, kind): ``admin`` for the admin token and server
        agents; a client agent's credential (kind ``agent``: it may only hand on yips); or the
        pack whose token it is (kind ``pack``)."""
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if given.startswith(PACK_TOKEN_PREFIX):
            run = keys.verify_pack_token(me, given)
            if run is None or router.generation_here(run.pack) != run.generation:
                edge.failures.record(request, True)
                raise NotAuthenticated("pack token not valid here: it is taken only by the agent of its pack's node, "
                                       "while that run of the pack is on")
            return run.pack, header, "pack"
        who = edge.identify(request)
        if who is None:
            if not given:
                edge.failures.record(request, False)
            raise NotAuthenticated("missing or wrong bearer token (the admin token or a pack token)")
        return (ADMIN, header, "admin") if who.is_admin else (who.describe(), header, "agent")

    def may_read(who: str, pack: str) -> None:
        if who != ADMIN and who != pack:
            raise PermissionDenied(f"the token of pack {who} may not read the mailbox of pack {pack}")

    def synced() -> bool:
        # Until the reconciler has its first list of assignments (just after a restart), "not
        # assigned here" means "not known yet": a mailbox on disk must not be dropped for it.
        return node.reconciler.rev > 0

    def mailbox(pack: str) -> Mailbox:
        if not router.assigned_here(pack):
            if not synced():  # just started: a relay asks again soon rather than give up on us
                raise Unavailable(f"node {router.me} is starting and does not know its packs yet")
            store.drop(pack)
            raise NotFound(f"pack {pack} is not on node {router.me}")
        now = time.monotonic()
        if now - last_gc[0] > GC_EVERY_S and synced():
            last_gc[0] = now
            for name in [n for n in store.names() if not router.assigned_here(n)]:
                store.drop(name)
        return store.get(pack)

    async def send(request: Request) -> Any:
        pack = validate_name("pack", request.path_params["pack"])
        who, auth, kind = principal(request)
        body = await read_body(request, limit, schema.YipSend)
        relayed = kind != "pack" and request.headers.get(HOP) is not None and body.relayed
        if kind == "agent" and not relayed:
            raise PermissionDenied(f"the credential of {who} only hands on yips other senders sent")
        if not relayed and (body.relayed or body.groups is not None):
            raise InvalidInput("relayed and groups are for an agent handing on yips")
        groups = body.groups if relayed else None
        items = parse_body(body, relayed=relayed)
        if not relayed:
            # Every yip has its id from here on: a relayed batch that must be resent is queued once.
            items = [(item, yid or new_id(), who) for item, yid, _ in items]
        sizes = parse_groups(groups, len(items)) if relayed else [len(items)]

        async def local() -> Any:
            box = mailbox(pack)
            # One group per send request (a relayed hop carries several): each is queued whole
            # or not at all, and its yips share its answer.
            answers: list[dict[str, Any]] = []
            start = 0
            for n in sizes:
                group = items[start:start + n]
                start += n
                by_sender: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
                for item, yid, sender in group:
                    by_sender.setdefault(sender or ADMIN, []).append((item, yid))
                try:
                    if len(by_sender) > 1:  # only an agent relays: a group is one sender's request
                        raise InvalidInput("a group of relayed yips names more than one sender")
                    sender, entries = next(iter(by_sender.items()))
                    queued = box.put(sender, entries)
                except CanidaeError as e:
                    if not relayed:
                        raise
                    answers.extend([e.to_wire()] * n)
                    continue
                answers.extend({"id": y["id"], "seq": y["seq"]} for y in queued)
                usage.queued(pack, len(queued))
            # Nobody hears "queued" before the yips are on disk.
            await box.flush()
            return {"pack": pack, "node": router.me, "yips": answers}

        if relayed or request.headers.get(HOP) or router.assigned_here(pack):
            return await local()
        return await relay_send(pack, items, local)

    async def relay_send(pack: str, items: list[Any], local: Any) -> Any:
        """Send through the relay to the pack's node until it answers, the pack moves, or the
        node is really down (declared down by the servers, or silent for the whole request
        timeout): only then ``Unavailable``, saying so. Resending is safe: the yips have ids."""
        deadline = time.monotonic() + router.timeout_s
        stale, pause = False, RETRY_FIRST_S
        unreachable: tuple[str, str] | None = None  # (node, why) of the last hop that failed

        def down(node: str, why: str) -> Unavailable:
            return Unavailable(f"node {node} of pack {pack} is down; retry after its packs move ({why})",
                               {"node": node})
        while True:
            try:
                node, address = await router.locate(pack, fresh=stale)
            except WrongState:
                if unreachable is not None:  # taken off its node, which we could not reach: that node is down
                    raise down(*unreachable) from None
                raise
            if node == router.me:
                return await local()
            try:
                answers = await relay.submit(address, pack, items)
            except NotFound:  # not (or no longer) there: ask where it is now, once
                router.forget(pack)
                if stale:
                    raise
                stale = True
                continue
            except Unavailable as e:
                router.forget(pack)
                stale, unreachable = True, (node, e.message)
                if await router.node_down(node) or time.monotonic() + pause >= deadline:
                    try:
                        now_on: str | None = (await router.locate(pack, fresh=True))[0]
                    except WrongState:  # waiting for a node to take it
                        now_on = None
                    if now_on is not None and now_on != node:
                        continue  # it moved already: send it there
                    raise down(node, e.message) from None
                await asyncio.sleep(pause)  # a node that is busy or restarting: ask again soon
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            for a in answers:
                if "error" in a:
                    raise CanidaeError.from_wire(a)
            return {"pack": pack, "node": node, "yips": answers}

    async def receive(request: Request) -> Any:
        pack = validate_name("pack", request.path_params["pack"])
        who, auth, _ = principal(request)
        may_read(who, pack)
        after = query_int(request, "after", 0, 0, 2**62)
        ack = query_int(request, "ack", 0, 0, 2**62)
        wait = query_int(request, "wait", 0, 0, MAX_WAIT_S)
        most = query_int(request, "max", 100, 1, 1000)

        async def local() -> Any:
            box = mailbox(pack)
            if ack:
                box.ack(ack)
            got = await box.wait(after, most, float(wait))
            usage.delivered(pack, len(got))
            return {"pack": pack, "node": router.me, "yips": got, "unread": len(box.items),
                    "next": got[-1]["seq"] if got else after}
        return await router.route(request, pack, local, method="GET", path=f"/v1/yips/{pack}",
                                  params=dict(request.query_params), auth=auth, timeout=wait + 5.0)

    async def acknowledge(request: Request) -> Any:
        pack = validate_name("pack", request.path_params["pack"])
        who, auth, _ = principal(request)
        may_read(who, pack)
        through = (await read_body(request, limit, schema.YipAck)).through
        body = {"through": through}

        async def local() -> Any:
            box = mailbox(pack)
            return {"pack": pack, "node": router.me, "acknowledged": box.ack(through), "unread": len(box.items)}
        return await router.route(request, pack, local, method="POST", path=f"/v1/yips/{pack}/ack", json=body,
                                  auth=auth)

    relay = Relay(router)
    return [
        Route("/v1/yips/{pack}", endpoint(send, auth=False, forward=False), methods=["POST"]),
        Route("/v1/yips/{pack}", endpoint(receive, auth=False, forward=False), methods=["GET"]),
        Route("/v1/yips/{pack}/ack", endpoint(acknowledge, auth=False, forward=False), methods=["POST"]),
    ]


def parse_groups(groups: list[int] | None, count: int) -> list[int]:
    """The sizes of the send requests in a relayed batch of ``count`` yips (absent: one yip each)."""
    if groups is None:
        return [1] * count
    if sum(groups) != count:
        raise InvalidInput("groups must be positive yip counts that add up to the number of yips")
    return groups


class Relay:
    """Yips on their way to another node, one hop per destination at a time.

    Sends that arrive while a hop to the same pack's node is in flight wait and go together in the
    next hop (``relayed``: each yip names its sender, which the admin-token hop vouches for, and
    gets its own answer; ``groups`` keeps each request whole or not at all). Nothing waits for a
    batch to fill: an idle relay sends at once, a busy
    one sends bigger hops, so the node of a busy mailbox handles far fewer requests.
    """

    MAX_BATCH = 1000

    def __init__(self, router: PackRouter) -> None:
        self.router = router
        self.queues: dict[tuple[str, str], list[tuple[list[Any], asyncio.Future[list[dict[str, Any]]]]]] = {}

    async def submit(self, address: str, pack: str, items: list[Any]) -> list[dict[str, Any]]:
        key = (address, pack)
        fut: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        queue = self.queues.get(key)
        if queue is None:
            self.queues[key] = [(items, fut)]
            asyncio.ensure_future(self._drain(key))
        else:
            queue.append((items, fut))
        return await fut

    async def _drain(self, key: tuple[str, str]) -> None:
        address, pack = key
        try:
            while self.queues.get(key):
                queue = self.queues[key]
                batch: list[tuple[list[Any], asyncio.Future[list[dict[str, Any]]]]] = []
                n = 0
                while queue and (not batch or n + len(queue[0][0]) <= self.MAX_BATCH):
                    items, fut = queue.pop(0)
                    batch.append((items, fut))
                    n += len(items)
                # ``groups``: how many yips each send request holds, so that each is queued whole or
                # not at all (an agent that does not know ``groups`` takes each yip on its own).
                body = {"relayed": True, "yips": [{**item, "id": yid, "from": sender}
                                                  for items, _ in batch for item, yid, sender in items],
                        "groups": [len(items) for items, _ in batch]}
                try:
                    res = await self.router.send(address, "POST", f"/v1/yips/{pack}", json=body)
                except CanidaeError as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(type(e)(e.message, e.details))
                    continue
                except Exception as e:  # never leave a sender hanging
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                answers, i = res["yips"], 0
                for items, fut in batch:
                    if not fut.done():
                        fut.set_result(answers[i:i + len(items)])
                    i += len(items)
        finally:
            self.queues.pop(key, None)
