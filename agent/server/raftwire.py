"""The Raft port's wire, hardened: frame caps before anything is buffered, a bound on
unauthenticated connections, and pysyncobj's chunked entries labelled right.

What pysyncobj does, and why it is patched here (``Replica`` uses ``HardenedTransport``):

* A frame is a 4-byte length, then that many bytes (zlib'd pickle, Fernet-encrypted with the
  cluster password). pysyncobj's ``TcpConnection`` reads the whole frame its header announces, up
  to 2 GiB, growing a ``bytes`` buffer by ``+=`` (quadratic) on the Raft thread, and only then
  decrypts it, i.e. checks the password. Three connections announcing 0x7fffffff bytes and
  sending 32 MiB each stalled a member's Raft thread for over a minute (``bench/raft_flood.py``).
  ``CappedTcpConnection`` checks each header as soon as it is read: an unauthenticated
  connection may announce only a handshake-sized frame (a few KiB; the handshake frames are
  ~200 bytes), an authenticated one at most ``max_frame_bytes``; a larger header closes the
  connection at once. It reads at most a small budget per poll event (one handshake frame while
  unauthenticated), into a ``bytearray``.
* "Authenticated" is what pysyncobj's handshake proves, and no less: each side sends a random
  key under Fernet, and every later frame carries the receiver's key. The first frame only
  proves it was made with the password once (it could be a recording); a frame that decrypts and
  carries our own fresh key proves the sender holds the password now. Without a password (never
  in canidae) there is nothing to prove and only ``max_frame_bytes`` applies.
* Unauthenticated connections: at most ``max_unauthenticated_per_address`` at a time per remote
  address (more are closed on accept), each closed on its first bad frame (pysyncobj already
  does, on a failed decrypt) and when it has not authenticated within ``HANDSHAKE_TIMEOUT_S``
  (a peer trickling a valid-looking header would otherwise hold its slot forever). Once
  ``REJECTIONS_PER_S`` connections were turned away within a second, the listening socket is
  not polled until that second ends: a flooder reconnects as fast as it is closed, and every
  connection turned away costs a pysyncobj tick.
* pysyncobj sends an entry of 64 KiB or more in chunks of its pickled form and labels the last
  one by comparing positions with the length of the entry's command instead of its pickled form
  (longer: pickle protocol 2 writes bytes as latin-1 text). It labels a chunk 'finish' too early;
  the follower fails to unpickle, its tick raises, and it recovers only when later chunks
  (also labelled 'finish') complete the data. ``HardenedTransport.send`` labels each chunk by its
  position in the pickled entry.

``CappedTcpConnection`` replaces pysyncobj's class in its ``transport`` and ``tcp_server``
modules, process-wide: without limits set (pysyncobj objects that are not ours) it differs from
the original only by its buffer type and read budget.
"""

from __future__ import annotations

import errno
import inspect
import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pysyncobj import pickle as _pickle
from pysyncobj import tcp_server as _tcp_server
from pysyncobj import transport as _transport
from pysyncobj.monotonic import monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

log = logging.getLogger("canidae.raftwire")

HANDSHAKE_TIMEOUT_S = 2.0  # ms on a LAN; generous for a loaded host, short for a slot holder
REJECTIONS_PER_S = 50  # connections turned away in a second before accepting pauses until its end
AUTHENTICATED_READ_BUDGET = 1024 * 1024  # per poll event: big frames arrive over several events
_HEADER = struct.Struct("i")  # pysyncobj's frame header: native int


def require(owner: Any, *names: str) -> None:
    """Fail loudly if a pysyncobj internal a patch uses is gone (a pysyncobj that no longer fits)."""
    missing = [n for n in names if not hasattr(owner, n)]
    if missing:
        name = getattr(owner, "__name__", type(owner).__name__)
        raise ImportError(f"pysyncobj's {name} lacks {', '.join(missing)}: "
                          "canidae's Raft patches do not fit this pysyncobj version")


def require_source(func: Any, *fragments: str) -> None:
    """Fail loudly if pysyncobj no longer does what a patch relies on, where it relies on it."""
    src = inspect.getsource(func)
    missing = [f for f in fragments if f not in src]
    if missing:
        raise ImportError(f"pysyncobj's {func.__qualname__} changed ({missing[0]!r} not found): "
                          "canidae's Raft patches do not fit this pysyncobj version")


require(TcpConnection, "_TcpConnection__processRead", "_TcpConnection__tryReadBuffer",
        "_TcpConnection__processParseMessage", "connect", "disconnect", "state")
require_source(TcpConnection._TcpConnection__processConnection, "self.__tryReadBuffer()",
               "message = self.__processParseMessage()")
require_source(TcpConnection.send, "struct.pack('i', len(data))")
require_source(TcpConnection._TcpConnection__processConnectionTimeout, "monotonicTime() - self.__lastReadTime")
require(TCPTransport, "_onNewIncomingConnection", "addNode", "send", "_onTick")
require_source(TCPTransport._onNewIncomingConnection, "self._unknownConnections.add(conn)")
require_source(_tcp_server.TcpServer._TcpServer__onNewConnection, "conn = TcpConnection(")
require_source(_tcp_server.TcpServer.bind, "self.__fileno = self.__socket.fileno()", "self.__onNewConnection,")
require_source(TCPTransport.addNode, "conn = TcpConnection(")
require_source(TCPTransport.__init__, "self._syncObj.addOnTickCallback(self._onTick)")


