"""The fleet inventory: the TOML file that lists a cluster's hosts, read and checked, and the agent
config each host gets.

A file has one ``[cluster]`` table of settings and one ``[[hosts]]`` table per host::

    [cluster]
    name = "prod"                 # default: the file's name without .toml
    user = "root"                 # SSH defaults for every host (a host may override them)
    key = "~/.ssh/id_ed25519"
    port = 22
    known_hosts = "~/.ssh/known_hosts"
    install_dir = "/opt/canidae"  # the venv, the agent's config and data go here on each host
    python = "python3"            # the interpreter that makes the venv (>= 3.11)
    api_port = 7100
    raft_port = 7200

    [[hosts]]
    name = "s1"                   # the node id
    address = "10.0.0.1"          # SSH to it; the agent binds it
    role = "server"               # or "client"
    zone = "z1"
    region = "r1"
    cell = "c1"
    capacity = { cpu = 4000, mem = 8192, packs = 1000 }   # default: what the host has

Every problem is an ``InvalidInput`` (exit 2) naming the field (``hosts[2].role``), and nothing
is done on a host before the whole file is valid. Relative paths (``key``, ``known_hosts``) are
relative to the inventory file. This module does no I/O besides reading that file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from canidae.agent.config import AgentConfig, ServerPeer, config_from_mapping, config_to_mapping
from canidae.agent.identity import Identity
from canidae.core.errors import InvalidInput
from canidae.core.types import NAME_RE, Resources, Role

SERVER_COUNTS = (1, 3, 5, 7)
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_CLUSTER_KEYS = {"name", "user", "key", "port", "known_hosts", "install_dir", "python", "api_port", "raft_port",
                 "connect_timeout_s"}
_HOST_KEYS = {"name", "address", "port", "user", "key", "role", "zone", "region", "cell", "capacity",
              "install_dir", "python", "api_port", "raft_port"}
_CAPACITY_KEYS = {"cpu", "mem", "packs"}


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    user: str
    key: str | None          # SSH private key file; None: the SSH agent and ~/.ssh defaults
    role: Role
    zone: str
    region: str
    cell: str
    capacity: Resources | None  # None: what the host has (found by the probe)
    install_dir: str
    python: str
    api_port: int
    raft_port: int

    @property
    def api(self) -> str:
        return f"{self.address}:{self.api_port}"

    @property
    def raft(self) -> str:
        return f"{self.address}:{self.raft_port}" if self.role is Role.SERVER else ""

    @property
    def data_dir(self) -> str:
        return os.path.join(self.install_dir, "data")

    @property
    def config_path(self) -> str:
        return os.path.join(self.install_dir, "agent.toml")


@dataclass(frozen=True)
class Inventory:
    path: str
    name: str
    known_hosts: str
    connect_timeout_s: float
    hosts: tuple[Host, ...] = field(default_factory=tuple)

    @property
    def servers(self) -> list[Host]:
        return [h for h in self.hosts if h.role is Role.SERVER]

    @property
    def clients(self) -> list[Host]:
        return [h for h in self.hosts if h.role is Role.CLIENT]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise InvalidInput(f"{name!r} is not a host of {self.path}")

    @property
    def state_dir(self) -> str:
        """Where the operator's side of this fleet lives: the cluster identity, the secret keys
        of every agent, the hosts that failed last time. Next to the inventory, mode 0700."""
        return os.path.join(os.path.dirname(self.path), f".{self.name}.fleet")

    def server_peers(self) -> tuple[ServerPeer, ...]:
        return tuple(ServerPeer(h.name, h.api, h.raft) for h in self.servers)


# ---------------------------------------------------------------------------------------------- reading


def load_inventory(path: str) -> Inventory:
    """Read and check ``path``; raise ``InvalidInput`` naming the first bad field."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidInput(f"inventory {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"inventory {path} is a directory") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"inventory {path} is not valid TOML: {e}") from None
    return parse_inventory(doc, path)


