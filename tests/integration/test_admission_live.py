"""Admission control on a real cluster (1 server + 1 client agent on loopback): pressure injected
through ``CANIDAE_PRESSURE_FILE`` sheds bulk and reads with 429 + Retry-After while heartbeats,
reports and writes go on (no NodeDown); the CLI waits a 429 out and, when it lasts, exits 7; a
flood of reads does not stop writes."""

import asyncio
import json
import os
import subprocess
import sys

import httpx
import pytest
from harness import local_cluster, wait_until
from prometheus_client.parser import text_string_to_metric_families

from canidae.core.errors import EXIT_OVERLOADED


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("admission")
    pressure = root / "pressure"
    pressure.write_text("0")
    # Plain HTTP: these tests are about admission, not the transport (TLS is the default of every other
    # test cluster and is tested in tests/security/test_tls.py); their raw requests speak http://.
    c = local_cluster(str(root / "cluster"), servers=1, clients=1, env={"CANIDAE_PRESSURE_FILE": str(pressure)},
                      insecure_http=True)
    c.pressure_file = pressure
    try:
        yield c
    finally:
        c.close()


def set_pressure(cluster, level):
    """Every agent of the cluster reads the same file; wait until each one sees the level."""
    cluster.pressure_file.write_text(str(level))
    for a in cluster.agents:
        wait_until(lambda a=a: health(cluster, a["id"])["admission"]["pressure"] == level, 10,
                   f"{a['id']} at pressure {level}")


def health(cluster, ident):
    r = httpx.get(f"http://{cluster.agent(ident)['api']}/v1/health",
                  headers={"authorization": f"Bearer {cluster.token}"}, timeout=5.0)
    assert r.status_code == 200
    return r.json()


def get(cluster, ident, path, **params):
    return httpx.get(f"http://{cluster.agent(ident)['api']}{path}", params=params,
                     headers={"authorization": f"Bearer {cluster.token}"}, timeout=10.0)


def metrics(cluster, ident):
    """Every sample of the agent's metrics, by (sample name, labels)."""
    r = get(cluster, ident, "/v1/metrics")
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.text) for s in f.samples}


