"""A Raft group of real replicas in one process for the Raft tests: free loopback ports in this
xdist worker's own range, a data directory per member, waits with deadlines, a partition hook, and
destruction of every member at the end (the ``group`` fixtures use it as a context manager)."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Self

from canidae.agent.config import RaftSettings
from canidae.agent.ops.waiting import wait_until
from canidae.agent.server.replica import Replica, encode_entry
from canidae.core.commands import Command, encode_batch
from canidae.core.state import ClusterState

# Below Linux's ephemeral ports and below the ranges throwaway clusters (10,000+) and the
# integration harness (20,000+) use; 500 ports per xdist worker.
_PORTS_LO, _PORTS_PER_WORKER = 6_000, 500
_taken: set[int] = set()


def _worker_slot() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker[2:].isdigit() else 0


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_addrs(n: int) -> list[str]:
    """``n`` loopback addresses with ports free now and not handed out before in this process."""
    lo = _PORTS_LO + _worker_slot() * _PORTS_PER_WORKER
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    out: list[int] = []
    for _ in range(2000):
        p = rng.randrange(lo, lo + _PORTS_PER_WORKER)
        if p not in _taken and p not in out and _free(p):
            out.append(p)
            if len(out) == n:
                _taken.update(out)
                return [f"127.0.0.1:{p}" for p in out]
    raise RuntimeError("no free loopback ports in this worker's range")


def entry(cmds: Iterable[Command]) -> bytes:
    return encode_entry(encode_batch(list(cmds)))


class Group:
    """``n`` replicas on loopback; ``members[i]`` is None while member i is down."""

    def __init__(self, root: str, n: int = 3, settings: RaftSettings | None = None,
                 state_factory: Callable[[], ClusterState] = ClusterState, password: str = "secret",
                 pre_vote: bool = True) -> None:
        self.root = root
        self.pre_vote = pre_vote
        self.addrs = free_addrs(n)
        self.settings = settings or RaftSettings()
        self.state_factory = state_factory
        self.password = password
        self.members: list[Replica | None] = [None] * n
        self._cuts: set[tuple[str, str]] = set()
        self._deliver_past_cuts: dict[str, Any] = {}
        try:
            for i in range(n):
                self.start(i)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ lifecycle

    def start(self, i: int) -> Replica:
        addr = self.addrs[i]
        rep = Replica(addr, [a for a in self.addrs if a != addr], os.path.join(self.root, f"m{i}"),
                      self.password, self.settings, self.state_factory, pre_vote=self.pre_vote)
        self._install_cut_hook(rep)
        self.members[i] = rep
        return rep

    def stop(self, i: int) -> None:
        rep = self.members[i]
        self.members[i] = None
        if rep is not None:
            rep.destroy()
            rep._SyncObj__thread.join(timeout=10)

    def close(self) -> None:
        for i in range(len(self.members)):
            self.stop(i)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ views

    def live(self) -> list[Replica]:
        return [r for r in self.members if r is not None]

    def index(self, rep: Replica) -> int:
        return self.members.index(rep)

    def leader(self, timeout: float = 10.0) -> Replica:
        """The one live member that calls itself leader and whose term every live member follows."""
        def one() -> Replica | None:
            leaders = [r for r in self.live() if r.is_leader()]
            if len(leaders) != 1:
                return None
            lead = leaders[0]
            if all(r.current_term() == lead.current_term() and r.leader_address() == lead.selfNode.address
                   for r in self.live()):
                return lead
            return None
        return wait_until(one, timeout, "one leader followed by every live member")

    def followers(self) -> list[Replica]:
        return [r for r in self.live() if not r.is_leader()]

    def propose(self, via: Replica, cmds: Iterable[Command], timeout: float = 10.0) -> list[dict[str, Any]]:
        return via.apply_entry(entry(cmds), sync=True, timeout=timeout)

    # ------------------------------------------------------------ partitions

    def cut(self, a: int, b: int) -> None:
        """Drop every message between members a and b, both ways (TCP stays up, as on a lossy link)."""
        self._cuts |= {(self.addrs[a], self.addrs[b]), (self.addrs[b], self.addrs[a])}

    def isolate(self, i: int) -> None:
        for j in range(len(self.addrs)):
            if j != i:
                self.cut(i, j)

    def heal(self) -> None:
        self._cuts.clear()

    def _install_cut_hook(self, rep: Replica) -> None:
        """Wrap the member's transport outermost: what a cut link drops never reaches any patch."""
        me = rep.selfNode.address
        transport = rep._SyncObj__transport
        send, deliver = transport.send, transport._onMessageReceivedCallback

        def cut_send(node: Any, message: Any) -> bool:
            if (me, node.address) in self._cuts:
                return True  # lost on the wire
            return bool(send(node, message))

        def cut_deliver(node: Any, message: Any) -> None:
            if (node.address, me) in self._cuts:
                return
            deliver(node, message)

        transport.send = cut_send
        transport._onMessageReceivedCallback = cut_deliver
        self._deliver_past_cuts[me] = deliver

    def deliver(self, to: Replica, sender: Replica, message: dict[str, Any]) -> None:
        """Hand ``to`` a message as if ``sender`` had sent it (past any cut: isolate ``to`` first,
        so that its tick thread handles nothing else meanwhile)."""
        node = next(n for n in to.otherNodes if n.address == sender.selfNode.address)
        self._deliver_past_cuts[to.selfNode.address](node, message)
