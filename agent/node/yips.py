"""The yip API: send to a pack's mailbox through any agent, receive (long-poll) and acknowledge.

    POST /v1/yips/{pack}          {"text": ...} | {"data": ...} [, "id"]  or  {"yips": [...]}
    GET  /v1/yips/{pack}?after=SEQ&ack=SEQ&wait=S&max=N   yips after SEQ (waits up to S s for one)
    POST /v1/yips/{pack}/ack      {"through": SEQ}

Who may do what is decided here, not by the API's admin-token check: the admin token may do
everything; a pack token (``canidae.core.packtoken``) may send to any pack (the yip is marked
``from`` that pack) and may receive from and acknowledge *its own* mailbox only. Requests are
served by the node that holds the pack (``canidae.agent.node.packroute`` takes them there). Sends for
another node go through a ``Relay``: concurrent ones share a hop, each yip keeping its sender
(``"relayed": true`` with ``from`` per yip, accepted from the admin token only) and each request
its own answer (``groups`` says how many yips each request holds).

A send request is queued whole or not at all, and is answered once its yips are on disk. The
mailbox itself (bounds, a sender's share, ids scoped by sender, the log on disk) is
``canidae.agent.node.mailbox``. A mailbox is dropped, files and all, when a request finds its
pack no longer assigned here; not before this agent has its first list of assignments, so that
a restarted agent never drops a mailbox it has not been told about yet.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import TYPE_CHECKING, Any

from canidae.agent.client.link import HOP
from canidae.agent.httpedge import Edge, expect_object, query_int, read_json
from canidae.agent.node.mailbox import Mailbox, MailboxStore, new_id, parse_body
from canidae.agent.node.packroute import PackRouter
from canidae.core.errors import CanidaeError, InvalidInput, NotAuthenticated, NotFound, PermissionDenied
from canidae.core.packtoken import verify
from canidae.core.types import validate_name
from starlette.requests import Request
from starlette.routing import Route

if TYPE_CHECKING:
    from canidae.agent.node.runtime import NodeRuntime

ADMIN = "admin"
MAX_WAIT_S = 60
GC_EVERY_S = 5.0


def routes(node: NodeRuntime, edge: Edge) -> list[Route]:
    router = node.router
    store: MailboxStore = node.mailboxes
    usage = node.usage
    token = node.cfg.token
    admin = token.encode()
    limit = edge.limit
    endpoint = edge.endpoint
    last_gc = [time.monotonic()]

    def principal(request: Request) -> tuple[str, str]:
        """(who, the raw Authorization header): ``admin`` or the pack whose token it is."""
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if given and hmac.compare_digest(given.encode(), admin):
            return ADMIN, header
        pack = verify(token, given) if given else None
        if pack is None:
            raise NotAuthenticated("missing or wrong bearer token (the admin token or a pack token)")
        return pack, header

    def may_read(who: str, pack: str) -> None:
        if who != ADMIN and who != pack:
            raise PermissionDenied(f"the token of pack {who} may not read the mailbox of pack {pack}")

    def synced() -> bool:
        # Until the reconciler has its first list of assignments (just after a restart), "not
        # assigned here" means "not known yet": a mailbox on disk must not be dropped for it.
        return node.reconciler.rev > 0

    def mailbox(pack: str) -> Mailbox:
        if not router.assigned_here(pack):
            if synced():
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
        who, auth = principal(request)
        body = await read_json(request, limit)
        relayed = (who == ADMIN and request.headers.get(HOP) is not None and isinstance(body, dict)
                   and body.get("relayed") is True)
        if relayed:
            body = {k: v for k, v in body.items() if k != "relayed"}
        groups = body.pop("groups", None) if relayed else None
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
        for attempt in (0, 1):
            node, address = await router.locate(pack, fresh=attempt == 1)
            if node == router.me:
                return await local()
            try:
                answers = await relay.submit(address, pack, items)
            except NotFound:
                router.forget(pack)
                if attempt:
                    raise
                continue
            for a in answers:
                if "error" in a:
                    raise CanidaeError.from_wire(a)
            return {"pack": pack, "node": node, "yips": answers}
        raise AssertionError("unreachable")

    async def receive(request: Request) -> Any:
        pack = validate_name("pack", request.path_params["pack"])
        who, auth = principal(request)
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
        who, auth = principal(request)
        may_read(who, pack)
        body = expect_object(await read_json(request, limit), {"through"}, {"through"})
        through = body["through"]
        if isinstance(through, bool) or not isinstance(through, int) or through < 0:
            raise InvalidInput("through must be a non-negative integer (a yip's seq)")

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


def parse_groups(groups: Any, count: int) -> list[int]:
    """The sizes of the send requests in a relayed batch of ``count`` yips (absent: one yip each)."""
    if groups is None:
        return [1] * count
    if (not isinstance(groups, list) or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0
                                                 for g in groups) or sum(groups) != count):
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
