"""Benchmark of the wire schema (canidae.agent.client.schema) on the API's hot paths, pure CPU:

- decode: the body of ``POST /v1/packs`` with N specs, decoded and checked into ``CreatePacks``
  (``schema.decode``), against ``json.loads`` alone (what parsing cost before any check);
- to core: those specs turned into core's ``PackSpec`` (``SpecIn.to_core``);
- encode: an answer of N pack views, ``msgspec.json.encode`` (what the edge answers with) against
  Starlette's ``JSONResponse`` (what it answered with before).

Figures in milliseconds, best of several runs (the machine may be shared). Nothing here is a test.

    python bench/wire.py [--packs N] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.responses import JSONResponse

from canidae.agent.client import schema


def best_ms(f: Callable[[], Any], repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return round(min(out) * 1000, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    n = a.packs
    raw = json.dumps({"specs": [{"name": f"p-{i}", "cpu": 100, "mem": 64, "env": {"A": "1"}, "driver": "exec",
                                 "command": ["sleep", "1"], "constraints": {"zone": "z1"}} for i in range(n)]}).encode()
    decoded = schema.decode(raw, schema.CreatePacks)
    views = {"packs": [{"name": f"p-{i}", "driver": "virtual", "members": 1, "cpu": 100, "mem": 64,
                        "restart": "on-failure", "state": "running", "node": "c1", "generation": 1, "reason": "",
                        "created_at": 1796693964813, "updated_at": 1796693964875, "crashlooping": False}
                       for i in range(n)], "next": None, "total": n}
    out = {
        "packs": n, "body_bytes": len(raw),
        "json_loads_ms": best_ms(lambda: json.loads(raw), a.repeat),
        "schema_decode_ms": best_ms(lambda: schema.decode(raw, schema.CreatePacks), a.repeat),
        "to_core_ms": best_ms(lambda: [s.to_core() for s in decoded.specs or []], a.repeat),
        "jsonresponse_encode_ms": best_ms(lambda: JSONResponse(views), a.repeat),
        "msgspec_encode_ms": best_ms(lambda: msgspec.json.encode(views), a.repeat),
    }
    if a.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
