"""Admission control (canidae.agent.admission) on its own: classes, slots, bounded queues and
waits, shedding by pressure, and the 429 answer the edge gives. Real asyncio, no agent."""

import asyncio
import json

import pytest

from canidae.agent.admission import (
    Admission,
    ClassLimits,
    FilePressure,
    FixedPressure,
    LoopLag,
    Priority,
    long_poll,
    route_class,
)
from canidae.agent.client.calls import overload_wait
from canidae.agent.client.link import ServerLink
from canidae.agent.httpedge import error_response
from canidae.core.errors import EXIT_OVERLOADED, CanidaeError, Overloaded


def test_routes_are_classed_by_method_and_template():
    assert route_class("POST", "/v1/nodes/{node}/heartbeat") is Priority.SYSTEM
    assert route_class("POST", "/v1/nodes/{node}/reports") is Priority.SYSTEM
    assert route_class("GET", "/v1/nodes/{node}/assignments") is Priority.SYSTEM
    assert route_class("POST", "/v1/packs") is Priority.WRITE
    assert route_class("DELETE", "/v1/packs") is Priority.WRITE
    assert route_class("GET", "/v1/packs") is Priority.READ
    assert route_class("GET", "/v1/metrics") is Priority.BULK
    assert route_class("GET", "/v1/metrics/cluster") is Priority.BULK
    assert route_class("GET", None) is Priority.READ and route_class("PUT", None) is Priority.WRITE


def test_long_poll_is_a_positive_wait():
    assert long_poll([("after", "3"), ("wait", "10")])
    assert not long_poll([("wait", "0")]) and not long_poll([("after", "1")])


def run(coro):
    return asyncio.run(coro)


def test_pressure_sheds_the_lowest_classes_first_and_never_system_or_writes():
    async def go():
        adm = Admission(FixedPressure(0.0))
        got = {}
        for level in (0.0, 0.6, 0.85, 0.97, 1.0):
            adm.pressure.value = level
            row = {}
            for cls, (m, t) in {"system": ("POST", "/v1/nodes/{node}/heartbeat"), "write": ("POST", "/v1/packs"),
                                "read": ("GET", "/v1/packs"), "bulk": ("GET", "/v1/metrics")}.items():
                try:
                    async with adm.admit(m, t):
                        row[cls] = "ok"
                except Overloaded as e:
                    row[cls] = e.details["reason"]
                    assert e.details["class"] == cls and e.details["retry_after_s"] >= 1
            got[level] = row
        return got, adm.snapshot()
    got, snap = run(go())
    assert got[0.0] == {"system": "ok", "write": "ok", "read": "ok", "bulk": "ok"}
    assert got[0.6] == {"system": "ok", "write": "ok", "read": "ok", "bulk": "pressure"}
    assert got[0.85] == {"system": "ok", "write": "ok", "read": "pressure", "bulk": "pressure"}
    # Writes are bounded by their slots and queue, never shed by pressure (see DEFAULT_LIMITS).
    assert got[1.0] == {"system": "ok", "write": "ok", "read": "pressure", "bulk": "pressure"}
    assert snap["system"]["admitted"] == 5 and snap["bulk"]["rejected_pressure"] == 4
    assert snap["write"]["rejected_pressure"] == 0 and snap["write"]["admitted"] == 5


def test_a_full_class_queues_then_refuses_and_other_classes_keep_their_slots():
    async def go():
        adm = Admission(FixedPressure(0.0), {Priority.READ: ClassLimits(2, 3, 0.2, 0.8)})
        release = asyncio.Event()
        outcomes: list[str] = []

        async def read():
            try:
                async with adm.admit("GET", "/v1/packs"):
                    await release.wait()
                    outcomes.append("done")
            except Overloaded as e:
                outcomes.append(e.details["reason"])
        tasks = [asyncio.create_task(read()) for _ in range(7)]
        await asyncio.sleep(0.01)
        snap = adm.snapshot()["read"]
        assert (snap["in_flight"], snap["waiting"]) == (2, 3)
        assert outcomes == ["queue_full", "queue_full"]  # 2 in flight, 3 queued, 2 refused at once
        # Writes have slots of their own: a full read class does not hold them up.
        async with adm.admit("POST", "/v1/packs"):
            pass
        release.set()
        await asyncio.gather(*tasks)
        return outcomes, adm.snapshot()["read"]
    outcomes, snap = run(go())
    assert sorted(outcomes) == ["done"] * 5 + ["queue_full"] * 2
    assert snap["queued"] == 3 and snap["in_flight"] == 0 and snap["waiting"] == 0


def test_a_request_queued_too_long_is_refused_and_its_slot_is_not_lost():
    async def go():
        adm = Admission(FixedPressure(0.0), {Priority.WRITE: ClassLimits(1, 5, 0.05, 0.95)})
        hold = asyncio.Event()

        async def holder():
            async with adm.admit("POST", "/v1/packs"):
                await hold.wait()
        t = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as e:
            async with adm.admit("POST", "/v1/packs"):
                pass
        assert e.value.details["reason"] == "queue_wait"
        hold.set()
        await t
        async with adm.admit("POST", "/v1/packs"):  # the one slot is free again
            pass
        return adm.snapshot()["write"]
    snap = run(go())
    assert snap["rejected_queue_wait"] == 1 and snap["admitted"] == 2 and snap["in_flight"] == 0


