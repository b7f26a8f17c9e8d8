"""The agent's audit log on a real disk (canidae.agent.node.auditlog): concurrent appends share
fsyncs and still chain in order; segments rotate; a torn tail left by a crash is cut at the next
start and reported in the next record; a segment that cannot be created refuses the append;
files are 0600 in a 0700 dir; the signed head checks with the key id the cluster will register."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from canidae.agent.node.auditlog import AuditLog
from canidae.core.audit import checkpoint_message
from canidae.core.audit_heads import public_key_bytes
from canidae.core.auditseg import check_log, segment_name
from canidae.core.errors import AuditUnavailable


def fields(i: int) -> dict:
    return {"at_ms": i, "accessor": "ca_" + "1" * 32, "agent": "n1", "remote": "127.0.0.1:9", "action": "pack.spawn",
            "target": f"p{i}", "outcome": "ok", "request_id": f"r{i}"}


def segments(alog: AuditLog) -> list[tuple[str, bytes]]:
    return list(alog.raw())


def test_concurrent_appends_share_fsyncs_and_chain_in_order(tmp_path: Path) -> None:
    async def go() -> AuditLog:
        alog = AuditLog(str(tmp_path), "n1", 4096)
        alog.open()
        await asyncio.gather(*(alog.append(fields(i)) for i in range(200)))
        return alog
    alog = asyncio.run(go())
    assert alog.durable_seq == 200 and alog.fsync_count < 200  # written together, synced together
    segs = segments(alog)
    assert len(segs) > 1  # 4 KiB segments: rotated
    result = check_log(segs)
    assert result.ok and result.result.head_seq == 200 and result.result.head_hash == alog.durable_hash
    d = os.path.join(str(tmp_path), "audit")
    assert os.stat(d).st_mode & 0o077 == 0
    assert all(os.stat(os.path.join(d, n)).st_mode & 0o077 == 0 for n in os.listdir(d))
    recs = alog.records(after=190, limit=5)
    assert [r.seq for r in recs] == [191, 192, 193, 194, 195]
    assert [r.seq for r in alog.records(limit=2, newest=True)] == [199, 200]
    assert [r.seq for r in alog.records(keep=lambda r: r.target == "p7")] == [8]
    alog.close()


def test_a_torn_tail_is_cut_at_start_and_reported_in_the_next_record(tmp_path: Path) -> None:
    async def write(n: int) -> AuditLog:
        alog = AuditLog(str(tmp_path), "n1", 1 << 20)
        alog.open()
        for i in range(n):
            await alog.append(fields(i))
        return alog
    first = asyncio.run(write(3))
    first.close()
    path = os.path.join(str(tmp_path), "audit", segment_name(1))
    with open(path, "ab") as f:
        f.write(b'{"accessor":"ca_')  # a crash in the middle of a write that was never answered
    again = asyncio.run(write(1))
    assert again.durable_seq == 4
    rec = again.records(after=3)[0]
    assert rec.detail["audit_recovery"] == {"torn_bytes_cut": 16}
    assert check_log(segments(again)).ok
    again.close()


def test_a_segment_that_cannot_be_created_refuses_the_append(tmp_path: Path) -> None:
    async def go() -> None:
        alog = AuditLog(str(tmp_path), "n1", 1)  # every record in a segment of its own
        alog.open()
        await alog.append(fields(0))
        blocked = os.path.join(str(tmp_path), "audit", segment_name(2))
        os.mkdir(blocked)
        with pytest.raises(AuditUnavailable, match="cannot create segment"):
            await alog.prepare()
        with pytest.raises(AuditUnavailable):
            await alog.append(fields(1))
        assert alog.durable_seq == 1 and alog.error
        os.rmdir(blocked)
        await alog.append(fields(1))  # writing works again: the chain goes on
        assert alog.durable_seq == 2 and not alog.error
        assert check_log(segments(alog)).ok
        alog.close()
    asyncio.run(go())


def test_the_signed_head_checks_with_the_public_key(tmp_path: Path) -> None:
    async def go() -> AuditLog:
        alog = AuditLog(str(tmp_path), "n1", 1 << 20)
        alog.open()
        await alog.append(fields(0))
        return alog
    alog = asyncio.run(go())
    cp = alog.sign_head(1234)
    assert (cp.seq, cp.head_hash, cp.key_id) == (1, alog.durable_hash, alog.key_id)
    Ed25519PublicKey.from_public_bytes(public_key_bytes(alog.public_key)).verify(
        bytes.fromhex(cp.signature), checkpoint_message(1, alog.durable_hash, 1234, alog.key_id))
    key_file = os.path.join(str(tmp_path), "audit", "key")
    assert os.stat(key_file).st_mode & 0o077 == 0
    with open(key_file, "rb") as f:
        assert alog.public_key not in f.read().decode()  # the private half, not the public one
    reopened = AuditLog(str(tmp_path), "n1", 1 << 20)
    reopened.open()
    assert reopened.key_id == alog.key_id and reopened.durable_seq == 1  # the same key and head after a restart
    assert base64.urlsafe_b64decode(alog.public_key + "=")
    alog.close()
    reopened.close()


def test_a_write_the_disk_refuses_fails_the_append_and_leaves_no_torn_line(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) stands in for a full disk: the write fails
    with EFBIG part-way, the append raises, the part written is cut off; once the disk takes writes
    again the chain goes on in a new segment."""
    import resource
    import signal

    async def go() -> None:
        alog = AuditLog(str(tmp_path), "n1", 1 << 20)
        alog.open()
        await alog.append(fields(0))
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (alog.size + 40, old_limit[1]))
            with pytest.raises(AuditUnavailable, match="write to"):
                await alog.append(fields(1))
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)
        assert alog.durable_seq == 1
        with open(os.path.join(str(tmp_path), "audit", segment_name(1)), "rb") as f:
            assert f.read().endswith(b"}\n")  # the partial line was cut off
        await alog.append(fields(1))
        assert alog.durable_seq == 2 and len(segments(alog)) == 2
        assert check_log(segments(alog)).ok
        alog.close()
    asyncio.run(go())
