"""Tokens and policies in the replicated state: only hashes stored, revocation and expiry kept in
the record, the policy version moving on every change, snapshots and the wire carrying all of it."""

from __future__ import annotations

import pytest

from canidae.core.acl import (
    Capability,
    PolicySet,
    ResourceKind,
    check_token,
    format_accessor,
    format_secret,
    hash_secret,
)
from canidae.core.commands import (
    ApplyPolicy,
    CreateToken,
    DeletePolicy,
    RevokeToken,
    command_from_wire,
    decode_batch,
    encode_batch,
)
from canidae.core.errors import NotAuthenticated
from canidae.core.state import ClusterState

PEPPER = b"test pepper"
CI = {"name": "ci", "pack": {"ci-*": {"access": "read", "capabilities": ["spawn", "stop"]}}}


def _token(st: ClusterState, n: int, policies: tuple[str, ...] = ("ci",), at: int = 1_000,
           expires_at: int | None = None) -> tuple[str, str, dict]:
    accessor, secret = format_accessor(bytes([n]) * 16), format_secret(bytes([n]) * 32)
    answer = st.apply(CreateToken(id=f"t{n}", at=at, accessor=accessor, secret_hash=hash_secret(secret, PEPPER),
                                  name=f"tok{n}", policies=policies, expires_at=expires_at))
    return accessor, secret, answer


def test_a_token_is_found_by_its_secrets_hash_and_the_state_never_holds_the_secret():
    st = ClusterState()
    accessor, secret, answer = _token(st, 1)
    assert answer["ok"] and "secret_hash" not in answer["token"]
    rec = st.find_token(hash_secret(secret, PEPPER))
    assert rec is not None and rec.accessor == accessor and rec.policies == ("ci",)
    assert secret not in repr(st.to_snapshot())
    assert st.find_token(hash_secret(secret, b"another pepper")) is None


def test_revocation_is_in_the_record_and_moves_the_policy_version():
    st = ClusterState()
    accessor, secret, _ = _token(st, 1)
    before = st.acl_version
    assert st.apply(RevokeToken(id="r1", at=2_000, accessor=accessor))["ok"]
    assert st.acl_version > before
    rec = st.find_token(hash_secret(secret, PEPPER))
    assert rec is not None and rec.revoked
    with pytest.raises(NotAuthenticated, match="revoked"):
        check_token(rec, 2_001)
    assert st.apply(RevokeToken(id="r2", at=2_000, accessor=format_accessor(b"\x09" * 16)))["error"]["code"] == "not_found"


def test_expiry_is_stamped_and_checked_against_the_callers_time():
    st = ClusterState()
    _, secret, _ = _token(st, 1, at=1_000, expires_at=61_000)
    rec = st.find_token(hash_secret(secret, PEPPER))
    assert rec is not None
    check_token(rec, 60_999)
    with pytest.raises(NotAuthenticated, match="expired"):
        check_token(rec, 61_000)
    bad = st.apply(CreateToken(id="t9", at=5_000, accessor=format_accessor(b"\x02" * 16),
                               secret_hash=hash_secret("cs_x", PEPPER), name="late", policies=(), expires_at=4_000))
    assert bad["error"]["code"] == "invalid_input" and format_accessor(b"\x02" * 16) not in st.tokens


def test_policies_are_applied_replaced_and_deleted_each_moving_the_version():
    st = ClusterState()
    versions = [st.acl_version]
    assert st.apply(ApplyPolicy(id="p1", at=1, policy=CI))["created"] is True
    versions.append(st.acl_version)
    assert st.apply(ApplyPolicy(id="p2", at=2, policy={**CI, "description": "v2"}))["created"] is False
    versions.append(st.acl_version)
    assert st.policies["ci"].description == "v2"
    assert st.apply(DeletePolicy(id="p3", at=3, name="ci"))["deleted"] == "ci"
    versions.append(st.acl_version)
    assert versions == sorted(set(versions)), versions
    assert st.apply(DeletePolicy(id="p4", at=4, name="ci"))["error"]["code"] == "not_found"


def test_a_bad_policy_changes_nothing():
    st = ClusterState()
    st.apply(ApplyPolicy(id="p1", at=1, policy=CI))
    version = st.acl_version
    for i, bad in enumerate(({"name": "management", "pack": {"*": {"access": "write"}}},
                             {"name": "ci", "pack": {"ci-*": {"access": "sometimes"}}},
                             {"name": "ci"})):
        assert st.apply(ApplyPolicy(id=f"b{i}", at=2, policy=bad))["error"]["code"] == "invalid_input"
    assert st.acl_version == version and st.policies["ci"].rules[0].match == "ci-*"


def test_the_replicated_records_decide_requests():
    st = ClusterState()
    st.apply(ApplyPolicy(id="p1", at=1, policy=CI))
    _, secret, _ = _token(st, 1)
    rec = st.find_token(hash_secret(secret, PEPPER))
    assert rec is not None
    rules = PolicySet.for_token(rec, st.policies)
    assert rules.evaluate(ResourceKind.PACK, "ci-1", Capability.SPAWN).allowed
    denied = rules.evaluate(ResourceKind.PACK, "web", Capability.SPAWN)
    assert not denied.allowed and "spawn" in denied.explain() and "ci: pack 'ci-*'" in denied.explain()


def test_snapshots_and_the_wire_carry_tokens_and_policies():
    st = ClusterState()
    cmds = [ApplyPolicy(id="p1", at=1, policy=CI),
            CreateToken(id="t1", at=2, accessor=format_accessor(b"\x01" * 16),
                        secret_hash=hash_secret("cs_a", PEPPER), name="a", policies=("ci", "read-only"),
                        expires_at=90_000),
            RevokeToken(id="r1", at=3, accessor=format_accessor(b"\x01" * 16))]
    decoded = decode_batch(encode_batch(cmds))
    assert [c.to_wire() for c in decoded] == [c.to_wire() for c in cmds]
    assert command_from_wire(DeletePolicy(id="d", at=4, name="ci").to_wire()) == DeletePolicy(id="d", at=4, name="ci")
    st.apply_batch(decoded)
    again = ClusterState.from_snapshot(st.to_snapshot())
    assert again.digest() == st.digest()
    assert again.tokens == st.tokens and again.policies == st.policies and again.acl_version == st.acl_version
    assert again.find_token(hash_secret("cs_a", PEPPER)) == st.tokens[format_accessor(b"\x01" * 16)]
