"""Pack secrets at rest: the cluster's secret keys, and sealing and opening one value.

A secret (``pack spawn --secret KEY=VALUE``, ``[secrets]`` in a spec file) is sealed by the agent
that takes the request, before it is proposed: the Raft journal, snapshots, run records and every
answer of the API hold only ``sealed:v1:<key id>:<base64 of nonce | AES-256-GCM ciphertext>``.
The variable's name is the associated data, so a sealed value cannot be moved to another name.
The node that runs the pack opens it and hands it to the members' environment only
(``canidae.agent.node.confine``).

The keys live in one file per cluster (``secret.keys`` in every agent's data dir, 0600, JSON
``{"current": id, "keys": {id: base64 key}}``): sealing uses the current key, opening the key
named in the value, so a rotation adds a key and makes it current while older values still open.
This module reads and writes that file and does the cryptography; it decides nothing about who
may see what.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as pysecrets
from dataclasses import dataclass

from canidae.core.errors import InvalidInput
from canidae.core.types import SEALED_PREFIX
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "secret.keys"
VERSION = "v1"
NONCE_BYTES = 12


@dataclass(frozen=True)
class Keyring:
    current: str
    keys: dict[str, bytes]

    @staticmethod
    def new() -> Keyring:
        kid = pysecrets.token_hex(4)
        return Keyring(kid, {kid: AESGCM.generate_key(bit_length=256)})

    def rotated(self) -> Keyring:
        """A new current key; the old ones stay to open what they sealed."""
        kid = pysecrets.token_hex(4)
        return Keyring(kid, {**self.keys, kid: AESGCM.generate_key(bit_length=256)})

    # ------------------------------------------------------------------ the file

    @staticmethod
    def load(path: str) -> Keyring:
        try:
            with open(path) as f:
                d = json.load(f)
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in d["keys"].items()}
            current = str(d["current"])
        except FileNotFoundError:
            raise InvalidInput(f"no secret key file {path}: this agent cannot seal or open pack secrets") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidInput(f"secret key file {path} is unreadable: {e}") from None
        if current not in keys or any(len(k) != 32 for k in keys.values()):
            raise InvalidInput(f"secret key file {path} is damaged (no current key, or a key not 256 bits)")
        return Keyring(current, keys)

    def save(self, path: str) -> None:
        """Write atomically, mode 0600."""
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"current": self.current,
                       "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()}}, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ one value

    def seal(self, name: str, value: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        ct = AESGCM(self.keys[self.current]).encrypt(nonce, value.encode(), name.encode())
        return f"{SEALED_PREFIX}{VERSION}:{self.current}:{base64.b64encode(nonce + ct).decode()}"

    def open(self, name: str, sealed: str) -> str:
        parts = sealed.split(":")
        if len(parts) != 4 or f"{parts[0]}:" != SEALED_PREFIX or parts[1] != VERSION:
            raise InvalidInput(f"secret {name} is not a sealed value of version {VERSION}")
        kid = parts[2]
        if kid not in self.keys:
            raise InvalidInput(f"secret {name} was sealed with key {kid}, which this agent does not have")
        try:
            raw = base64.b64decode(parts[3], validate=True)
            return AESGCM(self.keys[kid]).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode()).decode()
        except (ValueError, InvalidTag):
            raise InvalidInput(f"secret {name} does not open with key {kid} (damaged or moved)") from None


def key_file(data_dir: str) -> str:
    return os.path.join(data_dir, KEY_FILE)


def seal_all(ring: Keyring, plain: dict[str, str]) -> dict[str, str]:
    return {k: ring.seal(k, v) for k, v in plain.items()}


__all__ = ["KEY_FILE", "Keyring", "key_file", "seal_all"]
