"""Benchmark how long CLI commands take, whole processes, against a real local cluster
(3 servers on loopback, 100 virtual packs).

    python bench/cli.py                 # 20 runs of each command
    python bench/cli.py --runs 50
    /other/venv/bin/python bench/cli.py     # the tree installed in another environment (before/after)

Each command runs as a fresh process (``python -m canidae`` is not used: the console script is
what people run), once to warm the page cache, then ``--runs`` times; the median and the range
of the wall time are printed, and the median CPU time of the process (user + system), which a
busy machine disturbs less than the wall time.

Nothing here is a test: it never fails on a slow figure, it reports it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster, find_base_port

COMMANDS = (
    ("--version",),
    ("--json", "pack", "list"),
    ("--json", "pack", "list", "--state", "running", "--limit", "10"),
    ("pack", "list"),
    ("--json", "pack", "show", "bench-0"),
)


def time_command(argv: list[str], runs: int, env: dict[str, str]) -> dict[str, float]:
    wall, cpu = [], []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=False)
        took = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.decode()[-500:]}")
        if i:  # the first run warms the caches
            wall.append(took * 1000)
            cpu.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000)
    return {"median_ms": statistics.median(wall), "min_ms": min(wall), "max_ms": max(wall),
            "cpu_ms": statistics.median(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    # The console script of this Python's environment: ``venv/bin/python bench/cli.py`` times that tree.
    exe = os.path.join(os.path.dirname(sys.executable), "canidae")
    if not os.path.exists(exe):
        exe = shutil.which("canidae") or exe
    root = tempfile.mkdtemp(prefix="canidae-bench-cli-")
    layout = ClusterLayout(servers=3, clients=0, base_port=find_base_port(3, 0))
    with LocalCluster.start(layout, root, timeout=60) as lc:
        env = {**os.environ, "CANIDAE_ADDR": ",".join(s["api"] for s in lc.servers()), "CANIDAE_TOKEN": lc.token}
        with lc.client() as c:
            c.create_packs([{"name": "bench"}], count=100)
            c.wait_running([f"bench-{i}" for i in range(100)], 60)
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.runs} runs each")
        for cmd in COMMANDS:
            r = time_command([exe, *cmd], args.runs, env)
            print(f"canidae {' '.join(cmd):<50} median {r['median_ms']:6.0f} ms  (min {r['min_ms']:.0f}, "
                  f"max {r['max_ms']:.0f})  cpu {r['cpu_ms']:.0f} ms")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
