"""Mailboxes: the bounded queue of yips of each pack placed on this node, with long-poll waits.

A yip is ``{"id", "seq", "from", "at", "text"}`` (or ``"data"`` for JSON). ``seq`` orders a
mailbox; ``id`` names the yip everywhere (senders may choose it, so that a retried send is
recognised). Delivery is at-least-once: a yip stays in the mailbox until a receiver acknowledges
it (``ack(through_seq)``), so a receiver that dies between reading and acknowledging reads it
again; receivers drop duplicates by id. A send whose id is still in the mailbox is not queued
twice.

A mailbox refuses a yip (``Conflict``, exit 6) when it holds ``max_yips`` unacknowledged yips or
``max_bytes`` of payload. Mailboxes live in the agent's memory: an agent restart empties them.
This module knows nothing of HTTP, tokens or routing (``canidae.agent.server.yips``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from typing import Any

from canidae.core.errors import Conflict, InvalidInput, PayloadTooLarge

MAX_YIPS = 1000
MAX_BYTES = 1 << 20
MAX_MESSAGE = 64 * 1024


def new_id() -> str:
    return "y-" + uuid.uuid4().hex[:20]


def payload_size(yip: dict[str, Any]) -> int:
    if "text" in yip:
        return len(yip["text"].encode())
    return len(json.dumps(yip.get("data"), separators=(",", ":")))


class Mailbox:
    __slots__ = ("pack", "items", "next_seq", "size", "ids", "waiters", "max_yips", "max_bytes")

    def __init__(self, pack: str, max_yips: int, max_bytes: int) -> None:
        self.pack = pack
        self.items: collections.deque[dict[str, Any]] = collections.deque()
        self.next_seq = 1
        self.size = 0
        self.ids: dict[str, dict[str, Any]] = {}
        self.waiters: list[asyncio.Future[None]] = []
        self.max_yips, self.max_bytes = max_yips, max_bytes

    def append(self, sender: str, body: dict[str, Any], yid: str | None = None) -> dict[str, Any]:
        """Queue one yip (``body`` holds ``text`` or ``data``); returns it with its id and seq."""
        if yid is not None and yid in self.ids:
            return self.ids[yid]
        size = payload_size(body)
        if size > MAX_MESSAGE:
            raise PayloadTooLarge(f"a yip holds at most {MAX_MESSAGE} bytes, this one {size}")
        if len(self.items) >= self.max_yips or self.size + size > self.max_bytes:
            raise Conflict(f"the mailbox of pack {self.pack} is full ({len(self.items)} unread yips, "
                           f"{self.size} bytes): its members must receive before more can be sent",
                           {"pack": self.pack, "unread": len(self.items), "bytes": self.size})
        yip = {"id": yid or new_id(), "seq": self.next_seq, "from": sender, "at": int(time.time() * 1000), **body}
        self.next_seq += 1
        self.items.append(yip)
        self.ids[yip["id"]] = yip
        self.size += size
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        return yip

    def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        out = []
        for y in self.items:  # short: bounded by max_yips, and acknowledged yips leave
            if y["seq"] > seq:
                out.append(y)
                if len(out) >= limit:
                    break
        return out

    def ack(self, through: int) -> int:
        n = 0
        while self.items and self.items[0]["seq"] <= through:
            y = self.items.popleft()
            self.ids.pop(y["id"], None)
            self.size -= payload_size(y)
            n += 1
        return n

    async def wait(self, seq: int, limit: int, timeout: float) -> list[dict[str, Any]]:
        """Yips after ``seq``; when there are none yet, wait up to ``timeout`` s for one."""
        got = self.after(seq, limit)
        if got or timeout <= 0:
            return got
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if fut in self.waiters:
                self.waiters.remove(fut)
        return self.after(seq, limit)


class MailboxStore:
    """The mailboxes of this node, made on first use."""

    def __init__(self, max_yips: int = MAX_YIPS, max_bytes: int = MAX_BYTES) -> None:
        self.max_yips, self.max_bytes = max_yips, max_bytes
        self.boxes: dict[str, Mailbox] = {}

    def get(self, pack: str) -> Mailbox:
        box = self.boxes.get(pack)
        if box is None:
            box = self.boxes[pack] = Mailbox(pack, self.max_yips, self.max_bytes)
        return box

    def drop(self, pack: str) -> None:
        box = self.boxes.pop(pack, None)
        if box is not None:
            for w in box.waiters:
                if not w.done():
                    w.set_result(None)


def parse_body(body: Any, relayed: bool = False) -> list[tuple[dict[str, Any], str | None, str | None]]:
    """The yips of a send request: ``{"text"|"data", "id"?}`` or ``{"yips": [...]}`` (a batch).

    Returns (payload, id, sender) per yip. ``relayed``: an agent passing on yips it took from
    several senders names each yip's sender in ``from`` (only the admin token may do that).
    """
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    items = body.get("yips") if "yips" in body else [body]
    if not isinstance(items, list) or not items or len(items) > 1000:
        raise InvalidInput("yips must be a list of 1..1000 yips")
    allowed = {"text", "data", "id", "from"} if relayed else {"text", "data", "id"}
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidInput("each yip must be an object")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise InvalidInput(f"unknown field {unknown[0]!r} in a yip")
        if ("text" in item) == ("data" in item):
            raise InvalidInput("a yip holds exactly one of 'text' or 'data'")
        if "text" in item and not isinstance(item["text"], str):
            raise InvalidInput("text must be a string")
        yid = item.get("id")
        if yid is not None and (not isinstance(yid, str) or not 1 <= len(yid) <= 64 or not yid.isprintable()):
            raise InvalidInput("a yip id is 1-64 printable characters")
        sender = item.get("from")
        if sender is not None and (not isinstance(sender, str) or not 1 <= len(sender) <= 64):
            raise InvalidInput("from must name the sender")
        out.append(({k: item[k] for k in ("text", "data") if k in item}, yid, sender))
    return out
