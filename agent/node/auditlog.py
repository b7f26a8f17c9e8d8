"""This agent's audit log on disk: appending records durably, reading them back, signing the head.

The log is a run of segment files in ``<data dir>/audit/`` (0700; files 0600), named and checked
as ``canidae.core.auditseg`` says, one canonical hash-chained record per line
(``canidae.core.audit``). Beside them, ``key`` holds this agent's Ed25519 audit key (0600,
created on first start; a new key is a new log as far as the cluster's checkpoints go) and
``key.pub`` its public half and key id, for auditors.

``append`` writes the record's line with ``os.write`` on the event loop (a page-cache copy,
microseconds) and then waits until an ``fsync`` covering it has returned. fsyncs run on one
thread of their own and are shared: every record written while one fsync is in flight is made
durable by the next one, so concurrent requests pay for about one fsync each, not one each in
turn (group commit). A failed write is cut back off the segment; a failed write, fsync or
segment creation raises ``AuditUnavailable`` and the next append starts a fresh segment that
continues the chain. ``prepare`` opens or rotates the segment before a request runs, so a log
that cannot be written refuses the request before anything is done.

Reads (``records``, ``raw``) see only durable records. ``head`` is the durable chain head that
checkpoints sign (``sign_head``). On start the last segment's torn tail (a write cut by a crash,
never answered) is cut off; how many bytes is noted and becomes the detail of the next record.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from canidae.core.audit import (
    GENESIS_HASH,
    AuditRecord,
    Checkpoint,
    chain,
    checkpoint_message,
    decode_record,
    encode_record,
)
from canidae.core.audit_heads import key_id_for
from canidae.core.auditseg import first_seq_of, segment_name
from canidae.core.errors import AuditUnavailable, InvalidInput

log = logging.getLogger("canidae.audit")

AUDIT_DIR = "audit"
KEY_FILE = "key"
PUBLIC_FILE = "key.pub"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _write_private(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditLog:
    """One agent's audit log. Everything but the fsyncs runs on the event loop thread."""

    def __init__(self, data_dir: str, node: str, segment_bytes: int) -> None:
        self.dir = os.path.join(data_dir, AUDIT_DIR)
        self.node = node
        self.segment_bytes = segment_bytes
        self.fd: int | None = None
        self.segment = ""
        self.size = 0                                  # bytes written to the open segment
        self.seq, self.hash = 0, GENESIS_HASH          # last record written
        self.durable_seq, self.durable_hash = 0, GENESIS_HASH
        self.durable_size = 0                          # of the open segment
        self.error = ""                                # the last failure, "" once writing works again
        self.notes: dict[str, Any] = {}                # what the next record's detail reports (recovery)
        self.appended = asyncio.Event()                # set at every durable append (long-polls)
        self._sync: asyncio.Task[None] | None = None
        self._rotating: asyncio.Future[None] | None = None
        self._fsyncs = ThreadPoolExecutor(1, thread_name_prefix="audit-fsync")
        self.fsync_count = 0
        self._key: Ed25519PrivateKey | None = None
        self.public_key = ""
        self.key_id = ""

    # -- start ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the dir and key if needed and find the head. Failures leave the log unwritable
        (``error``): the agent starts, and refuses audited requests until writing works."""
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            self._load_key()
            self._recover()
        except (OSError, InvalidInput, ValueError) as e:
            self._fail(f"cannot open the audit log in {self.dir}: {e}")

    def _load_key(self) -> None:
        path = os.path.join(self.dir, KEY_FILE)
        try:
            with open(path, "rb") as f:
                raw = base64.urlsafe_b64decode(f.read().strip() + b"==")
        except FileNotFoundError:
            raw = os.urandom(32)
            _write_private(path, _b64(raw).encode() + b"\n")
        self._key = Ed25519PrivateKey.from_private_bytes(raw)
        self.public_key = _b64(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.key_id = key_id_for(self.node, self.public_key)
        pub = json.dumps({"node": self.node, "key_id": self.key_id, "public_key": self.public_key}).encode() + b"\n"
        pub_path = os.path.join(self.dir, PUBLIC_FILE)
        try:
            with open(pub_path, "rb") as f:
                same = f.read() == pub
        except FileNotFoundError:
            same = False
        if not same:
            _write_private(pub_path, pub)

    def segments(self) -> list[tuple[int, str]]:
        """(first seq, file name) of every segment, in order."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted((s, n) for n in names if (s := first_seq_of(n)) is not None)

    def _recover(self) -> None:
        segs = self.segments()
        if not segs:
            return
        first, name = segs[-1]
        path = os.path.join(self.dir, name)
        with open(path, "rb") as f:
            data = f.read()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            # A line without its newline was never answered (the append waits for the fsync of
            # the whole line): cut it off, and say so in the next record.
            with open(path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            log.warning("audit: cut a torn record of %d bytes off %s", len(data) - cut, name)
            self.notes["torn_bytes_cut"] = len(data) - cut
            data = data[:cut]
        undecodable = 0
        for line in reversed(data.split(b"\n")[:-1]):
            try:
                rec = decode_record(line)
            except InvalidInput:
                undecodable += 1
                continue
            self.seq, self.hash = rec.seq, rec.hash
            break
        else:
            if first > 1:
                # Nothing readable in the last segment: continue after the seq its name gives.
                self.seq = first - 1
        if undecodable:
            log.error("audit: %d undecodable line(s) at the end of %s", undecodable, name)
            self.notes["undecodable_lines"] = undecodable
        self.durable_seq, self.durable_hash = self.seq, self.hash
        # Appends continue in a new segment: the old ones are never written again.

    # -- writing -------------------------------------------------------------------------------

    def _fail(self, why: str) -> AuditUnavailable:
        self.error = why
        log.error("audit: %s", why)
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        return AuditUnavailable(f"the audit log cannot be written, so the request is refused: {why}")

    async def prepare(self) -> None:
        """Make sure a segment is open and has room; ``AuditUnavailable`` if none can be."""
        while True:
            if self._rotating is not None:
                await asyncio.shield(self._rotating)
                continue
            if self._key is None:
                self.open()
                if self._key is None:
                    raise AuditUnavailable(f"the audit log cannot be written: {self.error}")
            if self.fd is None or self.size >= self.segment_bytes:
                await self._rotate()
                continue
            return

    async def _rotate(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._rotating = done
        try:
            while self._sync is not None:
                try:
                    await asyncio.shield(self._sync)
                except AuditUnavailable:
                    pass
            old = self.fd
            if old is not None:
                try:
                    await loop.run_in_executor(self._fsyncs, os.fsync, old)
                except OSError as e:
                    raise self._fail(f"fsync of {self.segment}: {e}") from None
                self._durable(self.seq, self.hash, self.size)
                os.close(old)
                self.fd = None
            name = segment_name(self.seq + 1)
            path = os.path.join(self.dir, name)
            try:
                os.makedirs(self.dir, mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as e:
                raise self._fail(f"cannot create segment {path}: {e}") from None
            try:
                size = os.fstat(fd).st_size
                if size:  # a segment of this name holds records already: never append after them
                    os.close(fd)
                    raise self._fail(f"segment {path} exists and is not empty")
                await loop.run_in_executor(self._fsyncs, _fsync_dir, self.dir)
            except OSError as e:
                os.close(fd)
                raise self._fail(f"cannot create segment {path}: {e}") from None
            self.fd, self.segment, self.size, self.durable_size = fd, name, 0, 0
            self.error = ""
        finally:
            self._rotating = None
            done.set_result(None)

    async def append(self, fields: Mapping[str, Any]) -> AuditRecord:
        """Chain, write and fsync one record (``fields`` as ``canidae.core.audit.chain`` takes them,
        without seq). Returns once it is durable; ``AuditUnavailable`` if it could not be made so."""
        await self.prepare()
        detail = dict(fields.get("detail") or {})
        if self.notes:
            detail["audit_recovery"], self.notes = self.notes, {}
        rec = chain(self.hash, {**fields, "seq": self.seq + 1, "detail": detail})
        line = encode_record(rec) + b"\n"
        fd = self.fd
        assert fd is not None
        try:
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as e:
            try:
                os.ftruncate(fd, self.size)  # no torn line stays behind a failed write
            except OSError:
                pass
            raise self._fail(f"write to {self.segment}: {e}") from None
        self.size += len(line)
        self.seq, self.hash = rec.seq, rec.hash
        await self._synced(rec.seq)
        return rec

    async def _synced(self, seq: int) -> None:
        while self.durable_seq < seq:
            if self.fd is None:
                raise AuditUnavailable(f"the audit record could not be made durable: {self.error}")
            task = self._sync
            if task is None:
                task = self._sync = asyncio.get_running_loop().create_task(self._fsync())
            await asyncio.shield(task)

    async def _fsync(self) -> None:
        fd, seq, h, size = self.fd, self.seq, self.hash, self.size
        try:
            assert fd is not None
            await asyncio.get_running_loop().run_in_executor(self._fsyncs, os.fsync, fd)
            self.fsync_count += 1
        except OSError as e:
            raise self._fail(f"fsync of {self.segment}: {e}") from None
        finally:
            self._sync = None
        if fd == self.fd:
            self._durable(seq, h, size)

    def _durable(self, seq: int, h: str, size: int) -> None:
        if seq > self.durable_seq:
            self.durable_seq, self.durable_hash, self.durable_size = seq, h, size
            self.appended.set()
            self.appended = asyncio.Event()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._fsyncs.shutdown(wait=False)

    # -- checkpoints ---------------------------------------------------------------------------

    def sign_head(self, at_ms: int) -> Checkpoint:
        """The durable head, signed with this agent's audit key."""
        if self._key is None:
            raise AuditUnavailable(f"the audit log has no key: {self.error}")
        msg = checkpoint_message(self.durable_seq, self.durable_hash, at_ms, self.key_id)
        return Checkpoint(self.durable_seq, self.durable_hash, at_ms, self.key_id, self._key.sign(msg).hex())

    # -- reading -------------------------------------------------------------------------------

    def read_segment(self, name: str) -> bytes:
        """A segment's durable bytes (the open one up to its last fsync)."""
        with open(os.path.join(self.dir, name), "rb") as f:
            if name == self.segment:
                return f.read(self.durable_size)
            return f.read()

    def raw(self) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of every segment, oldest first, exactly as stored (durable part)."""
        for _, name in self.segments():
            yield name, self.read_segment(name)

    def records(self, *, after: int = 0, keep: Callable[[AuditRecord], bool] = lambda r: True,
                limit: int = 100, newest: bool = False) -> list[AuditRecord]:
        """Durable records with seq > ``after`` that ``keep`` keeps: the first ``limit`` of them or,
        with ``newest``, the last ``limit``. Lines that do not decode are skipped (``audit verify``
        is what reports them)."""
        segs = self.segments()
        starts = [s for s, _ in segs]
        first = max(bisect.bisect_right(starts, after + 1) - 1, 0)
        chosen = segs[first:]
        out: list[AuditRecord] = []
        for _, name in (reversed(chosen) if newest else chosen):
            try:
                data = self.read_segment(name)
            except FileNotFoundError:
                continue
            lines = data.split(b"\n")[:-1]
            got: list[AuditRecord] = []
            for line in (reversed(lines) if newest else lines):
                try:
                    rec = decode_record(line)
                except InvalidInput:
                    continue
                if rec.seq > after and rec.seq <= self.durable_seq and keep(rec):
                    got.append(rec)
                    if len(out) + len(got) >= limit:
                        break
            out.extend(got)
            if len(out) >= limit:
                break
        return sorted(out, key=lambda r: r.seq) if newest else out


__all__ = ["AUDIT_DIR", "KEY_FILE", "PUBLIC_FILE", "AuditLog"]
