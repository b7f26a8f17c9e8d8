"""Agent configuration: one typed value, read from defaults < TOML file < ``CANIDAE_*`` env < flags.

Invalid configuration is refused with ``InvalidInput`` naming the key (``capacity.cpu must be a
positive integer``). ``write_config`` writes the TOML (with tomli-w) with mode 0600, because it
holds this agent's own credential (``token``) and, on servers, the cluster password. It never
holds the admin token, only its hash, nor the key that issues credentials, only its public half
(``canidae.agent.identity``).

TLS (``canidae.agent.certs``): the ``[tls]`` table names the cluster CA's certificate (``ca``), this
agent's certificate (``cert``) and key (``key``); all three are required unless ``insecure_http =
true``, which serves plain HTTP and is refused for any address that is not loopback.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

import tomli_w
from canidae.core.errors import InvalidInput
from canidae.core.types import Location, Node, Resources, Role, validate_name


@dataclass(frozen=True)
class RaftSettings:
    """Raft timing and durability settings (see the README's design notes for the measurements)."""

    election_min_s: float = 0.25
    election_max_s: float = 0.5
    heartbeat_s: float = 0.05
    tick_s: float = 0.05
    leader_fallback_s: float = 0.9   # a cut-off leader steps down after this (pysyncobj default: 30 s)
    fsync: bool = True
    compaction_min_entries: int = 20_000
    compaction_min_time_s: float = 300.0
    # The Raft port (see agent/server/raftwire.py). A peer that has not proved the cluster
    # password may announce only a handshake-sized frame; one that has, at most max_frame_bytes,
    # which also bounds the largest command (an eighth of it, for pickle and Fernet overhead).
    max_frame_bytes: int = 64 * 1024 * 1024
    max_handshake_frame_bytes: int = 4096
    max_unauthenticated_per_address: int = 4
    # Group commit splits a batch whose encoded entry is larger: kept whole under pysyncobj's
    # 64 KiB append-entries batch even after pickle doubles bytes above 0x7f.
    entry_split_bytes: int = 32 * 1024


@dataclass(frozen=True)
class AuditSettings:
    """The agent's audit log (``canidae.agent.node.auditlog``): how often its head is signed and
    committed through Raft, the size at which a segment is closed, and how many refused requests
    per second are written (more are counted, so a flood of bad credentials cannot fill the disk)."""

    checkpoint_s: float = 10.0
    segment_bytes: int = 16 * 1024 * 1024
    denials_per_s: float = 20.0
    denial_burst: int = 200


@dataclass(frozen=True)
class ServerPeer:
    id: str
    api: str
    raft: str


@dataclass(frozen=True)
class AgentConfig:
    node_id: str
    role: Role = Role.SERVER
    api: str = "127.0.0.1:7100"
    raft: str = ""  # servers only
    zone: str = "z1"
    region: str = "r1"
    cell: str = "c1"
    data_dir: str = "./canidae-data"
    token: str = ""  # this agent's own node credential
    identity_public_key: str = ""  # checks every agent's node credential
    admin_token_hash: str = ""  # checks the admin token
    cluster_password: str = ""
    servers: tuple[ServerPeer, ...] = ()
    capacity: Resources = Resources(4000, 8192, 1000)
    weight: float = 1.0
    raft_settings: RaftSettings = field(default_factory=RaftSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    heartbeat_interval_s: float = 0.5
    heartbeat_ttl_s: float = 1.5
    max_body_bytes: int = 8 * 1024 * 1024
    request_timeout_s: float = 5.0
    # How long the HTTP server keeps an idle connection open; the same on every agent of a cluster
    # (each drops its own pooled connections to the others well before: ``client.link.idle_s``).
    keep_alive_s: float = 30.0
    log_file: str = ""
    tls_ca: str = ""    # the cluster CA's certificate: the agents this one calls must show one it signed
    tls_cert: str = ""  # this agent's certificate and key, served on its API
    tls_key: str = ""
    insecure_http: bool = False  # plain HTTP: throwaway loopback clusters only

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"

    @property
    def peer_ca(self) -> str | None:
        """What this agent's links to other agents trust: the CA file, or None for plain HTTP."""
        return None if self.insecure_http else self.tls_ca

    @property
    def location(self) -> Location:
        return Location(self.zone, self.region, self.cell)

    def node(self) -> Node:
        return Node(id=self.node_id, location=self.location, capacity=self.capacity, weight=self.weight,
                    role=self.role, address=self.api)

    @property
    def server_apis(self) -> list[str]:
        return [s.api for s in self.servers]

    def raft_peers(self) -> list[str]:
        return [s.raft for s in self.servers if s.raft != self.raft]

    def api_for_raft(self, raft_addr: str | None) -> str | None:
        for s in self.servers:
            if s.raft == raft_addr:
                return s.api
        return None


def _addr(key: str, value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise InvalidInput(f"{key} must be host:port, got {value!r}")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"{key} must be host:port with a port 1-65535, got {value!r}")
    return value


def _pos_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput(f"{key} must be a positive integer, got {value!r}")
    return value


def _pos_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidInput(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _keep_alive(value: Any) -> float:
    """``keep_alive_s`` from the file (a number) or from ``CANIDAE_KEEP_ALIVE_S`` (text)."""
    try:
        seconds = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0.1 <= seconds <= 3600:
        raise InvalidInput(f"keep_alive_s (CANIDAE_KEEP_ALIVE_S) must be a number of seconds in 0.1..3600, "
                           f"got {value!r}")
    return seconds


_TOP_KEYS = {"node_id", "role", "api", "raft", "zone", "region", "cell", "data_dir", "token",
             "identity_public_key", "admin_token_hash",
             "cluster_password", "servers", "capacity", "weight", "raft_settings", "heartbeat",
             "max_body_bytes", "request_timeout_s", "keep_alive_s", "log_file", "audit", "tls", "insecure_http"}


def config_from_mapping(d: Mapping[str, Any]) -> AgentConfig:
    """Validate a parsed TOML (or merged) mapping into an ``AgentConfig``."""
    unknown = sorted(set(d) - _TOP_KEYS)
    if unknown:
        raise InvalidInput(f"unknown configuration key {unknown[0]!r}")
    if "node_id" not in d:
        raise InvalidInput("node_id is required")
    node_id = validate_name("node", d["node_id"])
    try:
        role = Role(d.get("role", "server"))
    except ValueError:
        raise InvalidInput(f"role must be server or client, got {d.get('role')!r}") from None
    cap = d.get("capacity", {})
    if not isinstance(cap, Mapping):
        raise InvalidInput("capacity must be a table")
    capacity = Resources(_pos_int("capacity.cpu", cap.get("cpu", 4000)),
                         _pos_int("capacity.mem", cap.get("mem", 8192)),
                         _pos_int("capacity.packs", cap.get("packs", 1000)))
    servers = []
    for i, s in enumerate(d.get("servers", [])):
        if not isinstance(s, Mapping):
            raise InvalidInput(f"servers[{i}] must be a table")
        servers.append(ServerPeer(validate_name("node", s.get("id")), _addr(f"servers[{i}].api", s.get("api")),
                                  _addr(f"servers[{i}].raft", s.get("raft"))))
    rs = d.get("raft_settings", {})
    defaults = RaftSettings()
    raft_kwargs: dict[str, Any] = {}
    for f in fields(RaftSettings):
        if f.name in rs:
            v = rs[f.name]
            if f.name == "fsync":
                if not isinstance(v, bool):
                    raise InvalidInput(f"raft_settings.fsync must be true or false, got {v!r}")
                raft_kwargs[f.name] = v
            elif isinstance(getattr(defaults, f.name), int):
                raft_kwargs[f.name] = _pos_int(f"raft_settings.{f.name}", v)
            else:
                raft_kwargs[f.name] = _pos_float(f"raft_settings.{f.name}", v)
    unknown_rs = sorted(set(rs) - {f.name for f in fields(RaftSettings)})
    if unknown_rs:
        raise InvalidInput(f"unknown configuration key 'raft_settings.{unknown_rs[0]}'")
    hb = d.get("heartbeat", {})
    tls = d.get("tls", {})
    if not isinstance(tls, Mapping):
        raise InvalidInput("tls must be a table (ca, cert, key)")
    unknown_tls = sorted(set(tls) - {"ca", "cert", "key"})
    if unknown_tls:
        raise InvalidInput(f"unknown configuration key 'tls.{unknown_tls[0]}'")
    insecure = d.get("insecure_http", False)
    if isinstance(insecure, str) and insecure.lower() in ("1", "true", "0", "false"):
        insecure = insecure.lower() in ("1", "true")
    if not isinstance(insecure, bool):
        raise InvalidInput(f"insecure_http must be true or false, got {insecure!r}")
    cfg = AgentConfig(
        audit=_audit_settings(d.get("audit", {})),
        node_id=node_id, role=role,
        api=_addr("api", d.get("api", "127.0.0.1:7100")),
        raft=_addr("raft", d["raft"]) if d.get("raft") else "",
        zone=validate_name("zone", d.get("zone", "z1")),
        region=validate_name("region", d.get("region", "r1")),
        cell=validate_name("cell", d.get("cell", "c1")),
        data_dir=str(d.get("data_dir", "./canidae-data")),
        token=str(d.get("token", "")), cluster_password=str(d.get("cluster_password", "")),
        identity_public_key=str(d.get("identity_public_key", "")),
        admin_token_hash=str(d.get("admin_token_hash", "")),
        servers=tuple(servers), capacity=capacity,
        weight=_pos_float("weight", d.get("weight", 1.0)),
        raft_settings=replace(defaults, **raft_kwargs),
        heartbeat_interval_s=_pos_float("heartbeat.interval_s", hb.get("interval_s", 0.5)),
        heartbeat_ttl_s=_pos_float("heartbeat.ttl_s", hb.get("ttl_s", 1.5)),
        max_body_bytes=_pos_int("max_body_bytes", d.get("max_body_bytes", 8 * 1024 * 1024)),
        request_timeout_s=_pos_float("request_timeout_s", d.get("request_timeout_s", 5.0)),
        keep_alive_s=_keep_alive(d.get("keep_alive_s", 30.0)),
        log_file=str(d.get("log_file", "")),
        tls_ca=str(tls.get("ca", "")), tls_cert=str(tls.get("cert", "")), tls_key=str(tls.get("key", "")),
        insecure_http=insecure,
    )
    if not cfg.token:
        raise InvalidInput("token is required (this agent's node credential: 'agent init' issues it)")
    if not cfg.identity_public_key:
        raise InvalidInput("identity_public_key is required (it checks the agents' credentials)")
    if len(cfg.admin_token_hash) != 64 or any(c not in "0123456789abcdef" for c in cfg.admin_token_hash):
        raise InvalidInput("admin_token_hash must be 64 hex digits (the hash of the admin token)")
    if cfg.role is Role.SERVER:
        if not cfg.raft:
            raise InvalidInput("raft (host:port) is required for a server")
        if not cfg.cluster_password:
            raise InvalidInput("cluster_password is required for a server (the Raft port speaks pickle)")
        if cfg.raft not in [s.raft for s in cfg.servers]:
            raise InvalidInput("servers must list this server itself")
    if not cfg.servers:
        raise InvalidInput("servers must list at least one server")
    if cfg.heartbeat_ttl_s <= cfg.heartbeat_interval_s:
        raise InvalidInput("heartbeat.ttl_s must be greater than heartbeat.interval_s")
    _check_transport(cfg)
    return cfg


def _audit_settings(a: Any) -> AuditSettings:
    if not isinstance(a, Mapping):
        raise InvalidInput("audit must be a table")
    known = {f.name for f in fields(AuditSettings)}
    unknown = sorted(set(a) - known)
    if unknown:
        raise InvalidInput(f"unknown configuration key 'audit.{unknown[0]}'")
    d = AuditSettings()
    return AuditSettings(
        checkpoint_s=_pos_float("audit.checkpoint_s", a.get("checkpoint_s", d.checkpoint_s)),
        segment_bytes=_pos_int("audit.segment_bytes", a.get("segment_bytes", d.segment_bytes)),
        denials_per_s=_pos_float("audit.denials_per_s", a.get("denials_per_s", d.denials_per_s)),
        denial_burst=_pos_int("audit.denial_burst", a.get("denial_burst", d.denial_burst)))


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _check_transport(cfg: AgentConfig) -> None:
    """TLS unless ``insecure_http``, and that only where nobody else can listen: on loopback."""
    if cfg.insecure_http:
        outside = [a for a in [cfg.api, *cfg.server_apis] if not _is_loopback(a)]
        if outside:
            raise InvalidInput(f"insecure_http is for loopback clusters only, but {outside[0]} is not loopback: "
                               f"give the agent a certificate (tls.ca, tls.cert, tls.key; 'agent init' issues one)")
        return
    for key in ("ca", "cert", "key"):
        if not getattr(cfg, f"tls_{key}"):
            raise InvalidInput(f"tls.{key} is required ('agent init' issues the agent's certificate), "
                               f"or insecure_http = true for a throwaway loopback cluster")


ENV_KEYS = {  # CANIDAE_* environment variables that override the file
    "CANIDAE_NODE_ID": "node_id", "CANIDAE_ROLE": "role", "CANIDAE_API": "api", "CANIDAE_RAFT": "raft",
    "CANIDAE_ZONE": "zone", "CANIDAE_REGION": "region", "CANIDAE_CELL": "cell",
    "CANIDAE_DATA_DIR": "data_dir", "CANIDAE_AGENT_TOKEN": "token", "CANIDAE_LOG_FILE": "log_file",
    "CANIDAE_KEEP_ALIVE_S": "keep_alive_s",
}


def load_config(path: str | None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    """defaults < file < environment < flags."""
    merged: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                merged.update(tomllib.load(f))
        except FileNotFoundError:
            raise InvalidInput(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise InvalidInput(f"config file {path} is not valid TOML: {e}") from None
    for var, key in ENV_KEYS.items():
        if env and var in env:
            merged[key] = env[var]
    for k, v in (overrides or {}).items():
        if v is not None:
            merged[k] = v
    return config_from_mapping(merged)


def config_to_mapping(cfg: AgentConfig) -> dict[str, Any]:
    d: dict[str, Any] = {
        "node_id": cfg.node_id, "role": cfg.role.value, "api": cfg.api, "zone": cfg.zone,
        "region": cfg.region, "cell": cfg.cell, "data_dir": cfg.data_dir, "token": cfg.token,
        "identity_public_key": cfg.identity_public_key, "admin_token_hash": cfg.admin_token_hash,
        "weight": cfg.weight, "capacity": cfg.capacity.to_dict(),
        "servers": [{"id": s.id, "api": s.api, "raft": s.raft} for s in cfg.servers],
        "heartbeat": {"interval_s": cfg.heartbeat_interval_s, "ttl_s": cfg.heartbeat_ttl_s},
        "raft_settings": asdict(cfg.raft_settings), "audit": asdict(cfg.audit),
        "max_body_bytes": cfg.max_body_bytes, "request_timeout_s": cfg.request_timeout_s,
        "keep_alive_s": cfg.keep_alive_s,
    }
    if cfg.raft:
        d["raft"] = cfg.raft
    if cfg.cluster_password:
        d["cluster_password"] = cfg.cluster_password
    if cfg.log_file:
        d["log_file"] = cfg.log_file
    if cfg.insecure_http:
        d["insecure_http"] = True
    if cfg.tls_ca or cfg.tls_cert or cfg.tls_key:
        d["tls"] = {"ca": cfg.tls_ca, "cert": cfg.tls_cert, "key": cfg.tls_key}
    return d


def write_config(cfg: AgentConfig, path: str) -> None:
    """Write the TOML with mode 0600 (it holds secrets), atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(config_to_mapping(cfg), f)
    os.replace(tmp, path)


def new_secret() -> str:
    return secrets.token_urlsafe(32)
