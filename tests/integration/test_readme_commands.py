"""Every command of the README's "Using it" block runs, as written and in order, against a real
cluster on this host: the README cannot drift from the command line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from harness import pick_base_port

README = Path(__file__).resolve().parents[2] / "README.md"


def using_it_commands() -> list[str]:
    """The indented ``canidae ...`` lines of the first code block under ``## Using it``."""
    text = README.read_text()
    section = text[text.index("## Using it"):]
    lines, started = [], False
    for line in section.splitlines()[1:]:
        if line.startswith("    canidae "):
            started = True
            lines.append(line.strip())
        elif started:
            break
    return lines


def test_the_readme_lists_every_noun_of_the_command_line() -> None:
    commands = using_it_commands()
    assert commands[0].startswith("canidae cluster up") and commands[-1] == "canidae cluster down"
    nouns = {shlex.split(c)[1] for c in commands}
    assert {"cluster", "node", "pack", "ring", "place", "events", "history"} <= nouns


def test_every_command_of_the_using_it_section_runs(tmp_path: Path) -> None:
    data, home = tmp_path / "data", tmp_path / "home"
    env = {**os.environ, "HOME": str(home)}
    for key in ("CANIDAE_ADDR", "CANIDAE_TOKEN", "CANIDAE_CONFIG"):
        env.pop(key, None)
    port = pick_base_port(3, 1)
    up = False
    try:
        for line in using_it_commands():
            argv = shlex.split(line)[1:]
            # Only where the cluster lives changes: its own ports and directory, never the defaults.
            if argv[:2] == ["cluster", "up"]:
                argv += ["--data-dir", str(data), "--base-port", str(port)]
                up = True
            elif argv[:2] == ["cluster", "down"]:
                argv += ["--data-dir", str(data)]
            p = subprocess.run([sys.executable, "-m", "canidae", *argv], capture_output=True, text=True, env=env,
                               timeout=120)
            assert p.returncode == 0, f"README: {line!r} exited {p.returncode}: {p.stderr.strip()}"
            if argv[:2] == ["cluster", "down"]:
                up = False
    finally:
        if up:
            subprocess.run([sys.executable, "-m", "canidae", "cluster", "down", "--data-dir", str(data)],
                           capture_output=True, env=env, timeout=60)
