"""The keyring model through the state machine: seeding, publish, region-by-region activation,
retirement guarded by what still needs a key, rewrap, the admin hash, snapshots."""

from __future__ import annotations

import pytest

from canidae.core.commands import CreatePacks, CreateToken, KeyringOp, RevokeToken, command_from_wire
from canidae.core.errors import InvalidInput
from canidae.core.keyring import KeyRecord, Keyrings, KeyState, parse_op
from canidae.core.state import ClusterState
from canidae.core.types import PackSpec

IDS = iter(f"{i:08x}" for i in range(1, 10_000))


def key(purpose: str, state: KeyState = KeyState.ACTIVE) -> dict:
    return KeyRecord(next(IDS), purpose, state, "d3JhcHBlZA==", "kek00001", 0, 0).to_dict()


def op(st: ClusterState, body: dict, at: int = 1_000) -> dict:
    cmd = command_from_wire(KeyringOp(id=f"k{st.applied}-{body['op']}", at=at, op=body).to_wire())
    return st.apply(cmd)


def seeded() -> tuple[ClusterState, dict[str, str]]:
    st = ClusterState()
    first = {p: key(p) for p in ("token", "pack", "secrets", "audit")}
    assert op(st, {"op": "init", "keys": list(first.values())})["initialized"] == ["audit", "pack", "secrets", "token"]
    return st, {p: k["id"] for p, k in first.items()}


def test_seeding_happens_once_and_a_second_seed_is_ignored() -> None:
    st, ids = seeded()
    again = op(st, {"op": "init", "keys": [key("token")]})
    assert again["initialized"] == [] and st.keyrings.active("token").id == ids["token"]


def test_a_rotation_by_region_signs_in_switched_regions_and_verifies_everywhere() -> None:
    st, ids = seeded()
    new = key("pack", KeyState.PREPUBLISHED)
    assert op(st, {"op": "publish", "keys": [new]})["ok"]
    rings = st.keyrings
    assert rings.signing("pack", "r1").id == ids["pack"]                     # prepublished: not signing yet
    assert {k.id for k in rings.verifying("pack")} == {ids["pack"], new["id"]}  # but verifying
    assert "error" in op(st, {"op": "publish", "keys": [key("pack", KeyState.PREPUBLISHED)]})  # one at a time
    op(st, {"op": "activate", "purpose": "pack", "id": new["id"], "regions": ["r2"]})
    op(st, {"op": "activate", "purpose": "pack", "id": new["id"], "regions": ["r1"]})
    assert rings.signing("pack", "r2").id == new["id"] and rings.signing("pack", "r1").id == new["id"]
    assert rings.signing("pack", "r3").id == ids["pack"]
    op(st, {"op": "activate", "purpose": "pack", "id": new["id"]})
    assert rings.active("pack").id == new["id"] and rings.active("pack").regions == ("r2", "r1")  # in order
    assert rings.keys[ids["pack"]].state is KeyState.RETIRING
    assert rings.opening(ids["pack"]) is not None
    assert op(st, {"op": "retire", "purpose": "pack", "id": ids["pack"]})["state"] == "retired"
    assert rings.opening(ids["pack"]) is None and rings.keys[ids["pack"]].wrapped == ""
    assert [k.id for k in rings.verifying("pack")] == [new["id"]]


def test_an_active_key_cannot_be_retired_nor_a_retired_one_activated() -> None:
    st, ids = seeded()
    assert op(st, {"op": "retire", "purpose": "token", "id": ids["token"]})["error"]["code"] == "wrong_state"
    assert op(st, {"op": "activate", "purpose": "token", "id": "0000ffff"})["error"]["code"] == "not_found"


