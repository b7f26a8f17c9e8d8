"""What a node measures of its packs per heartbeat interval, read from /proc of real processes."""

import os
import subprocess
import sys
import time

from canidae.agent.node.usage import PackProcs, PackUsage, from_specs, proc_usage, reserved


def test_a_busy_process_reads_as_cpu_and_memory_and_over_its_reservation_is_an_outlier():
    burn = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        usage = PackUsage()
        pack = PackProcs("busy", (burn.pid,), cpu_reserved_m=10, mem_reserved_mib=1024)
        first, interval = usage.readings([pack], time.monotonic())
        assert interval == 0.0 and first[0].cpu_m == 0.0  # no interval yet: no rate
        start = proc_usage(burn.pid)[0]  # at least what the first reading saw
        deadline = time.monotonic() + 10
        while proc_usage(burn.pid)[0] < start + 0.05 and time.monotonic() < deadline:  # ticks to accumulate
            time.sleep(0.01)
        (r,), interval = usage.readings([pack], time.monotonic())
        assert interval > 0 and r.cpu_m > 10 and r.mem_mib > 1
        assert r.outlier and not r.error  # over its 10 m of CPU, under its memory
    finally:
        burn.kill()
        burn.wait()
    assert proc_usage(burn.pid) is None  # gone: no reading, no error


def test_restarts_in_the_interval_and_dead_members_are_errors_and_yips_count_per_interval():
    usage = PackUsage()
    me = os.getpid()
    usage.readings([PackProcs("a", (me,), restarts=1), PackProcs("b")], 1.0)
    usage.queued("a", 3)
    usage.delivered("a", 2)
    usage.queued("b", 1)
    a, b = usage.readings([PackProcs("a", (me,), restarts=3), PackProcs("b", alive=False)], 2.0)[0]
    assert (a.restarts, a.error, a.yips) == (2, True, 5)
    assert (b.restarts, b.error, b.yips) == (0, True, 1)
    assert (usage.restarts, usage.yips_queued, usage.yips_delivered) == (2, 4, 2)
    a, _ = usage.readings([PackProcs("a", (me,), restarts=3), PackProcs("b")], 3.0)[0]
    assert (a.restarts, a.error, a.yips) == (0, False, 0)


def test_held_packs_come_with_their_reservations_and_stopped_ones_are_left_out():
    desired = {"x": {"state": "running", "spec": {"cpu": 100, "mem": 64}},
               "y": {"state": "placed", "spec": {"cpu": 50, "mem": 32}},
               "z": {"state": "stopped", "spec": {"cpu": 999, "mem": 999}}}
    packs = from_specs(desired, {"x": PackProcs("x", (1,), restarts=4)})
    assert [(p.name, p.pids, p.restarts) for p in packs] == [("x", (1,), 4), ("y", (), 0)]
    assert reserved(packs) == (150, 96)


def test_leaving_out_unsampled_zero_readings_changes_neither_the_sample_nor_the_sums():
    from canidae.core.sampling import is_sampled, sample_packs

    rate = 0.01
    # A sleeping process: its CPU and memory do not move between the two readings compared.
    idle = subprocess.Popen(["sleep", "60"])
    me = idle.pid
    full, lean = PackUsage(), PackUsage()

    def packs(restarts: int) -> list[PackProcs]:
        virtual = [PackProcs(f"v{i}", cpu_reserved_m=5) for i in range(2000)]
        return virtual + [PackProcs("exec", (me,), restarts=restarts), PackProcs("dead", alive=False),
                          PackProcs("gone", restarts=restarts)]

    for now, restarts in ((1.0, 0), (2.0, 2)):
        for u in (full, lean):
            u.queued("v7", 2)
        a, _ = full.readings(packs(restarts), now)
        b, _ = lean.readings(packs(restarts), now, keep=lambda name: is_sampled(name, rate))
        assert len(b) < len(a) / 10
        assert sample_packs(a, rate) == sample_packs(b, rate)
        for field in ("cpu_m", "mem_mib", "yips", "restarts"):
            assert sum(getattr(r, field) for r in a) == sum(getattr(r, field) for r in b)
        assert {r.name for r in b} >= {"exec", "dead", "v7"} | ({"gone"} if restarts else set())
    assert full.restarts == lean.restarts == 4
    idle.kill()
    idle.wait()
