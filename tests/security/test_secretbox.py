"""Sealing a pack secret: the key id travels in the value, a rotated key ring still opens older
values, a value is bound to its variable's name, and a changed byte or a missing key is refused."""

from __future__ import annotations

import os
import stat

import pytest

from canidae.agent.secretbox import Keyring
from canidae.core.errors import InvalidInput


def test_a_rotated_ring_opens_what_older_keys_sealed_and_seals_with_the_new_key(tmp_path):
    ring = Keyring.new()
    old = ring.seal("DB_PASSWORD", "hunter2")
    assert old.startswith(f"sealed:v1:{ring.current}:") and "hunter2" not in old
    assert ring.seal("DB_PASSWORD", "hunter2") != old  # a fresh nonce each time
    path = str(tmp_path / "secret.keys")
    ring.rotated().save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = Keyring.load(path)
    assert again.current != ring.current and again.open("DB_PASSWORD", old) == "hunter2"
    assert again.seal("X", "y").startswith(f"sealed:v1:{again.current}:")


def test_a_value_is_bound_to_its_name_and_to_its_bytes():
    ring = Keyring.new()
    sealed = ring.seal("A", "value")
    with pytest.raises(InvalidInput, match="moved"):
        ring.open("B", sealed)
    body = sealed.rsplit(":", 1)
    flipped = body[1][:-3] + ("A" if body[1][-3] != "A" else "B") + body[1][-2:]
    with pytest.raises(InvalidInput):
        ring.open("A", f"{body[0]}:{flipped}")
    with pytest.raises(InvalidInput, match="does not have"):
        Keyring.new().open("A", sealed)


def test_a_missing_or_damaged_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInput, match="no secret key file"):
        Keyring.load(str(tmp_path / "none"))
    (tmp_path / "bad").write_text('{"current": "k", "keys": {"k": "c2hvcnQ="}}')
    with pytest.raises(InvalidInput, match="damaged"):
        Keyring.load(str(tmp_path / "bad"))
