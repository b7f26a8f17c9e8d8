"""The CPU floor of one request, for comparing bench/spawn_profile.py's figures with.

    python bench/http_floor.py                 # 2,000 requests to each
    python bench/http_floor.py --requests 5000 --no-etcd

Measures server CPU seconds (utime+stime from /proc) per request, each driven the same way as
bench/spawn_profile.py (sequential, one keep-alive connection, plain http.client):

- ``uvicorn+starlette``: the agent's HTTP stack alone (uvicorn with uvloop and httptools, as the
  daemon serves it, a Starlette app) answering ``POST /echo`` with a small JSON body parsed and
  returned: no authentication, admission, Raft, disk or state;
- ``etcd``: the leader of a 3-member etcd (Debian's ``etcd-server``) answering ``PUT`` through
  its HTTP/JSON gateway, with Raft and fsync; the sum over the 3 members too.

Nothing here is a test: it reports.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from spawn_profile import cpu_s

from canidae.agent.ops.localcluster import find_base_port
from canidae.agent.ops.waiting import wait_until

APP = textwrap.dedent("""
    import sys
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "got": await request.json()})

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                lifespan="off", loop="uvloop", http="httptools")
""")


def drive(host: str, port: int, path: str, bodies: list[bytes], headers: dict[str, str]) -> float:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    t0 = time.perf_counter()
    for body in bodies:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status} from {path}")
    conn.close()
    return time.perf_counter() - t0


def uvicorn_floor(n: int) -> dict[str, float]:
    port = find_base_port(1, 0)
    proc = subprocess.Popen([sys.executable, "-c", APP, str(port)])
    try:
        def up() -> bool:
            try:
                drive("127.0.0.1", port, "/echo", [b"{}"], {"content-type": "application/json"})
                return True
            except OSError:
                return False
        wait_until(up, 30, "uvicorn answers", 0.1)
        bodies = [json.dumps({"spec": {"name": f"p{i}"}, "request_id": f"{i:032x}"}).encode() for i in range(n)]
        drive("127.0.0.1", port, "/echo", bodies[:200], {"content-type": "application/json"})  # warm up
        before = cpu_s(proc.pid)
        wall = drive("127.0.0.1", port, "/echo", bodies, {"content-type": "application/json"})
        used = cpu_s(proc.pid) - before
        return {"cpu_ms_per_request": round(used * 1000 / n, 3), "wall_ms_per_request": round(wall * 1000 / n, 3)}
    finally:
        proc.terminate()
        proc.wait(10)


def etcd_floor(n: int) -> dict[str, float] | None:
    from etcd_cluster import EtcdCluster, etcd_binary
    if etcd_binary() is None:
        return None
    with EtcdCluster.start(3) as c:
        leader = c.wait_leader()
        m = c.members[leader]
        host, port = m.client.rsplit(":", 1)
        bodies = [json.dumps({"key": base64.b64encode(f"k{i}".encode()).decode(),
                              "value": base64.b64encode(b"value-of-a-bench-write").decode()}).encode()
                  for i in range(n)]
        drive(host, int(port), "/v3/kv/put", bodies[:200], {"content-type": "application/json"})
        pids = [x.proc.pid for x in c.members if x.proc is not None]
        before = {p: cpu_s(p) for p in pids}
        wall = drive(host, int(port), "/v3/kv/put", bodies, {"content-type": "application/json"})
        used = {p: cpu_s(p) - before[p] for p in pids}
        lp = m.proc.pid if m.proc is not None else pids[0]
        return {"leader_cpu_ms_per_request": round(used[lp] * 1000 / n, 3),
                "all_members_cpu_ms_per_request": round(sum(used.values()) * 1000 / n, 3),
                "wall_ms_per_request": round(wall * 1000 / n, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--no-etcd", action="store_true")
    args = ap.parse_args()
    res = {"load_avg": os.getloadavg(), "uvicorn+starlette": uvicorn_floor(args.requests)}
    if not args.no_etcd:
        res["etcd"] = etcd_floor(args.requests)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
