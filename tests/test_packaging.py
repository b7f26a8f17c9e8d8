"""The distribution installs canidae.core/agent/cli and never top-level core, agent or cli packages."""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "pyproject.toml")), reason="needs the source tree")
def test_wheel_holds_only_the_canidae_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), ROOT], check=True, capture_output=True, timeout=300)
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"canidae"}
    for module in ("canidae/core/state.py", "canidae/agent/daemon.py", "canidae/cli/main.py", "canidae/py.typed"):
        assert module in names
    # Every module of the source tree is in the wheel (a package left out of pyproject's list
    # works in an editable install and breaks every real one).
    for top in ("core", "agent", "cli"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)
                    assert f"canidae/{rel}" in names, f"{rel} is not in the wheel"


def test_installed_distribution_records_no_top_level_core_agent_or_cli():
    from importlib.metadata import distributions
    # The installed copy's record, not the egg-info a build may leave in the source tree.
    installed = [d for d in distributions(name="canidae") if "site-packages" in str(d.locate_file(""))]
    assert installed, "canidae is not installed"
    for dist in installed:
        tops = {str(f).split("/")[0] for f in dist.files or []}
        assert not tops & {"core", "agent", "cli"}