@dataclass(frozen=True)
class FrameLimits:
    handshake_frame: int = 4096
    frame: int = 64 * 1024 * 1024
    unauthenticated_per_address: int = 4
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S


@dataclass
class WireStats:
    """What the Raft port turned away (read by status; written on the Raft thread only)."""

    oversized_headers: int = 0
    bad_frames: int = 0
    refused_on_accept: int = 0
    handshake_timeouts: int = 0
    accept_pauses: int = 0  # seconds in which accepting stopped early (``REJECTIONS_PER_S``)

    def rejected(self) -> int:
        return self.oversized_headers + self.bad_frames + self.refused_on_accept + self.handshake_timeouts

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class CappedTcpConnection(TcpConnection):  # type: ignore[misc]
    """pysyncobj's connection with frame caps checked before anything is buffered."""

    recvLastTimestamp: int  # pysyncobj's (Fernet timestamps seen on this connection)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.limits: FrameLimits | None = None
        self.stats: WireStats | None = None
        self.authenticated = False
        self.opened_at = monotonic()
        super().__init__(*args, **kwargs)
        require(self, "_TcpConnection__readBuffer", "_TcpConnection__socket", "_TcpConnection__recvBufferSize",
                "_TcpConnection__lastReadTime", "encryptor", "recvRandKey", "recvLastTimestamp")
        self._TcpConnection__readBuffer = bytearray()

    def connect(self, host: str, port: int) -> bool:
        self.authenticated = False  # a reconnection proves itself again
        self.opened_at = monotonic()
        ok = bool(super().connect(host, port))
        self._TcpConnection__readBuffer = bytearray()
        return ok

    def disconnect(self) -> None:
        self.authenticated = False
        super().disconnect()
        self._TcpConnection__readBuffer = bytearray()

    # ------------------------------------------------------------ limits

    def _frame_cap(self) -> int:
        if self.limits is None:
            return 0x7FFFFFFF
        if self.authenticated or not self.encryptor:
            return self.limits.frame
        return self.limits.handshake_frame

    def _header_ok(self, buf: bytearray) -> bool:
        """The frame at the front of the buffer may be as long as it says (checked once 4 bytes are in)."""
        if len(buf) < 4:
            return True
        (n,) = _HEADER.unpack_from(buf)
        if 0 <= n <= self._frame_cap():
            return True
        if self.stats is not None:
            self.stats.oversized_headers += 1
        log.debug("closing a Raft connection that announced a %d-byte frame (authenticated: %s)",
                  n, self.authenticated)
        self.disconnect()
        return False

    # ------------------------------------------------------------ pysyncobj's read path, replaced

    def _TcpConnection__tryReadBuffer(self) -> None:  # pysyncobj's
        if self.limits is None or self.authenticated or not self.encryptor:
            budget = AUTHENTICATED_READ_BUDGET
        else:  # one handshake frame: its parse then decides (a bad frame closes the connection)
            budget = self.limits.handshake_frame + _HEADER.size
        while budget > 0:
            n = self._read_some(budget)
            if n <= 0:
                break
            budget -= n
        self._TcpConnection__lastReadTime = monotonic()

    def _read_some(self, budget: int) -> int:
        """One recv of at most ``budget`` bytes; the bytes read, or 0 to stop reading for now."""
        sock = self._TcpConnection__socket
        try:
            incoming = sock.recv(min(budget, self._TcpConnection__recvBufferSize))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return 0
        if not incoming:
            self.disconnect()
            return 0
        buf = self._TcpConnection__readBuffer
        buf += incoming
        if not self._header_ok(buf):
            return 0
        return len(incoming)

    def _TcpConnection__processRead(self) -> bool:  # pysyncobj's; unused once its caller is ours
        return self._read_some(self._TcpConnection__recvBufferSize) > 0

    def _TcpConnection__processParseMessage(self) -> Any:  # pysyncobj's, on a bytearray, with auth
        buf = self._TcpConnection__readBuffer
        if len(buf) < 4 or not self._header_ok(buf):
            return None
        (n,) = _HEADER.unpack_from(buf)
        if len(buf) - 4 < n:
            return None
        data = bytes(buf[4:4 + n])
        fresh_key = False
        try:
            if self.encryptor:
                stamp = self.encryptor.extract_timestamp(data)
                if stamp < self.recvLastTimestamp:
                    raise ValueError("Fernet timestamp went back")
                self.recvLastTimestamp = stamp
                data = self.encryptor.decrypt(data)
            message = _pickle.loads(zlib.decompress(data))
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise ValueError("wrong connection key")
                fresh_key = True
        except Exception:  # what pysyncobj does too: a frame that does not verify ends the connection
            if self.stats is not None:
                self.stats.bad_frames += 1
            self.disconnect()
            return None
        del buf[:4 + n]
        if fresh_key:
            self.authenticated = True
        return message


