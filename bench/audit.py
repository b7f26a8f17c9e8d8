"""Benchmark the audit log's durable append (``canidae.agent.node.auditlog.AuditLog``) on this disk:
records per second and latency at 1, 8 and 64 concurrent appenders, and how many records each
fsync covered (group commit). Nothing here is a test: it reports, it never fails on a slow figure.

    python bench/audit.py                 # in a temp dir on the default temp filesystem
    python bench/audit.py --dir /var/lib/x --records 2000 --json

The cost on a whole request (spawn latency through the API) is measured by ``bench/cluster.py
--only sequential`` with and without the audit trail (see the README's Audit section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

from canidae.agent.node.auditlog import AuditLog


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run(data_dir: str, writers: int, records: int) -> dict[str, Any]:
    alog = AuditLog(data_dir, "bench", 64 * 1024 * 1024)
    alog.open()
    await alog.prepare()
    fsyncs0 = alog.fsync_count
    latencies: list[float] = []
    per_writer = max(1, records // writers)

    async def writer(w: int) -> None:
        for i in range(per_writer):
            t = time.perf_counter()
            await alog.append({"at_ms": 0, "accessor": "ca_" + "0" * 32, "agent": "bench", "remote": "127.0.0.1:1",
                               "action": "pack.spawn", "target": f"w{w}-{i}", "outcome": "ok",
                               "request_id": f"r{w}-{i}", "detail": {"body": {"spec": {"name": f"w{w}-{i}"}}}})
            latencies.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - t0
    fsyncs = alog.fsync_count - fsyncs0
    alog.close()
    n = per_writer * writers
    return {"writers": writers, "records": n, "records_per_s": round(n / elapsed), "fsyncs": fsyncs,
            "records_per_fsync": round(n / max(fsyncs, 1), 1), "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(pct(latencies, 99), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for writers in (1, 8, 64):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            rows.append(asyncio.run(run(d, writers, args.records)))
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'writers':>8} {'records':>8} {'rec/s':>8} {'fsyncs':>7} {'rec/fsync':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['writers']:>8} {r['records']:>8} {r['records_per_s']:>8} {r['fsyncs']:>7} "
              f"{r['records_per_fsync']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8}")


if __name__ == "__main__":
    main()
