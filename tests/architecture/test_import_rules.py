"""The house rules of imports, checked on the source (every import, also those inside functions).

    core          -> core
    agent.config, agent.identity, agent.secretbox, agent.datadir, agent.telemetry, agent.certs -> core
    agent.keyring -> core, agent.secretbox
    agent.admission -> core, agent.telemetry
    agent.httpedge -> core, agent.identity, agent.admission, agent.client.schema (bodies are decoded by the wire
                      schema)
    agent.client  -> core, agent.client
    agent.server  -> core, agent.config, agent.identity, agent.httpedge, agent.telemetry, agent.secretbox,
                     agent.keyring, agent.client, agent.server
    agent.node    -> core, agent.config, agent.identity, agent.httpedge, agent.telemetry, agent.secretbox,
                     agent.keyring, agent.client, agent.node
    agent.ops     -> core, agent.config, agent.identity, agent.secretbox, agent.keyring, agent.certs, agent.client,
                     agent.ops (the doctor also probes agent.node.isolation and agent.node.confine)
    agent.daemon  -> everything in agent (the composition root)
    cli           -> core, cli, agent.config, agent.identity, agent.secretbox, agent.certs, agent.client, agent.ops
                     (``canidae agent run`` starts agent.daemon; ``agent init`` writes the cluster's keys)

and no import cycle between modules. ARCHITECTURE.md explains why.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDERS = {"core": "canidae.core", "agent": "canidae.agent", "cli": "canidae.cli"}

ALLOWED: dict[str, tuple[str, ...]] = {
    "canidae.core": ("canidae.core",),
    "canidae.agent": ("canidae.core",),
    "canidae.agent.config": ("canidae.core",),
    "canidae.agent.identity": ("canidae.core",),
    "canidae.agent.httpedge": ("canidae.core", "canidae.agent.identity", "canidae.agent.admission",
                               "canidae.agent.client.schema"),
    "canidae.agent.admission": ("canidae.core", "canidae.agent.telemetry"),
    "canidae.agent.client": ("canidae.core", "canidae.agent.client"),
    "canidae.agent.secretbox": ("canidae.core",),
    "canidae.agent.keyring": ("canidae.core", "canidae.agent.secretbox"),
    "canidae.agent.datadir": ("canidae.core",),
    "canidae.agent.telemetry": ("canidae.core",),
    "canidae.agent.certs": ("canidae.core",),
    "canidae.agent.server": ("canidae.core", "canidae.agent.config", "canidae.agent.identity", "canidae.agent.httpedge",
                             "canidae.agent.telemetry", "canidae.agent.secretbox", "canidae.agent.client",
                             "canidae.agent.server", "canidae.agent.keyring"),
    "canidae.agent.node": ("canidae.core", "canidae.agent.config", "canidae.agent.identity", "canidae.agent.httpedge",
                           "canidae.agent.telemetry", "canidae.agent.secretbox", "canidae.agent.client",
                           "canidae.agent.node", "canidae.agent.keyring"),
    "canidae.agent.ops": ("canidae.core", "canidae.agent.config", "canidae.agent.identity", "canidae.agent.secretbox",
                          "canidae.agent.certs", "canidae.agent.client", "canidae.agent.ops", "canidae.agent.keyring"),
    "canidae.agent.daemon": ("canidae.core", "canidae.agent"),
    "canidae.cli": ("canidae.core", "canidae.cli", "canidae.agent.config", "canidae.agent.identity",
                    "canidae.agent.secretbox", "canidae.agent.certs", "canidae.agent.client", "canidae.agent.ops"),
}
EXCEPTIONS = {
    ("canidae.agent.ops.doctor", "canidae.agent.node.isolation"),  # probes isolation as the node runtime will
    ("canidae.agent.ops.doctor", "canidae.agent.node.confine"),  # and which confinement it can give
    ("canidae.cli.agent", "canidae.agent.daemon"),  # `canidae agent run` is the agent process
}


def modules() -> dict[str, str]:
    out = {}
    for folder, package in FOLDERS.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.join(ROOT, folder))[:-3]
                parts = [p for p in rel.split(os.sep) if p != "__init__"]
                out[".".join([package, *parts])] = os.path.join(dirpath, f)
    return out


def imports_of(path: str, module: str) -> list[tuple[str, bool]]:
    """(imported canidae module, at module level?) for every import in the file."""
    tree = ast.parse(open(path).read(), path)
    top = {id(n) for n in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("canidae."):
                found.append((name, id(node) in top))
    return found


def rule_for(module: str) -> tuple[str, ...]:
    best = max((k for k in ALLOWED if module == k or module.startswith(k + ".")), key=len)
    return ALLOWED[best]


def resolve(name: str, known: dict[str, str]) -> str | None:
    """The module an imported name refers to (``from pkg import mod`` names a module too)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def test_every_import_follows_the_rules_of_its_room():
    known = modules()
    bad = []
    for module, path in known.items():
        allowed = rule_for(module)
        for name, _ in imports_of(path, module):
            target = resolve(name, known)
            if target is None or target == module:
                continue
            if target in ("canidae.agent",) or (module, target) in EXCEPTIONS:
                continue
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                bad.append(f"{module} imports {target}")
    assert not bad, "imports across the house rules:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycles_between_modules():
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for name, _ in imports_of(path, module):
            target = resolve(name, known)
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if seen.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in seen:
                visit(n)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The rules can fail: a core module importing the agent is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from canidae.agent.server import control\n")
    found = imports_of(str(bad), "canidae.core.bad")
    assert ("canidae.agent.server", False) in found
    assert not any(t.startswith("canidae.agent") for t in rule_for("canidae.core.bad"))


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["pack", "--help"]])
def test_the_command_line_starts_without_server_code(argv):
    code = ("import sys, runpy; sys.argv = ['canidae', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('canidae', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('canidae.agent.server', 'canidae.agent.node',"
            " 'canidae.agent.daemon', 'pysyncobj', 'uvicorn', 'starlette')))\n"
            "print('LOADED', ','.join(bad), file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    loaded = [line for line in p.stderr.splitlines() if line.startswith("LOADED")]
    assert loaded == ["LOADED "], p.stderr[-2000:]


def test_json_pack_list_is_answered_without_the_command_tree():
    """``canidae --json pack list`` (``canidae.cli.fastpath``) loads no typer, rich, httpx,
    cryptography, Raft or server code: scripts call it in loops."""
    heavy = ("typer", "rich", "httpx", "cryptography", "pysyncobj", "click", "starlette", "uvicorn",
             "canidae.cli.main", "canidae.agent.server", "canidae.agent.node", "canidae.agent.daemon")
    code = f"import sys\nimport canidae.cli.fastpath\nprint(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr[-2000:]
