"""Who a request comes from: the cluster's credentials, and the principal each one names.

Three kinds of bearer credential reach an agent's API (none is kept in the replicated state):

* the **admin token** (``cs_`` and 43 base64url characters): the operators' (the CLI config).
  Agents keep only its hash (``admin_token_hash``), so no agent's config, client or server,
  holds it;
* a **node credential** (``nc.<node>.<role>.<signature>``), one per agent: an Ed25519 signature
  by the cluster's identity key over the node id and its role. The identity key is the
  operator's (``identity.toml``, written by ``agent init`` and ``cluster up``) and is in no
  agent's config; every agent holds its public half and can check any agent's credential
  without asking anyone. A client agent's credential may only act for that node (heartbeat,
  report, fetch assignments, register itself, relay yips); a server's may do what the admin
  may, since a server holds the Raft password and the whole state anyway;
* a **pack token** (``canidae.core.packtoken``), checked by the agent of the pack's node;
* an **API token** (``cs_`` secret, its record in the replicated state: ``canidae token create``),
  found by a server agent in its local replica (``find_token``, given by the composition root);
  its principal's public id is the token's accessor and its rights are its policies'.

A principal's public id (``ca_`` and 32 hex digits, derived one-way from the credential) is what
logs and events show; a secret never is. ``Authenticator.identify`` maps a bearer credential to
its ``Principal`` (or None); ``Identity`` is the operator's file and issues node credentials.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import tomli_w
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from canidae.core.errors import InvalidInput, NotAuthenticated
from canidae.core.tokens import format_accessor, format_secret, hash_secret
from canidae.core.types import NAME_RE, Role, validate_name

NODE_PREFIX = "nc."
_NODE_DOMAIN = b"canidae node credential v1\0"
# The admin token has 256 random bits: a fixed pepper is enough (no guess can be checked faster
# than by asking an agent). It only keeps these hashes apart from any other use of the token.
_ADMIN_PEPPER = b"canidae admin token v1"
_ROLES = {"s": Role.SERVER, "c": Role.CLIENT}
MAX_CACHED = 4096


class Kind(StrEnum):
    ADMIN = "admin"
    SERVER = "server"  # a server agent: every right
    NODE = "node"      # a client agent: acts only for its own node
    PACK = "pack"      # a pack's members: their mailbox, yips to others
    TOKEN = "token"    # an API token: what its policies allow (canidae.core.acl)


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Kind
    name: str        # the node or pack it speaks for ("admin" for the admin)
    public_id: str   # ca_...: what logs and events show

    @property
    def is_admin(self) -> bool:
        """Every right: the admin token, or a server agent."""
        return self.kind in (Kind.ADMIN, Kind.SERVER)

    def may_act_for_node(self, node: str) -> bool:
        return self.is_admin or (self.kind is Kind.NODE and self.name == node)

    def describe(self) -> str:
        return f"{self.kind.value} {self.name} ({self.public_id})"


def public_id(credential: str) -> str:
    """The public id of a credential: one-way, stable, safe to log."""
    return format_accessor(hashlib.sha256(b"canidae public id\0" + credential.encode()).digest()[:16])


def admin_token_hash(token: str) -> str:
    return hash_secret(token, _ADMIN_PEPPER)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed_bytes(node: str, role: Role) -> bytes:
    return _NODE_DOMAIN + node.encode() + b"\0" + role.value.encode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = _unb64(text)
        if len(raw) != 32:
            raise ValueError("not 32 bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise InvalidInput(f"identity_public_key is not an Ed25519 public key: {e}") from None


def revoked_message(node: str) -> str:
    """What an agent answers a revoked node credential (the node's own agent knows it by this)."""
    return f"the node credential of {node} is revoked"


class Authenticator:
    """Maps bearer credentials to principals, in constant time for the admin token. Checked node
    credentials are remembered (a signature check costs about 50 us); failures never are."""

    def __init__(self, admin_hash: str, public_key: str,
                 find_token: Callable[[str], Principal | None] | None = None,
                 current_admin_hash: Callable[[], str] | None = None,
                 revoked: Callable[[str], bool] | None = None) -> None:
        self._admin_hash = admin_hash
        # After a bootstrap token rotation the replicated hash replaces the configured one.
        self._current_admin_hash = current_admin_hash
        self._find_token = find_token
        # Whether a client agent's node credential is revoked (``canidae node revoke``): a server
        # asks its replica, a client agent the list of its last heartbeat reply.
        self._revoked = revoked
        self._key = parse_public_key(public_key)
        self._admin = Principal(Kind.ADMIN, "admin", "")
        self._known: dict[str, Principal] = {}

    def identify(self, credential: str) -> Principal | None:
        if not credential:
            return None
        if credential.startswith(NODE_PREFIX):
            return self._node(credential)
        rotated = self._current_admin_hash() if self._current_admin_hash is not None else ""
        if secrets.compare_digest(admin_token_hash(credential), rotated or self._admin_hash):
            return Principal(Kind.ADMIN, "admin", public_id(credential))
        if self._find_token is not None:
            # May raise NotAuthenticated naming why (revoked, expired): the caller says so.
            return self._find_token(credential)
        return None

    def _node(self, credential: str) -> Principal | None:
        who = self._checked(credential)
        if who is not None and who.kind is Kind.NODE and self._revoked is not None and self._revoked(who.name):
            raise NotAuthenticated(revoked_message(who.name))
        return who

    def _checked(self, credential: str) -> Principal | None:
        hit = self._known.get(credential)
        if hit is not None:
            return hit
        parts = credential[len(NODE_PREFIX):].split(".")
        if len(parts) != 3 or not NAME_RE.fullmatch(parts[0]) or parts[1] not in _ROLES:
            return None
        node, role = parts[0], _ROLES[parts[1]]
        try:
            self._key.verify(_unb64(parts[2]), _signed_bytes(node, role))
        except (InvalidSignature, ValueError):
            return None
        who = Principal(Kind.SERVER if role is Role.SERVER else Kind.NODE, node, public_id(credential))
        if len(self._known) >= MAX_CACHED:
            self._known.clear()
        self._known[credential] = who
        return who


@dataclass(frozen=True)
class Identity:
    """The operator's file (``identity.toml``, mode 0600): the key that issues node credentials,
    the Raft password of the servers and the admin token. No agent ever gets the key or the token."""

    signing_key: str       # Ed25519 private key, raw, base64url
    cluster_password: str
    admin_token: str

    @staticmethod
    def new() -> Identity:
        return Identity(_b64(secrets.token_bytes(32)), secrets.token_urlsafe(32), format_secret(secrets.token_bytes(32)))

    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(_unb64(self.signing_key))

    @property
    def public_key(self) -> str:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        return _b64(self._private().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def admin_hash(self) -> str:
        return admin_token_hash(self.admin_token)

    def node_credential(self, node: str, role: Role) -> str:
        """The credential of agent ``node``: it may act as that node only (or, for a server, as admin)."""
        validate_name("node", node)
        code = next(k for k, v in _ROLES.items() if v is role)
        return f"{NODE_PREFIX}{node}.{code}.{_b64(self._private().sign(_signed_bytes(node, role)))}"

    @staticmethod
    def load(path: str) -> Identity:
        try:
            with open(path, "rb") as f:
                d = tomllib.load(f)
            ident = Identity(str(d["signing_key"]), str(d["cluster_password"]), str(d["admin_token"]))
            ident._private()
            return ident
        except FileNotFoundError:
            raise InvalidInput(f"identity file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, KeyError, ValueError) as e:
            raise InvalidInput(f"identity file {path} is not a canidae identity: {e}") from None

    def write(self, path: str) -> None:
        """Write with mode 0600, atomically."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump({"signing_key": self.signing_key, "cluster_password": self.cluster_password,
                          "admin_token": self.admin_token}, f)
        os.replace(tmp, path)


__all__ = ["Authenticator", "Identity", "Kind", "Principal", "admin_token_hash", "public_id", "revoked_message"]