# pysyncobj builds its connections by these module-level names (checked above).
_tcp_server.TcpConnection = CappedTcpConnection
_transport.TcpConnection = CappedTcpConnection


class HardenedTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport with the limits above and chunk labels fixed.

    The limits come from the SyncObj it serves (``_frame_limits``), set before pysyncobj builds
    the transport.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # pysyncobj's signature
        self.limits: FrameLimits = getattr(syncObj, "_frame_limits", None) or FrameLimits()
        self.stats = WireStats()
        self._unauthenticated: dict[str, list[CappedTcpConnection]] = {}
        self._window = (monotonic(), 0)  # (start, rejections so far) of the current second
        self._paused_until = 0.0
        self._chunks: dict[Any, list[int]] = {}  # node -> [pickled entry length, bytes sent]
        super().__init__(syncObj, selfNode, otherNodes)

    def _limit(self, conn: Any) -> None:
        if isinstance(conn, CappedTcpConnection):
            conn.limits = self.limits
            conn.stats = self.stats

    def addNode(self, node: Any) -> None:  # pysyncobj's
        super().addNode(node)
        self._limit(self._connections.get(node))

    def _onNewIncomingConnection(self, conn: Any) -> None:  # pysyncobj's
        try:
            address = conn._TcpConnection__socket.getpeername()[0]
        except OSError:
            conn.disconnect()
            return
        waiting = [c for c in self._unauthenticated.get(address, [])
                   if c.state != CONNECTION_STATE.DISCONNECTED and not c.authenticated]
        if len(waiting) >= self.limits.unauthenticated_per_address:
            self.stats.refused_on_accept += 1
            conn.disconnect()
            return
        self._limit(conn)
        waiting.append(conn)
        self._unauthenticated[address] = waiting
        super()._onNewIncomingConnection(conn)

    def _onTick(self) -> None:  # pysyncobj's tick callback: binds, connects; we also expire handshakes
        super()._onTick()
        now = monotonic()
        self._throttle_accepts(now)
        if not self._unauthenticated:
            return
        for address, conns in list(self._unauthenticated.items()):
            waiting = []
            for c in conns:
                if c.state == CONNECTION_STATE.DISCONNECTED or c.authenticated:
                    continue
                if now - c.opened_at > self.limits.handshake_timeout_s:
                    self.stats.handshake_timeouts += 1
                    c.disconnect()
                    continue
                waiting.append(c)
            if waiting:
                self._unauthenticated[address] = waiting
            else:
                del self._unauthenticated[address]

    def _throttle_accepts(self, now: float) -> None:
        """Stop accepting until the end of the second once ``REJECTIONS_PER_S`` were turned away.

        Each connection turned away costs a pysyncobj tick or two (every poll event runs one),
        and a flooder reconnects as fast as it is closed: left alone, the flooder sets our cost
        per second (measured: p50 write latency 2-5x normal; paused: under 2.5x). Pausing the
        listening socket bounds it; peers already connected are not affected, one reconnecting
        meanwhile waits for the second to end (and perhaps a SYN retransmission).
        """
        server = self._server
        fileno = getattr(server, "_TcpServer__fileno", None)
        start, base = self._window
        if self._paused_until:
            if now >= self._paused_until:
                self._paused_until = 0.0
                if fileno is not None:
                    self._syncObj._poller.subscribe(fileno, server._TcpServer__onNewConnection,
                                                    POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)
                self._window = (now, self.stats.rejected())
            return
        if self.stats.rejected() - base >= REJECTIONS_PER_S and fileno is not None:
            self._syncObj._poller.unsubscribe(fileno)
            self._paused_until = start + 1.0
            self.stats.accept_pauses += 1
        elif now - start >= 1.0:
            self._window = (now, self.stats.rejected())

    def send(self, node: Any, message: Any) -> bool:  # pysyncobj's
        if isinstance(message, dict) and "transmission" in message:
            message = self._label_chunk(node, message)
        return bool(super().send(node, message))

    def _label_chunk(self, node: Any, message: dict[str, Any]) -> dict[str, Any]:
        """Label a chunk of a large entry 'finish' exactly when it is the last (see the module doc).

        pysyncobj sends all chunks of one entry to a node back to back, starting with 'start'.
        The length of the pickled entry they slice is computed the way pysyncobj pickles it.
        """
        data = message.get("data") or b""
        if message["transmission"] == "start":
            entries = self._syncObj._SyncObj__getEntries(message["prevLogIdx"] + 1, 1)
            total = len(_pickle.dumps(entries[0])) if entries else -1
            self._chunks[node] = [total, len(data)]
            return message
        progress = self._chunks.get(node)
        if progress is None or progress[0] < 0:
            return message
        progress[1] += len(data)
        label = "finish" if progress[1] >= progress[0] else "process"
        if label == "finish":
            del self._chunks[node]
        return message if message["transmission"] == label else {**message, "transmission": label}

