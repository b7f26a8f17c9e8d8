"""The replicated audit heads (canidae.core.audit_heads) and whole-log checks over segments
(canidae.core.auditseg): keys registered by their first checkpoint, heads only forward, one hash
per seq, snapshots round-trip; a log split in segments is checked as one and the first bad record
is named by segment and line, a cut tail found by a checkpoint."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from canidae.core.audit import GENESIS_HASH, Checkpoint, chain, checkpoint_message, encode_log
from canidae.core.audit_heads import MAX_CHECKPOINTS, AuditHeads, key_id_for
from canidae.core.auditseg import check_log, first_seq_of, segment_name
from canidae.core.commands import CommitAuditCheckpoint, command_from_wire
from canidae.core.errors import InvalidInput, WrongState

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = base64.urlsafe_b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).rstrip(b"=").decode()
KID = key_id_for("n1", PUB)


def cp(seq: int, h: str, at: int = 1) -> Checkpoint:
    return Checkpoint(seq, h, at, KID, KEY.sign(checkpoint_message(seq, h, at, KID)).hex())


def log(n: int) -> list:
    out, prev = [], GENESIS_HASH
    for i in range(n):
        out.append(chain(prev, {"seq": i + 1, "at_ms": i, "action": "pack.spawn", "target": f"p{i}", "outcome": "ok"}))
        prev = out[-1].hash
    return out


def verify_sig(kid: str, msg: bytes, sig: bytes) -> bool:
    try:
        KEY.public_key().verify(sig, msg)
        return kid == KID
    except InvalidSignature:
        return False


def test_heads_register_a_key_move_forward_and_refuse_a_second_hash_for_a_seq() -> None:
    heads = AuditHeads()
    recs = log(5)
    assert heads.commit("n1", PUB, cp(2, recs[1].hash), 10)["new_key"] is True
    assert heads.commit("n1", PUB, cp(4, recs[3].hash), 11)["ok"]
    assert heads.commit("n1", PUB, cp(4, recs[3].hash), 12)["unchanged"]
    with pytest.raises(WrongState, match="older"):
        heads.commit("n1", PUB, cp(3, recs[2].hash), 13)
    with pytest.raises(WrongState, match="differs"):
        heads.commit("n1", PUB, cp(4, recs[0].hash), 14)
    with pytest.raises(InvalidInput, match="key id"):
        heads.commit("n2", PUB, cp(5, recs[4].hash), 15)  # n1's key cannot speak for n2
    view = heads.view("n1")
    assert [c["seq"] for c in view[0]["checkpoints"]] == [2, 4] and view[0]["public_key"] == PUB
    assert AuditHeads.from_snapshot(heads.to_snapshot()).to_snapshot() == heads.to_snapshot()
    for i in range(MAX_CHECKPOINTS + 5):
        heads.commit("n1", PUB, Checkpoint(10 + i, recs[0].hash, 1, KID, "00"), 20)
    assert len(heads.view("n1")[0]["checkpoints"]) == MAX_CHECKPOINTS


def test_the_command_round_trips_its_wire_form() -> None:
    cmd = CommitAuditCheckpoint(id="r1", at=5, node_id="n1", public_key=PUB, checkpoint=cp(1, log(1)[0].hash).to_dict())
    assert command_from_wire(cmd.to_wire()) == cmd
    with pytest.raises(InvalidInput):
        command_from_wire({**cmd.to_wire(), "checkpoint": "x"})


def test_a_log_in_segments_is_checked_as_one_and_the_bad_record_located() -> None:
    recs = log(6)
    segs = [(segment_name(1), encode_log(recs[:3])), (segment_name(4), encode_log(recs[3:]))]
    assert first_seq_of(segs[1][0]) == 4 and first_seq_of("seg-1.log") is None
    ok = check_log(segs, [cp(6, recs[5].hash)], verify_sig)
    assert ok.ok and ok.result.head_seq == 6 and ok.checkpoints == 1
    data = bytearray(segs[1][1])
    data[data.index(b'"target":"p4"') + 11] ^= 1  # one byte of seq 5 (the second line of segment two)
    bad = check_log([segs[0], (segs[1][0], bytes(data))])
    assert (bad.result.problem.value, bad.result.seq, bad.segment, bad.line) == ("edited", 5, segment_name(4), 2)
    cut = check_log([segs[0]], [cp(6, recs[5].hash)], verify_sig)
    assert cut.result.problem.value == "truncated" and cut.result.seq == 4
    torn = check_log([segs[0], (segs[1][0], segs[1][1][:-5])])
    assert torn.result.problem.value == "malformed" and torn.line == 3
    forged = Checkpoint(6, recs[5].hash, 1, KID, "00" * 64)
    assert check_log(segs, [forged], verify_sig).result.problem.value == "bad_signature"
