"""The live scale test: start (or open) the cluster, run the phases in order, measure around them and
build the document. A throwaway cluster is always closed, whatever happens.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster
from canidae.agent.ops.scaletest.phases import (
    NO_YIP_API,
    none_waiting,
    probe_yips,
    run_chaos,
    run_load,
    spawn_packs,
    waited_s,
)
from canidae.agent.ops.scaletest.plan import LivePlan, Progress, no_progress
from canidae.agent.ops.scaletest.report import (
    DOC_KIND,
    DOC_VERSION,
    fmt_bytes,
    measured_row,
    rounded,
    table_doc,
)
from canidae.agent.ops.scaletest.sim import packs_per_node
from canidae.agent.ops.scaletest.usage import busy_note, machine, measure_usage, others_cpu
from canidae.agent.ops.scaletest.wrk import WRK
from canidae.core import scaleplan
from canidae.core.scaleplan import windows
from canidae.core.types import NodeState, Resources


def start_cluster(plan: LivePlan) -> LocalCluster:
    """A throwaway cluster of the plan's shape, in a temporary dir of its own."""
    layout = ClusterLayout(servers=plan.servers, clients=plan.clients, base_port=plan.base_port or None,
                           zones=plan.zones, capacity=Resources(1_000_000, 1_048_576, plan.node_packs))
    # Every agent imports and starts on the same cores: allow time in proportion.
    return LocalCluster.start(layout, timeout=max(plan.timeout_s, 30.0 + 1.0 * (plan.servers + plan.clients)))


def run_live(plan: LivePlan, progress: Progress = no_progress) -> dict[str, Any]:
    """Run a live scale test and return its document (see the module docstring)."""
    plan.check()
    t_start = time.monotonic()
    progress("live: starting the cluster", 0, 1)
    cluster = LocalCluster.open(plan.data_dir) if plan.data_dir else start_cluster(plan)
    try:
        return _live(plan, cluster, t_start, progress)
    finally:
        progress("live: stopping", 1, 1)
        cluster.close()


