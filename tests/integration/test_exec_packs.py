"""Exec packs on a real cluster, through the real CLI: spawn, logs, kill, stop, failures, the memory
limit, yips between packs on different nodes, mailbox isolation and bounds, agent doctor, and an
agent restart that re-adopts its packs without duplicates or orphans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import httpx
import pytest

from canidae.agent.client import Client
from canidae.agent.client.execcalls import exec_info, pack_processes
from canidae.agent.node.isolation import parent_name
from harness import LocalCluster, local_cluster, wait_until
from packprocs import environ_of, kill_leftovers, member_python, processes_under, remove_cgroups

AGENT_ENV = {"CANIDAE_EXEC_BACKOFF_S": "0.05", "CANIDAE_EXEC_GRACE_S": "2", "CANIDAE_EXEC_LOG_CHECK_S": "0.2"}

RX = """
import json, os, ssl, time, urllib.request
box, tok, last = os.environ["CANIDAE_MAILBOX"], os.environ["CANIDAE_TOKEN"], 0
# The mailbox is HTTPS, checked against the cluster CA the agent gives its members.
tls = ssl.create_default_context(cadata=os.environ["CANIDAE_CA_PEM"]) if "CANIDAE_CA_PEM" in os.environ else None
while True:
    req = urllib.request.Request(f"{box}?after={last}&ack={last}&wait=20", headers={"Authorization": "Bearer " + tok})
    try:
        got = json.load(urllib.request.urlopen(req, timeout=30, context=tls))
    except Exception as e:
        print("error", e, flush=True)
        time.sleep(0.1)
        continue
    for y in got["yips"]:
        print("got", y.get("text") or json.dumps(y.get("data")), "from=" + y["from"], flush=True)
    last = got["next"]
"""

TX = """
import json, os, ssl, time, urllib.request
# The mailbox is HTTPS, checked against the cluster CA the agent gives its members.
tls = ssl.create_default_context(cadata=os.environ["CANIDAE_CA_PEM"]) if "CANIDAE_CA_PEM" in os.environ else None
req = urllib.request.Request(os.environ["CANIDAE_MAILBOX"].rpartition("/")[0] + "/rx", method="POST",
                             data=json.dumps({"text": "ping from tx"}).encode(),
                             headers={"Authorization": "Bearer " + os.environ["CANIDAE_TOKEN"],
                                      "Content-Type": "application/json"})
