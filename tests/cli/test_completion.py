"""The generated shell completions really complete: bash and fish are driven through their
completion machinery in a subprocess; zsh is syntax-checked."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASH_SCRIPT = ROOT / "completions" / "canidae.bash"
ZSH_SCRIPT = ROOT / "completions" / "_canidae"
FISH_SCRIPT = ROOT / "completions" / "canidae.fish"

# Stands in for `canidae` when a completion asks the cluster for names, answering the way
# `pack list --json` / `node list --json` do.
FAKE_CANIDAE = """#!/bin/sh
echo "noise on stderr" >&2
case "$*" in
  *"pack list --json --stale"*) echo '[{"name": "web", "node": "n1"}, {"name": "db", "node": "n2"}]' ;;
  *"node list --json --stale"*) echo '{"nodes": [{"id": "n1", "zone": "z1"}, {"id": "n2", "zone": "z2"}]}' ;;
  *) exit 3 ;;
esac
"""
FAILING_CANIDAE = """#!/bin/sh
echo "canidae: error: cluster unavailable" >&2
exit 3
"""


def fake_path(tmp_path: Path, script: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "canidae"
    exe.write_text(script)
    exe.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def isolated_path(tmp_path: Path) -> str:
    """PATH without any real `canidae`, so nothing is asked of a cluster."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "canidae").exists()]
    return os.pathsep.join(dirs)


# ---------------------------------------------------------------------------------------------
# bash


def bash_complete(lines: list[str], path: str, cwd: Path | None = None) -> tuple[list[list[str]], str]:
    """COMPREPLY for each command line (completing its last word; a trailing space starts a new
    word), computed by the generated completion function in one bash process."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = [f"source {BASH_SCRIPT}"]
    for line in lines:
        words = line.split(" ")
        quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
        script += [
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}",
            f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=()",
            "_canidae",
            "printf '%s\\n' \"${COMPREPLY[*]}\"",
        ]
    proc = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", "\n".join(script)],
        capture_output=True, text=True, check=False, timeout=60, cwd=cwd,
        env={"PATH": path, "HOME": str(cwd or ROOT), "LC_ALL": "C"},
    )
    assert proc.returncode == 0, proc.stderr
    replies = [sorted(out.split()) for out in proc.stdout.split("\n")[: len(lines)]]
    return replies, proc.stderr


def test_bash_completes_nouns_verbs_and_options(tmp_path: Path) -> None:
    replies, err = bash_complete(
        [
            "canidae pa",
            "canidae pack sp",
            "canidae pack spawn --me",
            "canidae pack spawn web --driver ",
            "canidae --js",
            "canidae --addr 127.0.0.1:7400 pack sh",
            "canidae pack spawn web --cpu 500 ",
            "canidae scale-",
        ],
        isolated_path(tmp_path),
    )
    assert err == ""
    assert "pack" in replies[0]
    assert replies[1] == ["spawn"]
    assert replies[2] == ["--mem", "--members"]
    assert replies[3] == ["exec", "virtual"]
    assert replies[4] == ["--json"]
    assert replies[5] == ["show"]
    assert replies[6] == []  # a free-form positional: nothing invented
    assert replies[7] == ["scale-test"]


def test_bash_completes_files_for_path_options(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text("")
    replies, _ = bash_complete(["canidae pack spawn web --file we"], isolated_path(tmp_path), cwd=tmp_path)
    assert replies == [["web.toml"]]


def test_bash_completes_live_pack_and_node_names(tmp_path: Path) -> None:
    replies, err = bash_complete(
        [
            "canidae pack show ",
            "canidae pack show w",
            "canidae node drain ",
            "canidae pack spawn web --node n",
            "canidae drill zone ",
        ],
        fake_path(tmp_path, FAKE_CANIDAE),
    )
    assert err == ""  # the stand-in's stderr noise is swallowed
    assert replies == [["db", "web"], ["web"], ["n1", "n2"], ["n1", "n2"], ["z1", "z2"]]


def test_bash_names_fail_silently(tmp_path: Path) -> None:
    replies, err = bash_complete(["canidae pack show ", "canidae node drain n"], fake_path(tmp_path, FAILING_CANIDAE))
    assert replies == [[], []]
    assert err == ""


def test_bash_reaches_every_command(tmp_path: Path) -> None:
    """Every command of the tree completes from its prefix (minus its last letter)."""
    spec = importlib.util.spec_from_file_location("canidae_gen_docs_completion", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    gen_docs = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gen_docs  # dataclasses look their module up there
    spec.loader.exec_module(gen_docs)
    paths = [cmd.path for cmd in gen_docs.command_tree().walk() if len(cmd.path) > 1]
    lines = [" ".join(p[:-1] + (p[-1][:-1],)) for p in paths]
    replies, err = bash_complete(lines, isolated_path(tmp_path))
    assert err == ""
    for p, reply in zip(paths, replies):
        assert p[-1] in reply, " ".join(p)


# ---------------------------------------------------------------------------------------------
# zsh and fish


def test_zsh_script_parses() -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    proc = subprocess.run([zsh, "-n", str(ZSH_SCRIPT)], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_zsh_script_defines_the_completion() -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    # Sourced outside completion it registers itself with compdef; define a stand-in to see that.
    script = f"compdef() {{ print -r -- compdef $* }}; source {ZSH_SCRIPT}; whence -w _canidae__pack__spawn"
    proc = subprocess.run([zsh, "-f", "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "compdef _canidae canidae" in proc.stdout
    assert "_canidae__pack__spawn: function" in proc.stdout


def fish_complete(line: str, path: str, home: Path) -> list[str]:
    fish = shutil.which("fish")
    if fish is None:
        pytest.skip("fish is not installed")
    proc = subprocess.run(
        [fish, "--no-config", "-c", f"source {FISH_SCRIPT}; complete -C '{line}'"],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": path, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stderr
    return sorted(row.split("\t")[0] for row in proc.stdout.splitlines())


def test_fish_script_parses() -> None:
    fish = shutil.which("fish")
    if fish is None:
        pytest.skip("fish is not installed")
    proc = subprocess.run([fish, "--no-config", "-n", str(FISH_SCRIPT)], capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_fish_completes(tmp_path: Path) -> None:
    path = isolated_path(tmp_path)
    assert "pack" in fish_complete("canidae pa", path, tmp_path)
    assert fish_complete("canidae pack sp", path, tmp_path) == ["spawn"]
    assert fish_complete("canidae pack spawn --me", path, tmp_path) == ["--mem", "--members"]
    assert fish_complete("canidae pack spawn web --driver ", path, tmp_path) == ["exec", "virtual"]


def test_fish_completes_live_names(tmp_path: Path) -> None:
    path = fake_path(tmp_path, FAKE_CANIDAE)
    assert fish_complete("canidae pack show ", path, tmp_path) == ["db", "web"]
    assert fish_complete("canidae node drain ", path, tmp_path) == ["n1", "n2"]
