"""Where a spawn's CPU goes: CPU seconds per spawn on the leader and on each follower, and the
idle CPU of a cluster, measured in CPU time so that a machine shared with other work still gives
comparable figures (wall-clock latencies on a loaded machine say little).

    python bench/spawn_profile.py                      # 30 s idle, then 1,000 sequential spawns
    python bench/spawn_profile.py --spawns 2000 --idle 60 --json
    python bench/spawn_profile.py --py-spy leader.txt  # also a py-spy top list of the leader
    python bench/spawn_profile.py --strace 20          # also wake-ups (syscalls) of an idle follower

It starts 3 servers on loopback (virtual driver, fsync on), waits until the cluster is quiet,
measures idle CPU over ``--idle`` seconds with nothing asked of the cluster, then reads each
server's utime+stime from /proc, sends N one-pack spawns one after another over one
keep-alive connection to the leader (plain http.client: the client's own CPU is not the
servers'), waits until every pack is reported running (the agent's report is part of a spawn's
cost), reads /proc again, and divides (also less the idle rate over the same span). Per thread
too (named through ``py-spy dump`` when py-spy is installed); with ``--py-spy``, the leader's
CPU per spawn by stage (each thread's CPU shared out by its py-spy samples, ``--gil``: only
samples holding the GIL). Nothing here is a test: it reports, it never fails on a figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster
from canidae.agent.ops.waiting import wait_until

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_s(pid) for name, pid in pids.items()}


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime of each thread of a process, in seconds, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(parts[11]) + int(parts[12])) / TICK
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by thread id, from ``py-spy dump`` (empty without py-spy)."""
    exe = shutil.which("py-spy")
    if exe is None:
        return {}
    out = subprocess.run([exe, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                         check=False).stdout
    names = {}
    for line in out.splitlines():
        # Thread 7308 (idle): "MainThread"
        if line.startswith("Thread "):
            head, _, name = line.partition(": ")
            tid = head.split()[1]
            if tid.isdigit():
                names[int(tid)] = name.strip('"')
    return names


def per_thread(before: dict[int, float], after: dict[int, float], names: dict[int, str], n: int
               ) -> dict[str, float]:
    """CPU ms per spawn of each thread (named by Python when known); native threads summed."""
    out: dict[str, float] = {}
    for tid, t in after.items():
        name = names.get(tid, "other (native) threads")
        out[name] = out.get(name, 0.0) + (t - before.get(tid, 0.0)) * 1000 / n
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def running_count(cluster: LocalCluster) -> int:
    with cluster.client() as c:
        return int(c.request("GET", "/v1/status").get("pack_states", {}).get("running", 0))


def spawns(api: str, token: str, n: int, prefix: str) -> float:
    """N sequential one-pack spawns over one keep-alive connection; returns wall seconds."""
    host, port = api.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    t0 = time.perf_counter()
    for i in range(n):
        body = json.dumps({"spec": {"name": f"{prefix}{i}"}, "request_id": uuid.uuid4().hex})
        conn.request("POST", "/v1/packs", body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"spawn {i}: HTTP {r.status}: {data[:200]!r}")
    wall = time.perf_counter() - t0
    conn.close()
    return wall


def py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy")
    if exe is None:
        print("py-spy not installed: no profile", file=sys.stderr)
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw",
                             "--threads", "--gil", "--nonblocking", "--output", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_list(raw: str, n: int = 30) -> list[tuple[str, int, int]]:
    """From py-spy's collapsed stacks: (frame, self samples, total samples), by self samples."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    with open(raw) as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + int(count)
            for f in set(frames):
                total[f] = total.get(f, 0) + int(count)
    return sorted(((f, own.get(f, 0), total[f]) for f in total), key=lambda x: -x[1])[:n]


# Stages of a spawn, by the innermost frame of a sample that names one (first rule that matches).
STAGES: list[tuple[str, str]] = [
    ("apply: ClusterState.apply", "core/state.py"), ("apply: placement", "core/scheduler"),
    ("apply: placement", "core/ring"), ("core: specs and commands (parse, encode, decode)", "core/"),
    ("event store", "eventstore"), ("Raft: fdatasync", "_sync ("), ("Raft: pickle", "pysyncobj/pickle"),
    ("Raft: transport (Fernet, sockets)", "tcp_connection"), ("Raft: transport (Fernet, sockets)", "raftwire"),
    ("Raft: transport (Fernet, sockets)", "cryptography/"), ("Raft: pysyncobj", "pysyncobj/"),
    ("Raft: replica", "replica.py"), ("group commit (proposer)", "proposer.py"), ("control plane", "control.py"),
    ("admission", "admission.py"), ("edge (auth, forwarding)", "httpedge.py"), ("edge (auth, forwarding)", "identity.py"),
    ("routes", "routes.py"), ("JSON", "json/"), ("the agent's HTTP client (httpx)", "httpx/"),
    ("the agent's HTTP client (httpx)", "httpcore/"), ("the agent's HTTP client (httpx)", "anyio/"),
    ("the node agent (reconciler, drivers)", "agent/node/"), ("metrics", "prometheus_client"),
    ("metrics", "telemetry.py"), ("HTTP server (Starlette)", "starlette/"), ("HTTP server (uvicorn)", "uvicorn/"),
    ("HTTP server (uvicorn)", "h11/"), ("asyncio", "asyncio/"), ("threading", "threading.py"),
]


def stages(raw: str, thread_ms: dict[str, float]) -> list[tuple[str, str, float]]:
    """(thread, stage, ms per spawn): each thread's CPU per spawn shared out by its py-spy samples."""
    counts: dict[tuple[str, str], int] = {}
    per_thread: dict[str, int] = {}
    with open(raw) as lines:
        for line in lines:
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            thread = frames[0].split(": ", 1)[-1]
            stage = "other"
            for f in reversed(frames[1:]):
                hit = next((name for name, key in STAGES if key in f), None)
                if hit is not None:
                    stage = hit
                    break
            counts[(thread, stage)] = counts.get((thread, stage), 0) + int(n)
            per_thread[thread] = per_thread.get(thread, 0) + int(n)
    out = [(t, st, thread_ms.get(t, 0.0) * n / per_thread[t]) for (t, st), n in counts.items()]
    return sorted(out, key=lambda x: -x[2])


def strace_wakeups(pid: int, seconds: float) -> str:
    exe = shutil.which("strace")
    if exe is None:
        return "strace not installed"
    p = subprocess.Popen([exe, "-f", "-c", "-p", str(pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    p.send_signal(2)
    _, err = p.communicate(timeout=30)
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spawns", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement (0: none)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to let the cluster settle first")
    ap.add_argument("--py-spy", metavar="FILE", help="record the leader with py-spy during the spawns")
    ap.add_argument("--strace", type=float, default=0.0, metavar="S", help="count an idle follower's syscalls for S s")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    res: dict[str, Any] = {"machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
                           "load_avg": os.getloadavg()}
    data_dir = tempfile.mkdtemp(prefix="canidae-spawnprof-")
    try:
        cluster = LocalCluster.start(ClusterLayout(servers=3, base_port=None), data_dir, timeout=60)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)  # start stopped what it had started
        raise
    try:
        leader = cluster.wait_leader(timeout=30)
        pids = cluster.pids()
        roles = {a["id"]: ("leader" if a["id"] == leader else "follower") for a in cluster.servers()}
        api = cluster.agent(leader)["api"]
        # warm up (imports, first connections) and settle
        spawns(api, cluster.token, 20, "warm-")
        time.sleep(args.settle)
        names = {n: thread_names(pid) for n, pid in pids.items()}
        idle_rate = {n: 0.0 for n in pids}  # CPU seconds per second, idle
        if args.idle:
            threads0 = {n: thread_cpu(pid) for n, pid in pids.items()}
            before, t0 = cpu_of(pids), time.monotonic()
            strace = None
            if args.strace:
                follower = next(n for n in pids if roles[n] == "follower")
                strace = strace_wakeups(pids[follower], args.strace)
            time.sleep(max(0.0, args.idle - (time.monotonic() - t0)))
            after, t1 = cpu_of(pids), time.monotonic()
            threads1 = {n: thread_cpu(pid) for n, pid in pids.items()}
            idle_rate = {n: (after[n] - before[n]) / (t1 - t0) for n in pids}
            res["idle"] = {"seconds": round(t1 - t0, 1),
                           "cpu_pct_of_a_core": {f"{n} ({roles[n]})": round(idle_rate[n] * 100, 2) for n in pids},
                           # per_thread divides by its last argument: per 10 ms of wall time is % of a core
                           "cpu_pct_by_thread": {f"{n} ({roles[n]})": per_thread(threads0[n], threads1[n], names[n],
                                                                                  int((t1 - t0) * 10)) for n in pids}}
            if strace:
                res["idle"]["strace_follower"] = strace
        if args.spawns:
            prefix = "p" + uuid.uuid4().hex[:6] + "-"
            prof = py_spy(pids[leader], max(10.0, args.spawns / 50), args.py_spy) if args.py_spy else None
            threads0 = {n: thread_cpu(pid) for n, pid in pids.items()}
            before, t0 = cpu_of(pids), time.monotonic()
            wall = spawns(api, cluster.token, args.spawns, prefix)
            wait_until(lambda: running_count(cluster) >= args.spawns + 20, 120, "every pack running", 0.5)
            after, t1 = cpu_of(pids), time.monotonic()
            threads1 = {n: thread_cpu(pid) for n, pid in pids.items()}
            span = t1 - t0
            res["spawn"] = {
                "spawns": args.spawns, "wall_s": round(wall, 2), "span_s": round(span, 2),
                "cpu_ms_per_spawn": {f"{n} ({roles[n]})": round((after[n] - before[n]) * 1000 / args.spawns, 3)
                                     for n in pids},
                # what the cluster burns idle over the same span is not the spawns' cost
                "cpu_ms_per_spawn_less_idle": {
                    f"{n} ({roles[n]})": round((after[n] - before[n] - idle_rate[n] * span) * 1000 / args.spawns, 3)
                    for n in pids},
                "cpu_ms_per_spawn_by_thread": {f"{n} ({roles[n]})": per_thread(threads0[n], threads1[n], names[n],
                                                                              args.spawns) for n in pids}}
            if prof is not None:
                prof.wait()
    finally:
        cluster.stop()
        cluster.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    res["load_avg_after"] = os.getloadavg()
    if args.py_spy and os.path.exists(args.py_spy):
        res["py_spy_top"] = [{"frame": f, "self": s, "total": t} for f, s, t in top_list(args.py_spy)]
        if "spawn" in res:
            lead = next(k for k in res["spawn"]["cpu_ms_per_spawn_by_thread"] if k.endswith("(leader)"))
            res["leader_stages_ms_per_spawn"] = [
                {"thread": t, "stage": st, "ms": round(ms, 3)}
                for t, st, ms in stages(args.py_spy, res["spawn"]["cpu_ms_per_spawn_by_thread"][lead])]
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{res['machine']}; load average before {res['load_avg'][0]:.1f}, after {res['load_avg_after'][0]:.1f}")
    if "idle" in res:
        print(f"idle, {res['idle']['seconds']} s:")
        for n, v in res["idle"]["cpu_pct_of_a_core"].items():
            print(f"  {n}: {v} % of a core")
            for thread, pct in res["idle"]["cpu_pct_by_thread"][n].items():
                print(f"      {thread}: {pct} %")
        if res["idle"].get("strace_follower"):
            print(res["idle"]["strace_follower"])
    if "spawn" in res:
        s = res["spawn"]
        print(f"{s['spawns']} sequential spawns in {s['wall_s']} s (all running after {s['span_s']} s)")
        for n, v in s["cpu_ms_per_spawn"].items():
            print(f"  CPU per spawn {n}: {v} ms ({s['cpu_ms_per_spawn_less_idle'][n]} ms less idle CPU)")
            for thread, ms in s["cpu_ms_per_spawn_by_thread"][n].items():
                print(f"      {thread}: {ms} ms")
    if "leader_stages_ms_per_spawn" in res:
        print("leader, CPU per spawn by stage (each thread's CPU shared out by its py-spy samples):")
        for row in res["leader_stages_ms_per_spawn"]:
            print(f"  {row['ms']:6.3f} ms  {row['thread']:28s} {row['stage']}")
    if "py_spy_top" in res:
        print("py-spy, leader, samples holding the GIL (own / total / frame):")
        for row in res["py_spy_top"]:
            print(f"  {row['self']:6d} {row['total']:6d}  {row['frame']}")


if __name__ == "__main__":
    main()
