"""Blocking reads of packs (``GET /v1/packs[/{name}]?index=N&wait=S``) against real agents: a
parked read wakes when the pack (or the list) changes, not at its timeout; one that sees no
change answers at its timeout with the same index; bad ``index``/``wait`` are 400s; a pack deleted
while waited on answers 404. Reads go to a follower and to a client agent (which forwards them).

A waiter is known to be parked from the servers' ``canidae_blocking_reads_waiting`` gauge, never
from a sleep. Timing decides nothing but "woke on the change" (well before a 30 s wait) against
"ran to its timeout"."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from harness import LocalCluster, local_cluster, wait_until

from canidae.agent.client import Client
from canidae.core.errors import NotFound

WAIT_S = 30  # what a parked read asks for; a wake on a change comes well before it
WOKE_WITHIN_S = 15  # generous on a loaded machine, and still far from WAIT_S


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Plain HTTP: these tests are about blocking reads, not the transport (TLS is the default of every other
    # test cluster and is tested in tests/security/test_tls.py); their raw requests speak http://.
    with local_cluster(str(tmp_path_factory.mktemp("blocking")), servers=3, clients=1, insecure_http=True) as lc:
        yield lc


def client_of(cluster: LocalCluster, ident: str) -> Client:
    return Client(cluster.target([ident]))


def follower(cluster: LocalCluster) -> str:
    leader = wait_until(lambda: cluster.leader(), 15, "a leader")
    return next(s["id"] for s in cluster.servers() if s["id"] != leader)


def parked(cluster: LocalCluster) -> int:
    """Blocking pack reads parked on the servers, from their metrics."""
    total = 0
    for s in cluster.servers():
        text = httpx.get(f"http://{s['api']}/v1/metrics", timeout=5.0,
                         headers={"authorization": f"Bearer {cluster.token}"}).text
        m = re.search(r"^canidae_blocking_reads_waiting (\S+)$", text, re.MULTILINE)
        assert m, "no canidae_blocking_reads_waiting gauge"
        total += int(float(m.group(1)))
    return total


class Waiter:
    """A blocking read in a thread: its answer (or error) and how long it took."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.answer: Any = None
        self.error: BaseException | None = None
        self.took = 0.0
        self._thread = threading.Thread(target=self._run, args=(read,), daemon=True)
        self._thread.start()

    def _run(self, read: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        try:
            self.answer = read()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e
        self.took = time.monotonic() - t0

    def result(self) -> Any:
        self._thread.join(WAIT_S + 15)
        assert not self._thread.is_alive(), "the blocking read never answered"
        if self.error is not None:
            raise self.error
        return self.answer


def park(cluster: LocalCluster, read: Callable[[], Any]) -> Waiter:
    before = parked(cluster)
    w = Waiter(read)
    wait_until(lambda: parked(cluster) > before, 15, "the read parked on a server")
    return w


def spawn_running(c: Client, name: str) -> dict[str, Any]:
    c.create_packs([{"name": name}])
    return c.wait_running([name], 30)[name]


@pytest.mark.parametrize("via", ["follower", "client agent"])
def test_a_parked_read_wakes_when_its_pack_changes(cluster: LocalCluster, via: str) -> None:
    name = f"wake-{via.replace(' ', '-')}"
    ident = follower(cluster) if via == "follower" else cluster.clients()[0]["id"]
    with cluster.client() as admin, client_of(cluster, ident) as c:
        spawn_running(admin, name)
        first = c.pack_read(name)
        assert first["pack"]["state"] == "running" and first["index"] > 0
        w = park(cluster, lambda: c.pack_read(name, index=first["index"], wait=WAIT_S))
        admin.pack_action(name, "stop")
        got = w.result()
    assert got["index"] > first["index"]
    assert got["pack"]["state"] in ("stopping", "stopped")
    assert w.took < WOKE_WITHIN_S, f"woke after {w.took:.1f} s: at its timeout, not on the change"


def test_a_read_that_sees_no_change_answers_at_its_timeout_with_the_same_index(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        spawn_running(c, "still")
        first = c.pack_read("still")
        t0 = time.monotonic()
        got = c.pack_read("still", index=first["index"], wait=1)
        took = time.monotonic() - t0
        assert got["index"] == first["index"] and got["pack"] == first["pack"]
        assert took >= 0.9, f"answered after {took:.2f} s: it did not wait"
        # An index below the pack's answers at once (it changed since then).
        assert c.pack_read("still", index=first["index"] - 1, wait=WAIT_S)["index"] == first["index"]


def test_a_parked_list_read_wakes_on_a_new_pack_and_carries_the_index_header(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        page = c.packs(limit=1)
        w = park(cluster, lambda: c.packs(limit=1, index=page["index"], wait=WAIT_S))
        c.create_packs([{"name": "newcomer"}])
        got = w.result()
        assert got["index"] > page["index"]
        assert w.took < WOKE_WITHIN_S, f"woke after {w.took:.1f} s"
    for agent in (cluster.servers()[0], cluster.clients()[0]):  # a client agent passes the header on
        for path in ("/v1/packs", "/v1/packs/newcomer"):
            r = httpx.get(f"http://{agent['api']}{path}", params={"limit": 1},
                          headers={"authorization": f"Bearer {cluster.token}"}, timeout=10.0)
            assert r.status_code == 200 and int(r.headers["x-canidae-index"]) == r.json()["index"] > 0, \
                (agent["id"], path, dict(r.headers))


def test_a_pack_deleted_while_waited_on_answers_not_found(cluster: LocalCluster) -> None:
    with cluster.client() as admin, client_of(cluster, follower(cluster)) as c:
        spawn_running(admin, "doomed")
        first = c.pack_read("doomed")
        w = park(cluster, lambda: c.pack_read("doomed", index=first["index"], wait=WAIT_S))
        admin.delete_packs(["doomed"], force=True)
        with pytest.raises(NotFound):
            w.result()
        assert w.took < WOKE_WITHIN_S


@pytest.mark.parametrize("query", [
    {"wait": 5},  # wait without index waits for nothing
    {"index": "x"}, {"index": -1}, {"index": 2**62 + 1}, {"index": "²"},
    {"index": 1, "wait": 61}, {"index": 1, "wait": -1}, {"index": 1, "wait": "1.5"}, {"index": 1, "wait": ""},
])
@pytest.mark.parametrize("path", ["/v1/packs", "/v1/packs/anything"])
def test_bad_index_or_wait_is_a_400(cluster: LocalCluster, path: str, query: dict[str, Any]) -> None:
    for agent in (cluster.servers()[0], cluster.clients()[0]):
        r = httpx.get(f"http://{agent['api']}{path}", params=query, timeout=10.0,
                      headers={"authorization": f"Bearer {cluster.token}"})
        assert r.status_code == 400, (agent["id"], r.text)
        assert r.json()["error"]["code"] == "invalid_input"


def test_the_client_wait_follows_a_pack_through_its_changes(cluster: LocalCluster) -> None:
    """``Client.wait_packs`` (what the CLI's waits use) ends when the condition holds, and raises
    ``NotFound`` for a pack deleted while it waits."""
    with cluster.client() as c:
        spawn_running(c, "followed")
        c.pack_action("followed", "stop")
        ended = c.wait_packs(["followed"], lambda p: p["state"] == "stopped", 30)
        assert ended["followed"]["state"] == "stopped"
        with pytest.raises(NotFound):
            c.wait_packs(["never-was"], lambda p: True, 5)
