"""A pack spec as ``pack create`` and ``pack spawn`` build it: a TOML spec file, then the options
given on the command line (an option overrides the file only when it is given), checked with the
same rules whichever way a field came in. A bad field is an ``InvalidInput`` (exit 2) naming it.

The file holds the wire form of a spec (``PACK_SPEC_FIELDS``)::

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

from canidae.core.errors import InvalidInput
from canidae.core.types import (
    CONSTRAINT_FIELDS, NETWORKS, PACK_SPEC_FIELDS, SEALED_PREFIX, Driver, PackSpec, RestartPolicy,
    validate_env_name, validate_name,
)

SPREAD_LEVELS = ("zone", "region", "cell")


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


def _int(spec: dict[str, Any], key: str, lo: int, hi: int | None = None) -> None:
    if key not in spec:
        return
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        limits = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _field(key, f"must be an integer {limits}, got {v!r}")


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise _field(key, f"must be one of {', '.join(allowed)}, got {value!r}")


def check_spec(spec: dict[str, Any]) -> PackSpec:
    """Check every field of ``spec`` (the rules of the API and of the options); return it typed."""
    unknown = sorted(set(spec) - set(PACK_SPEC_FIELDS))
    if unknown:
        raise _field(unknown[0], f"is not a pack spec field (fields: {', '.join(PACK_SPEC_FIELDS[1:])})")
    _int(spec, "cpu", 0)
    _int(spec, "mem", 0)
    _int(spec, "members", 1, 64)
    if "driver" in spec:
        _choice(spec["driver"], "driver", tuple(d.value for d in Driver))
    if "restart" in spec:
        _choice(spec["restart"], "restart", tuple(r.value for r in RestartPolicy))
    command = spec.get("command")
    if command is not None and (not isinstance(command, list) or not all(isinstance(a, str) for a in command)):
        raise _field("command", f"must be a list of strings, got {command!r}")
    env = spec.get("env")
    if env is not None and (not isinstance(env, dict)
                            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise _field("env", "must be a table of strings (KEY = \"VALUE\")")
    secrets = spec.get("secrets")
    if secrets is not None and (not isinstance(secrets, dict)
                                or not all(isinstance(k, str) and isinstance(v, str) for k, v in secrets.items())):
        raise _field("secrets", "must be a table of strings (KEY = \"VALUE\")")
    for table, what in (("env", "env variable"), ("secrets", "secret")):
        for key in spec.get(table) or {}:
            try:
                validate_env_name(what, key)
            except InvalidInput as e:
                raise _field(f"{table}.{key}", e.message) from None
    if "network" in spec:
        _choice(spec["network"], "network", tuple(NETWORKS))
    constraints = spec.get("constraints")
    if constraints is not None:
        if not isinstance(constraints, dict):
            raise _field("constraints", "must be a table")
        bad = sorted(set(constraints) - set(CONSTRAINT_FIELDS))
        if bad:
            raise _field(f"constraints.{bad[0]}", f"is not a constraint (constraints: {', '.join(CONSTRAINT_FIELDS)})")
        for key, value in constraints.items():
            if key == "spread":
                _choice(value, "constraints.spread", SPREAD_LEVELS)
            else:
                try:
                    validate_name(key, value)
                except InvalidInput as e:
                    raise _field(f"constraints.{key}", e.message) from None
    if spec.get("driver") == Driver.EXEC.value and not command:
        raise _field("command", "is needed by the exec driver (after '--', or command = [...] in the file)")
    # Secrets are sealed by the agent that takes the request: check the rest with placeholders.
    sealed = {k: SEALED_PREFIX for k in spec.get("secrets") or {}}
    return PackSpec.from_dict({**spec, "secrets": sealed} if sealed else spec)