def sample(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def node_down_events(c):
    return c.request("GET", "/v1/events", params={"type": "NodeDown", "limit": 100})["events"]


def test_pressure_sheds_bulk_and_reads_while_heartbeats_reports_and_writes_flow(cluster):
    before = metrics(cluster, "c1")
    beats = sample(before, "canidae_heartbeats_total")
    with cluster.client() as c:
        downs = len(node_down_events(c))
        set_pressure(cluster, 0.9)
        try:
            for ident in ("s1", "c1"):  # the server, and the client agent that passes requests on
                r = get(cluster, ident, "/v1/metrics")
                assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
                err = r.json()["error"]
                assert err["code"] == "overloaded" and err["details"]["class"] == "bulk"
                assert err["details"]["reason"] == "pressure" and err["message"]
                r = get(cluster, ident, "/v1/packs")
                assert r.status_code == 429 and r.json()["error"]["details"]["class"] == "read"
            # Writes still go through, and the packs they create are placed, started on their
            # nodes and reported running: assignments and reports are never refused.
            c.create_packs([{"name": "under-load"}], count=10)
            # Heartbeats keep flowing for several TTLs (1.5 s): the agents' counts go on rising.
            wait_until(lambda: health(cluster, "c1")["admission"]["rejected"]["read"] >= 1, 5, "refusals counted")
            start = _heartbeats_seen(cluster)
            wait_until(lambda: _heartbeats_seen(cluster) >= start + 8, 20, "heartbeats under pressure")
        finally:
            set_pressure(cluster, 0)
        # Back to normal: nothing was declared down, and the packs made under pressure run.
        c.wait_running([f"under-load-{i}" for i in range(10)], 30)
        assert len(node_down_events(c)) == downs
    after = metrics(cluster, "c1")
    assert sample(after, "canidae_heartbeats_total") > beats
    assert sample(after, "canidae_admission_rejected_total", **{"class": "bulk", "reason": "pressure"}) >= 1
    assert sample(after, "canidae_admission_rejected_total", **{"class": "system", "reason": "pressure"}) == 0
    s1 = metrics(cluster, "s1")
    assert sample(s1, "canidae_admission_admitted_total", **{"class": "system"}) > 0
    assert sample(s1, "canidae_admission_admitted_total", **{"class": "write"}) >= 1


def _heartbeats_seen(cluster):
    """Heartbeats the leader acknowledged, summed over the agents (from /v1/health: answered at
    any pressure; the node runtime's count is in the metrics, refused under pressure)."""
    return sum(health(cluster, a["id"]).get("heartbeats", 0) for a in cluster.agents)


def cli(cluster, *args, **kw):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CANIDAE_")}, "COLUMNS": "200",
           "CANIDAE_INSECURE_HTTP": "1"}  # this module's cluster speaks plain HTTP (see the fixture)
    addr = cluster.agent("s1")["api"]
    return subprocess.Popen([sys.executable, "-m", "canidae", "--addr", addr, "--token", cluster.token, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_the_cli_waits_out_a_429_and_exits_7_when_it_lasts(cluster):
    set_pressure(cluster, 0.9)
    try:
        refused = health(cluster, "s1")["admission"]["rejected"]["read"]
        p = cli(cluster, "pack", "list", "--json")
        # Refused once: the CLI waits (Retry-After 1 s, jittered); lift the pressure meanwhile.
        wait_until(lambda: health(cluster, "s1")["admission"]["rejected"]["read"] > refused, 30, "a refusal")
        set_pressure(cluster, 0)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert isinstance(json.loads(out)["packs"], list)

        set_pressure(cluster, 0.9)
        refused = health(cluster, "s1")["admission"]["rejected"]["read"]
        p = cli(cluster, "pack", "list")
        out, err = p.communicate(timeout=60)
        assert p.returncode == EXIT_OVERLOADED == 7
        assert out == "" and len(err.strip().splitlines()) == 1 and "overloaded" in err
        assert "refused 4 times" in err
        # 1 try + 3 retries (at least: the agents' own reads under the same pressure count too)
        assert health(cluster, "s1")["admission"]["rejected"]["read"] >= refused + 4
    finally:
        set_pressure(cluster, 0)


def test_a_flood_of_reads_does_not_stop_writes(cluster):
    with cluster.client() as c:
        c.create_packs([{"name": "flood"}], count=2000)
    api = cluster.agent("s1")["api"]
    headers = {"authorization": f"Bearer {cluster.token}"}

    async def flood(stop):
        codes = []
        async with httpx.AsyncClient(headers=headers, timeout=30.0,
                                     limits=httpx.Limits(max_connections=600)) as http:
            async def reader():
                while not stop.is_set():
                    try:
                        r = await http.get(f"http://{api}/v1/packs", params={"limit": 10000})
                        codes.append(r.status_code)
                    except httpx.HTTPError:
                        codes.append(0)
            tasks = [asyncio.create_task(reader()) for _ in range(400)]
            await stop.wait()
            await asyncio.gather(*tasks)
        return codes

    async def main():
        stop = asyncio.Event()
        flooding = asyncio.create_task(flood(stop))

        def writes():
            with cluster.client(timeout=30.0) as c:
                for i in range(20):
                    c.create_packs([{"name": f"w-{i}"}], retry_for=30.0)
        try:
            await asyncio.sleep(0)  # the readers connect first
            await asyncio.to_thread(writes)
        finally:
            stop.set()
        return await flooding
    codes = asyncio.run(main())
    # Reads were answered or refused (never a 5xx, never a dropped connection) ...
    assert 200 in codes and set(codes) <= {200, 429}, sorted(set(codes))
    # ... and every write was taken while they flooded in.
    with cluster.client() as c:
        assert all(c.pack(f"w-{i}")["name"] == f"w-{i}" for i in range(20))
