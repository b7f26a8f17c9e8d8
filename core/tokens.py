"""Tokens: accessor ids, secrets, the record the replicated state keeps, and its validity.

This module owns the credentials half of access control (``acl`` owns what a token may do). It
must not read clocks or make random bytes: accessor ids and secrets are formatted from random
bytes the caller draws, validity is checked at a ``now_ms`` the caller passes, and the pepper
that keys secret hashes is handed in.

A token has a public accessor id (``ca_`` and 32 hex digits: shown in logs, events and the audit
trail) and a secret (``cs_`` and 43 base64url characters, 256 random bits: shown once, when the
token is made). The state stores only ``hash_secret(secret, pepper)``, an HMAC-SHA256 keyed by a
cluster pepper kept outside the replicated state, so a leaked snapshot or backup cannot be used to
check guesses; 256 random bits need no password stretching. The API finds a token by that hash.
Expiry and revocation live in the record, so they take effect on every agent at the first request
after the change is applied.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from canidae.core.errors import InvalidInput, NotAuthenticated
from canidae.core.types import validate_name


class TokenKind(StrEnum):
    MANAGEMENT = "management"  # the bootstrap and operator tokens: every right, policies ignored
    CLIENT = "client"          # people and automation: their policies
    NODE = "node"              # an agent acting as itself
    PACK = "pack"              # bound to one pack run: the pack policy plus its policies


ACCESSOR_PREFIX, SECRET_PREFIX = "ca_", "cs_"
ACCESSOR_RE = re.compile(r"^ca_[0-9a-f]{32}$")
SECRET_RE = re.compile(r"cs_[A-Za-z0-9_-]{43}")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def format_accessor(random_bytes: bytes) -> str:
    """A public accessor id from 16 random bytes: ``ca_`` and 32 hex digits."""
    if len(random_bytes) != 16:
        raise InvalidInput("an accessor id takes exactly 16 random bytes")
    return ACCESSOR_PREFIX + random_bytes.hex()


def format_secret(random_bytes: bytes) -> str:
    """A secret from 32 random bytes: ``cs_`` and 43 base64url characters (the prefix lets scanners
    and ``audit.redact`` spot a leaked one)."""
    if len(random_bytes) != 32:
        raise InvalidInput("a secret takes exactly 32 random bytes")
    return SECRET_PREFIX + base64.urlsafe_b64encode(random_bytes).rstrip(b"=").decode("ascii")


def hash_secret(secret: str, pepper: bytes) -> str:
    """HMAC-SHA256 of the secret keyed by the cluster pepper, hex: what the state stores."""
    if not isinstance(secret, str) or not secret:
        raise InvalidInput("empty secret")
    return hmac.new(pepper, secret.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as the replicated state holds it: never its secret."""

    accessor: str
    secret_hash: str
    name: str
    kind: TokenKind
    policies: tuple[str, ...] = ()
    created_at_ms: int = 0
    expires_at_ms: int | None = None
    revoked: bool = False
    pack: str = ""  # pack tokens: the pack they speak for
    key: str = ""   # the token keyring's key ``secret_hash`` is made with ("": the first one)

    def __post_init__(self) -> None:
        if not isinstance(self.accessor, str) or not ACCESSOR_RE.match(self.accessor):
            raise InvalidInput(f"invalid accessor id {self.accessor!r}")
        if not isinstance(self.secret_hash, str) or not _HEX64_RE.match(self.secret_hash):
            raise InvalidInput(f"token {self.accessor}: secret_hash must be 64 hex digits")
        validate_name("token", self.name)
        for p in self.policies:
            if not isinstance(p, str) or p == "pack":
                raise InvalidInput(f"token {self.accessor}: invalid policy name {p!r}")
        if (self.kind is TokenKind.PACK) != bool(self.pack):
            raise InvalidInput(f"token {self.accessor}: a pack token, and only one, names its pack")
        if self.pack:
            validate_name("pack", self.pack)
        for what, v in (("created_at_ms", self.created_at_ms), ("expires_at_ms", self.expires_at_ms)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise InvalidInput(f"token {self.accessor}: {what} must be a non-negative integer")
        if self.expires_at_ms is not None and self.expires_at_ms <= self.created_at_ms:
            raise InvalidInput(f"token {self.accessor}: expires_at_ms must be after created_at_ms")

    def to_dict(self, with_hash: bool = True) -> dict[str, Any]:
        """The state's form; ``with_hash=False`` for anything shown to people."""
        d: dict[str, Any] = {"accessor": self.accessor, "name": self.name, "kind": self.kind.value,
                             "policies": list(self.policies), "created_at_ms": self.created_at_ms,
                             "expires_at_ms": self.expires_at_ms, "revoked": self.revoked}
        if self.pack:
            d["pack"] = self.pack
        if self.key:
            d["key"] = self.key
        if with_hash:
            d["secret_hash"] = self.secret_hash
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TokenRecord:
        try:
            return TokenRecord(d["accessor"], d["secret_hash"], d["name"], TokenKind(d["kind"]),
                               tuple(d.get("policies", ())), d.get("created_at_ms", 0),
                               d.get("expires_at_ms"), bool(d.get("revoked", False)), d.get("pack", ""),
                               str(d.get("key", "")))
        except KeyError as e:
            raise InvalidInput(f"token record is missing {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"invalid token record: {e}") from None


def secret_matches(record: TokenRecord, secret: str, pepper: bytes) -> bool:
    return hmac.compare_digest(record.secret_hash, hash_secret(secret, pepper))


def check_token(record: TokenRecord, now_ms: int) -> None:
    """Raise ``NotAuthenticated`` if the token may not be used at ``now_ms`` (revoked, expired)."""
    if record.revoked:
        raise NotAuthenticated(f"token {record.accessor} ({record.name}) was revoked",
                               {"accessor": record.accessor, "reason": "revoked"})
    if record.expires_at_ms is not None and now_ms >= record.expires_at_ms:
        raise NotAuthenticated(f"token {record.accessor} ({record.name}) expired at {record.expires_at_ms} ms",
                               {"accessor": record.accessor, "reason": "expired"})


__all__ = [
    "ACCESSOR_RE", "SECRET_RE", "TokenKind", "TokenRecord", "check_token", "format_accessor", "format_secret",
    "hash_secret", "secret_matches",
]