def test_a_key_still_needed_by_live_tokens_or_sealed_secrets_is_not_retired() -> None:
    st, ids = seeded()
    st.apply(CreateToken(id="t1", at=1_000, accessor="ca_" + "1" * 32, secret_hash="a" * 64, name="old",
                         policies=("read-only",)))
    st.apply(CreateToken(id="t2", at=1_000, accessor="ca_" + "2" * 32, secret_hash="b" * 64, name="brief",
                         policies=("read-only",), expires_at=2_000))
    sealed = f"sealed:v1:{ids['secrets']}:AAAA"
    st.apply(CreatePacks(id="p1", at=1_000, specs=(PackSpec("vault", secrets=(("PASS", sealed),)),), place=False))
    for p in ("token", "secrets"):
        new = key(p, KeyState.PREPUBLISHED)
        op(st, {"op": "publish", "keys": [new]})
        op(st, {"op": "activate", "purpose": p, "id": new["id"]})
    refused = op(st, {"op": "retire", "purpose": "token", "id": ids["token"]}, at=1_500)
    assert "2 live API tokens" in refused["error"]["message"]
    st.apply(RevokeToken(id="r1", at=1_600, accessor="ca_" + "1" * 32))
    assert op(st, {"op": "retire", "purpose": "token", "id": ids["token"]}, at=2_500)["ok"]  # t2 expired at 2,000
    assert "1 sealed secrets" in op(st, {"op": "retire", "purpose": "secrets", "id": ids["secrets"]})["error"]["message"]
    new_secrets = st.keyrings.active("secrets").id
    # a rewrap made from another value than the pack holds now (it changed meanwhile) is skipped
    stale = {"vault": {"PASS": [f"sealed:v1:{ids['secrets']}:ZZZZ", f"sealed:v1:{new_secrets}:BBBB"]}}
    assert op(st, {"op": "rewrap", "packs": stale})["rewrapped"] == 0
    fresh = {"vault": {"PASS": [sealed, f"sealed:v1:{new_secrets}:BBBB"]}}
    assert op(st, {"op": "rewrap", "packs": fresh})["rewrapped"] == 1
    assert dict(st.packs["vault"].spec.secrets)["PASS"].startswith(f"sealed:v1:{new_secrets}:")
    assert st.packs["vault"].generation == 0  # nothing restarts for a rewrap
    assert op(st, {"op": "retire", "purpose": "secrets", "id": ids["secrets"]})["ok"]
    # a rewrap to a key the keyring cannot open is refused, changing nothing
    now = dict(st.packs["vault"].spec.secrets)["PASS"]
    back = {"vault": {"PASS": [now, f"sealed:v1:{ids['secrets']}:CCCC"]}}
    assert "error" in op(st, {"op": "rewrap", "packs": back})


def test_the_admin_hash_and_the_keyrings_survive_a_snapshot() -> None:
    st, _ = seeded()
    assert op(st, {"op": "admin", "hash": "c" * 64})["admin_epoch"] == 1
    copy = ClusterState.from_snapshot(st.to_snapshot())
    assert copy.digest() == st.digest()
    assert copy.keyrings.admin_hash == "c" * 64 and copy.keyrings.to_dict() == st.keyrings.to_dict()


@pytest.mark.parametrize("bad", [
    {"op": "publish", "keys": []},
    {"op": "publish", "keys": [{**key("pack"), "id": "XYZ"}]},
    {"op": "activate", "purpose": "nope", "id": "00000001"},
    {"op": "activate", "purpose": "pack", "id": "00000001", "regions": []},
    {"op": "admin", "hash": "short"},
    {"op": "rewrap", "packs": {"bad name!": {}}},
    {"op": "rewrap", "packs": {"vault": {"PASS": "only the new value"}}},
    {"op": "explode"},
    "not an object",
])
def test_malformed_operations_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput):
        parse_op(bad)  # type: ignore[arg-type]


def test_an_empty_keyring_signs_nothing() -> None:
    rings = Keyrings()
    assert rings.signing("pack", "r1") is None and rings.verifying("pack") == [] and rings.opening("00000001") is None
