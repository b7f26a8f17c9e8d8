"""The exec driver with real processes, no cluster: environment and identity, restart policies, the
memory limit, a fork bomb, commands that cannot start, log rotation, stop escalation, adoption
after an agent crash, and packs that cannot touch each other."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from execrig import TOKEN, Rig, log_has, run, until
from packprocs import environ_of, kill_leftovers, member_python, processes_under, uid_of

from canidae.agent.node import packlogs
from canidae.agent.node.exec_driver import proc_start_ticks
from canidae.agent.node.isolation import Limits
from canidae.core.packtoken import pack_token


def test_members_get_a_scrubbed_environment_their_directory_and_their_own_user(tmp_path, monkeypatch):
    monkeypatch.setenv("CANIDAE_TEST_AGENT_SECRET", "must-not-leak")
    py = member_python()
    code = ("import os, json, time; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), "
            "'uid': os.getuid(), 'groups': os.getgroups(), 'sid': os.getsid(0), 'pid': os.getpid()}), flush=True); "
            "time.sleep(60)")

    async def body(rig: Rig) -> None:
        await rig.start("envy", [py, "-c", code], members=2, env={"GREETING": "hello"})
        assert await rig.report("envy", "running") == ""
        st = rig.driver.status("envy")
        for m in (0, 1):
            seen = json.loads((await log_has(rig, "envy", '"env"', m)).splitlines()[0])
            env = seen["env"]
            assert env["CANIDAE_PACK"] == "envy" and env["CANIDAE_MEMBER"] == str(m)
            assert env["CANIDAE_MEMBERS"] == "2" and env["CANIDAE_NODE"] == "n1" and env["CANIDAE_GENERATION"] == "1"
            assert env["CANIDAE_MAILBOX"] == "http://127.0.0.1:9/v1/yips/envy"
            assert env["CANIDAE_TOKEN"] == env["CANIDAE_PACK_TOKEN"] == pack_token(TOKEN, "envy", 1, "n1")
            assert env["GREETING"] == "hello"
            assert "CANIDAE_TEST_AGENT_SECRET" not in env
            assert seen["cwd"] == os.path.join(str(rig.data), "exec", "packs", "envy", "work")
            assert seen["sid"] == seen["pid"] == st["members"][m]["pid"]  # a session of its own
            if os.geteuid() == 0:
                assert seen["uid"] == st["uid"] and seen["uid"] != 0 and seen["groups"] == []
        if st["cgroups"]:
            procs = rig.driver.isolation.pids(rig.driver.runs["envy"].sandbox)  # type: ignore[union-attr]
            assert {m["pid"] for m in st["members"]} <= procs
        await rig.driver.stop("envy", 1, "stopped on request")
        reason = await rig.report("envy", "stopped")
        assert reason.startswith("stopped on request") and "killed by signal TERM" in reason
        assert processes_under(str(rig.data)) == []
        assert all(not os.path.exists(d) for d in st["cgroups"].values())
    run(tmp_path, body)


def test_restart_policies_exit_codes_and_signals(tmp_path):
    async def body(rig: Rig) -> None:
        await rig.start("never-fails", ["sh", "-c", "exit 3"], restart="never")
        await rig.start("never-ok", ["sh", "-c", "exit 0"], restart="never")
        await rig.start("onfail-ok", ["sh", "-c", "exit 0"], restart="on-failure")
        await rig.start("onfail-fails", ["sh", "-c", "exit 1"], restart="on-failure")
        await rig.start("onfail-signal", ["sh", "-c", "kill -9 $$"], restart="on-failure")
        await rig.start("always", ["sh", "-c", "exit 0"], restart="always")
        assert await rig.report("never-fails", "failed") == "member 0 exited 3"
        assert await rig.report("never-ok", "exited") == "exited 0"
        assert await rig.report("onfail-ok", "exited") == "exited 0"
        assert await rig.report("onfail-fails", "failed") == "gave up after 3 restarts: member 0 exited 1"
        assert await rig.report("onfail-signal", "failed") == "gave up after 3 restarts: member 0 killed by signal KILL"

        async def restarted() -> bool:
            return rig.driver.status("always")["members"][0]["restarts"] >= 5
        await until(restarted, 15, "an 'always' pack restarting after clean exits")
        assert rig.states("always") == ["running"]  # restarts stay local: the cluster sees it running
        await rig.driver.stop("always", 1, "stopped on request")
        assert (await rig.report("always", "stopped")).startswith("stopped on request")
        # Members failing soon after they start make the pack crash-loop (said once) before it fails.
        assert rig.states("onfail-fails") == ["running", "crashloop", "failed"]
        assert rig.states("onfail-signal") == ["running", "crashloop", "failed"]
        for pack in ("never-fails", "never-ok", "onfail-ok", "onfail-fails", "onfail-signal"):
            states = [s for s in rig.states(pack) if s != "crashloop"]
            assert states[0] == "running" and len(states) == 2, rig.states(pack)
            assert rig.driver.running().get(pack) is None
        # A start of a generation that already ended repeats its outcome; it does not run it again.
        await rig.start("never-fails", ["sh", "-c", "exit 3"], restart="never")
        assert rig.states("never-fails")[-1] == "failed" and rig.driver.running().get("never-fails") is None
    run(tmp_path, body)


def test_a_memory_hog_is_stopped_and_failed_with_the_reason(tmp_path):
    py = member_python()
    code = "b = []\nwhile True:\n    b.append(bytearray(1 << 20))"

    async def body(rig: Rig) -> None:
        if rig.driver.running() == {} and rig.driver.isolation.mechanism == "rlimits":  # type: ignore[union-attr]
            pytest.skip("no cgroup memory controller here: memory is limited per process only")
        await rig.start("hog", [py, "-c", code], mem=32, restart="always")
        assert await rig.report("hog", "failed") == "memory limit 32 MiB exceeded (OOM kill)"
        assert rig.driver.running() == {}
        assert processes_under(str(rig.data)) == []
    run(tmp_path, body)


def test_a_fork_bomb_is_bounded_and_cleaned_up(tmp_path):
    py = member_python()
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    limit = 12

    async def body(rig: Rig) -> None:
        await rig.start("bomb", [py, "-c", code], cpu=200)
        await rig.report("bomb", "running")
        st = rig.driver.status("bomb")

        async def at_limit() -> bool:
            return len(processes_under(str(rig.data))) >= limit - 2
        await until(at_limit, 20, "the bomb to fill its process budget")
        most = 0
        for _ in range(20):  # sample a while: the bound holds, the bomb does not get past it
            most = max(most, len(processes_under(str(rig.data))))
            await asyncio.sleep(0.02)
        assert most <= limit
        if st["uid"] is not None:
            assert all(uid_of(p) == st["uid"] for p in processes_under(str(rig.data)))
        await rig.driver.stop("bomb", 1, "stopped on request")
        await rig.report("bomb", "stopped")
        assert processes_under(str(rig.data)) == []
        assert all(not os.path.exists(d) for d in st["cgroups"].values())
    run(tmp_path, body, max_procs=limit)


def test_commands_that_cannot_start_fail_at_once_with_the_reason(tmp_path):
    # Outside the test's private tmp dir, so that only the file's own mode is in the way.
    with tempfile.NamedTemporaryFile("w", suffix=".sh", dir="/tmp") as f:
        f.write("echo never\n")
        f.flush()
        os.chmod(f.name, 0o644)
        plain = Path(f.name)
        _cannot_start(tmp_path, plain)


def _cannot_start(tmp_path: Path, plain: Path) -> None:
    async def body(rig: Rig) -> None:
        bad_dir = rig.data / "exec" / "packs" / "baddir"
        bad_dir.mkdir(parents=True)
        (bad_dir / "work").write_text("a file where the working directory goes")
        await rig.start("missing", ["no-such-command-anywhere", "x"])
        await rig.start("notexec", [str(plain)])
        await rig.start("adir", ["/usr"])
        await rig.start("baddir", ["sleep", "60"])
        assert (await rig.report("missing", "failed")).startswith("command 'no-such-command-anywhere' not found in PATH")
        assert (await rig.report("notexec", "failed")).startswith(f"command '{plain}' is not executable")
        assert await rig.report("adir", "failed") == "command '/usr' is not a file"
        assert "is not a directory" in await rig.report("baddir", "failed")
        for pack in ("missing", "notexec", "adir", "baddir"):
            assert rig.states(pack) == ["failed"]  # never reported running, never restarted
        assert rig.driver.running() == {} and processes_under(str(rig.data)) == []
    run(tmp_path, body)


def test_a_crash_loop_is_reported_once_and_its_recovery_too(tmp_path):
    async def body(rig: Rig) -> None:
        # Fails on its first two runs (a counter in its working directory), then stays up.
        script = 'n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) > n; [ "$n" -ge 2 ] || exit 4; exec sleep 60'
        await rig.start("flaky", ["sh", "-c", script])
        reason = await rig.report("flaky", "crashloop")
        assert reason.startswith("member 0 exited 4 after ") and reason.endswith("restarting")
        async def recovered() -> bool:
            return rig.states("flaky") == ["running", "crashloop", "running"]
        await until(recovered, 15, f"flaky to recover (reports: {rig.reports})")
        m = rig.driver.status("flaky")["members"][0]
        assert m["running"] and m["restarts"] == 2 and m["last_exit"] == "exited 4"
        assert abs(m["last_exit_at"] / 1000 - time.time()) < 60
    run(tmp_path, body, stable_s=0.3)


def test_an_exit_127_of_the_command_itself_is_an_exit_not_a_missing_command(tmp_path):
    async def body(rig: Rig) -> None:
        await rig.start("exits127", ["sh", "-c", "exit 127"], restart="never")
        assert await rig.report("exits127", "failed") == "member 0 exited 127"
    run(tmp_path, body)


def test_logs_rotate_by_size_and_reads_follow_across_rotations(tmp_path):
    py = member_python()
    code = ("import time\nfor i in range(10**6):\n    print(f'line {i:07d} ' + 'x' * 80, flush=True)\n"
            "    time.sleep(0.0005)")

    async def body(rig: Rig) -> None:
        await rig.start("chatty", [py, "-c", code])
        await rig.report("chatty", "running")
        d = rig.driver.logs_dir("chatty")

        async def rotated_twice() -> bool:
            return os.path.exists(os.path.join(d, "member-0.log.2"))
        await until(rotated_twice, 20, "two rotations")
        assert not os.path.exists(os.path.join(d, "member-0.log.3"))  # keep = 2
        assert os.path.getsize(os.path.join(d, "member-0.log.1")) < 1 << 20  # rotated near 8 KiB, not grown on
        first = packlogs.read(d, 0, cursor=0)
        assert first["lost"] > 0  # the oldest output was rotated away, and the reader is told
        nxt = packlogs.read(d, 0, cursor=first["cursor"])
        assert nxt["cursor"] >= first["cursor"]
        tail = packlogs.read(d, 0, tail=3)["text"].splitlines()
        assert len(tail) == 3 and all(line.startswith("line ") for line in tail)
        await rig.driver.stop("chatty", 1, "stopped on request")
        await rig.report("chatty", "stopped")
    run(tmp_path, body, log_max_bytes=8192, log_keep=2)


def test_stop_sends_sigterm_then_sigkill_after_the_grace_period(tmp_path):
    async def body(rig: Rig) -> None:
        await rig.start("stubborn", ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"])
        await rig.report("stubborn", "running")
        await log_has(rig, "stubborn", "ready")
        await rig.driver.stop("stubborn", 1, "stopped on request")
        assert await rig.report("stubborn", "stopped") == "stopped on request (member 0 killed by signal KILL)"
    run(tmp_path, body, grace_s=0.3)


def test_kill_signals_members_and_the_policy_restarts_them(tmp_path):
    async def body(rig: Rig) -> None:
        await rig.start("target", ["sleep", "60"], members=2)
        await rig.report("target", "running")
        before = [m["pid"] for m in rig.driver.status("target")["members"]]
        sent = rig.driver.kill("target", signal.SIGTERM)
        assert sent["members"] == [0, 1] and sent["signal"] == "TERM"

        async def back() -> bool:
            ms = rig.driver.status("target")["members"]
            return all(m["running"] and m["restarts"] == 1 for m in ms)
        await until(back, 10, "both members restarted")
        after = rig.driver.status("target")["members"]
        assert [m["last_exit"] for m in after] == ["killed by signal TERM"] * 2
        assert {m["pid"] for m in after}.isdisjoint(before)
    run(tmp_path, body)


def test_a_restarted_agent_adopts_live_members_and_kills_what_no_record_claims(tmp_path):
    data = tmp_path / "data"
    pids: dict[str, list[int]] = {}

    async def first_life() -> None:
        rig = Rig(data)
        await rig.start("keep", ["sleep", "60"], members=2)
        await rig.start("drop", ["sleep", "60"])
        await rig.report("keep", "running")
        await rig.report("drop", "running")
        pids["keep"] = [m["pid"] for m in rig.driver.status("keep")["members"]]
        iso = rig.driver.isolation
        assert iso is not None
        if iso.mechanism != "rlimits":  # a process in a pack cgroup that no run record will claim
            import subprocess
            sb = iso.create("orphan", Limits())
            p = subprocess.Popen(["sleep", "60"], cwd=str(data), start_new_session=True)
            iso.attach(sb, p.pid)
            pids["orphan"] = [p.pid]
        # The agent dies here: no close(), the processes stay.

    async def second_life() -> None:
        rig = Rig(data)
        try:
            assert rig.driver.running() == {"keep": 1, "drop": 1}
            st = rig.driver.status("keep")
            assert [m["pid"] for m in st["members"]] == pids["keep"] and all(m["running"] for m in st["members"])
            for pid in pids.get("orphan", []):
                assert proc_start_ticks(pid) is None  # killed as an orphan
            packs_left = [n for n in rig.driver.isolation.leftovers() if not n.startswith(".spare")]  # type: ignore[union-attr]
            assert packs_left in ([], ["drop", "keep"])
            # The reconciler's fencing: "drop" is no longer assigned here.
            await rig.driver.stop("drop", 1, "no longer assigned here")
            await rig.report("drop", "stopped")
            live = set(processes_under(str(data)))
            assert live == set(pids["keep"])  # no duplicate, no orphan
            # An adopted member that dies is restarted (its status is unknown: not our child).
            os.kill(pids["keep"][0], signal.SIGKILL)

            async def replaced() -> bool:
                m = rig.driver.status("keep")["members"][0]
                return m["running"] and m["restarts"] == 1 and m["pid"] != pids["keep"][0]
            await until(replaced, 10, "the dead member restarted")
            assert rig.driver.status("keep")["members"][0]["last_exit"].startswith("exited (status unknown")
            assert rig.states("keep") == []  # still running as far as the cluster knows
        finally:
            await rig.driver.close()
    try:
        asyncio.run(first_life())
        asyncio.run(second_life())
    finally:
        left = kill_leftovers(str(data))
    assert not left


@pytest.mark.skipif(os.geteuid() != 0, reason="per-pack users need root")
def test_a_pack_cannot_signal_or_inspect_another_pack(tmp_path):
    py = member_python()

    async def body(rig: Rig) -> None:
        await rig.start("victim", ["sleep", "60"])
        await rig.report("victim", "running")
        victim = rig.driver.status("victim")["members"][0]["pid"]
        code = (f"import os\ntry:\n    os.kill({victim}, 9)\n    print('killed')\nexcept PermissionError:\n"
                f"    print('kill denied')\ntry:\n    open('/proc/{victim}/environ').read()\n    print('read')\n"
                f"except PermissionError:\n    print('environ denied')\nimport time; time.sleep(60)")
        await rig.start("attacker", [py, "-u", "-c", code])
        text = await log_has(rig, "attacker", "environ denied")
        assert "kill denied" in text and "killed" not in text and "read\n" not in text
        assert proc_start_ticks(victim) is not None
        assert pack_token(TOKEN, "victim", 1, "n1") in environ_of(victim)["CANIDAE_TOKEN"]
    run(tmp_path, body)


def test_a_spare_gate_becomes_the_first_member_with_the_packs_limits_user_and_environment(tmp_path):
    py = member_python()
    code = ("import os, json, time; print(json.dumps({'pack': os.environ['CANIDAE_PACK'], 'uid': os.getuid(), "
            "'cwd': os.getcwd(), 'agent_env': 'CANIDAE_TEST_AGENT_SECRET' in os.environ}), flush=True); "
            "time.sleep(60)")

    async def body(rig: Rig) -> None:
        rig.driver.running()  # opens the driver, which starts making spares
        if not rig.driver._spares_usable():
            pytest.skip("no spare gates with rlimits only")

        async def ready() -> bool:
            return len(rig.driver._spares) == rig.driver.settings.spares
        await until(ready, 10, "spare gates")
        spare_pids = {sp.proc.pid for sp in rig.driver._spares}
        await rig.start("quick", [py, "-c", code], members=2, mem=48)
        await rig.report("quick", "running")
        st = rig.driver.status("quick")
        assert st["members"][0]["pid"] in spare_pids  # member 0 was a spare; member 1 was spawned
        assert st["members"][1]["pid"] not in spare_pids
        for m in (0, 1):
            seen = json.loads((await log_has(rig, "quick", '"pack"', m)).splitlines()[0])
            assert seen["pack"] == "quick" and not seen["agent_env"]
            assert seen["cwd"].endswith(os.path.join("packs", "quick", "work"))
            if os.geteuid() == 0:
                assert seen["uid"] == st["uid"] != 0
        if "memory" in st["cgroups"]:
            assert st["cgroups"]["memory"].endswith("/p-quick")
            with open(os.path.join(st["cgroups"]["memory"], "memory.limit_in_bytes")) as f:
                assert int(f.read()) == 48 << 20
            with open(os.path.join(st["cgroups"]["memory"], "cgroup.procs")) as f:
                assert {m["pid"] for m in st["members"]} <= {int(x) for x in f.read().split()}
        await until(ready, 10, "spare gates made again")
    run(tmp_path, body, spares=2)
