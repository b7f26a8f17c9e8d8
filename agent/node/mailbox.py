"""Mailboxes: the bounded, durable queue of yips of each pack placed on this node, with long-poll waits.

A yip is ``{"id", "seq", "from", "at", "text"}`` (or ``"data"`` for JSON). ``seq`` orders a
mailbox and only grows, across agent restarts too. ``id`` names the yip among its sender's: ids
are scoped by sender (``from``), so a retried send with the same id is queued once, and no
sender can take an id another sender will use. Delivery is at-least-once: a yip stays in the
mailbox until a receiver acknowledges it (``ack(through_seq)``), so a receiver that dies between
reading and acknowledging reads it again; receivers drop duplicates by (``from``, ``id``).

Durability: with a directory (``MailboxStore(data_dir)``, the agent's ``<data_dir>/mailboxes``)
every mailbox is an append-only log on disk (``canidae.agent.node.mailboxlog``); a send is
answered only once its yips are on disk (``Mailbox.flush``, group-committed: concurrent sends
share one fdatasync), so an agent killed at any moment loses no yip it acknowledged to a sender,
and a restarted agent serves the unacknowledged yips again with the same ids and seqs. Without a
directory (tests) mailboxes live in memory.

Bounds. A mailbox holds at most ``max_yips`` unacknowledged yips and ``max_bytes`` of payload.
One sender may hold at most half of each (``SENDER_SHARE``): one pack cannot fill another's
mailbox and lock every other sender out. A send request is all or nothing: a batch that does
not fit whole (mailbox or sender's share) is refused (``Conflict``, exit 6) and nothing of it is
queued.

This module knows nothing of HTTP, tokens or routing (``canidae.agent.node.yips``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
import uuid
from typing import Any

from msgspec import UNSET

from canidae.agent.client.schema import YipSend
from canidae.agent.node.mailboxlog import (
    COMPACT_MIN_BYTES,
    Journal,
    Recovered,
    Syncer,
    encode,
    make_private_dir,
)
from canidae.core.errors import Conflict, InvalidInput, PayloadTooLarge, Unavailable
from canidae.core.types import NAME_RE, validate_name

log = logging.getLogger("canidae.mailbox")

MAX_YIPS = 1000
MAX_BYTES = 1 << 20
MAX_MESSAGE = 64 * 1024
# A sender may hold at most 1/SENDER_SHARE of a mailbox's yips and of its bytes: two senders at
# their limit fill it, so a single one never can.
SENDER_SHARE = 2


def new_id() -> str:
    return "y-" + uuid.uuid4().hex[:20]


def payload_size(yip: dict[str, Any]) -> int:
    if "text" in yip:
        return len(yip["text"].encode())
    return len(json.dumps(yip.get("data"), separators=(",", ":")))


class Mailbox:
    """The yips of one pack. ``journal`` is its log on disk (None: in memory only)."""

    __slots__ = ("pack", "items", "record_sizes", "next_seq", "size", "ids", "held", "waiters", "max_yips",
                 "max_bytes", "journal", "live_bytes")

    def __init__(self, pack: str, max_yips: int, max_bytes: int, journal: Journal | None = None,
                 recovered: Recovered | None = None) -> None:
        self.pack = pack
        self.items: collections.deque[dict[str, Any]] = collections.deque()
        self.record_sizes: collections.deque[int] = collections.deque()  # of items, in the log
        self.next_seq = 1
        self.size = 0
        self.ids: dict[tuple[str, str], dict[str, Any]] = {}
        self.held: dict[str, list[int]] = {}  # sender -> [yips, bytes] it has in the mailbox
        self.waiters: list[asyncio.Future[None]] = []
        self.max_yips, self.max_bytes = max_yips, max_bytes
        self.journal = journal
        self.live_bytes = 0  # bytes of the log that the unacknowledged yips take
        if recovered is not None:
            self.next_seq = recovered.next_seq
            for y in recovered.yips:
                self._keep(y, payload_size(y), len(encode({"yip": y})))

    @property
    def sender_max_yips(self) -> int:
        return max(1, self.max_yips // SENDER_SHARE)

    @property
    def sender_max_bytes(self) -> int:
        return max(1, self.max_bytes // SENDER_SHARE)

    def _keep(self, yip: dict[str, Any], size: int, record_size: int) -> None:
        self.items.append(yip)
        self.record_sizes.append(record_size)
        self.ids[(yip["from"], yip["id"])] = yip
        held = self.held.setdefault(yip["from"], [0, 0])
        held[0] += 1
        held[1] += size
        self.size += size
        self.live_bytes += record_size

    def put(self, sender: str, entries: list[tuple[dict[str, Any], str | None]]) -> list[dict[str, Any]]:
        """Queue a batch of yips from ``sender``, all or none; returns each with its id and seq.

        ``entries`` are (payload holding ``text`` or ``data``, id or None). An id this sender
        already has in the mailbox (or earlier in the batch) names the yip queued then: a retry
        is queued once. The yips are written to the log, not yet durable: ``await flush()``
        before telling the sender they are queued.
        """
        if self.journal is not None and self.journal.broken is not None:
            raise Unavailable(f"the mailbox of pack {self.pack} cannot store yips on this node "
                              f"({self.journal.broken})", {"pack": self.pack})
        now = int(time.time() * 1000)
        out: list[dict[str, Any]] = []
        fresh: list[tuple[dict[str, Any], int]] = []
        in_batch: dict[str, dict[str, Any]] = {}
        for body, yid in entries:
            size = payload_size(body)
            if size > MAX_MESSAGE:
                raise PayloadTooLarge(f"a yip holds at most {MAX_MESSAGE} bytes, this one {size}")
            if yid is not None:
                known = self.ids.get((sender, yid)) or in_batch.get(yid)
                if known is not None:
                    out.append(known)
                    continue
            yip = {"id": yid or new_id(), "seq": self.next_seq + len(fresh), "from": sender, "at": now,
                   **body}
            if yid is not None:
                in_batch[yid] = yip
            fresh.append((yip, size))
            out.append(yip)
        if not fresh:
            return out
        n, nbytes = len(fresh), sum(size for _, size in fresh)
        batch = f"these {n} yips" if n > 1 else "this yip"
        if len(self.items) + n > self.max_yips or self.size + nbytes > self.max_bytes:
            raise Conflict(f"the mailbox of pack {self.pack} is full ({len(self.items)} unread yips, "
                           f"{self.size} bytes; {batch} would pass {self.max_yips} yips or "
                           f"{self.max_bytes} bytes): its members must receive before more can be sent",
                           {"pack": self.pack, "unread": len(self.items), "bytes": self.size})
        held = self.held.get(sender, [0, 0])
        if held[0] + n > self.sender_max_yips or held[1] + nbytes > self.sender_max_bytes:
            raise Conflict(f"{sender} already holds {held[0]} yips ({held[1]} bytes) of the mailbox of pack "
                           f"{self.pack}; {batch} would pass a sender's share of {self.sender_max_yips} yips "
                           f"or {self.sender_max_bytes} bytes: its members must receive before {sender} can "
                           f"send more",
                           {"pack": self.pack, "sender": sender, "held": held[0], "bytes": held[1]})
        record_sizes = [0] * n
        if self.journal is not None:
            try:
                record_sizes = self.journal.append([{"yip": y} for y, _ in fresh])
            except OSError as e:
                raise Unavailable(f"the mailbox of pack {self.pack} cannot store yips on this node: {e}",
                                  {"pack": self.pack}) from None
        for (y, size), record_size in zip(fresh, record_sizes):
            self._keep(y, size, record_size)
        self.next_seq += n
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        return out

    def append(self, sender: str, body: dict[str, Any], yid: str | None = None) -> dict[str, Any]:
        """Queue one yip (``body`` holds ``text`` or ``data``); returns it with its id and seq."""
        return self.put(sender, [(body, yid)])[0]

    async def flush(self) -> None:
        """Return once every yip queued so far is on disk (at once for an in-memory mailbox)."""
        if self.journal is None:
            return
        try:
            await self.journal.syncer.flush(self.journal)
        except OSError as e:
            raise Unavailable(f"the mailbox of pack {self.pack} cannot store yips on this node: {e}",
                              {"pack": self.pack}) from None

    def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        out = []
        for y in self.items:  # short: bounded by max_yips, and acknowledged yips leave
            if y["seq"] > seq:
                out.append(y)
                if len(out) >= limit:
                    break
        return out

    def ack(self, through: int) -> int:
        """Acknowledge every yip up to seq ``through``; returns how many left the mailbox."""
        n = 0
        last = 0
        while self.items and self.items[0]["seq"] <= through:
            y = self.items.popleft()
            self.live_bytes -= self.record_sizes.popleft()
            self.ids.pop((y["from"], y["id"]), None)
            size = payload_size(y)
            self.size -= size
            held = self.held[y["from"]]
            held[0] -= 1
            held[1] -= size
            if held[0] == 0:
                del self.held[y["from"]]
            last = y["seq"]
            n += 1
        if n and self.journal is not None:
            # The seq of the last yip taken, never ``through`` itself: a receiver's cursor from an
            # earlier life of this mailbox must not acknowledge yips that have not been sent yet.
            try:
                self.journal.append([{"ack": last}])
            except OSError as e:  # not fatal: after a restart these yips are delivered again
                log.warning("mailbox of %s: cannot log an acknowledgement: %s", self.pack, e)
            self.compact_if_needed()
        return n

    def compact_if_needed(self) -> bool:
        """Rewrite the log when acknowledged records are most of it; True when it did."""
        j = self.journal
        if j is None or j.broken is not None or j.size <= COMPACT_MIN_BYTES or j.size <= 2 * self.live_bytes:
            return False
        try:
            j.compact(self.next_seq, list(self.items))
        except OSError as e:
            log.warning("mailbox of %s: cannot compact its log: %s", self.pack, e)
            return False
        return True

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

    def wake_all(self) -> None:
        for w in self.waiters:
            if not w.done():
                w.set_result(None)


class MailboxStore:
    """The mailboxes of this node, made (or read back from disk) on first use.

    ``data_dir`` is where the mailboxes live (``<data_dir>/<pack>/``, mode 0700); None keeps them
    in memory, so that an agent restart empties them (tests).
    """

    def __init__(self, data_dir: str | None = None, max_yips: int = MAX_YIPS,
                 max_bytes: int = MAX_BYTES) -> None:
        self.data_dir = os.path.abspath(data_dir) if data_dir is not None else None
        self.max_yips, self.max_bytes = max_yips, max_bytes
        self.boxes: dict[str, Mailbox] = {}
        self.syncer = Syncer()

    def get(self, pack: str) -> Mailbox:
        box = self.boxes.get(pack)
        if box is not None:
            return box
        validate_name("pack", pack)  # it names a directory
        if self.data_dir is None:
            box = Mailbox(pack, self.max_yips, self.max_bytes)
        else:
            journal = Journal(os.path.join(self.data_dir, pack), self.syncer)
            try:
                os.makedirs(os.path.dirname(self.data_dir), exist_ok=True)
                make_private_dir(self.data_dir)
                recovered = journal.open()
            except OSError as e:
                raise Unavailable(f"cannot open the mailbox of pack {pack} on this node: {e}",
                                  {"pack": pack}) from None
            box = Mailbox(pack, self.max_yips, self.max_bytes, journal, recovered)
            if recovered.yips or recovered.next_seq > 1:
                log.info("mailbox of %s read back: %d unacknowledged yips, next seq %d", pack,
                         len(recovered.yips), recovered.next_seq)
            box.compact_if_needed()
        self.boxes[pack] = box
        return box

    def names(self) -> list[str]:
        """The packs that have a mailbox here: open ones and those still only on disk."""
        found = set(self.boxes)
        if self.data_dir is not None:
            try:
                found.update(n for n in os.listdir(self.data_dir) if NAME_RE.match(n))
            except OSError:
                pass
        return sorted(found)

    def drop(self, pack: str) -> None:
        """Forget a pack's mailbox and remove its files: the pack is no longer on this node."""
        box = self.boxes.pop(pack, None)
        if box is not None:
            box.wake_all()
            if box.journal is not None:
                box.journal.remove()
        elif self.data_dir is not None and NAME_RE.match(pack):
            Journal(os.path.join(self.data_dir, pack), self.syncer).remove()

    def close(self) -> None:
        for box in self.boxes.values():
            if box.journal is not None:
                box.journal.close()
        self.syncer.close()


def parse_body(body: YipSend, relayed: bool = False) -> list[tuple[dict[str, Any], str | None, str | None]]:
    """The yips of a decoded send request (``canidae.agent.client.schema.YipSend``): one yip, or
    a batch (``yips``). Returns (payload, id, sender) per yip. ``relayed``: an agent passing on
    yips it took from several senders names each yip's sender in ``from`` (only then is it taken).
    """
    own = body.text is not UNSET or body.data is not UNSET or body.id is not None or body.sender is not None
    if body.yips is not None and own:
        raise InvalidInput("give one yip (text or data) or a batch (yips), not both")
    items = body.yips if body.yips is not None else [body]
    out = []
    for item in items:
        if (item.text is UNSET) == (item.data is UNSET):
            raise InvalidInput("a yip holds exactly one of 'text' or 'data'")
        if item.sender is not None and not relayed:
            raise InvalidInput("from: only an agent handing on yips names their senders")
        payload = {"text": item.text} if item.text is not UNSET else {"data": item.data}
        out.append((payload, item.id, item.sender))
    return out