def _live(plan: LivePlan, cluster: LocalCluster, t_start: float, progress: Progress) -> dict[str, Any]:
    rng = random.Random(plan.seed)
    host0 = machine(cluster.pids())
    notes: list[str] = []
    problems: list[str] = []
    phases: dict[str, Any] = {"start_s": round(time.monotonic() - t_start, 3)}
    timeline: list[dict[str, Any]] = []

    def mark(event: str) -> None:
        timeline.append({"t_s": round(time.monotonic() - t_start, 3), "event": event})

    mark(f"cluster ready: {len(cluster.servers())} servers, {len(cluster.clients())} client agents")
    with cluster.client(timeout=30.0) as c:
        leader = cluster.leader_api()
        if leader in c.addrs:  # writes go to the leader first: no forwarding hop
            c.addrs.insert(0, c.addrs.pop(c.addrs.index(leader)))
        nodes = c.nodes()
        if plan.data_dir:
            ready = [n for n in nodes if n["state"] == NodeState.READY.value]
            free = sum(n["capacity"]["packs"] - n.get("packs", 0) for n in ready)
            if plan.packs > free:
                raise scaleplan.NoCapacity(
                    f"{plan.packs:,} packs do not fit: the cluster has room for {free:,}"
                )

        # 2. idle
        progress("live: idle CPU and memory", 0, 1)
        idle = measure_usage(cluster.pids(), 2.0)
        mark(f"idle: agents use {idle.cpu_total:.1f}% CPU, {fmt_bytes(idle.rss_total)} RSS")

        # 3. spawn
        prefix = f"st{uuid.uuid4().hex[:6]}b"
        rate = plan.spawn_rate
        mark(
            f"spawn: {plan.packs:,} packs in {-(-plan.packs // plan.batch):,} requests of up to {plan.batch}"
            + (
                f", paced at {rate:,.0f} packs/s"
                if rate
                else ", one after another, as fast as the cluster answers"
            )
        )
        spawn = spawn_packs(plan, cluster, c, prefix, t_start, progress, problems)
        spawn_samples = spawn.pop("samples")
        phases["spawn"] = spawn
        mark(
            f"spawn acknowledged: p50 {spawn['latency_ms']['p50']} ms, p99 {spawn['latency_ms']['p99']} ms "
            f"over {spawn['requests']} requests, {spawn['packs_per_s']:,.0f} packs/s"
        )

        # 4. settle, then steady
        progress("live: waiting for every pack to run", 0, 1)
        settle_s = waited_s(lambda: none_waiting(c), plan.timeout_s, "every pack running", 0.05)
        phases["settle"] = {"all_running_s_after_last_ack": round(settle_s, 3)}
        mark(f"all {plan.packs:,} packs running, {settle_s:.2f} s after the last acknowledgement")
        progress("live: steady CPU and memory", 0, 1)
        steady = measure_usage(cluster.pids(), plan.steady_s)
        # A cluster of 'cluster up' may hold packs of its own: the per-pack figures count them all.
        held = sum(1 for p in c.iter_packs(state="running", stale=True)) if plan.data_dir else plan.packs
        mark(f"steady: agents use {steady.cpu_total:.1f}% CPU, {fmt_bytes(steady.rss_total)} RSS")

        # 5. load: yips between random packs (when the agents take yips), then reads
        load_samples: list[dict[str, Any]] = []
        where0 = {p["name"]: p["node"] for p in c.iter_packs(stale=True) if p["state"] == "running"}
        addresses = {n["id"]: n["address"] for n in nodes}
        yips: dict[str, Any] | None = None
        yips1: dict[str, Any] | None = None
        reads: dict[str, Any] = {"requests": 0}
        load_s = plan.load_s
        no_yips = probe_yips(c, sorted(where0)[0]) if where0 else "no pack is running"
        if not os.access(WRK, os.X_OK):
            notes.append(f"no yip or read load: {WRK} is not installed")
        elif no_yips is None:
            # Under load (the throughput), then one at a time (the latency without queueing).
            yips = run_load(
                "yips",
                plan,
                cluster,
                prefix,
                t_start,
                progress,
                load_samples,
                rng,
                load_s / 2,
                plan.load_connections,
                (where0, addresses),
            )
            mark(
                f"yips: {yips['ok_per_s']:,.0f}/s acknowledged with {plan.load_connections} connections, "
                f"p50 {yips['p50_ms']:.2f} ms, p99 {yips['p99_ms']:.2f} ms, {yips['errors']} errors"
                + (f" (HTTP {yips['error_statuses']}: {yips['last_error']})" if yips["errors"] else "")
            )
            yips1 = run_load(
                "yips",
                plan,
                cluster,
                prefix,
                t_start,
                progress,
                load_samples,
                rng,
                load_s / 4,
                1,
                (where0, addresses),
            )
            mark(
                f"yips one at a time: {yips1['ok_per_s']:,.0f}/s, p50 {yips1['p50_ms']:.2f} ms, "
                f"p99 {yips1['p99_ms']:.2f} ms"
            )
            load_s /= 4
        elif no_yips == NO_YIP_API:
            notes.append(
                "yip figures are not available yet: the agents have no yip API, so no yip was sent; "
                "the load phase measures stale reads of random packs instead"
            )
        else:
            problems.append(f"yips: {no_yips}")
            notes.append(f"no yip figures: {no_yips}; the load phase measures stale reads of random packs")
        for name, run in (("yips", yips), ("yips one at a time", yips1)):
            if run is not None and run["errors"] > run["requests"] / 100:
                problems.append(f"{name}: {run['errors']:,} of {run['requests']:,} failed")
        if os.access(WRK, os.X_OK):
            reads = run_load(
                "reads",
                plan,
                cluster,
                prefix,
                t_start,
                progress,
                load_samples,
                rng,
                load_s,
                plan.load_connections,
            )
            mark(
                f"reads: {reads['ok_per_s']:,.0f}/s, p50 {reads['p50_ms']:.2f} ms, "
                f"p99 {reads['p99_ms']:.2f} ms"
            )

        # 6. chaos
        chaos: dict[str, Any] | None = None
        if plan.chaos:
            chaos = run_chaos(plan, cluster, c, rng, progress, mark, problems)

        # the end: where the packs are
        progress("live: counting packs per node", 0, 1)
        where = {
            p["name"]: p["node"]
            for p in c.iter_packs(stale=False)
            if p["state"] == "running" and p["name"].startswith(prefix)
        }
        node_ids = [n["id"] for n in c.nodes() if n["state"] != NodeState.DOWN.value]
        final = measure_usage(cluster.pids(), 0.0)

    host1 = machine(cluster.pids())
    others = {"idle": idle.others_percent, "steady": steady.others_percent, "run": others_cpu(host0, host1)}
    worst = max(others, key=lambda k: others[k])
    notes += busy_note(
        others[worst], host0["cpus"], "during the run" if worst == "run" else f"while measuring {worst}"
    )
    packs_running = len(where)
    if chaos is not None:
        back = sum(1 for node in where.values() if node in set(chaos["victims"]))
        notes.append(
            f"the {len(chaos['victims'])} restarted agents hold {back} of this run's packs at the end: "
            "packs that moved away stay away until a rebalance"
        )
    if packs_running < plan.packs:
        problems.append(f"only {packs_running:,} of {plan.packs:,} packs were running at the end")
    n_nodes = len(cluster.agents) if not plan.data_dir else len(nodes)
    total_rss = steady.rss_total
    cpu_total = steady.cpu_total
    spawn = phases["spawn"]["latency_ms"]
    read_text = (
        f"stale reads of random packs: {reads['ok_per_s']:,.0f}/s, p99 {reads['p99_ms']:.2f} ms"
        if reads.get("requests")
        else ""
    )
    if yips is not None and yips1 is not None:
        yips_value, p99_value = yips["ok_per_s"], yips["p99_ms"]
        yips_note = (
            f"yips acknowledged per second: POST /v1/yips/B with the token of pack A to the agent of A, "
            f"which routes it to the agent of B; B random, A random per window of wrk; wrk with "
            f"{plan.load_connections} connections, on the same cores as the agents "
            f"({yips['requests']:,} yips in {yips['seconds']:.0f} s, {yips['errors']} errors)"
        )
        p99_note = (
            f"p99 of a yip acknowledged (it is in the receiver's mailbox), client side, at that rate "
            f"(p50 {yips['p50_ms']:.2f} ms). One yip at a time: p50 {yips1['p50_ms']:.2f} ms, p99 "
            f"{yips1['p99_ms']:.2f} ms. Spawn requests of {plan.batch} packs: p99 {spawn['p99']} ms"
        )
    else:
        yips_value = None
        yips_note = (
            "not available yet: the agents have no yip API"
            if no_yips == NO_YIP_API
            else f"not measured: {no_yips or 'wrk is not installed'}"
        )
        yips_note += f" ({read_text})" if read_text else ""
        p99_value = spawn["p99"]
        p99_note = (
            f"p99 of a bulk spawn request ({plan.batch} packs) acknowledged, client side, over "
            f"{phases['spawn']['requests']:,} requests; not a yip latency (no yip measured)"
        )
    measured = measured_row(
        plan.packs,
        n_nodes,
        memory=total_rss / held,
        memory_note=f"RSS of all {len(steady.rss_bytes)} agent processes with every pack running "
        f"({fmt_bytes(total_rss)}), per running pack ({held:,}); growth since before this run's packs "
        f"{fmt_bytes(max(0, total_rss - idle.rss_total) / plan.packs)} per pack. Virtual packs: "
        "the agents' own memory, no workload's",
        cpu=cpu_total / held,
        cpu_note=f"CPU of all agents with every pack running and no load ({cpu_total:.1f}% of one core "
        f"over {steady.seconds:.1f} s), per running pack; before this run's packs: {idle.cpu_total:.1f}%",
        yips=yips_value,
        yips_note=yips_note,
        p99=p99_value,
        p99_note=p99_note,
    )
    if plan.data_dir is None and plan.packs >= 10_000 and plan.clients < 50:
        notes.append(f"ran with {plan.clients} client agents, not the 50 of the target layout")
    series_lat = [dict(w, phase="spawn") for w in windows(spawn_samples)] + load_samples
    return {
        "kind": DOC_KIND,
        "version": DOC_VERSION,
        "mode": "live",
        "params": plan.to_dict(),
        "ok": not problems,
        "problems": problems,
        "summary": {
            "packs": plan.packs,
            "running": packs_running,
            "servers": len(cluster.servers()),
            "clients": len(cluster.clients()),
            "spawn_p50_ms": spawn["p50"],
            "spawn_p99_ms": spawn["p99"],
            "yips_per_s": rounded(yips["ok_per_s"], 1) if yips else None,
            "yip_p50_ms": yips["p50_ms"] if yips else None,
            "yip_p99_ms": yips["p99_ms"] if yips else None,
            "yip_one_at_a_time_p99_ms": yips1["p99_ms"] if yips1 else None,
            "yips": "measured" if yips else f"not measured: {no_yips or 'wrk is not installed'}",
            "reads_per_s": rounded(reads.get("ok_per_s"), 1),
            "read_p99_ms": reads.get("p99_ms"),
            "killed": len(chaos["victims"]) if chaos else 0,
            "packs_moved": chaos["affected_packs"] if chaos else 0,
            "recovery_s": chaos["all_running_elsewhere_s"] if chaos else None,
            "duplicated": chaos["duplicated"] if chaos else None,
            "wall_s": round(time.monotonic() - t_start, 3),
        },
        "table": table_doc(measured),
        "series": {
            "latency": {
                "what": "client-side latency (ms): spawn requests, then "
                + ("yips and reads" if yips else "reads"),
                "x": "time (s)",
                "windows": series_lat,
            },
            "packs_per_node": packs_per_node(where, node_ids),
        },
        "live": {
            "phases": {**phases, "yips": yips, "yips_one_at_a_time": yips1, "reads": reads, "chaos": chaos},
            "idle": idle.to_dict(),
            "steady": steady.to_dict(),
            "final_rss_bytes": final.rss_total,
            "timeline": timeline,
            "spawn_samples_ms": [[round(t, 3), round(ms, 3)] for t, ms in spawn_samples],
            "machine": {"cpus": host0["cpus"], "loadavg": host1["loadavg"], "others_cpu_percent": others},
            "cluster": {
                "data_dir": cluster.data_dir,
                "throwaway": cluster.temporary,
                "agents": [{k: a[k] for k in ("id", "role", "api", "pid", "config")} for a in cluster.agents],
            },
        },
        "notes": notes,
    }
