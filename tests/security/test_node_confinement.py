"""What an exec pack may do on its node, tried from inside real members (the exec driver as root):
the spec's environment reaches no root process, members keep no privilege, see a private /tmp and
none of the agent's data dir, get an empty network with ``network = "none"``, and a new pack never
gets the user (nor the files) of an ended one."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from execrig import Rig, log_has, log_text, run
from packprocs import member_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pack users and namespaces need root")

PRELOAD_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void told(void) { dprintf(2, "preloaded uid=%d\n", (int)getuid()); }
"""


def _work(rig: Rig, pack: str) -> str:
    return os.path.join(str(rig.data), "exec", "packs", pack, "work")


def test_the_specs_environment_reaches_no_process_running_as_root(tmp_path):
    """LD_PRELOAD in a spec (the driver is the last wall: the API refuses it first) is loaded only
    by the pack's own processes, never by the root shell, mount or setpriv that start them."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the preloaded library")
    src = tmp_path / "told.c"
    src.write_text(PRELOAD_C)

    async def body(rig: Rig) -> None:
        work = _work(rig, "loader")
        os.makedirs(work, mode=0o700)
        lib = os.path.join(work, "told.so")
        subprocess.run([cc, "-shared", "-fPIC", "-o", lib, str(src)], check=True)
        await rig.start("loader", ["sh", "-c", "echo started; sleep 60"], env={"LD_PRELOAD": lib})
        await rig.report("loader", "running")
        uid = rig.driver.status("loader")["uid"]
        await log_has(rig, "loader", "started")
        uids = {int(u) for u in re.findall(r"preloaded uid=(\d+)", log_text(rig, "loader"))}
        assert uid in uids, "the member's own processes get their environment"
        assert uids == {uid}, f"the library ran as {sorted(uids)}: the spec's environment reached root"
    run(tmp_path, body)


def test_members_run_with_no_new_privs_and_no_capabilities(tmp_path):
    async def body(rig: Rig) -> None:
        await rig.start("caps", ["sh", "-c", "grep -E '^(NoNewPrivs|CapBnd|CapEff|CapPrm|CapAmb)' /proc/self/status;"
                                             " echo done; sleep 60"])
        text = await log_has(rig, "caps", "done")
        seen = dict(re.findall(r"^(\w+):\s+(\S+)$", text, re.M))
        assert seen["NoNewPrivs"] == "1"
        assert seen["CapBnd"] == seen["CapEff"] == seen["CapPrm"] == seen["CapAmb"] == "0000000000000000"
    run(tmp_path, body)


def test_members_have_a_private_tmp_and_see_nothing_of_the_data_dir_but_their_work_dir(tmp_path):
    py = member_python()
    host_tmp = tmp_path / "host-marker"  # tmp_path is under the host's /tmp
    host_tmp.write_text("host")
    host_tmp.chmod(0o644)
    mine = f"mine-{os.getpid()}-{time.monotonic_ns()}"  # unique: a leak to the host's /tmp is seen
    code = f"""
import os
def probe(path):
    try:
        with open(path) as f:
            f.read()
        return "read"
    except PermissionError:
        return "denied"
    except FileNotFoundError:
        return "missing"
open("/tmp/{mine}", "w").write("x")
open("mine.txt", "w").write("work")
print("tmp", sorted(os.listdir("/tmp")))
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return type(e).__name__
print("data", listing({str(tmp_path / 'data')!r}), listing({str(tmp_path / 'data' / 'exec' / 'packs')!r}))
print("host-marker", probe({str(host_tmp)!r}))
print("other-record", probe({str(tmp_path / 'data' / 'exec' / 'packs' / 'other' / 'run.json')!r}))
print("own-work", probe(os.path.join(os.environ["HOME"], "mine.txt")))
print("done", flush=True)
import time; time.sleep(60)
"""

    async def body(rig: Rig) -> None:
        await rig.start("other", ["sleep", "60"])
        await rig.report("other", "running")
        assert os.path.exists(tmp_path / "data" / "exec" / "packs" / "other" / "run.json")
        await rig.start("prober", [py, "-c", code])
        text = await log_has(rig, "prober", "done")
        # Its own /tmp, which the host never sees (holding, when the data dir is under /tmp, the path
        # to its work dir).
        listed = set(eval(re.search(r"^tmp (.*)$", text, re.M).group(1)))
        own_path = os.path.relpath(str(tmp_path), "/tmp").split(os.sep)[0] if str(tmp_path).startswith("/tmp/") else ""
        assert mine in listed and listed <= {mine, own_path}
        assert not os.path.exists(f"/tmp/{mine}")
        # The data dir is an empty stand-in holding only the path to its own work dir.
        assert "data PermissionError PermissionError" in text
        assert "host-marker missing" in text and "other-record missing" in text
        assert "own-work read" in text  # HOME, by its path
        assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    run(tmp_path, body)


def test_network_none_gives_an_empty_network_namespace(tmp_path):
    show = ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '; echo; "
                        "echo done; sleep 60"]

    async def body(rig: Rig) -> None:
        await rig.start("boxed", show, network="none")
        await rig.start("open", show)
        boxed = (await log_has(rig, "boxed", "done")).split()
        opened = (await log_has(rig, "open", "done")).split()
        assert boxed == ["lo", "done"]
        assert len(opened) > 2, "the host network has more than a loopback here"
    run(tmp_path, body)


def test_a_new_pack_never_gets_the_user_or_the_files_of_a_stopped_one(tmp_path):
    py = member_python()
    plant = ("import os, sys\nopen('secret.txt', 'w').write('victim data')\n"
             "print('uid', os.getuid(), flush=True)\nimport time; time.sleep(60)")

    async def body(rig: Rig) -> None:
        await rig.start("victim", [py, "-c", plant])
        await log_has(rig, "victim", "uid")
        victim_uid = rig.driver.status("victim")["uid"]
        await rig.driver.stop("victim", 1, "stopped on request")
        await rig.report("victim", "stopped")
        secret = os.path.join(_work(rig, "victim"), "secret.txt")
        for path in (_work(rig, "victim"), secret):  # kept for inspection, but root's
            st = os.lstat(path)
            assert (st.st_uid, st.st_gid) == (0, 0)
        assert stat.S_IMODE(os.stat(_work(rig, "victim")).st_mode) == 0o700
        probe = (f"import os\ntry:\n    open({secret!r}).read(); print('read', flush=True)\n"
                 f"except OSError as e:\n    print('refused', type(e).__name__, flush=True)\n"
                 f"print('uid', os.getuid(), flush=True)\nimport time; time.sleep(60)")
        await rig.start("reuser", [py, "-c", probe])
        text = await log_has(rig, "reuser", "uid")
        reuser_uid = rig.driver.status("reuser")["uid"]
        assert reuser_uid != victim_uid
        assert "refused" in text and "read\n" not in text
        # The victim's next run takes its files back under its own (new) user.
        await rig.driver.start("victim", 2, {"name": "victim", "driver": "exec", "command": [py, "-c", plant],
                                             "members": 1, "cpu": 0, "mem": 0, "restart": "on-failure"})
        await log_has(rig, "victim", "uid", timeout=10)
        again = rig.driver.status("victim")["uid"]
        assert again not in (victim_uid, reuser_uid)
        assert os.lstat(secret).st_uid == again
    run(tmp_path, body)
