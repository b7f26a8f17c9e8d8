"""Relayed yips between agents never fail because a kept-alive hop went stale, and a relay says
503 only when the pack's node is really down.

The agents serve with a one-second keep-alive timeout (``CANIDAE_KEEP_ALIVE_S``): senders on
three client agents yip to packs on the other client agents, so the sender's agent relays each
yip over a pooled hop connection; then every hop connection is left idle until the receiving
agents have closed them (no established connection left on their API ports), and a burst of
relayed yips follows. Every yip must be answered and be in its mailbox exactly once.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from typing import Any

import httpx

from harness import LocalCluster, local_cluster, wait_until

CLIENTS = ("c1", "c2", "c3")
PACKS_PER_NODE = 2
KEEP_ALIVE = {"CANIDAE_KEEP_ALIVE_S": "1"}


def established_on(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is ``port`` (the server's side)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                n += 1
    return n


def api_port(cluster: LocalCluster, ident: str) -> int:
    return int(cluster.agent(ident)["api"].rpartition(":")[2])


def remote_packs(node: str) -> list[str]:
    """The packs a sender on ``node`` yips to: those on the other client agents (relayed)."""
    return [f"rx-{n}-{k}" for n in CLIENTS if n != node for k in range(PACKS_PER_NODE)]


async def send_all(cluster: LocalCluster, prefix: str, per_sender: int) -> tuple[dict[str, str], list[str]]:
    """Every sender (one per client agent, through that agent) sends ``per_sender`` yips at once,
    spread over the remote packs. Returns ({yip id: pack}, failures)."""
    sent: dict[str, str] = {}
    failures: list[str] = []

    async def sender(node: str) -> None:
        api = cluster.agent(node)["api"]
        packs = remote_packs(node)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {cluster.token}"}, timeout=20,
                                     limits=limits, verify=cluster.verify) as http:
            async def one(i: int) -> None:
                pack, yid = packs[i % len(packs)], f"{prefix}-{node}-{i}"
                sent[yid] = pack
                try:
                    r = await http.post(f"{cluster.scheme}://{api}/v1/yips/{pack}", json={"text": yid, "id": yid})
                except httpx.HTTPError as e:
                    failures.append(f"{yid}: {type(e).__name__}")
                    return
                if r.status_code != 200:
                    failures.append(f"{yid}: HTTP {r.status_code} {r.text}")
            await asyncio.gather(*(one(i) for i in range(per_sender)))
    await asyncio.gather(*(sender(n) for n in CLIENTS))
    return sent, failures


def mailbox(cluster: LocalCluster, pack: str) -> list[str]:
    with httpx.Client(headers={"authorization": f"Bearer {cluster.token}"}, timeout=10, verify=cluster.verify) as http:
        r = http.get(cluster.url("s1", f"/v1/yips/{pack}"), params={"after": 0, "max": 1000})
        return [y["id"] for y in r.raise_for_status().json()["yips"]]


def test_relayed_yips_survive_hop_connections_closed_by_the_peers_keep_alive(tmp_path):
    cluster = local_cluster(str(tmp_path / "cluster"), servers=3, clients=len(CLIENTS), env=KEEP_ALIVE)
    try:
        with cluster.client() as c:
            c.create_packs([{"name": f"rx-{n}-{k}", "constraints": {"node": n}}
                            for n in CLIENTS for k in range(PACKS_PER_NODE)])
            c.wait_running([f"rx-{n}-{k}" for n in CLIENTS for k in range(PACKS_PER_NODE)], 30)

        # Hop connections between every pair of client agents, several per pair.
        warm, failed = asyncio.run(send_all(cluster, "warm", per_sender=24))
        assert failed == []
        # Left idle until the receivers closed them all (their keep-alive timeout passed).
        ports = [api_port(cluster, n) for n in CLIENTS]
        wait_until(lambda: all(established_on(p) == 0 for p in ports), 20,
                   "every hop connection closed by its receiving agent")

        burst, failed = asyncio.run(send_all(cluster, "burst", per_sender=90))
        assert failed == [], f"{len(failed)} of {len(burst)} yips failed: {failed[:5]}"

        sent = {**warm, **burst}
        got: dict[str, list[str]] = {}
        for pack in sorted(set(sent.values())):
            for yid in mailbox(cluster, pack):
                got.setdefault(yid, []).append(pack)
        assert {yid: [pack] for yid, pack in sent.items()} == got  # each yip once, in its own mailbox
    finally:
        cluster.close()


def test_a_relay_retries_while_the_node_restarts_and_says_503_once_the_node_is_declared_down(tmp_path):
    # The leader declares a silent node down after 10 s (time enough for a restart on a busy
    # machine); a relay keeps trying for up to 30 s.
    cluster = local_cluster(str(tmp_path / "cluster"), servers=3, clients=2,
                            configure=lambda cfg: replace(cfg, heartbeat_ttl_s=10.0, request_timeout_s=30.0))
    try:
        with cluster.client() as c:
            c.create_packs([{"name": "far", "constraints": {"node": "c2"}}])
            c.wait_running(["far"], 30)
        url = cluster.url("c1", "/v1/yips/far")
        admin = {"authorization": f"Bearer {cluster.token}"}
        with httpx.Client(headers=admin, timeout=60, verify=cluster.verify) as http:
            assert http.post(url, json={"text": "before", "id": "before"}).status_code == 200

            # c2 restarts: a yip sent meanwhile waits for it instead of failing.
            cluster.kill("c2")
            answer: list[httpx.Response] = []
            sending = threading.Thread(target=lambda: answer.append(
                http.post(url, json={"text": "during", "id": "during"})))
            sending.start()
            cluster.restart("c2")
            sending.join(60)
            assert answer and answer[0].status_code == 200, answer[0].text if answer else "no answer"

            # c2 gone for good: the relay keeps trying until the servers declare c2 down, then
            # the sender hears so (the pack, bound to c2, has nowhere else to go).
            cluster.kill("c2")
            r = http.post(url, json={"text": "after", "id": "after"})
            with cluster.client() as c:
                assert c.node("c2")["state"] == "down"
            assert r.status_code == 503, r.text
            error: dict[str, Any] = r.json()["error"]
            assert error["code"] == "unavailable"
            assert "node c2 of pack far is down; retry after its packs move" in error["message"]
        cluster.restart("c2")
        wait_until(lambda: mailbox(cluster, "far") == ["before", "during"], 30, "c2 back with its mailbox")
    finally:
        cluster.close()


def test_the_keep_alive_setting_is_checked_when_an_agent_starts(tmp_path):
    """A wrong CANIDAE_KEEP_ALIVE_S stops an agent at once with one line, not a traceback."""
    import subprocess
    import sys

    from canidae.agent.config import AgentConfig, ServerPeer, new_secret, write_config
    from canidae.core.types import Role

    path = str(tmp_path / "agent.toml")
    write_config(AgentConfig(node_id="a1", role=Role.CLIENT, api="127.0.0.1:1", data_dir=str(tmp_path / "d"),
                             token=new_secret(), servers=(ServerPeer("s1", "127.0.0.1:2", "127.0.0.1:3"),),
                             insecure_http=True), path)
    p = subprocess.run([sys.executable, "-m", "canidae", "agent", "run", "--config", path],
                       env={**os.environ, "CANIDAE_KEEP_ALIVE_S": "later"}, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "canidae: error: keep_alive_s (CANIDAE_KEEP_ALIVE_S) must be a number of seconds in 0.1..3600, got 'later'"]