print("sent", json.load(urllib.request.urlopen(req, timeout=10, context=tls)), flush=True)
time.sleep(600)
"""


def _down(c: LocalCluster) -> None:
    left: list[int] = []
    try:
        left = c.close()  # the pack processes it had to kill after the agents stopped
    finally:
        left += kill_leftovers(c.data_dir)
        for a in c.agents:  # what an agent that had to be SIGKILLed could not remove itself
            remove_cgroups(parent_name(a["id"], os.path.dirname(a["config"])))
    assert not left, f"pack processes outlived the cluster: {left}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = local_cluster(str(tmp_path_factory.mktemp("exec") / "cluster"), servers=3, clients=1, env=AGENT_ENV)
    try:
        yield c
    finally:
        _down(c)


def cli(c: LocalCluster, *args: str, addr: str | None = None, env: dict[str, str] | None = None,
        check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "HOME": os.path.join(c.data_dir, "home"), "CANIDAE_TOKEN": c.token, "CANIDAE_CA": c.ca or "",
            "CANIDAE_ADDR": addr or ",".join(a["api"] for a in c.agents if a["role"] == "server"), **(env or {})}
    p = subprocess.run([sys.executable, "-m", "canidae", *args], capture_output=True, text=True, env=full,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    return p


def logs(c: LocalCluster, pack: str, *extra: str) -> str:
    return cli(c, "pack", "logs", pack, *extra).stdout


def test_spawn_logs_kill_and_stop_through_the_cli(cluster):
    out = cli(cluster, "pack", "spawn", "web", "--members", "2", "--",
              "sh", "-c", 'echo "hello from $CANIDAE_MEMBER"; exec sleep 600').stdout
    assert out.startswith("pack web on node ") and " ms" in out and "running in" in out
    with cluster.client() as c:
        p = c.pack("web")
        assert p["state"] == "running" and p["driver"] == "exec"
        node = p["node"]
        procs = pack_processes(c, "web")
    assert procs["node"] == node and all(m["running"] for m in procs["members"])
    # Logs through an agent that is not the pack's node (the client agent, or another server).
    other = next(a["api"] for a in cluster.agents if a["id"] != node)
    wait_until(lambda: "hello from 1" in cli(cluster, "pack", "logs", "web", addr=other).stdout, 10, "both members")
    text = cli(cluster, "pack", "logs", "web", addr=other).stdout
    assert "[0] hello from 0" in text and "[1] hello from 1" in text
    assert cli(cluster, "pack", "logs", "web", "--member", "1", "--tail", "1").stdout == "hello from 1\n"

    killed = json.loads(cli(cluster, "pack", "kill", "web", "--signal", "term", "--json", addr=other).stdout)
    assert killed["members"] == [0, 1] and killed["signal"] == "TERM" and killed["node"] == node
    with cluster.client() as c:
        wait_until(lambda: all(m["restarts"] == 1 and m["running"] for m in pack_processes(c, "web")["members"]),
                 10, "the members restarted under on-failure")
        assert c.pack("web")["state"] == "running"
    assert cli(cluster, "pack", "stop", "web").stdout.strip() == "pack web stopped"
    with cluster.client() as c:
        p = c.pack("web")
        assert p["state"] == "stopped" and "stopped on request" in p["reason"]
    work = os.path.join(cluster.data_dir, "agents", node, "exec", "packs", "web", "work")
    assert processes_under(work) == []


def test_logs_follow_until_the_pack_ends(cluster):
    cli(cluster, "pack", "spawn", "ticker", "--restart", "never", "--",
        "sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.2; done")
    p = cli(cluster, "pack", "logs", "ticker", "--follow", timeout=30)
    assert p.stdout.splitlines()[-3:] == ["tick 1", "tick 2", "tick 3"]
    with cluster.client() as c:
        assert c.pack("ticker")["state"] == "stopped" and c.pack("ticker")["reason"] == "exited 0"


def test_failures_are_clean_and_capacity_is_a_conflict(cluster):
    p = cli(cluster, "pack", "spawn", "broken", "--", "/no/such/binary", check=False)
    assert p.returncode == 1 and p.stdout == ""
    assert "pack broken failed on node" in p.stderr and "'/no/such/binary' not found" in p.stderr
    with cluster.client() as c:
        # a spawn whose command cannot start leaves nothing behind but its history
        assert not any(x["name"] == "broken" for x in c.iter_packs())
        kinds = [e["type"] for e in c.pack_events("broken")["events"]]
        assert kinds.count("PackFailed") == 1 and kinds[-1] == "PackDeleted"  # failed once: no restart storm
    p = cli(cluster, "pack", "spawn", "broken", "--keep-pending", "--", "/no/such/binary", check=False)
    assert p.returncode == 1
    with cluster.client() as c:
        rec = c.pack("broken")
        assert rec["state"] == "failed" and rec["generation"] >= 2  # kept; generations continue
    p = cli(cluster, "pack", "spawn", "huge", "--mem", "100000000", "--", "sleep", "1", check=False)
    assert p.returncode == 6 and "no node can take huge" in p.stderr


def test_a_memory_hog_is_failed_with_the_reason(cluster):
    py = member_python()
    with cluster.client() as c:
        if exec_info(c)["exec"]["mechanism"] == "rlimits":
            pytest.skip("no cgroup memory controller here")
    # --keep-pending: a pack failed within spawn's check is otherwise removed (the error says why).
    p = cli(cluster, "pack", "spawn", "hog", "--mem", "32", "--restart", "always", "--keep-pending", "--",
            py, "-c", "b = []\nwhile True:\n    b.append(bytearray(1 << 20))", check=False)
    with cluster.client() as c:
        wait_until(lambda: c.pack("hog")["state"] == "failed", 15, "the hog failed")
        assert c.pack("hog")["reason"] == "memory limit 32 MiB exceeded (OOM kill)"
    assert p.returncode in (0, 1)  # the OOM kill may come before or after spawn saw it running


def test_yips_between_packs_on_two_nodes_and_mailbox_rules(cluster):
    py = member_python()
    cli(cluster, "pack", "spawn", "rx", "--node", "s1", "--", py, "-u", "-c", RX)
    cli(cluster, "pack", "spawn", "tx", "--node", "s2", "--", py, "-u", "-c", TX)
    wait_until(lambda: "got ping from tx from=tx" in logs(cluster, "rx"), 15, "tx's yip in rx")
    client_api = cluster.agent("c1")["api"]
    assert "queued for pack rx on node s1" in cli(cluster, "yip", "send", "rx", "hello", addr=client_api).stdout
    cli(cluster, "yip", "send", "rx", "--json", '{"n": 1}')
    wait_until(lambda: 'got {"n": 1} from=admin' in logs(cluster, "rx"), 10, "the JSON yip")
    assert "got hello from=admin" in logs(cluster, "rx")

    # A pack's token reads its own mailbox only, and is taken only by the agent of its node (s2).
    tx_token = cluster.pack_token("tx")
    tx_node = cluster.agent("s2")["api"]
    p = cli(cluster, "yip", "recv", "--pack", "rx", env={"CANIDAE_TOKEN": tx_token}, addr=tx_node, check=False)
    assert p.returncode == 4 and "may not read the mailbox of pack rx" in p.stderr
    p = cli(cluster, "yip", "recv", "--pack", "tx", env={"CANIDAE_TOKEN": tx_token},
            addr=cluster.agent("s3")["api"], check=False)
    assert p.returncode == 4 and "taken only by the agent of its pack's node" in p.stderr
    r = httpx.get(cluster.url("s3", "/v1/yips/rx"), headers={"authorization": "Bearer pk.rx.forged"},
                  verify=cluster.verify)
    assert r.status_code == 401

    # Inside a pack: 'canidae yip recv' with the member's own environment; ids make duplicates droppable.
    cli(cluster, "pack", "spawn", "inbox", "--", "sleep", "600")
    cli(cluster, "yip", "send", "inbox", "one", "--id", "dup-1")
    cli(cluster, "yip", "send", "inbox", "one", "--id", "dup-1")  # a retry: queued once
    cli(cluster, "yip", "send", "inbox", "two")
    with cluster.client() as c:
        member = pack_processes(c, "inbox")["members"][0]["pid"]
    inside = {k: v for k, v in environ_of(member).items() if k.startswith("CANIDAE_")}
    got = cli(cluster, "yip", "recv", "--wait", "5", env=inside)
    assert got.stdout == "one\ntwo\n"
    again = json.loads(cli(cluster, "yip", "recv", "--json", env=inside).stdout)
    assert again["yips"] == []  # acknowledged

    # One sender holds at most half of a mailbox; a full mailbox refuses with a clear conflict (exit 6).
    with cluster.client() as c:
        c.request("POST", "/v1/yips/inbox", json={"yips": [{"text": str(i)} for i in range(500)]})
    p = cli(cluster, "yip", "send", "inbox", "one more from admin", check=False)
    assert p.returncode == 6 and "admin already holds 500 yips" in p.stderr
    r = httpx.post(cluster.url("s2", "/v1/yips/inbox"), timeout=10, verify=cluster.verify,
                   json={"yips": [{"text": str(i)} for i in range(500)]}, headers={"authorization": f"Bearer {tx_token}"})
    assert r.status_code == 200
    p = cli(cluster, "yip", "send", "inbox", "one too many", env={"CANIDAE_TOKEN": tx_token}, addr=tx_node,
            check=False)
    assert p.returncode == 6 and "mailbox of pack inbox is full" in p.stderr


def test_agent_doctor_reports_the_running_agents_isolation(cluster):
    cfg = cluster.agent("s2")["config"]
    p = cli(cluster, "agent", "doctor", "--config", cfg, "--json", check=False)
    report = json.loads(p.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert "chosen by the running agent" in checks["isolation"]["detail"]
    with Client(cluster.target(["s2"])) as c:
        assert checks["isolation"]["detail"].startswith(exec_info(c)["exec"]["mechanism"])
    assert checks["api port"]["status"] == "ok" and checks["peer s1"]["status"] == "ok"
    assert "clock vs s3" in checks
    assert p.returncode == (1 if any(c["status"] == "fail" for c in report["checks"]) else 0)


def _cluster_with_patient_leader(data_dir: str) -> LocalCluster:
    """Three servers whose leader waits 60 s before declaring a silent node down, so that an agent
    restart is seen as a restart (its packs stay placed) and not as a node failure."""
    return local_cluster(data_dir, servers=3, env=AGENT_ENV, configure=lambda c: replace(c, heartbeat_ttl_s=60.0))


def test_an_agent_restart_readopts_its_packs_and_kills_what_it_no_longer_holds(tmp_path):
    c = _cluster_with_patient_leader(str(tmp_path / "cluster"))
    try:
        for name in ("steady", "stopme", "moveme"):
            cli(c, "pack", "spawn", name, "--node", "s2", "--members", "2", "--", "sleep", "600")
        with c.client() as cl:
            before = {n: [m["pid"] for m in pack_processes(cl, n)["members"]] for n in ("steady", "stopme", "moveme")}
            c.kill("s2")  # SIGKILL: no goodbye, the packs' processes stay
            assert all(processes_under(str(tmp_path)).count(p) for pids in before.values() for p in pids)
            cl.pack_action("stopme", "stop")  # the cluster now wants it stopped...
            cl.migrate("moveme", "s3")       # ...and this one elsewhere
            wait_until(lambda: cl.pack("moveme")["state"] == "running", 15, "moveme running on s3")
            c.restart("s2")
            wait_until(lambda: cl.pack("stopme")["state"] == "stopped", 20, "stopme stopped after the restart")
            wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and p in processes_under(str(tmp_path))
                                     for p in before["moveme"] + before["stopme"]), 10, "fenced processes gone")
            st = pack_processes(cl, "steady")
            assert [m["pid"] for m in st["members"]] == before["steady"]  # adopted, not restarted
            assert cl.pack("steady")["state"] == "running" and cl.pack("steady")["generation"] == 1
            moved = pack_processes(cl, "moveme")
            assert moved["node"] == "s3" and all(m["running"] for m in moved["members"])
            # Exactly the processes the cluster asks for: steady's two (s2) and moveme's two (s3).
            live = set(processes_under(str(tmp_path)))
            assert live == set(before["steady"]) | {m["pid"] for m in moved["members"]}
            # The adopted pack still obeys: stop it.
            cl.pack_action("steady", "stop")
            wait_until(lambda: cl.pack("steady")["state"] == "stopped", 15, "steady stopped")
            assert not set(processes_under(str(tmp_path))) & set(before["steady"])
    finally:
        _down(c)


def test_concurrent_sends_through_another_agent_each_get_their_own_answer(cluster):
    from concurrent.futures import ThreadPoolExecutor
    cli(cluster, "pack", "spawn", "busy", "--node", "s1", "--", "sleep", "600")
    via = cluster.agent("s2")["api"]  # not the mailbox's node: every send is relayed to s1
    for sender in ("f1", "f2", "tx2"):  # senders on s2, whose agent takes their tokens
        cli(cluster, "pack", "spawn", sender, "--node", "s2", "--", "sleep", "600")
    senders = {"admin": cluster.token, "tx2": cluster.pack_token("tx2")}

    def send(i: int) -> tuple[int, Any]:
        who = "tx2" if i % 2 else "admin"
        r = httpx.post(f"{cluster.scheme}://{via}/v1/yips/busy", json={"text": f"m{i}", "id": f"id-{i}"},
                       headers={"authorization": f"Bearer {senders[who]}"}, timeout=10, verify=cluster.verify)
        return r.status_code, r.json()

    for filler in ("f1", "f2"):  # 960 unread yips, from two senders: one holds at most half a mailbox
        r = httpx.post(f"{cluster.scheme}://{via}/v1/yips/busy", json={"yips": [{"text": "filler"}] * 480},
                       timeout=10, verify=cluster.verify,
                       headers={"authorization": f"Bearer {cluster.pack_token(filler)}"})
        assert r.status_code == 200
    with cluster.client() as c:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(send, range(60)))
        ok = [body for code, body in results if code == 200]
        full = [body for code, body in results if code == 409]
        assert len(ok) == 40 and len(full) == 20  # the mailbox holds 1,000: the first 40 fit
        assert all("mailbox of pack busy is full" in b["error"]["message"] for b in full)
        assert len({b["yips"][0]["seq"] for b in ok}) == 40
        got = c.request("GET", "/v1/yips/busy", params={"after": 960, "max": 1000})["yips"]
        assert sorted(y["id"] for y in got) == sorted(b["yips"][0]["id"] for b in ok)
        assert all(y["from"] == ("tx2" if int(y["text"][1:]) % 2 else "admin") for y in got)
