"""The cluster's keys on one agent: unwrapping the replicated keyrings and using their keys.

The replicated state holds each key wrapped (``canidae.core.keyring``): sealed with AES-256-GCM
under a key-encryption key (KEK) derived by HKDF from a key of the cluster key file
(``secret.keys``, ``canidae.agent.secretbox``) that every agent of the cluster has in its data
dir, the purpose and id bound in as associated data. So the Raft journal, snapshots and backups
never hold a plain key, a stolen snapshot opens nothing without a data dir's key file, and
changing the Raft password (which only servers hold) does not touch any key. The KEK is the key
file's current key; a wrapped key names the file key it was wrapped under.

``ClusterKeys`` is what the rest of the agent uses: it keeps the unwrapped keys of the latest
keyrings it was given (``update``: servers from their replica, client agents from
``GET /v1/keys/sealed``), and

* hashes API token secrets (``token_hash`` with the active key; ``token_hashes`` with every key
  that still verifies), and before the keyring is seeded, with the pepper derived from the Raft
  password as before;
* seals pack secrets with the key that seals in this agent's region, opens them with any key not
  retired (falling back to the key file's own keys, which sealed values before the keyrings);
* signs pack tokens with the node's key derived from the pack key and this agent's credential,
  and checks them with any key not retired;
* holds the admin token's hash once a bootstrap token rotation set it (``admin_hash``), persisted
  in the data dir so a restarted agent does not take the old token back before its first update.

``seed_keys`` builds the first keys the leader proposes (``KeyringOp`` ``init``): the token key is
the pepper every server derived from the Raft password (existing tokens keep working), the
secrets keys are the key file's (existing sealed values keep opening), the others are new.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets as pysecrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from canidae.agent.secretbox import NONCE_BYTES, VERSION, Keyring, key_file
from canidae.core.errors import InvalidInput
from canidae.core.keyring import KeyRecord, Keyrings, KeyState
from canidae.core.packtoken import key_id_of, keyed_pack_token, pack_token, verify
from canidae.core.tokens import hash_secret
from canidae.core.types import SEALED_PREFIX

ADMIN_FILE = "admin.hash"
# The last keyrings taken, still wrapped (they open only with this data dir's key file): a
# restarted agent checks and signs pack tokens from its first request, before its first update.
RINGS_FILE = "keyrings.json"
_KEK_INFO = b"canidae keyring kek v1"
_NODE_KEY_DOMAIN = b"canidae pack token node key v1\0"


def token_pepper(cluster_password: str) -> bytes:
    """The token key of clusters before the keyrings (and the seed of the first token key)."""
    return hmac.new(cluster_password.encode(), b"canidae api token pepper v1", hashlib.sha256).digest()


def kek(file_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEK_INFO).derive(file_key)


def wrap(file_ring: Keyring, purpose: str, kid: str, material: bytes) -> tuple[str, str]:
    """(wrapped material, KEK id): ``material`` sealed under the key file's current key's KEK."""
    nonce = os.urandom(NONCE_BYTES)
    ct = AESGCM(kek(file_ring.keys[file_ring.current])).encrypt(nonce, material, f"{purpose}:{kid}".encode())
    return base64.b64encode(nonce + ct).decode(), file_ring.current


def unwrap(file_ring: Keyring, rec: KeyRecord) -> bytes:
    root = file_ring.keys.get(rec.kek)
    if root is None:
        raise InvalidInput(f"key {rec.id} is wrapped under key file key {rec.kek}, which this agent does not have")
    try:
        raw = base64.b64decode(rec.wrapped, validate=True)
        return AESGCM(kek(root)).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], f"{rec.purpose}:{rec.id}".encode())
    except (ValueError, InvalidTag):
        raise InvalidInput(f"key {rec.id} does not unwrap (damaged, or another cluster's key file)") from None


def new_key_id() -> str:
    return pysecrets.token_hex(4)


def new_record(file_ring: Keyring, purpose: str, state: KeyState, material: bytes | None = None,
               kid: str | None = None) -> KeyRecord:
    kid = kid or new_key_id()
    wrapped, kek_id = wrap(file_ring, purpose, kid, material if material is not None else os.urandom(32))
    return KeyRecord(kid, purpose, state, wrapped, kek_id, 0, 0)


def seed_keys(file_ring: Keyring, cluster_password: str) -> list[KeyRecord]:
    """The first key of every purpose (see the module docstring)."""
    out = [new_record(file_ring, "token", KeyState.ACTIVE, token_pepper(cluster_password))]
    for kid, material in file_ring.keys.items():
        state = KeyState.ACTIVE if kid == file_ring.current else KeyState.RETIRING
        out.append(new_record(file_ring, "secrets", state, material, kid=kid))
    out += [new_record(file_ring, p, KeyState.ACTIVE) for p in ("pack", "audit")]
    return out


@dataclass(frozen=True)
class _Key:
    rec: KeyRecord
    material: bytes


class ClusterKeys:
    """The unwrapped keys of the latest keyrings this agent was given (thread-safe)."""

    def __init__(self, data_dir: str, region: str, credential: str, cluster_password: str = "") -> None:
        self.data_dir, self.region, self.credential = data_dir, region, credential
        self._legacy_pepper = token_pepper(cluster_password) if cluster_password else b""
        self._file: Keyring | None = None
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self.rings = Keyrings()
        self.admin_hash = self._read_admin()
        self.updated = 0  # how many updates were taken
        kept = self._read_rings()
        if kept is not None:
            try:
                self.update(kept, keep=False)
            except (InvalidInput, ValueError, KeyError, TypeError, OSError):
                pass  # unreadable or from another key file: the first update brings the keys

    # ------------------------------------------------------------------ the key file

    @property
    def file(self) -> Keyring:
        if self._file is None:  # read once; an agent that never needs a key needs no key file
            self._file = Keyring.load(key_file(self.data_dir))
        return self._file

    # ------------------------------------------------------------------ updates

    def update(self, doc: Mapping[str, Any], keep: bool = True) -> None:
        """Take the keyrings' replicated form (``Keyrings.to_dict``): unwrap what is new, and (with
        ``keep``) keep it, wrapped, in the data dir for the next start."""
        rings = Keyrings.from_dict(doc)
        if rings.version == self.rings.version and self.updated:
            return
        keys: dict[str, _Key] = {}
        for rec in rings.keys.values():
            if rec.state is KeyState.RETIRED:
                continue
            held = self._keys.get(rec.id)
            material = held.material if held is not None and held.rec.wrapped == rec.wrapped else unwrap(self.file, rec)
            keys[rec.id] = _Key(rec, material)
        with self._lock:
            self._keys, self.rings = keys, rings
            self.updated += 1
        if keep:
            self._write_private(RINGS_FILE, json.dumps(dict(doc), sort_keys=True))
        if rings.admin_hash and rings.admin_hash != self.admin_hash:
            self.admin_hash = rings.admin_hash
            self._write_admin(rings.admin_hash)

    def _read_admin(self) -> str:
        try:
            with open(os.path.join(self.data_dir, ADMIN_FILE)) as f:
                return f.read().strip()
        except OSError:
            return ""

    def _read_rings(self) -> Mapping[str, Any] | None:
        try:
            with open(os.path.join(self.data_dir, RINGS_FILE)) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _write_admin(self, h: str) -> None:
        # The replicated hash is in force whatever happens here; a failed write only means a
        # restart before the next update would not know it yet.
        self._write_private(ADMIN_FILE, h + "\n")

    def _write_private(self, name: str, text: str) -> None:
        path = os.path.join(self.data_dir, name)
        try:
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
        except OSError:
            pass

    def _signing(self, purpose: str) -> _Key | None:
        with self._lock:
            rec = self.rings.signing(purpose, self.region)
            return None if rec is None else self._keys.get(rec.id)

    def _verifying(self, purpose: str) -> list[_Key]:
        with self._lock:
            return [k for k in self._keys.values() if k.rec.purpose == purpose]

    def _first(self, purpose: str) -> _Key | None:
        with self._lock:
            first = next(iter(self.rings.of(purpose)), None)
            return None if first is None else self._keys.get(first.id)

    # ------------------------------------------------------------------ API token secrets

    def token_hash(self, secret: str) -> tuple[str, str]:
        """(key id, hash) of a new token's secret: the active token key ("" before the keyring is seeded)."""
        k = self._signing("token")
        if k is None:
            return "", hash_secret(secret, self._legacy_pepper)
        return k.rec.id, hash_secret(secret, k.material)

    def token_hashes(self, secret: str) -> list[tuple[str, str]]:
        """(key id, hash) under every token key that still verifies."""
        keys = self._verifying("token")
        if not keys:
            return [("", hash_secret(secret, self._legacy_pepper))] if self._legacy_pepper else []
        return [(k.rec.id, hash_secret(secret, k.material)) for k in keys]

    def first_token_key(self) -> str:
        with self._lock:
            first = next(iter(self.rings.of("token")), None)
        return "" if first is None else first.id

    # ------------------------------------------------------------------ pack secrets

    def seal(self, name: str, value: str, *, active: bool = False) -> str:
        """Seal with the key that seals in this agent's region (``active``: the active key)."""
        if active:
            with self._lock:
                rec = self.rings.active("secrets")
                k = None if rec is None else self._keys.get(rec.id)
        else:
            k = self._signing("secrets")
        if k is None:  # not seeded yet: the key file's current key, as before the keyrings
            return self.file.seal(name, value)
        nonce = os.urandom(NONCE_BYTES)
        ct = AESGCM(k.material).encrypt(nonce, value.encode(), name.encode())
        return f"{SEALED_PREFIX}{VERSION}:{k.rec.id}:{base64.b64encode(nonce + ct).decode()}"

    def seal_all(self, plain: Mapping[str, str]) -> dict[str, str]:
        return {k: self.seal(k, v) for k, v in plain.items()}

    def open(self, name: str, sealed: str) -> str:
        parts = sealed.split(":")
        kid = parts[2] if len(parts) == 4 else ""
        with self._lock:
            k = self._keys.get(kid)
            known = kid in self.rings.keys
        if k is None:
            if known:
                raise InvalidInput(f"secret {name} was sealed with key {kid}, which is retired")
            return self.file.open(name, sealed)  # sealed before the keyrings, or this agent is behind
        return Keyring(kid, {kid: k.material}).open(name, sealed)

    def reseal(self, name: str, sealed: str) -> str:
        """A sealed value sealed again under the active key (the background rewrap)."""
        return self.seal(name, self.open(name, sealed), active=True)

    # ------------------------------------------------------------------ pack tokens

    def _node_key(self, material: bytes) -> str:
        return hmac.new(material, _NODE_KEY_DOMAIN + self.credential.encode(), hashlib.sha256).hexdigest()

    def pack_token(self, pack: str, generation: int, node: str) -> str:
        k = self._signing("pack")
        if k is None:
            return pack_token(self.credential, pack, generation, node)
        return keyed_pack_token(self._node_key(k.material), k.rec.id, pack, generation, node)

    def verify_pack_token(self, node: str, token: str) -> Any:
        """The run a pack token of ``node`` speaks for, if signed with a key not retired; else None."""
        kid = key_id_of(token)
        if kid is None:
            return None
        if kid == "":  # the first form: signed with the credential itself, as the first pack key
            with self._lock:
                first = next(iter(self.rings.of("pack")), None)
            if first is not None and first.state is KeyState.RETIRED:
                return None
            return verify(self.credential, node, token)
        with self._lock:
            k = self._keys.get(kid)
        if k is None or k.rec.purpose != "pack":
            return None
        return verify(self._node_key(k.material), node, token)


__all__ = ["ADMIN_FILE", "ClusterKeys", "new_record", "seed_keys", "token_pepper", "unwrap", "wrap"]
