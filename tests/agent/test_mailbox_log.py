"""Mailboxes on disk: the log's format and what a reopened mailbox holds after a crash (a torn or
corrupt tail, acknowledgements, compaction, seqs that keep growing, ids still recognised), the
group commit (many sends, one fdatasync; no answer before it) and a failing disk."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from canidae.agent.node import mailboxlog
from canidae.agent.node.mailbox import MailboxStore
from canidae.agent.node.mailboxlog import COMPACT_MIN_BYTES, HEADER, LOG_NAME, decode_all, encode
from canidae.core.errors import Unavailable


def open_store(tmp_path: Path, **kw: int) -> MailboxStore:
    return MailboxStore(str(tmp_path / "mailboxes"), **kw)


def log_of(tmp_path: Path, pack: str = "p") -> Path:
    return tmp_path / "mailboxes" / pack / LOG_NAME


def reopen(tmp_path: Path, store: MailboxStore, **kw: int) -> MailboxStore:
    """What a restarted agent sees (the old store is abandoned as a killed agent would leave it)."""
    store.syncer.close()
    return open_store(tmp_path, **kw)


def test_records_are_length_crc_and_canonical_json():
    rec = encode({"yip": {"text": "é", "id": "a", "seq": 1, "from": "x", "at": 5}})
    length, crc = HEADER.unpack_from(rec)
    body = rec[HEADER.size:]
    assert length == len(body) and body == '{"yip":{"at":5,"from":"x","id":"a","seq":1,"text":"é"}}'.encode()
    assert decode_all(rec + rec) == ([{"yip": {"at": 5, "from": "x", "id": "a", "seq": 1, "text": "é"}}] * 2,
                                     2 * len(rec))


def test_files_are_private_and_a_new_log_starts_with_a_head(tmp_path):
    store = open_store(tmp_path)
    store.get("p")
    assert stat.S_IMODE(os.stat(tmp_path / "mailboxes").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "mailboxes" / "p").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(log_of(tmp_path)).st_mode) == 0o600
    assert decode_all(log_of(tmp_path).read_bytes())[0] == [{"head": {"format": 1, "next_seq": 1}}]
    store.close()


def test_a_reopened_mailbox_has_the_unacknowledged_yips_same_ids_and_seqs(tmp_path):
    store = open_store(tmp_path)
    box = store.get("p")
    sent = box.put("a", [({"text": f"m{i}"}, f"id-{i}") for i in range(5)])
    box.append("b", {"data": {"k": [1, 2]}}, "id-0")
    box.ack(sent[1]["seq"])
    store = reopen(tmp_path, store)
    box = store.get("p")
    got = box.after(0, 100)
    assert [(y["from"], y["id"], y["seq"]) for y in got] == [("a", "id-2", 3), ("a", "id-3", 4),
                                                            ("a", "id-4", 5), ("b", "id-0", 6)]
    assert got[0] == sent[2] and got[3]["data"] == {"k": [1, 2]}
    # Ids of unacknowledged yips are still known: a retry after the restart is queued once...
    assert box.append("a", {"text": "m3 again"}, "id-3")["seq"] == 4
    # ...an acknowledged one's id is free again, and seqs go on from where they were.
    assert box.append("a", {"text": "m1 again"}, "id-1")["seq"] == 7
    assert box.held == {"a": [4, 14], "b": [1, 11]} and len(box.items) == 5
    store.close()


def test_seqs_keep_growing_across_restarts_even_when_everything_was_acknowledged(tmp_path):
    store = open_store(tmp_path)
    box = store.get("p")
    last = box.put("a", [({"text": "x"}, None)] * 3)[-1]
    box.ack(last["seq"])
    store = reopen(tmp_path, store)
    box = store.get("p")
    assert box.after(0, 10) == [] and box.append("a", {"text": "y"})["seq"] == 4
    # A receiver's cursor from far ahead acknowledges what there is, never yips not yet sent.
    box.ack(10**9)
    store = reopen(tmp_path, store)
    box = store.get("p")
    fresh = box.append("a", {"text": "z"})
    assert fresh["seq"] == 5
    store = reopen(tmp_path, store)
    assert [y["text"] for y in store.get("p").after(0, 10)] == ["z"]
    store.close()


def test_a_torn_tail_is_dropped_and_the_log_goes_on_after_it(tmp_path):
    store = open_store(tmp_path)
    store.get("p").put("a", [({"text": f"m{i}"}, None) for i in range(3)])
    path = log_of(tmp_path)
    whole = path.read_bytes()
    last = len(encode({"yip": store.get("p").items[-1]}))
    for cut in (1, HEADER.size - 1, HEADER.size + 3, last - 1):  # inside the header, inside the body
        path.write_bytes(whole[:len(whole) - last + cut])
        store = reopen(tmp_path, store)
        box = store.get("p")
        assert [y["text"] for y in box.after(0, 10)] == ["m0", "m1"]
        assert path.stat().st_size == len(whole) - last  # cut back to the last whole record
    box.append("a", {"text": "after the tear"})
    store = reopen(tmp_path, store)
    assert [y["text"] for y in store.get("p").after(0, 10)] == ["m0", "m1", "after the tear"]
    store.close()


def test_a_corrupt_record_ends_the_log(tmp_path, caplog):
    store = open_store(tmp_path)
    store.get("p").put("a", [({"text": f"message {i}"}, None) for i in range(4)])
    path = log_of(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(b"message 2")
    data[at] ^= 0x01  # one flipped bit: the CRC fails
    path.write_bytes(bytes(data))
    store = reopen(tmp_path, store)
    box = store.get("p")
    assert [y["text"] for y in box.after(0, 10)] == ["message 0", "message 1"]
    assert "dropped a torn or corrupt tail" in caplog.text
    assert box.append("a", {"text": "next"})["seq"] == 3  # seq 3 was never durable for anyone to have seen
    # A record whose CRC matches but whose JSON is not a record ends the log too.
    with open(path, "ab") as f:
        late = {"id": "late", "seq": 9, "from": "a", "text": "?"}
        f.write(encode({"something": "else"}) + encode({"yip": late}))
    store = reopen(tmp_path, store)
    assert [y["text"] for y in store.get("p").after(0, 10)] == ["message 0", "message 1", "next"]
    store.close()


def test_a_log_without_its_head_starts_over(tmp_path):
    path = log_of(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(encode({"head": {"format": 1, "next_seq": 7}})[:5])  # torn while being created
    store = open_store(tmp_path)
    assert store.get("p").append("a", {"text": "x"})["seq"] == 1
    assert decode_all(path.read_bytes())[0][0] == {"head": {"format": 1, "next_seq": 1}}
    store.close()


def test_compaction_keeps_what_is_unacknowledged_and_the_next_seq(tmp_path):
    store = open_store(tmp_path, max_yips=1000, max_bytes=1 << 20)
    box = store.get("p")
    path = log_of(tmp_path)
    inode = path.stat().st_ino
    grown = 0
    for round_ in range(40):  # far past COMPACT_MIN_BYTES of acknowledged traffic
        batch = box.put("a", [({"text": f"r{round_}-{i}-" + "x" * 200}, f"r{round_}-{i}") for i in range(20)])
        grown += sum(len(encode({"yip": y})) for y in batch)
        box.ack(batch[-1]["seq"] - 10)  # the receiver is ten yips behind
    assert grown > 2 * COMPACT_MIN_BYTES
    assert path.stat().st_ino != inode  # rewritten and renamed over
    assert path.stat().st_size < COMPACT_MIN_BYTES + 10_000  # acknowledged records did not pile up
    assert not (path.parent / (LOG_NAME + ".new")).exists()
    live = [(y["id"], y["seq"]) for y in box.after(0, 1000)]
    assert [i for i, _ in live] == [f"r39-{i}" for i in range(10, 20)]
    store = reopen(tmp_path, store, max_yips=1000, max_bytes=1 << 20)
    box = store.get("p")
    assert [(y["id"], y["seq"]) for y in box.after(0, 1000)] == live
    assert box.append("a", {"text": "retry"}, "r39-15")["seq"] == dict(live)["r39-15"]
    assert box.append("a", {"text": "new"})["seq"] == 801
    store.close()


def test_a_compaction_during_a_round_closes_the_old_file_only_after_it(tmp_path, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow(fd: int) -> None:
        entered.set()
        assert release.wait(10)
        real(fd)

    async def main() -> None:
        store = open_store(tmp_path, max_yips=1000, max_bytes=1 << 20)
        box = store.get("p")
        last = box.put("a", [({"text": "y" * 500}, None) for _ in range(200)])[-1]
        monkeypatch.setattr(mailboxlog.os, "fdatasync", slow)
        old_fd = box.journal.fd
        pending = asyncio.ensure_future(box.flush())
        assert await asyncio.to_thread(entered.wait, 10)
        box.ack(last["seq"] - 1)  # compacts while the round syncs the old file
        assert box.journal.fd != old_fd
        # The new file was fsynced whole: the send waiting on the old one is answered already.
        await asyncio.wait_for(pending, 10)
        os.fstat(old_fd)  # still open: the round is using it
        release.set()
        deadline = time.monotonic() + 10
        while store.syncer.running and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        with pytest.raises(OSError):
            os.fstat(old_fd)
        store.close()
    asyncio.run(main())
    store = open_store(tmp_path, max_yips=1000, max_bytes=1 << 20)
    assert [y["seq"] for y in store.get("p").after(0, 1000)] == [200]
    store.close()


def test_everything_acknowledged_compacts_to_a_head_and_seqs_go_on(tmp_path):
    store = open_store(tmp_path, max_yips=1000, max_bytes=1 << 20)
    box = store.get("p")
    last = 0
    while log_of(tmp_path).stat().st_size <= COMPACT_MIN_BYTES:
        last = box.put("a", [({"text": "y" * 500}, None)])[0]["seq"]
    box.ack(last)
    records, _ = decode_all(log_of(tmp_path).read_bytes())
    assert records == [{"head": {"format": 1, "next_seq": last + 1}}]
    store = reopen(tmp_path, store, max_yips=1000, max_bytes=1 << 20)
    assert store.get("p").append("a", {"text": "z"})["seq"] == last + 1
    store.close()


def test_dropping_a_mailbox_removes_its_files_even_one_only_on_disk(tmp_path):
    store = open_store(tmp_path)
    store.get("p").append("a", {"text": "x"})
    store.get("q").append("a", {"text": "y"})
    store = reopen(tmp_path, store)
    store.get("p")
    assert store.names() == ["p", "q"]  # q was not opened since the restart: known from the disk
    store.drop("p")
    store.drop("q")
    assert store.names() == [] and os.listdir(tmp_path / "mailboxes") == []
    store.close()


def test_many_concurrent_sends_share_one_fdatasync(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)
    monkeypatch.setattr(mailboxlog.os, "fdatasync", counting)

    async def main() -> None:
        store = open_store(tmp_path, max_yips=1000)
        boxes = [store.get("p"), store.get("q")]

        async def send(i: int) -> int:
            box = boxes[i % 2]
            y = box.append(f"s{i % 3}", {"text": f"m{i}"})
            await box.flush()
            return int(y["seq"])
        seqs = await asyncio.gather(*(send(i) for i in range(200)))
        assert sorted(seqs) == sorted(list(range(1, 101)) * 2)
        assert store.syncer.rounds == 1 and len(synced) == 2  # one round: one fdatasync per log
        await send(0)  # a lone send gets a round of its own
        assert store.syncer.rounds == 2 and len(synced) == 3
        store.close()
    asyncio.run(main())


def test_no_send_is_answered_before_its_fdatasync_returns(tmp_path, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow(fd: int) -> None:
        entered.set()
        assert release.wait(10)
        real(fd)
    monkeypatch.setattr(mailboxlog.os, "fdatasync", slow)

    async def main() -> None:
        store = open_store(tmp_path)
        box = store.get("p")
        box.append("a", {"text": "first"})
        first = asyncio.ensure_future(box.flush())
        assert await asyncio.to_thread(entered.wait, 10)
        box.append("a", {"text": "second"})  # arrives during the round: waits for the next one
        second = asyncio.ensure_future(box.flush())
        for _ in range(20):  # turns of the loop in which a wrong implementation would answer early
            await asyncio.sleep(0)
        assert not first.done() and not second.done()
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert store.syncer.rounds == 2
        store.close()
    asyncio.run(main())


def test_a_failed_fdatasync_refuses_sends_until_the_mailbox_is_read_back(tmp_path, monkeypatch):
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(mailboxlog.os, "fdatasync", failing)

    async def main() -> MailboxStore:
        store = open_store(tmp_path)
        box = store.get("p")
        box.append("a", {"text": "maybe on disk"}, "m")
        with pytest.raises(Unavailable, match="fdatasync failed: Input/output error"):
            await box.flush()
        with pytest.raises(Unavailable, match="cannot store yips"):
            box.append("a", {"text": "refused"})
        return store
    store = asyncio.run(main())
    monkeypatch.undo()
    store = reopen(tmp_path, store)  # the agent restarted: what reached the file is served again
    box = store.get("p")
    assert [y["id"] for y in box.after(0, 10)] == ["m"] and box.append("a", {"text": "ok"})["seq"] == 2
    store.close()


def test_a_failed_write_leaves_no_half_record(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    box = store.get("p")
    box.append("a", {"text": "before"})
    size = log_of(tmp_path).stat().st_size
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[:7])  # a full disk takes part of it
    monkeypatch.setattr(mailboxlog.os, "write", short_write)
    with pytest.raises(Unavailable, match="short write"):
        box.put("a", [({"text": "lost"}, None), ({"text": "too"}, None)])
    monkeypatch.undo()
    assert log_of(tmp_path).stat().st_size == size and len(box.items) == 1 and box.next_seq == 2
    box.append("a", {"text": "after"})
    store = reopen(tmp_path, store)
    assert [y["text"] for y in store.get("p").after(0, 10)] == ["before", "after"]
    store.close()
