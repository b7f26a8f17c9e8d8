"""Mailboxes survive their agent: yips sent to a pack, some read and acknowledged, a stream of
sends cut short by a SIGKILL of the pack's agent; after a restart every yip a sender was told is
queued, and not acknowledged, is delivered exactly once by (sender, id), with its seq."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from typing import Any

import httpx
from canidae.agent.node.isolation import parent_name
from harness import LocalCluster, local_cluster, wait_until
from packprocs import kill_leftovers, remove_cgroups


def patient_cluster(data_dir: str, servers: int, clients: int) -> LocalCluster:
    """A cluster whose leader waits 60 s before declaring a silent node down, so that an agent
    restart is seen as a restart (its packs stay placed there) and not as a node failure."""
    return local_cluster(data_dir, servers=servers, clients=clients,
                         configure=lambda c: replace(c, heartbeat_ttl_s=60.0))


def test_unacknowledged_yips_survive_a_sigkill_of_the_packs_agent(tmp_path):
    c = patient_cluster(str(tmp_path / "cluster"), servers=3, clients=1)
    try:
        with c.client() as cl:
            cl.create_packs([{"name": "keeper", "driver": "exec", "command": ["sleep", "600"],
                              "constraints": {"node": "c1"}},
                             {"name": "tx", "constraints": {"node": "c1"}}])  # a sender: its token is taken on c1
            cl.wait_running(["keeper", "tx"], 30)
        url = c.url("c1", "/v1/yips/keeper")
        admin = {"authorization": f"Bearer {c.token}"}
        tx = {"authorization": f"Bearer {c.pack_token('tx')}"}
        keeper = {"authorization": f"Bearer {c.pack_token('keeper')}"}
        queued: dict[tuple[str, str], int] = {}  # (sender, id) -> seq, as the senders were told

        def told(sender: str, answer: dict[str, Any]) -> None:
            for y in answer["yips"]:
                queued[(sender, y["id"])] = y["seq"]

        with httpx.Client(timeout=10, verify=c.verify) as http:
            batch = {"yips": [{"text": f"a{i}", "id": f"a{i}"} for i in range(10)]}
            r = http.post(url, json=batch, headers=admin)
            told("admin", r.raise_for_status().json())
            for i in range(10):  # tx's first id is one admin used too: ids are per sender
                r = http.post(url, json={"text": f"t{i}", "id": "a0" if i == 0 else f"t{i}"}, headers=tx)
                told("tx", r.raise_for_status().json())
            assert len(set(queued.values())) == 20
            first = http.get(url, params={"after": 0, "max": 5}, headers=keeper).json()["yips"]
            http.post(f"{url}/ack", json={"through": first[-1]["seq"]}, headers=keeper).raise_for_status()
        acknowledged = {(y["from"], y["id"]) for y in first}

        # A sender streaming one yip at a time when the agent is killed: what it was told is queued stays.
        streamed = 0
        cut = threading.Event()

        def stream() -> None:
            nonlocal streamed
            with httpx.Client(timeout=5, headers=tx, verify=c.verify) as http:
                while not cut.is_set():
                    try:
                        r = http.post(url, json={"text": f"s{streamed}", "id": f"s{streamed}"})
                    except httpx.HTTPError:
                        return
                    if r.status_code != 200:
                        return
                    told("tx", r.json())
                    streamed += 1
        sender = threading.Thread(target=stream)
        sender.start()
        try:
            wait_until(lambda: streamed >= 50, 30, "50 streamed yips queued")
            c.kill("c1")  # SIGKILL: no chance to flush or close anything
        finally:
            cut.set()
            sender.join(15)
        assert not sender.is_alive()
        c.restart("c1")

        expected = {k: seq for k, seq in queued.items() if k not in acknowledged}
        with httpx.Client(timeout=10, verify=c.verify) as http:
            def read_all() -> list[dict[str, Any]] | None:
                r = http.get(url, params={"after": 0, "max": 1000}, headers=keeper)
                return r.json()["yips"] if r.status_code == 200 else None
            got = wait_until(read_all, 30, "the restarted agent serves the mailbox")
            by_key = {(y["from"], y["id"]): y["seq"] for y in got}
            assert len(by_key) == len(got), "a yip is in the mailbox twice"
            assert {k: by_key.get(k) for k in expected} == expected  # every one, with its seq
            # The one send cut short by the kill may have reached the disk (at-least-once), no other.
            extra = set(by_key) - set(expected)
            assert extra <= {("tx", f"s{streamed}")}, extra
            assert [y["seq"] for y in got] == sorted(y["seq"] for y in got)

            # Ids are still known: a retry is queued once; seqs go on past everything before.
            retry = http.post(url, json={"text": "t3 again", "id": "t3"}, headers=tx)
            retry = retry.raise_for_status().json()
            assert retry["yips"][0]["seq"] == expected[("tx", "t3")]
            new = http.post(url, json={"text": "after"}, headers=tx).raise_for_status().json()["yips"][0]
            assert new["seq"] > max(queued.values())

            # A receiver reading and acknowledging in pages sees each yip once, then nothing.
            seen: list[tuple[str, str]] = []
            after = 0
            while True:
                page = http.get(url, params={"after": after, "ack": after, "max": 7}, headers=keeper).json()
                if not page["yips"]:
                    break
                seen += [(y["from"], y["id"]) for y in page["yips"]]
                after = page["next"]
            assert len(seen) == len(set(seen)) == len(by_key) + 1
            assert set(seen) == set(by_key) | {("tx", new["id"])}
    finally:
        try:
            c.close()
        finally:
            left = kill_leftovers(c.data_dir)
            for a in c.agents:
                remove_cgroups(parent_name(a["id"], os.path.dirname(a["config"])))
        assert not left, f"pack processes outlived the cluster: {left}"
