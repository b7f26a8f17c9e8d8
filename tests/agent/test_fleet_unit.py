"""The systemd unit ``fleet bootstrap`` renders is checked with ``systemd-analyze verify`` before
it is started on a host; here the same check runs on a rendered unit on this machine: it passes
for the unit as rendered, and fails for a unit whose program is missing or that has a bad key
(which systemd-analyze only warns about)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from canidae.agent.ops.fleet import remote
from canidae.agent.ops.fleet.inventory import parse_inventory

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (systemd)")


def _host(install_dir: Path):
    doc = {"cluster": {"name": "lab"},
           "hosts": [{"name": "s1", "address": "10.1.0.1", "role": "server", "install_dir": str(install_dir)}]}
    return parse_inventory(doc, str(install_dir.parent / "lab.toml")).hosts[0]


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", remote.systemd_verify(str(unit))], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_rendered_unit_verifies(tmp_path: Path) -> None:
    h = _host(tmp_path / "canidae")
    venv_bin = tmp_path / "canidae" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    os.symlink(sys.executable, venv_bin / "python")
    unit = tmp_path / remote.unit_name(h)
    unit.write_text(remote.systemd_unit(h))
    r = _verify(unit)
    assert r.returncode == 0, r.stderr

    # What the check refuses: the program ExecStart names is missing...
    os.unlink(venv_bin / "python")
    r = _verify(unit)
    assert r.returncode == 1 and "not executable" in r.stderr, r.stderr
    os.symlink(sys.executable, venv_bin / "python")
    # ... and a key systemd does not know (it only warns about that, with exit 0).
    unit.write_text(remote.systemd_unit(h).replace("RestartSec=", "RestartSecs="))
    r = _verify(unit)
    assert r.returncode == 1 and "RestartSecs" in r.stderr, r.stderr
