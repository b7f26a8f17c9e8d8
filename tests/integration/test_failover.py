"""Node failure, fencing, drain, migration, rebalance and pending packs with real agents."""

import signal
import threading
import uuid

import pytest

from canidae.core.errors import CanidaeError
from canidae.core.types import Resources
from harness import local_cluster, wait_until


@pytest.fixture
def cluster(tmp_path):
    c = local_cluster(str(tmp_path / "cluster"), servers=3, clients=2)
    try:
        yield c
    finally:
        c.close()


def _on(c, node):
    return [p for p in c.iter_packs(node=node) if p["state"] in ("placed", "running", "stopping")]


def test_paused_node_is_declared_down_its_packs_move_and_it_is_fenced_on_return(cluster):
    with cluster.client() as c:
        c.create_packs([{"name": "p"}], count=200)
        wait_until(lambda: c.packs(state="placed", limit=1)["packs"] == [], 20, "all running")
        victims = {p["name"] for p in _on(c, "c1")}
        assert victims
        cluster.kill("c1", signal.SIGSTOP)
        try:
            wait_until(lambda: c.node("c1")["state"] == "down", 10, "c1 declared down")
            wait_until(lambda: all(p["state"] == "running" and p["node"] != "c1"
                                 for p in (c.pack(n) for n in victims)), 15, "c1's packs running elsewhere")
            others = {p["name"]: p["node"] for p in c.iter_packs() if p["name"] not in victims}
        finally:
            cluster.kill("c1", signal.SIGCONT)
        # c1 comes back: it re-registers, and stops everything it no longer holds (fencing).
        wait_until(lambda: c.node("c1")["state"] == "ready", 10, "c1 back")
        wait_until(lambda: c.node("c1").get("running_here") == len(_on(c, "c1")), 10, "c1 fenced")
        # nothing else moved, nothing runs twice, nothing lost
        after = {p["name"]: p for p in c.iter_packs()}
        assert len(after) == 200 and all(p["state"] == "running" for p in after.values())
        assert all(after[n]["node"] == node for n, node in others.items())
        # what each agent says it runs arrives with its next heartbeat: wait for the sum to settle
        wait_until(lambda: sum(c.node(n).get("running_here") or 0 for n in ("s1", "s2", "s3", "c1", "c2")) == 200,
                 10, "every pack running exactly once, by the agents' own counts")


def test_drain_under_concurrent_spawns_and_migrate(cluster):
    with cluster.client() as c:
        c.create_packs([{"name": "d"}], count=100)
        stop = threading.Event()
        errors = []

        def spawner():
            with cluster.client() as c2:
                i = 0
                while not stop.is_set():
                    try:
                        c2.create_packs([{"name": f"live-{i}"}], request_id=uuid.uuid4().hex)
                    except CanidaeError as e:
                        errors.append(e.message)
                    i += 1

        t = threading.Thread(target=spawner)
        t.start()
        try:
            plan = c.drain("c2", plan=True)
            assert plan["plan"] and c.node("c2")["state"] == "ready"  # a plan changes nothing
            c.drain("c2")
            wait_until(lambda: not _on(c, "c2") and c.node("c2").get("running_here") == 0, 15, "c2 empty")
        finally:
            stop.set()
            t.join(30)
        assert not errors
        assert all(p["node"] != "c2" for p in c.iter_packs() if p["state"] != "stopped")
        assert all(p["state"] == "running" for p in c.iter_packs()) or wait_until(
            lambda: all(p["state"] == "running" for p in c.iter_packs()), 10, "all running")
        # migrate one pack to a named node
        name = next(p["name"] for p in c.iter_packs() if p["node"] != "s1")
        res = c.migrate(name, "s1")["migrations"][0]
        assert res["moved"] and res["node"] == "s1"
        c.wait_running([name], 10, {name: res["generation"]})
        with pytest.raises(CanidaeError) as e:
            c.migrate(name, "c2")  # draining nodes take nothing
        assert e.value.exit_code == 6


def test_no_capacity_leaves_packs_pending_until_capacity_returns(tmp_path):
    small = local_cluster(str(tmp_path / "small"), servers=1, clients=1, capacity=Resources(1000, 1000, 5))
    try:
        with small.client() as c:
            res = c.create_packs([{"name": "q"}], count=8)
            assert all(p["node"] for p in res["placements"])  # 2 nodes x 5 slots
            on_c1 = [p for p in res["placements"] if p["node"] == "c1"]
            assert on_c1
            # node c1 fails: its packs cannot all fit on s1 -> pending with a reason
            small.kill("c1")
            wait_until(lambda: c.node("c1")["state"] == "down", 10, "c1 down")
            stuck = [p for p in c.iter_packs() if p["state"] == "pending"]
            assert stuck and all(p["reason"].startswith("node c1 down: ") and len(p["reason"]) > 20 for p in stuck)
            small.restart("c1")
            wait_until(lambda: not [p for p in c.iter_packs() if p["state"] == "pending"], 15, "pending placed")
    finally:
        small.close()


def test_rebalance_moves_only_onto_the_newcomer(tmp_path):
    cl = local_cluster(str(tmp_path / "rb"), servers=3, clients=0)
    try:
        with cl.client() as c:
            c.create_packs([{"name": "r"}], count=120)
            before = {p["name"]: p["node"] for p in c.iter_packs()}
            # a new client agent joins with the same cluster config
            import os
            from canidae.agent.config import load_config, write_config
            from dataclasses import replace
            s1 = load_config(cl.agent("s1")["config"])
            from harness import pick_base_port
            port = pick_base_port(1, 0)
            new = replace(s1, node_id="n9", role=s1.role.__class__("client"), api=f"127.0.0.1:{port}", raft="",
                          cluster_password="", data_dir=str(tmp_path / "n9"), log_file=str(tmp_path / "n9.log"))
            path = str(tmp_path / "n9.toml")
            write_config(new, path)
            from canidae.agent.ops.localcluster import start_agent
            pid = start_agent(path, str(tmp_path / "n9.out"))
            cl.agents.append({"id": "n9", "role": "client", "api": new.api, "raft": "", "pid": pid, "config": path,
                              "log": new.log_file})
            wait_until(lambda: any(n["id"] == "n9" for n in c.nodes()), 10, "n9 joined")
            plan = c.rebalance(plan=True)["migrations"]
            assert plan and all(m["node"] == "n9" for m in plan)
            done = c.rebalance()["migrations"]
            assert {(m["name"], m["node"]) for m in done} == {(m["name"], m["node"]) for m in plan}
            after = {p["name"]: p["node"] for p in c.iter_packs()}
            moved = {n for n in before if after[n] != before[n]}
            assert moved == {m["name"] for m in done}
            assert os.path.exists(path)
    finally:
        cl.close()
