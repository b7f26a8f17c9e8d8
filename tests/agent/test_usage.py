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