def test_long_polls_hold_no_slot():
    async def go():
        adm = Admission(FixedPressure(0.0), {Priority.BULK: ClassLimits(1, 0, 0.1, 0.5)})
        hold = asyncio.Event()

        async def poller():
            async with adm.admit("GET", "/v1/events", long_poll=True):
                await hold.wait()
        polls = [asyncio.create_task(poller()) for _ in range(5)]
        await asyncio.sleep(0.01)
        async with adm.admit("GET", "/v1/events"):  # the one slot is still free
            # A "wait" on a route that does not long-poll takes a slot all the same: the one
            # slot is taken and there is no queue, so it is refused.
            with pytest.raises(Overloaded):
                async with adm.admit("GET", "/v1/metrics", long_poll=True):
                    pass
        hold.set()
        await asyncio.gather(*polls)
    run(go())


def test_pressure_sources(tmp_path):
    f = tmp_path / "pressure"
    p = FilePressure(str(f))
    assert p.level() == 0.0  # no file
    f.write_text("0.7\n")
    p._read_at = float("-inf")
    assert p.level() == 0.7
    f.write_text("nan")
    p._read_at = float("-inf")
    assert p.level() == 0.0
    f.write_text("9")
    p._read_at = float("-inf")
    assert p.level() == 1.0

    async def lagged():
        lag = LoopLag(low_s=0.01, high_s=0.05)
        lag.start()
        await asyncio.sleep(0.12)
        idle = lag.level()
        import time
        for _ in range(4):
            time.sleep(0.2)  # noqa: ASYNC251 -- the loop is blocked: the pending timer fires at least 0.15 s late
            for _ in range(3):
                await asyncio.sleep(0)
        busy = lag.level()
        lag.stop()
        return idle, busy
    idle, busy = run(lagged())
    assert busy > idle and busy > 0.5


def test_the_429_answer_and_the_clients_wait():
    err = Overloaded("busy", {"class": "read", "reason": "pressure", "retry_after_s": 2.5})
    r = error_response(err)
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    back = CanidaeError.from_wire(err.to_wire(), 429)
    assert isinstance(back, Overloaded) and back.retry_after_s == 2.5 and back.exit_code == EXIT_OVERLOADED == 7
    import random
    rng = random.Random(1)
    waits = [overload_wait(back, rng) for _ in range(200)]
    assert all(2.5 <= w <= 3.75 for w in waits) and max(waits) - min(waits) > 0.5  # jittered, never early
    assert overload_wait(Overloaded("x", {"retry_after_s": 10_000})) <= 30.0


def test_the_limit_shrinks_when_slots_are_held_too_long_and_grows_back_when_fast():
    now = [0.0]
    lim = ClassLimits(concurrency=100, queue=1000, max_wait_s=5.0, shed_at=0.95, target_s=1.0, floor=4)

    async def go():
        adm = Admission(FixedPressure(0.0), {Priority.WRITE: lim}, clock=lambda: now[0])
        c = adm.classes[Priority.WRITE]

        async def write(hold_s):
            async with adm.admit("POST", "/v1/packs"):
                now[0] += hold_s  # each request holds its slot this long (the clock is ours)

        assert c.limit == 100
        # Requests held 4 s each against a 1 s target: the limit halves per window, down to the floor.
        seen = []
        for _ in range(8):
            await write(4.0)
            seen.append(c.limit)
        assert seen[0] == 50 and seen == sorted(seen, reverse=True) and seen[-1] == 4
        # Fast again, and the slots busy: it grows back by a quarter per window, up to the ceiling.
        async def held(go):
            async with adm.admit("POST", "/v1/packs"):
                await go.wait()
        for _ in range(40):
            go = asyncio.Event()
            holders = [asyncio.create_task(held(go)) for _ in range(int(c.limit))]
            await asyncio.sleep(0)
            assert c.in_flight == int(c.limit)  # every slot in use ...
            now[0] += 0.6  # ... each for 0.6 s, under the 1 s target
            go.set()
            await asyncio.gather(*holders)
        assert c.limit == 100
        return adm.snapshot()["write"]
    snap = run(go())
    assert snap["in_flight"] == 0 and snap["rejected_queue_wait"] == 0


class RefusingPeer:
    """A real HTTP/1.1 server on loopback answering 429 (Retry-After in the body: 50 ms) to the
    first ``refuse`` requests, then 200."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.requests = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                               if k.strip().lower() == b"content-length"), 0)
                await reader.readexactly(length)
                self.requests += 1
                if self.requests <= self.refuse:
                    status = b"429 Too Many Requests"
                    out = Overloaded("busy", {"class": "read", "reason": "pressure", "retry_after_s": 0.05}).to_wire()
                else:
                    status, out = b"200 OK", {"ok": True}
                data = json.dumps(out).encode()
                writer.write(b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                             b"content-length: %d\r\n\r\n%s" % (status, len(data), data))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_the_server_link_waits_out_429s_then_gives_up():
    async def go(refuse):
        peer = RefusingPeer(refuse)
        api = await peer.start()
        link = ServerLink([api], "token", timeout_s=5.0)
        try:
            return await link.call("GET", "/v1/packs"), peer.requests
        except Overloaded as e:
            return e, peer.requests
        finally:
            await link.close()
            peer.server.close()
    answer, tries = run(go(2))
    assert answer == {"ok": True} and tries == 3
    err, tries = run(go(100))
    assert isinstance(err, Overloaded) and tries == 4  # one try and 3 retries