def parse_inventory(doc: Mapping[str, Any], path: str) -> Inventory:
    where = os.path.dirname(path)

    def fail(msg: str) -> InvalidInput:
        return InvalidInput(f"inventory {os.path.basename(path)}: {msg}")

    unknown = sorted(set(doc) - {"cluster", "hosts"})
    if unknown:
        raise fail(f"unknown table {unknown[0]!r} (expected [cluster] and [[hosts]])")
    cluster = doc.get("cluster", {})
    if not isinstance(cluster, Mapping):
        raise fail("cluster must be a table")
    _no_unknown(fail, "cluster", cluster, _CLUSTER_KEYS)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = _name(fail, "cluster.name", cluster.get("name", stem if NAME_RE.fullmatch(stem) else "fleet"))
    defaults = {
        "user": _text(fail, "cluster.user", cluster.get("user", "root")),
        "key": _path(fail, "cluster.key", cluster.get("key"), where),
        "port": _port(fail, "cluster.port", cluster.get("port", 22)),
        "install_dir": _abs_dir(fail, "cluster.install_dir", cluster.get("install_dir", "/opt/canidae")),
        "python": _text(fail, "cluster.python", cluster.get("python", "python3")),
        "api_port": _port(fail, "cluster.api_port", cluster.get("api_port", 7100)),
        "raft_port": _port(fail, "cluster.raft_port", cluster.get("raft_port", 7200)),
    }
    known_hosts = _path(fail, "cluster.known_hosts", cluster.get("known_hosts", "~/.ssh/known_hosts"), where)
    assert known_hosts is not None
    timeout = cluster.get("connect_timeout_s", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise fail(f"cluster.connect_timeout_s must be a number of seconds in (0, 600], got {timeout!r}")

    raw_hosts = doc.get("hosts")
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise fail("hosts is missing: list each host in a [[hosts]] table")
    hosts = [_host(fail, i, h, defaults, where) for i, h in enumerate(raw_hosts)]
    seen: dict[str, str] = {}
    for i, h in enumerate(hosts):
        if h.name in seen:
            raise fail(f"hosts[{i}].name {h.name!r} is used twice")
        seen[h.name] = h.name
    binds: dict[tuple[str, int], str] = {}
    for i, h in enumerate(hosts):
        ports = [("api_port", h.api_port)] + ([("raft_port", h.raft_port)] if h.role is Role.SERVER else [])
        for key, port in ports:
            other = binds.get((h.address, port))
            if other is not None:
                raise fail(f"hosts[{i}].{key} {port} on {h.address} is already taken by {other}")
            binds[(h.address, port)] = f"{h.name}"
        if h.role is Role.SERVER and h.api_port == h.raft_port:
            raise fail(f"hosts[{i}]: api_port and raft_port are both {h.api_port}")
    installs: dict[tuple[str, str], str] = {}
    for i, h in enumerate(hosts):
        key2 = (h.address, h.install_dir)
        if key2 in installs:
            raise fail(f"hosts[{i}].install_dir {h.install_dir} on {h.address} is already {installs[key2]}'s")
        installs[key2] = h.name
    n_servers = sum(h.role is Role.SERVER for h in hosts)
    if n_servers not in SERVER_COUNTS:
        raise fail(f"hosts: {n_servers} server(s); a Raft group needs 1, 3, 5 or 7 (role = \"server\")")
    return Inventory(path, name, known_hosts, float(timeout), tuple(hosts))


def _host(fail: Any, i: int, raw: Any, defaults: Mapping[str, Any], where: str) -> Host:
    at = f"hosts[{i}]"
    if not isinstance(raw, Mapping):
        raise fail(f"{at} must be a table")
    _no_unknown(fail, at, raw, _HOST_KEYS)
    if "name" not in raw:
        raise fail(f"{at}.name is required (the node id)")
    if "address" not in raw:
        raise fail(f"{at}.address is required")
    role_text = raw.get("role", "client")
    try:
        role = Role(role_text)
    except ValueError:
        raise fail(f"{at}.role must be server or client, got {role_text!r}") from None
    capacity = None
    if "capacity" in raw:
        cap = raw["capacity"]
        if not isinstance(cap, Mapping):
            raise fail(f"{at}.capacity must be a table {{ cpu, mem, packs }}")
        _no_unknown(fail, f"{at}.capacity", cap, _CAPACITY_KEYS)
        capacity = Resources(_positive(fail, f"{at}.capacity.cpu", cap.get("cpu", 4000)),
                             _positive(fail, f"{at}.capacity.mem", cap.get("mem", 8192)),
                             _positive(fail, f"{at}.capacity.packs", cap.get("packs", 1000)))
    return Host(
        name=_name(fail, f"{at}.name", raw["name"]),
        address=_address(fail, f"{at}.address", raw["address"]),
        port=_port(fail, f"{at}.port", raw.get("port", defaults["port"])),
        user=_text(fail, f"{at}.user", raw.get("user", defaults["user"])),
        key=_path(fail, f"{at}.key", raw["key"], where) if "key" in raw else defaults["key"],
        role=role,
        zone=_name(fail, f"{at}.zone", raw.get("zone", "z1")),
        region=_name(fail, f"{at}.region", raw.get("region", "r1")),
        cell=_name(fail, f"{at}.cell", raw.get("cell", "c1")),
        capacity=capacity,
        install_dir=_abs_dir(fail, f"{at}.install_dir", raw.get("install_dir", defaults["install_dir"])),
        python=_text(fail, f"{at}.python", raw.get("python", defaults["python"])),
        api_port=_port(fail, f"{at}.api_port", raw.get("api_port", defaults["api_port"])),
        raft_port=_port(fail, f"{at}.raft_port", raw.get("raft_port", defaults["raft_port"])),
    )


def _no_unknown(fail: Any, at: str, table: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise fail(f"unknown key {at}.{unknown[0]} (known: {', '.join(sorted(known))})")


def _name(fail: Any, key: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise fail(f"{key} must be a name (letters, digits, '-', '_', '.'), got {value!r}")
    return value


def _text(fail: Any, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "\n\0 '\"$`\\;|&<>"):
        raise fail(f"{key} must be a plain non-empty string, got {value!r}")
    return value


def _port(fail: Any, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise fail(f"{key} must be a port 1-65535, got {value!r}")
    return value


def _positive(fail: Any, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(f"{key} must be a positive integer, got {value!r}")
    return value


def _address(fail: Any, key: str, value: Any) -> str:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            if _HOSTNAME.fullmatch(value) and ".." not in value:
                return value
    raise fail(f"{key} must be an IP address or a host name, got {value!r}")


def _path(fail: Any, key: str, value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise fail(f"{key} must be a file path, got {value!r}")
    return os.path.normpath(os.path.join(where, os.path.expanduser(value)))


def _abs_dir(fail: Any, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in "\n\0 '\"$`\\;|&<>*?"):
        raise fail(f"{key} must be an absolute directory path without spaces or quotes, got {value!r}")
    return os.path.normpath(value)


# ---------------------------------------------------------------------------------------------- planning


def agent_config(inv: Inventory, host: Host, identity: Identity, capacity: Resources) -> AgentConfig:
    """The agent config of ``host``: its own node credential, the cluster's public key and admin
    token hash, the Raft password on servers only, its TLS files (in its install dir); validated
    as ``agent run`` will."""
    cfg = AgentConfig(
        node_id=host.name, role=host.role, api=host.api, raft=host.raft, zone=host.zone, region=host.region,
        cell=host.cell, data_dir=host.data_dir, token=identity.node_credential(host.name, host.role),
        identity_public_key=identity.public_key, admin_token_hash=identity.admin_hash,
        cluster_password=identity.cluster_password if host.role is Role.SERVER else "",
        servers=inv.server_peers(), capacity=host.capacity or capacity,
        log_file=os.path.join(host.install_dir, "agent.log"),
        tls_ca=os.path.join(host.install_dir, "ca.pem"), tls_cert=os.path.join(host.install_dir, "agent.pem"),
        tls_key=os.path.join(host.install_dir, "agent.key"))
    return config_from_mapping(config_to_mapping(cfg))


def config_hash(agent_toml: bytes, secret_keys: bytes, wheels_digest: str, supervisor: str,
                tls: bytes = b"") -> str:
    """What a host's agent is: its config, the cluster's secret keys, the wheels it runs, how it
    is supervised and its TLS files. A re-run compares it with the one recorded on the host."""
    h = hashlib.sha256()
    for part in (agent_toml, secret_keys, wheels_digest.encode(), supervisor.encode(), tls):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def select_hosts(inv: Inventory, limit: list[str] | None, failed: list[str] | None) -> list[Host]:
    """The hosts a run acts on: all, or those named by ``--limit`` (``@failed``: the last run's failures)."""
    if not limit:
        return list(inv.hosts)
    names: list[str] = []
    for item in limit:
        for word in (w.strip() for w in item.split(",")):
            if not word:
                continue
            if word == "@failed":
                names.extend(failed or [])
            else:
                inv.host(word)
                names.append(word)
    wanted = set(names)
    return [h for h in inv.hosts if h.name in wanted]


__all__ = ["Host", "Inventory", "agent_config", "config_hash", "load_inventory", "parse_inventory",
           "select_hosts"]
