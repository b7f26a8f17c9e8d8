"""The phases of a live scale test against a running cluster: spawning the packs (paced or not), the
yip or read load, and the chaos phase (SIGKILL client agents, time until their packs run elsewhere,
restart them, check nothing runs twice).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable
from typing import Any

from canidae.agent.client import Client
from canidae.agent.ops.localcluster import LocalCluster
from canidae.agent.ops.scaletest.plan import LivePlan, Progress
from canidae.agent.ops.scaletest.report import hist_pcts, pcts, rounded
from canidae.agent.ops.scaletest.wrk import WRK_READ, WRK_YIP, run_wrk
from canidae.agent.ops.waiting import seconds_until
from canidae.core.errors import CanidaeError, InvalidInput, NotFound, Timeout
from canidae.core.types import NodeState

NO_YIP_API = "the agents have no yip API"


def probe_yips(c: Client, pack: str) -> str | None:
    """None when the agents take a probe yip to ``pack``; else why not (``NO_YIP_API``, or the error)."""
    try:
        c.request("POST", f"/v1/yips/{pack}", json={"text": "scale-test probe"})
    except NotFound as e:
        return NO_YIP_API if e.message.startswith("no route") else f"a probe yip failed: {e.message}"
    except CanidaeError as e:
        return f"a probe yip failed: {e.message}"
    return None


SPAWN_WORKERS = 16  # requests in flight at most while a paced ramp spawns


def spawn_packs(
    plan: LivePlan,
    cluster: LocalCluster,
    c: Client,
    prefix: str,
    t_start: float,
    progress: Progress,
    problems: list[str],
) -> dict[str, Any]:
    """Spawn the run's packs in bulk requests (``count=`` series of ``plan.batch``) and time each one.

    Unpaced, the requests go one after another (a throughput test). Paced (a ramp), they are sent
    open loop: each at its due time whether or not the previous ones are answered (up to
    ``SPAWN_WORKERS`` in flight), so a slow answer does not slow the offered rate down and hide
    the queueing it causes. A request that started more than 5 ms after its due time is counted
    as late.
    """
    import concurrent.futures
    import threading

    batches = -(-plan.packs // plan.batch)
    sizes = [min(plan.batch, plan.packs - k * plan.batch) for k in range(batches)]
    rate = plan.spawn_rate
    samples: list[tuple[float, float]] = []
    commit_ms: list[float] = []
    late: list[float] = []
    lock = threading.Lock()
    local = threading.local()
    leader_first = list(c.addrs)
    clients: list[Client] = []
    done = [0]
    t_spawn = time.monotonic()

    def one(k: int) -> None:
        due = t_spawn + k * plan.batch / rate if rate else 0.0
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the ramp's pace: this request is due then
        elif rate and delay < -0.005:  # more than 5 ms behind its due time: every worker was busy
            with lock:
                late.append(-delay * 1000)
        if rate:
            cl = getattr(local, "client", None)
            if cl is None:
                cl = local.client = cluster.client(timeout=30.0)
                cl.addrs[:] = leader_first
                with lock:
                    clients.append(cl)
        else:
            cl = c
        t0 = time.perf_counter()
        res = cl.create_packs([{"name": f"{prefix}{k}"}], count=sizes[k], retry_for=30.0)
        ms = (time.perf_counter() - t0) * 1000
        with lock:
            samples.append((time.monotonic() - t_start, ms))
            if isinstance(res.get("commit_ms"), (int, float)):
                commit_ms.append(float(res["commit_ms"]))
            if res.get("unplaced"):
                problems.append(f"request {k}: {len(res['unplaced'])} packs unplaced")
            done[0] += sizes[k]
        progress("live: spawning", done[0], plan.packs)

    try:
        if rate:
            with concurrent.futures.ThreadPoolExecutor(SPAWN_WORKERS) as pool:
                for f in [pool.submit(one, k) for k in range(batches)]:
                    f.result()
        else:
            for k in range(batches):
                one(k)
    finally:
        for cl in clients:
            cl.close()
    spawn_s = time.monotonic() - t_spawn
    samples.sort()
    return {
        "packs": plan.packs,
        "requests": batches,
        "batch": plan.batch,
        "seconds": round(spawn_s, 3),
        "packs_per_s": round(plan.packs / spawn_s, 1) if spawn_s else None,
        "paced_packs_per_s": round(rate, 1) if rate else None,
        "open_loop": bool(rate),
        "late_requests": len(late),
        "late_ms": pcts(late),
        "latency_ms": pcts([ms for _, ms in samples]),
        "server_commit_ms": pcts(commit_ms),
        "samples": samples,
    }


def none_waiting(c: Client) -> bool:
    return not any(c.packs(state=s, limit=1)["packs"] for s in ("placed", "pending"))


def run_load(
    kind: str,
    plan: LivePlan,
    cluster: LocalCluster,
    prefix: str,
    t_start: float,
    progress: Progress,
    windows_out: list[dict[str, Any]],
    rng: random.Random,
    seconds: float,
    connections: int,
    senders: tuple[dict[str, str], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Yips or stale reads to random packs with wrk for ``seconds``, in windows; percentiles of them all.

    Reads rotate over the servers with the admin token. Yips are sent as a pack would: with the
    token of a random sender pack, to the agent that runs it (a new sender every window).
    """
    fd, script = tempfile.mkstemp(prefix="canidae-wrk-", suffix=".lua")
    runs: list[dict[str, Any]] = []
    merged: dict[int, int] = {}
    label = f"{kind} x{connections}"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(
                (WRK_YIP if kind == "yips" else WRK_READ).format(
                    prefix=prefix, total=plan.packs, batch=plan.batch, seed=plan.seed
                )
            )
        apis = [a["api"] for a in cluster.servers() if cluster.alive(a)]
        running = sorted(senders[0]) if senders else []
        # One-second windows; longer ones on long runs (--full), so that a run keeps ~300 windows.
        window = max(1, round(seconds / 300))
        chunks = max(1, round(seconds / window))
        for i in range(chunks):
            progress(f"live: {label}", i, chunks)
            if senders:
                sender = rng.choice(running)
                api, token = senders[1][senders[0][sender]], cluster.pack_token(sender)
            else:
                api, token = apis[i % len(apis)], cluster.token
            r = run_wrk(f"{cluster.scheme}://{api}", script, window, connections, token)
            for v, n in r.pop("hist").items():
                merged[v] = merged.get(v, 0) + n
            r["t"] = round(time.monotonic() - t_start, 3)
            r["via"] = api
            if senders:
                r["sender"], r["sender_node"] = sender, senders[0][sender]
            runs.append(r)
            windows_out.append(
                {
                    "t": r["t"],
                    "n": r["requests"],
                    "p50": r["p50_ms"],
                    "p90": r["p90_ms"],
                    "p99": r["p99_ms"],
                    "max": r["max_ms"],
                    "phase": label,
                }
            )
        progress(f"live: {label}", chunks, chunks)
    finally:
        os.unlink(script)
    total = sum(r["requests"] for r in runs)
    errors = sum(r["socket_errors"] + r["status_errors"] for r in runs)
    statuses: dict[str, int] = {}
    for r in runs:
        for code, n in r["error_statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    last_error = next((r["last_error"] for r in reversed(runs) if r["last_error"]), None)
    secs = sum(r["seconds"] for r in runs)
    what = (
        "yips: POST /v1/yips/B (B random) with the token of a sender pack A, to A's agent"
        if kind == "yips"
        else "stale reads: GET /v1/packs/NAME?stale=1 of random packs, servers in turn"
    )
    return {
        "what": what,
        "connections": connections,
        "windows": len(runs),
        "requests": total,
        "errors": errors,
        "error_statuses": statuses,
        "last_error": last_error,
        "seconds": round(secs, 3),
        "per_s": round(total / secs, 1) if secs else None,
        "ok_per_s": round((total - errors) / secs, 1) if secs else 0.0,
        **hist_pcts(merged),
        "runs": runs,
    }


def run_chaos(
    plan: LivePlan,
    cluster: LocalCluster,
    c: Client,
    rng: random.Random,
    progress: Progress,
    mark: Callable[[str], None],
    problems: list[str],
) -> dict[str, Any]:
    """SIGKILL client agents at once; time until all their packs run elsewhere; bring them back."""
    import signal

    alive = sorted((a for a in cluster.clients() if cluster.alive(a)), key=lambda a: a["id"])
    if len(alive) < plan.kill:
        raise InvalidInput(f"--kill {plan.kill}: only {len(alive)} client agents are running")
    victims = sorted(rng.sample(alive, plan.kill), key=lambda a: a["id"])
    ids = {a["id"] for a in victims}
    before = {p["name"]: p["node"] for p in c.iter_packs() if p["state"] in ("placed", "running")}
    affected = sorted(n for n, node in before.items() if node in ids)
    progress("live: chaos", 0, 1)
    t0 = time.monotonic()
    for a in victims:
        os.kill(a["pid"], signal.SIGKILL)
    mark(f"chaos: SIGKILL {', '.join(sorted(ids))} ({len(affected):,} packs on them)")

    def declared_down() -> bool:
        return all(n["state"] == NodeState.DOWN.value for n in c.nodes() if n["id"] in ids)

    def elsewhere() -> bool:
        # Cheap polls first (nothing left on a victim, nothing waiting), then the full proof.
        if any(c.packs(node=v, limit=1)["packs"] for v in sorted(ids)) or not none_waiting(c):
            return False
        now = {p["name"]: p for p in c.iter_packs()}
        return all(n in now and now[n]["state"] == "running" and now[n]["node"] not in ids for n in affected)

    down_s = moved_s = None
    try:
        down_s = waited_s(declared_down, plan.timeout_s, "the victims declared down")
        waited_s(elsewhere, plan.timeout_s, "the victims' packs running elsewhere")
        moved_s = time.monotonic() - t0
        mark(
            f"chaos: {len(affected):,} packs running elsewhere {moved_s:.2f} s after the kill "
            f"(declared down after {down_s:.2f} s)"
        )
    except Timeout as e:
        problems.append(str(e))
        mark(f"chaos: {e}")
    after = {p["name"] for p in c.iter_packs()}
    lost = [n for n in before if n not in after]
    if lost:
        problems.append(f"{len(lost)} packs lost after the kill (e.g. {lost[0]})")
    # Bring the victims back, then check that every pack runs exactly once.
    progress("live: restarting the killed agents", 0, 1)
    for a in victims:
        cluster.restart(a)
    duplicated = None
    try:

        def settled() -> bool:
            nodes = {n["id"]: n for n in c.nodes()}
            if any(nodes[v]["state"] != NodeState.READY.value for v in ids if v in nodes):
                return False
            runs = sum(1 for p in c.iter_packs() if p["state"] == "running")
            return sum(n.get("running_here") or 0 for n in nodes.values()) == runs

        back_s = waited_s(
            settled, plan.timeout_s, "the killed agents back and every pack running once", 0.1
        )
        duplicated = 0
        mark(f"chaos: victims back, every pack runs exactly once ({back_s:.2f} s after the restart)")
    except Timeout as e:
        nodes = c.nodes()
        runs = sum(1 for p in c.iter_packs() if p["state"] == "running")
        duplicated = max(0, sum(n.get("running_here") or 0 for n in nodes) - runs)
        problems.append(f"{e} ({duplicated} more running than the state says)")
    progress("live: chaos", 1, 1)
    return {
        "victims": sorted(ids),
        "affected_packs": len(affected),
        "signal": "SIGKILL",
        "declared_down_s": rounded(down_s),
        "all_running_elsewhere_s": rounded(moved_s),
        "lost": len(lost),
        "duplicated": duplicated,
    }


def waited_s(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> float:
    """How many seconds until ``cond`` held (``Timeout`` past ``timeout``)."""
    return seconds_until(cond, timeout, f"scale test: {what}", interval)
