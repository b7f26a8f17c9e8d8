"""The pysyncobj replica: the Raft log that carries canidae's command batches.

What this module owns, and why it is shaped as it is:

* One ``@replicated`` method, ``apply_entry(data)``. pysyncobj identifies replicated methods by
  sorted name, so keeping exactly one keeps the log format stable. ``data`` is one canonical,
  optionally zstd-compressed batch of commands (``canidae.core.commands``); applying it goes
  through ``ClusterState.apply`` and nothing else.
* Snapshots use our own serializer: canonical JSON of ``ClusterState.to_snapshot()``,
  zstd-compressed, written by a forked child so that compaction never blocks the tick thread
  (pysyncobj only forks for its own pickle serializer). pysyncobj's own bookkeeping (the last
  two log entries and the member set) is pickled beside it: those are its objects, not ours.
* Durability pysyncobj lacks. It never fsyncs: its journal is an mmap and its term/vote file a
  plain write-and-rename. With ``fsync`` on (the default) every journal append is fdatasync'ed
  before the entry can be acknowledged (the leader counts itself only after ``add`` returns and
  followers answer only after it) and the term/vote file is fsync'ed with its directory, so an
  acknowledged write survives a machine crash, not only a process crash. Group commit amortises
  the cost: one entry carries many commands.
* The cluster password is always set: pysyncobj's wire format is pickle, so without it anyone
  reaching the Raft port could run code in the agent.
* Fencing by the entry's term: ``apply_entry`` reads the Raft term of the log entry it applies
  and hands it to ``ClusterState.apply_batch``, which rejects a leader-only command stamped in
  another term (a deposed leader's, forwarded to the next leader).
* Stalls are not silences: a long apply (or any long tick) does not make followers campaign nor
  the leader step down; the leader tells followers the commit index before applying so that
  long applies overlap (``_onTick``, ``_SyncObj__applyLogEntries``).
* Pre-vote (``prevote``): a member campaigns only when a majority would vote for it, so one
  that was cut off cannot raise its term and depose a healthy leader when it returns.
* The Raft port binds the configured address, and its wire is hardened (``raftwire``): frame
  caps checked before anything is buffered, few unauthenticated connections per address.

Every patch of pysyncobj says why in its docstring; the internals it touches are checked at
import (class attributes) and on construction (instance attributes), so a pysyncobj that no
longer fits fails loudly instead of silently losing a patch.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import threading
import time
from typing import Any, Callable

import zstandard
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj import journal as _journal
from pysyncobj import syncobj as _syncobj
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.monotonic import monotonic

from canidae.agent.config import RaftSettings
from canidae.agent.server import prevote as _prevote
from canidae.agent.server import raftwire
from canidae.agent.server.raftwire import require as _require


class _KeepLog(threading.local):
    """Set on a tick thread while it hands pysyncobj a repeat that must not truncate the log."""

    active = False


_keep_log = _KeepLog()


class _NoFalseTruncationAlarm(logging.Filter):
    # pysyncobj warns before the deletion we skip for a conflict-free repeat: nothing is deleted.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_keep_log.active and "truncating already-applied" in record.getMessage())


logging.getLogger("pysyncobj.syncobj").addFilter(_NoFalseTruncationAlarm())
from canidae.agent.server.raftwire import require_source as _require_source
from canidae.core.commands import decode_batch
from canidae.core.errors import OperationFailed
from canidae.core.state import ClusterState

log = logging.getLogger("canidae.replica")

SNAPSHOT_MAGIC = b"CNDSNAP1"
COMPRESSED = b"Z"  # first byte of a compressed entry; plain entries start with "{"
COMPRESS_OVER = 2048


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FsyncFileJournal(_journal.FileJournal):
    """pysyncobj's file journal, made durable: every append is fdatasync'ed before it returns.

    A pysyncobj follower truncates its log and re-adds the same entries whenever the leader
    resends them (it does not skip entries it already holds, as Raft allows). Re-adding an entry
    identical to the one already durable at that position needs no msync: ``_durable`` mirrors
    what is on disk, so only new or different entries pay for a flush.
    """

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._durable: list[tuple[bytes, int, int]] = [self[i] for i in range(len(self))]
        self._bulk = False

    def add(self, command: bytes, idx: int, term: int) -> None:
        pos = len(self)
        super().add(command, idx, term)
        entry = (command, idx, term)
        if pos < len(self._durable) and self._durable[pos] == entry:
            return
        del self._durable[pos:]
        self._durable.append(entry)
        if not self._bulk:
            self._sync()

    def _sync(self) -> None:
        """fdatasync the journal file: what an append wrote through the mapping reaches the disk.

        Not ``mmap.flush()`` (msync): CPython 3.11 holds the GIL through msync, so every thread
        of the agent (the HTTP loop included) stood still for each disk flush. On Linux msync
        with MS_SYNC is an fsync of the file's range, and the pages of a shared mapping are the
        file's page cache, so fdatasync of the file makes the same writes durable, releases the
        GIL, and is one system call for both places an append changes (its entry and the header
        page that holds the end offset). Only dirty pages are written: the size of the journal
        does not matter. The file object is looked up on every call: pysyncobj reopens it when
        it grows the journal.
        """
        f = self._FileJournal__journalFile._ResizableFile__f  # type: ignore[attr-defined]
        os.fdatasync(f.fileno())

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802 (pysyncobj's name)
        # A follower sets its commit index on every append-entries, heartbeats included, and
        # pysyncobj then rewrites the meta file (fsync, rename, fsync of the directory) once a
        # second although nothing changed: an idle follower's only disk writes. Unchanged: nothing.
        if raftCommitIndex != self.getRaftCommitIndex():
            super().setRaftCommitIndex(raftCommitIndex)

    def clear(self) -> None:
        super().clear()
        self._durable = []
        if not self._bulk:
            self.flush()

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802 (pysyncobj's name)
        # Compaction rewrites the whole file: one msync at the end instead of one per entry.
        self._bulk = True
        try:
            super().deleteEntriesTo(entryTo)
        finally:
            self._bulk = False
        self.flush()


class _FsyncMetaStorer(_journal.MetaStorer):
    """Term and vote stored with fsync of the file and its directory before the rename counts."""

    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802 (pysyncobj's name)
        path = self.getPath()
        with open(path + ".tmp", "wb") as f:
            f.write(_journal.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        _fsync_dir(path)


_FSYNC_JOURNALS: set[str] = set()


def _create_journal(journal_file: str | None = None) -> _journal.Journal:
    if journal_file is None:
        return _journal.MemoryJournal()
    if os.path.abspath(journal_file) in _FSYNC_JOURNALS:
        j = _FsyncFileJournal(journal_file)
        # Swap the meta storer for the fsync'ing one (same file, same format).
        j._FileJournal__metaStorer = _FsyncMetaStorer(journal_file + ".meta")  # type: ignore[attr-defined]
        return j
    return _journal.FileJournal(journal_file)


# pysyncobj looks the factory up in its own module namespace when a SyncObj is built.
_syncobj.createJournal = _create_journal


_require(SyncObj, "_SyncObj__getEntries", "_SyncObj__deleteEntriesFrom", "_SyncObj__applyLogEntries", "_SyncObj__sendAppendEntries",
         "_SyncObj__connectedToAnyone", "_SyncObj__generateRaftTimeout", "_SyncObj__getCurrentLogIndex",
         "_SyncObj__getCurrentLogTerm", "raftLastApplied", "raftCommitIndex", "raftCurrentTerm",
         "otherNodes", "_onTick", "_isLeader")


# The election check reads the deadline (pre-vote holds it), and nothing else reads it; the tick
# applies before it polls (stall forgiveness); entries are applied from lastApplied + 1 (fencing).
_require_source(SyncObj._onTick, "self.__raftElectionDeadline < monotonicTime()",
                "self.__applyLogEntries()", "self._poller.poll(timeToWait)")
_require_source(SyncObj._SyncObj__applyLogEntries, "self.__getEntries(self.__raftLastApplied + 1, count)",
                "self.__raftLastApplied += 1")
# Instance attributes of pysyncobj's we read or adjust; checked on every new replica.
_SYNCOBJ_STATE = ("_SyncObj__raftState", "_SyncObj__lastResponseTime", "_SyncObj__transferInProgress",
                  "_SyncObj__transport", "_SyncObj__raftNextIndex")
_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER


class _ForkingSnapshotWriter:
    """pysyncobj's custom serializer protocol, made asynchronous by forking."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.pid = 0

    def serialize(self, tmp_file: str, raft_data: Any) -> None:
        # Whatever was derived from the entries this snapshot replaces (the event store) must be
        # durable first: after compaction those entries are never applied here again.
        if self.replica.before_snapshot is not None:
            self.replica.before_snapshot()
        final = tmp_file[: -len(".tmp")] if tmp_file.endswith(".tmp") else tmp_file
        ours = final + ".canidae-tmp"
        pid = os.fork()
        if pid != 0:
            self.pid = pid
            return
        # Child: runs alone with a copy of the state as of the last applied entry. No logging
        # (a lock held by another thread at fork time would deadlock it), only the write.
        try:
            blob = self.replica.encode_snapshot(raft_data)
            with open(ours, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(ours, final)
            _fsync_dir(final)
            os._exit(0)
        except BaseException:  # the child must never return into the parent's code
            os._exit(1)

    def check(self) -> int:
        if self.pid == 0:
            return SERIALIZER_STATE.NOT_SERIALIZING
        try:
            rpid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.pid = 0
            return SERIALIZER_STATE.FAILED
        if rpid == 0:
            return SERIALIZER_STATE.SERIALIZING
        self.pid = 0
        return SERIALIZER_STATE.SUCCESS if status == 0 else SERIALIZER_STATE.FAILED

    def deserialize(self, file_name: str) -> Any:
        with open(file_name, "rb") as f:
            blob = f.read()
        return self.replica.load_snapshot(blob)


def encode_entry(data: bytes) -> bytes:
    if len(data) > COMPRESS_OVER:
        return COMPRESSED + zstandard.ZstdCompressor(level=1).compress(data)
    return data


def decode_entry(data: bytes) -> bytes:
    if data[:1] == COMPRESSED:
        return zstandard.ZstdDecompressor().decompress(data[1:])
    return data


class _View:
    """Pre-vote's window on a pysyncobj member's internals (tick thread only)."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica

    def is_leader(self) -> bool:
        return bool(self.r._isLeader())

    def term(self) -> int:
        return int(self.r.raftCurrentTerm)

    def last_log(self) -> tuple[int, int]:
        return int(self.r._SyncObj__getCurrentLogTerm()), int(self.r._SyncObj__getCurrentLogIndex())

    def peers(self) -> list[Any]:
        return list(self.r.otherNodes)

    def send(self, node: Any, message: dict[str, Any]) -> None:
        self.r._SyncObj__transport.send(node, message)

    def may_campaign(self) -> bool:
        return self.r.selfNode is not None and bool(self.r._SyncObj__connectedToAnyone())

    def transfer_pending(self) -> bool:
        return bool(self.r._SyncObj__transferInProgress)

    def new_timeout(self) -> float:
        return float(self.r._SyncObj__generateRaftTimeout())


class Replica(SyncObj):  # type: ignore[misc]
    """One Raft member holding a ``ClusterState``. Reads from other threads take ``self.lock``."""

    def __init__(self, self_addr: str, peer_addrs: list[str], data_dir: str, password: str,
                 settings: RaftSettings, state_factory: Callable[[], ClusterState],
                 on_applied: Callable[[list[dict[str, Any]]], None] | None = None,
                 before_snapshot: Callable[[], Any] | None = None, *, pre_vote: bool = True) -> None:
        os.makedirs(data_dir, exist_ok=True)
        journal = os.path.join(data_dir, "raft.journal")
        if settings.fsync:
            _FSYNC_JOURNALS.add(os.path.abspath(journal))
        self.lock = threading.RLock()
        self.apply_seconds = 0.0
        self.leader_changes = 0  # times the leader this member knows of changed (to another, or none)
        self._known_leader: str | None = None
        # Called on the tick thread when the leader this member knows of changes (the failure
        # detector waits on it instead of polling while this member follows).
        self.on_leader_change: Callable[[], None] | None = None
        self.state = state_factory()
        self._state_factory = state_factory
        self._on_applied = on_applied
        self.before_snapshot = before_snapshot
        self._writer = _ForkingSnapshotWriter(self)
        conf = SyncObjConf(
            password=password,
            bindAddress=self_addr,  # pysyncobj binds 0.0.0.0 (or ::) otherwise
            journalFile=journal,
            fullDumpFile=os.path.join(data_dir, "raft.snapshot"),
            serializer=self._writer.serialize,
            deserializer=self._writer.deserialize,
            serializeChecker=self._writer.check,
            appendEntriesUseBatch=False,  # our own group commit batches; this keeps latency ~1 ms
            raftMinTimeout=settings.election_min_s,
            raftMaxTimeout=settings.election_max_s,
            appendEntriesPeriod=settings.heartbeat_s,
            autoTickPeriod=settings.tick_s,
            leaderFallbackTimeout=settings.leader_fallback_s,
            logCompactionMinEntries=settings.compaction_min_entries,
            logCompactionMinTime=settings.compaction_min_time_s,
            dynamicMembershipChange=False,
            connectionTimeout=1.0,
            connectionRetryTime=0.5,
            commandsQueueSize=200_000,
        )
        # Ticks that stall longer than this are forgiven (see ``_onTick``): a heartbeat period is
        # what a member can miss without anyone noticing.
        self._stall_s = settings.heartbeat_s
        self._forgiven_s = 0.0
        # Exists before pysyncobj's constructor, which sets the election deadline it holds.
        # ``pre_vote=False`` is for measurements only (plain pysyncobj elections).
        self._prevote = _prevote.PreVote(_View(self), pre_vote, settings.election_min_s, monotonic())
        self.settings = settings
        # Read by the transport while pysyncobj's constructor builds it.
        self._frame_limits = raftwire.FrameLimits(
            handshake_frame=settings.max_handshake_frame_bytes, frame=settings.max_frame_bytes,
            unauthenticated_per_address=settings.max_unauthenticated_per_address)
        super().__init__(self_addr, peer_addrs, conf, transportClass=raftwire.HardenedTransport)
        _require(self, *_SYNCOBJ_STATE)
        self._keep_next_index_monotonic()
        self._route_pre_vote()
        self._truncate_only_on_conflict()

    def _keep_next_index_monotonic(self) -> None:
        """Stop pysyncobj's leader from rewinding a follower's next index on a success answer.

        pysyncobj pipelines append-entries (next index moves forward as it sends), but on each
        success answer it sets next index to what that answer acknowledged, even when later
        entries are already on the wire. Under load every late answer rewinds it, the same
        entries are sent again and again, and the follower truncates and rewrites its journal
        each time: throughput collapsed from ~300 to ~60 requests/s at 64 concurrent clients
        here. Raft only needs a success answer to move match index forward; next index may keep
        its place. A failure answer still resets it.
        """
        transport = self._SyncObj__transport
        next_index = self._SyncObj__raftNextIndex
        original = transport._onMessageReceivedCallback

        def on_message(node: Any, message: Any) -> None:
            if isinstance(message, dict) and message.get("type") == "next_node_idx" \
                    and message.get("success") and not message.get("reset"):
                before = next_index.get(node)
                original(node, message)
                after = next_index.get(node)
                if before is not None and after is not None and after < before:
                    next_index[node] = before
                return
            original(node, message)

        transport.setOnMessageReceivedCallback(on_message)

    def _truncate_only_on_conflict(self) -> None:
        """Keep log entries a stale append-entries repeats, as Raft requires.

        pysyncobj's follower deletes everything after ``prevLogIdx`` whenever it holds more, even
        when the message's entries match what it holds (a late or repeated message: pipelining
        and retransmission make them common). Entries the leader already counted as replicated
        here then vanish until resent, and a crash in between can leave a committed entry on
        fewer servers than the leader believes. Raft's rule is to delete only from the first
        entry whose term conflicts. A message that holds no conflict and ends before our log does
        is rewritten into an empty one at its last entry (so the answer acknowledges exactly what
        it carried), its commit index capped there (our later entries are not vouched for by
        it), and the deletion pysyncobj would make is skipped.
        """
        transport = self._SyncObj__transport
        inner = transport._onMessageReceivedCallback

        def on_message(node: Any, message: Any) -> None:
            if isinstance(message, dict) and message.get("type") == "append_entries" \
                    and "prevLogIdx" in message and "transmission" not in message \
                    and isinstance(message.get("term"), int) and message["term"] >= self.raftCurrentTerm:
                kept = self._repeat_without_conflict(message)
                if kept is not None:
                    _keep_log.active = True
                    try:
                        inner(node, kept)
                    finally:
                        _keep_log.active = False
                    return
            inner(node, message)

        transport.setOnMessageReceivedCallback(on_message)

    def _repeat_without_conflict(self, message: dict[str, Any]) -> dict[str, Any] | None:
        entries = message.get("entries") or []
        prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        last_idx = entries[-1][1] if entries else prev_idx
        ours_last = self._SyncObj__getCurrentLogIndex()
        if prev_idx >= ours_last:
            return None  # nothing of ours follows prevLogIdx: pysyncobj deletes nothing
        if last_idx >= ours_last:
            return self._extension_without_conflict(message, entries, prev_idx, prev_term, ours_last)
        held = self._SyncObj__getEntries(prev_idx, len(entries) + 1)
        if len(held) < len(entries) + 1 or held[0][2] != prev_term:
            return None  # a gap or a conflict at prevLogIdx: pysyncobj answers failure
        for ours, theirs in zip(held[1:], entries):
            if ours[1] != theirs[1] or ours[2] != theirs[2]:
                return None  # a real conflict: deleting from prevLogIdx + 1 is what Raft does
        last_term = entries[-1][2] if entries else prev_term
        return {**message, "prevLogIdx": last_idx, "prevLogTerm": last_term, "entries": [],
                "commit_index": min(message["commit_index"], last_idx)}

    def _extension_without_conflict(self, message: dict[str, Any], entries: list[Any], prev_idx: int,
                                    prev_term: int, ours_last: int) -> dict[str, Any] | None:
        """A message that overlaps the end of our log and goes beyond it: when the overlap matches,
        only what is new is appended (pysyncobj would delete the overlap and write it again)."""
        held = self._SyncObj__getEntries(prev_idx, ours_last - prev_idx + 1)
        if len(held) != ours_last - prev_idx + 1 or held[0][2] != prev_term:
            return None
        overlap = len(held) - 1
        for ours, theirs in zip(held[1:], entries[:overlap]):
            if ours[1] != theirs[1] or ours[2] != theirs[2]:
                return None  # a real conflict: deleting from prevLogIdx + 1 is what Raft does
        return {**message, "prevLogIdx": ours_last, "prevLogTerm": held[-1][2], "entries": entries[overlap:]}

    def _SyncObj__deleteEntriesFrom(self, fromIdx: int) -> None:  # noqa: N802 (pysyncobj's name)
        if _keep_log.active:
            return  # a repeat without conflict (see _truncate_only_on_conflict): nothing to delete
        super()._SyncObj__deleteEntriesFrom(fromIdx)  # type: ignore[misc]

    def _route_pre_vote(self) -> None:
        """Take pre-vote messages out of the stream before pysyncobj sees them; note leaders.

        A leader's append-entries of our term or newer is what pysyncobj follows: the time it
        arrives is what pre-vote answers by ("have I heard from a leader lately?").
        """
        transport = self._SyncObj__transport
        inner = transport._onMessageReceivedCallback
        pv = self._prevote

        def on_message(node: Any, message: Any) -> None:
            if isinstance(message, dict):
                kind = message.get("type")
                if kind in _prevote.MESSAGE_TYPES:
                    pv.on_message(node, message, monotonic())
                    return
                if kind == "append_entries" and isinstance(message.get("term"), int) \
                        and message["term"] >= self.raftCurrentTerm:
                    pv.heard_leader(monotonic())
            inner(node, message)

        transport.setOnMessageReceivedCallback(on_message)

    @property
    def _SyncObj__raftElectionDeadline(self) -> float:  # pysyncobj's attribute
        """pysyncobj's election deadline, held by pre-vote (see ``prevote``).

        A data descriptor on the class wins over pysyncobj's instance attribute of that name, so
        every read and write pysyncobj makes goes through here. It reads the deadline only to
        decide whether to campaign (checked at import): it sees an expired one only after a won
        pre-vote round.
        """
        return self._prevote.visible_deadline(monotonic())

    @_SyncObj__raftElectionDeadline.setter
    def _SyncObj__raftElectionDeadline(self, value: float) -> None:
        self._prevote.set_by_pysyncobj(value)

    # ----------------------------------------------------------- the tick

    def _onTick(self, timeToWait: float = 0.0) -> None:  # pysyncobj's signature
        """pysyncobj's tick, with the pre-vote round started where pysyncobj would campaign.

        Only time spent applying entries is forgiven as a stall (``_SyncObj__applyLogEntries``);
        a tick stalled for another reason (the process was paused, starved) is not. Forgiving a
        paused member its whole pause kept a resumed old leader believing in its leadership and
        was seen to leave it, once a follower, never catching up again; a paused follower needs
        no forgiveness either: when it resumes, pre-vote keeps it from disturbing the leader.
        """
        self._forgiven_s = 0.0
        self._prevote.before_tick(monotonic())
        super()._onTick(timeToWait)
        leader = self.leader_address()
        if leader != self._known_leader:
            self._known_leader = leader
            self.leader_changes += 1
            if self.on_leader_change is not None:
                self.on_leader_change()

    def _forgive_own_stall(self, busy: float) -> None:
        now = monotonic()
        # Connections are not forgiven: moving their read deadlines past a stall was seen to keep
        # a connection the peer had given up on, and the member never caught up again. A link
        # dropped on its idle timeout after a long apply just reconnects.
        if self._SyncObj__raftState == _LEADER:
            last = self._SyncObj__lastResponseTime
            for node, t in list(last.items()):
                last[node] = min(now, t + busy)
        else:  # a leader that asked us to campaign at once (TimeoutNow) keeps its deadline
            self._prevote.forgive(busy, deadline=not self._SyncObj__transferInProgress)

    def _SyncObj__applyLogEntries(self) -> bool:  # pysyncobj's, overridden
        """A leader announces a new commit index before applying, so followers apply alongside.

        pysyncobj's leader advances its commit index at the top of a tick, applies the newly
        committed entries, and only then sends the append-entries that tell followers. While it
        applies a long entry, followers hear nothing (no heartbeat either) and campaign; and
        they start their own long apply only once the leader's is over, so the leader then
        hears nothing from them for as long. Sending first makes the applies overlap.

        A long apply is forgiven (see ``_onTick``) as soon as it ends, not at the end of the
        tick: the leader sends right after applying, and pysyncobj checks a connection's idle
        timeout on each send, before anything waiting on it has been read.
        """
        if self._SyncObj__raftState == _LEADER and self.raftCommitIndex > self.raftLastApplied:
            self._SyncObj__sendAppendEntries()
        start = monotonic()
        need_send = bool(SyncObj._SyncObj__applyLogEntries(self))
        took = monotonic() - start
        if took >= self._stall_s:
            self._forgive_own_stall(took)
            self._forgiven_s += took
        return need_send

    # The one replicated entry point. Runs on pysyncobj's tick thread, in log order.
    @replicated
    def apply_entry(self, data: bytes) -> list[dict[str, Any]]:
        try:
            cmds = decode_batch(decode_entry(data))
        except Exception as e:  # a malformed entry must not stop the replica: answer an error
            err = OperationFailed(f"undecodable log entry: {e}").to_wire()
            return [err]
        t0 = time.perf_counter()
        entry_term = self._applying_entry_term()
        with self.lock:
            results = self.state.apply_batch(cmds, entry_term=entry_term)
            events = self.state.drain_events()
        # Time spent applying: every replica spends about as long on the same entry, and nothing
        # else of theirs (heartbeats included) runs well meanwhile. Failure detection discounts it.
        self.apply_seconds += time.perf_counter() - t0
        if self._on_applied is not None and events:
            try:
                self._on_applied(events)
            except Exception:
                log.exception("event sink failed")
        return results

    def _applying_entry_term(self) -> int:
        """The Raft term of the log entry ``apply_entry`` is applying right now.

        pysyncobj hands a replicated method only the command, not the entry ``(command, index,
        term)`` it came in. Its ``__applyLogEntries`` applies committed entries in index order
        starting at ``lastApplied + 1`` and advances ``lastApplied`` only after the method
        returns, so while we run, the entry being applied is the one at ``lastApplied + 1``; we
        read its term from the log through pysyncobj's own ``__getEntries`` (an in-memory list
        index, no I/O). The term is replicated with the entry, so every replica reads the same
        one: that is what lets ``ClusterState.apply`` fence a deposed leader's command
        deterministically. (The one case where ``lastApplied`` lags in pysyncobj is an entry that
        switches to an unsupported code version; we never use code versions.)
        """
        entries = self._SyncObj__getEntries(self.raftLastApplied + 1, 1)
        if not entries:  # cannot happen while an entry is being applied; fail loudly if it does
            raise RuntimeError(f"no log entry at index {self.raftLastApplied + 1} while applying it")
        return int(entries[0][2])

    # ----------------------------------------------------------- snapshots

    def encode_snapshot(self, raft_data: Any) -> bytes:
        import json
        doc = json.dumps(self.state.to_snapshot(), sort_keys=True, separators=(",", ":")).encode()
        raft = pickle.dumps(raft_data, protocol=pickle.HIGHEST_PROTOCOL)
        body = zstandard.ZstdCompressor(level=3).compress(doc)
        return SNAPSHOT_MAGIC + struct.pack("<II", len(raft), len(body)) + raft + body

    def load_snapshot(self, blob: bytes) -> Any:
        import json
        if blob[:8] != SNAPSHOT_MAGIC:
            raise ValueError("not a canidae snapshot")
        raft_len, body_len = struct.unpack("<II", blob[8:16])
        raft = pickle.loads(blob[16:16 + raft_len])
        body = blob[16 + raft_len:16 + raft_len + body_len]
        doc = json.loads(zstandard.ZstdDecompressor().decompress(body))
        state = ClusterState.from_snapshot(doc)
        with self.lock:
            self.state = state
        return raft

    # ----------------------------------------------------------- status

    def raft_status(self) -> dict[str, Any]:
        st = self.getStatus()
        leader = st.get("leader")
        return {
            "state": {0: "follower", 1: "candidate", 2: "leader"}.get(st.get("state"), "unknown"),
            "leader": getattr(leader, "address", None) if leader is not None else None,
            "term": st.get("raft_term"),
            "commit_index": st.get("commit_idx"),
            "last_applied": st.get("last_applied"),
            "log_len": st.get("log_len"),
            "has_quorum": st.get("has_quorum"),
            "partner_nodes_count": st.get("partner_nodes_count"),
            "peers": {k[len("partner_node_status_server_"):]: bool(v) for k, v in st.items()
                      if k.startswith("partner_node_status_server_")},
            "pre_vote": self._prevote.status(),
            "wire": self._SyncObj__transport.stats.as_dict(),
        }

    @property
    def max_entry_bytes(self) -> int:
        """The largest encoded command batch one log entry may carry.

        An entry travels inside a frame that pickles it twice (entry, then message; pickle
        protocol 2 writes each byte above 0x7f as two) and Fernet then base64s (4/3): a frame
        is at most about 5.4 times the entry. An eighth of the frame cap keeps every frame,
        including a follower forwarding the entry whole to the leader, under that cap.
        """
        return self.settings.max_frame_bytes // 8

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def leader_address(self) -> str | None:
        leader = self._getLeader()
        return getattr(leader, "address", None) if leader is not None else None

    def current_term(self) -> int:
        return int(self.raftCurrentTerm)
