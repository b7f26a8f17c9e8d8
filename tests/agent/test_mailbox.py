"""The mailbox's rules, in memory and on disk alike: a send request is queued whole or not at all,
a sender holds at most its share of a mailbox, ids are scoped by sender, acknowledgements take
yips out in seq order; and one yip route through HTTP (a refused batch leaves nothing behind)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from canidae.agent.httpedge import Edge
from canidae.agent.identity import Authenticator, Identity, admin_token_hash
from canidae.agent.keyring import ClusterKeys
from canidae.agent.node import yips
from canidae.agent.node.mailbox import MAX_MESSAGE, SENDER_SHARE, Mailbox, MailboxStore
from canidae.agent.node.usage import PackUsage
from canidae.core.errors import Conflict, PayloadTooLarge
from canidae.core.packtoken import pack_token


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MailboxStore:
    data = str(tmp_path / "mailboxes") if request.param == "disk" else None
    s = MailboxStore(data, max_yips=10, max_bytes=1000)
    yield s
    s.close()


def texts(box: Mailbox) -> list[str]:
    return [y["text"] for y in box.after(0, 1000)]


def test_a_batch_that_does_not_fit_queues_nothing(store):
    box = store.get("p")
    box.put("a", [({"text": str(i)}, None) for i in range(4)])
    box.put("b", [({"text": "b0"}, None)])
    with pytest.raises(Conflict, match="mailbox of pack p is full"):
        box.put("c", [({"text": f"c{i}"}, None) for i in range(6)])  # 5 + 6 > 10
    assert texts(box) == ["0", "1", "2", "3", "b0"] and box.next_seq == 6
    with pytest.raises(PayloadTooLarge):  # one yip too big refuses the batch, even the yips before it
        box.put("c", [({"text": "fits"}, None), ({"text": "x" * (MAX_MESSAGE + 1)}, None)])
    assert len(box.items) == 5
    box.put("c", [({"text": f"c{i}"}, None) for i in range(5)])  # exactly full
    assert len(box.items) == 10


def test_the_byte_bound_is_all_or_nothing_too(store):
    box = store.get("p")
    box.put("a", [({"text": "x" * 400}, None)])
    box.put("b", [({"text": "y" * 400}, None)])
    with pytest.raises(Conflict, match="is full"):
        box.put("c", [({"text": "z" * 100}, None), ({"text": "z" * 150}, None)])  # 800 + 250 > 1000
    assert box.size == 800 and len(box.items) == 2


def test_a_sender_holds_at_most_its_share_and_others_can_still_send(store):
    box = store.get("p")
    share = 10 // SENDER_SHARE
    assert box.sender_max_yips == share == 5
    box.put("hog", [({"text": str(i)}, None) for i in range(share)])
    with pytest.raises(Conflict, match="hog already holds 5 yips .* a sender's share of 5 yips") as err:
        box.put("hog", [({"text": "more"}, None)])
    assert err.value.details["sender"] == "hog"
    box.put("polite", [({"text": "still room"}, None)])  # the hog did not lock anyone out
    box.ack(box.items[1]["seq"])  # two of the hog's yips read: it may send two more, not three
    box.put("hog", [({"text": "m1"}, None), ({"text": "m2"}, None)])
    with pytest.raises(Conflict, match="share"):
        box.put("hog", [({"text": "m3"}, None)])
    assert box.held == {"hog": [5, 7], "polite": [1, 10]}


def test_a_sender_share_of_bytes(store):
    box = store.get("p")
    box.put("hog", [({"text": "x" * 450}, None)])
    with pytest.raises(Conflict, match="500 bytes"):
        box.put("hog", [({"text": "x" * 51}, None)])
    box.put("other", [({"text": "y" * 500}, None)])


def test_ids_are_scoped_by_sender(store):
    box = store.get("p")
    first = box.append("a", {"text": "from a"}, "job-1")
    assert box.append("a", {"text": "a retry"}, "job-1") is first  # queued once
    other = box.append("b", {"text": "from b"}, "job-1")  # a pre-empted id does not swallow b's yip
    assert other["seq"] != first["seq"] and other["from"] == "b"
    assert texts(box) == ["from a", "from b"]
    # Within one batch, a repeated id is one yip too; the batch counts it once against the bounds.
    got = box.put("c", [({"text": "c"}, "k"), ({"text": "c again"}, "k"), ({"text": "d"}, None)])
    assert got[0] is got[1] and got[2]["seq"] == got[0]["seq"] + 1 and len(box.items) == 4
    box.ack(first["seq"])
    again = box.append("a", {"text": "new life"}, "job-1")  # acknowledged: the id may be used again
    assert again["seq"] > other["seq"]


def test_acknowledge_takes_yips_in_seq_order_and_waiters_wake():
    async def main() -> None:
        box = MailboxStore().get("p")
        waiting = asyncio.ensure_future(box.wait(0, 10, 5.0))
        await asyncio.sleep(0)
        box.append("a", {"text": "hi"})
        assert [y["text"] for y in await asyncio.wait_for(waiting, 5)] == ["hi"]
        box.put("a", [({"data": {"n": i}}, None) for i in range(3)])
        assert box.ack(2) == 2 and [y["data"] for y in box.after(0, 10)] == [{"n": 1}, {"n": 2}]
        assert box.ack(2) == 0
    asyncio.run(main())


# ---------------------------------------------------------------------------------------- over HTTP

TOKEN = "yip-route-test-token"  # the admin token
NODE_KEY = "nc.n1.c.node-credential"  # the node's own secret: it signs its packs' tokens


class OneNode:
    """The router of a node alone: it holds pack ``inbox`` and serves every request itself."""

    me = "n1"

    def assigned_here(self, pack: str) -> bool:
        return pack == "inbox"

    def generation_here(self, pack: str) -> int | None:
        return 1 if pack in ("inbox", "hog") else None  # hog runs here too: its token is good here

    async def route(self, request: Any, pack: str, local: Any, **_: Any) -> Any:
        return await local()


def app(tmp_path: Path) -> tuple[Starlette, MailboxStore]:
    """The yip routes of one node that holds pack ``inbox``, on a durable store."""
    store = MailboxStore(str(tmp_path / "mailboxes"), max_yips=10, max_bytes=10_000)
    node: Any = SimpleNamespace(router=OneNode(), mailboxes=store, cfg=SimpleNamespace(token=NODE_KEY, node_id="n1"),
                                reconciler=SimpleNamespace(rev=1), usage=PackUsage(),
                                keys=ClusterKeys(str(tmp_path), "r1", NODE_KEY))  # no keyring: the first token form
    auth = Authenticator(admin_token_hash(TOKEN), Identity.new().public_key)
    return Starlette(routes=yips.routes(node, Edge(auth, 1 << 20))), store


def test_over_http_a_refused_batch_leaves_nothing_and_a_pack_has_its_share(tmp_path):
    web, store = app(tmp_path)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://n1") as http:
            admin = {"authorization": f"Bearer {TOKEN}"}
            hog = {"authorization": f"Bearer {pack_token(NODE_KEY, 'hog', 1, 'n1')}"}
            six = {"yips": [{"text": str(i)} for i in range(6)]}
            r = await http.post("/v1/yips/inbox", json=six, headers=hog)
            assert r.status_code == 409 and "share of 5 yips" in r.json()["error"]["message"]
            r = await http.get("/v1/yips/inbox", headers=admin)
            assert r.json()["yips"] == [] and r.json()["unread"] == 0  # nothing of the batch was queued
            r = await http.post("/v1/yips/inbox", json={"yips": six["yips"][:5]}, headers=hog)
            assert r.status_code == 200 and [y["seq"] for y in r.json()["yips"]] == [1, 2, 3, 4, 5]
            r = await http.post("/v1/yips/inbox", json={"text": "x", "id": "1"}, headers=admin)
            assert r.status_code == 200 and r.json()["yips"][0]["seq"] == 6
            r = await http.get("/v1/yips/inbox", headers=admin)
            assert [(y["from"], y["text"]) for y in r.json()["yips"]][-2:] == [("hog", "4"), ("admin", "x")]
        # Answered only once on disk: a store opened afresh on the same directory has all of it.
        again = MailboxStore(store.data_dir, max_yips=10, max_bytes=10_000)
        assert [y["seq"] for y in again.get("inbox").after(0, 100)] == [1, 2, 3, 4, 5, 6]
        again.close()
    try:
        asyncio.run(main())
    finally:
        store.close()


def test_a_relayed_hop_queues_each_request_whole_or_not_at_all(tmp_path):
    web, store = app(tmp_path)
    hop = {"authorization": f"Bearer {TOKEN}", "x-canidae-hop": "1"}

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://n1") as http:
            body = {"relayed": True, "groups": [3, 6, 1],
                    "yips": [{"text": f"a{i}", "id": f"a{i}", "from": "a"} for i in range(3)]
                    + [{"text": f"b{i}", "id": f"b{i}", "from": "b"} for i in range(6)]  # past b's share
                    + [{"text": "c", "id": "c", "from": "c"}]}
            r = await http.post("/v1/yips/inbox", json=body, headers=hop)
            answers = r.json()["yips"]
            assert [a.get("seq") for a in answers[:3]] == [1, 2, 3]
            assert all(a["error"]["code"] == "conflict" for a in answers[3:9])
            assert answers[9] == {"id": "c", "seq": 4}
            assert [y["id"] for y in store.get("inbox").after(0, 100)] == ["a0", "a1", "a2", "c"]
            bad = {**body, "groups": [5, 5, 1]}
            assert (await http.post("/v1/yips/inbox", json=bad, headers=hop)).status_code == 400
    try:
        asyncio.run(main())
    finally:
        store.close()


def test_over_http_a_send_is_answered_only_once_on_disk(tmp_path, monkeypatch):
    from canidae.agent.node import mailboxlog
    web, store = app(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def held(fd: int) -> None:
        entered.set()
        assert release.wait(10)
        real(fd)
    monkeypatch.setattr(mailboxlog.os, "fdatasync", held)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://n1") as http:
            send = asyncio.ensure_future(http.post("/v1/yips/inbox", json={"text": "x"},
                                                   headers={"authorization": f"Bearer {TOKEN}"}))
            assert await asyncio.to_thread(entered.wait, 10)
            for _ in range(20):  # turns of the loop in which a wrong implementation would answer
                await asyncio.sleep(0)
            assert not send.done()
            release.set()
            r = await asyncio.wait_for(send, 10)
            assert r.status_code == 200 and r.json()["yips"][0]["seq"] == 1
    try:
        asyncio.run(main())
    finally:
        store.close()
