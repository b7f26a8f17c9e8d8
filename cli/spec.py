"""A pack spec as ``pack create`` and ``pack spawn`` build it: a TOML spec file, then the options
given on the command line (an option overrides the file only when it is given), checked with the
same rules whichever way a field came in. A bad field is an ``InvalidInput`` (exit 2) naming it.

The file holds the wire form of a spec (``canidae.agent.client.schema.SpecIn``)::

    driver = "exec"                 # default: exec when there is a command, else virtual
    command = ["python3", "-m", "http.server"]
    members = 2
    cpu = 300                       # millicores
    mem = 128                       # MiB
    restart = "always"              # never | on-failure | always
    env = { GREETING = "hi" }       # not secret: shown by show, history and the API
    network = "none"                # host (default) | none: an empty network namespace
    [secrets]                       # sealed by the agent, given only to the members
    DB_PASSWORD = "..."
    [constraints]                   # zone, region, cell, node, spread (zone|region|cell), group
    zone = "z1"

It does no I/O but reading that one file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from canidae.agent.client.schema import SpecIn, convert
from canidae.core.errors import InvalidInput
from canidae.core.types import SEALED_PREFIX, Driver, PackSpec


def read_spec_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"cannot read pack spec {path}: {e}") from None


def _pairs(option: str, items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{option} {item!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


def _table(spec: dict[str, Any], key: str) -> dict[str, Any]:
    table = spec.get(key, {})
    if not isinstance(table, dict):
        raise InvalidInput(f"pack spec: field {key!r} must be a table of strings")
    return table


def merge_spec(name: str, file_spec: dict[str, Any], options: dict[str, Any], command: list[str] | None,
               pins: dict[str, Any], env: list[str] | None, secrets: list[str] | None = None) -> dict[str, Any]:
    """The spec: ``file_spec``, overridden by the ``options``, ``pins``, ``env`` and ``secrets``
    that were given (None: not given). ``name`` (the command's argument) names the pack."""
    spec = dict(file_spec)
    spec.pop("name", None)
    spec.update({k: v for k, v in options.items() if v is not None})
    if command:
        spec["command"] = list(command)
    given_pins = {k: v for k, v in pins.items() if v is not None}
    if given_pins:
        constraints = spec.get("constraints", {})
        if not isinstance(constraints, dict):
            raise InvalidInput("pack spec: field 'constraints' must be a table")
        spec["constraints"] = {**constraints, **given_pins}
    if env:
        spec["env"] = {**_table(spec, "env"), **_pairs("--env", env)}
    if secrets:
        spec["secrets"] = {**_table(spec, "secrets"), **_pairs("--secret", secrets)}
    spec["name"] = name
    if "driver" not in spec:
        spec["driver"] = Driver.EXEC.value if spec.get("command") else Driver.VIRTUAL.value
    check_spec(spec)
    return spec


def _field(name: str, why: str) -> InvalidInput:
    return InvalidInput(f"pack spec: field {name!r} {why}")


def check_spec(spec: dict[str, Any]) -> PackSpec:
    """Check every field of ``spec`` with the rules of the API (the wire schema's ``SpecIn``: the
    same struct the agent decodes a request into); return it typed."""
    typed = convert(spec, SpecIn, "pack spec")
    if typed.driver == Driver.EXEC.value and not typed.command:
        raise _field("command", "is needed by the exec driver (after '--', or command = [...] in the file)")
    # Secrets are sealed by the agent that takes the request: check the rest with placeholders.
    return typed.to_core({k: SEALED_PREFIX for k in typed.secrets})
