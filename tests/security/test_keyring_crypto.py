"""The cluster's keys on an agent: wrapped under the key file's KEK (another cluster's file opens
nothing), pack tokens bound to the node's credential and the key that signed them, old-form tokens
and values sealed before the keyrings still accepted, a retired key refusing."""

from __future__ import annotations

import pytest

from canidae.agent.keyring import ClusterKeys, new_record, seed_keys, unwrap
from canidae.agent.secretbox import Keyring, key_file
from canidae.core.errors import InvalidInput
from canidae.core.keyring import Keyrings, KeyState, parse_op
from canidae.core.packtoken import pack_token


def agent(tmp_path, name: str, ring: Keyring, region: str = "r1") -> ClusterKeys:
    d = tmp_path / name
    d.mkdir()
    ring.save(key_file(str(d)))
    return ClusterKeys(str(d), region, f"nc.{name}.c.credential-of-{name}", "raft-password")


def rings_with(file_ring: Keyring) -> Keyrings:
    rings = Keyrings()
    rings.apply(parse_op({"op": "init", "keys": [k.to_dict() for k in seed_keys(file_ring, "raft-password")]}), 1, {})
    return rings


def test_wrapped_keys_open_only_with_the_clusters_key_file(tmp_path) -> None:
    ring = Keyring.new()
    rec = new_record(ring, "pack", KeyState.ACTIVE)
    assert len(unwrap(ring, rec)) == 32
    with pytest.raises(InvalidInput):
        other = Keyring.new()  # another cluster's file, under the same key id
        unwrap(Keyring(ring.current, {ring.current: other.keys[other.current]}), rec)


def test_pack_tokens_are_bound_to_the_node_and_to_a_key_not_retired(tmp_path) -> None:
    ring = Keyring.new()
    rings = rings_with(ring)
    a, b = agent(tmp_path, "n1", ring), agent(tmp_path, "n2", ring)
    for k in (a, b):
        k.update(rings.to_dict())
    tok = a.pack_token("web", 3, "n1")
    assert a.verify_pack_token("n1", tok).pack == "web"
    forged = b.pack_token("web", 3, "n1")  # n2 has the cluster key, not n1's credential
    assert a.verify_pack_token("n1", forged) is None
    old_form = pack_token(a.credential, "web", 3, "n1")  # signed before the keyrings
    assert a.verify_pack_token("n1", old_form).generation == 3
    # rotate, then retire the first pack key: its tokens (both forms) are refused, new ones taken
    old_id = rings.active("pack").id
    new = new_record(ring, "pack", KeyState.PREPUBLISHED)
    rings.apply(parse_op({"op": "publish", "keys": [new.to_dict()]}), 2, {})
    rings.apply(parse_op({"op": "activate", "purpose": "pack", "id": new.id}), 3, {})
    a.update(rings.to_dict())
    assert a.verify_pack_token("n1", tok) is not None  # retiring: still verifies
    rings.apply(parse_op({"op": "retire", "purpose": "pack", "id": old_id}), 4, {})
    a.update(rings.to_dict())
    assert a.verify_pack_token("n1", tok) is None and a.verify_pack_token("n1", old_form) is None
    assert a.verify_pack_token("n1", a.pack_token("web", 3, "n1")) is not None


def test_secrets_sealed_before_the_keyrings_open_and_new_ones_use_the_keyring(tmp_path) -> None:
    ring = Keyring.new()
    a = agent(tmp_path, "n1", ring)
    before = a.seal("PASS", "v")  # no keyring yet: the key file's key, as before
    rings = rings_with(ring)
    a.update(rings.to_dict())
    assert a.open("PASS", before) == "v"
    new = new_record(ring, "secrets", KeyState.PREPUBLISHED)
    rings.apply(parse_op({"op": "publish", "keys": [new.to_dict()]}), 2, {})
    rings.apply(parse_op({"op": "activate", "purpose": "secrets", "id": new.id}), 3, {})
    a.update(rings.to_dict())
    again = a.reseal("PASS", before)
    assert again.split(":")[2] == new.id and a.open("PASS", again) == "v"
    with pytest.raises(InvalidInput):
        a.open("OTHER", again)  # the name is bound in


def test_token_hashes_keep_the_pepper_of_the_raft_password_as_the_first_key(tmp_path) -> None:
    ring = Keyring.new()
    a = agent(tmp_path, "n1", ring)
    legacy = a.token_hash("cs_secret")
    a.update(rings_with(ring).to_dict())
    kid, seeded = a.token_hash("cs_secret")
    assert legacy == ("", seeded) and kid == a.first_token_key()
