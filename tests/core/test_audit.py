"""Tests of the audit trail (canidae.core.audit): chaining, strict storage, tamper detection, checkpoints.

Tampering is done the way an attacker with the log file would: change one stored byte, drop,
insert, copy or swap lines, or rewrite a record and re-hash it (and, with more effort, every
record after it). Each must be found, at the right position, or by a signed checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest
from canidae.core.audit import (
    GENESIS_HASH,
    MASK,
    AuditRecord,
    Checkpoint,
    Outcome,
    Problem,
    chain,
    checkpoint_message,
    decode_record,
    encode_log,
    encode_record,
    redact,
    verify,
    verify_checkpoints,
    verify_log,
)
from canidae.core.errors import InvalidInput
from canidae.core.tokens import format_secret
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

# Quotes, backslashes, control and non-ASCII characters: what JSON escapes or passes through.
texts = st.text(alphabet='ab9 "\\\n\u00e9\u2713\U0001f43a', max_size=6)


@st.composite
def field_sets(draw: st.DrawFn, seq: int) -> dict:
    return {
        "seq": seq, "at_ms": draw(st.integers(0, 2**41)), "accessor": draw(texts), "agent": draw(texts),
        "remote": draw(texts), "action": draw(st.sampled_from(["pack.spawn", "token.create", "node.drain"])),
        "target": draw(texts), "outcome": draw(st.sampled_from(list(Outcome))), "code": draw(texts),
        "request_id": draw(texts),
        "detail": draw(st.dictionaries(st.sampled_from(["n", "why", "cpu"]), st.integers() | texts, max_size=2)),
    }


def build(fields: list[dict], prev: str = GENESIS_HASH) -> list[AuditRecord]:
    out = []
    for f in fields:
        out.append(chain(prev, f))
        prev = out[-1].hash
    return out


@st.composite
def logs(draw: st.DrawFn, min_size: int = 2, max_size: int = 8) -> list[AuditRecord]:
    n = draw(st.integers(min_size, max_size))
    return build([draw(field_sets(i + 1)) for i in range(n)])


def simple_log(n: int, start: int = 1, prev: str = GENESIS_HASH) -> list[AuditRecord]:
    return build([{"seq": start + i, "at_ms": 1000 + i, "accessor": "ca_1", "agent": "n1", "remote": "10.0.0.1",
                   "action": "pack.spawn", "target": f"web-{i}", "outcome": "ok", "request_id": f"r{i}"}
                  for i in range(n)], prev)


# -- building and storing ------------------------------------------------------------------------


def test_records_chain_from_genesis_and_verify():
    log = simple_log(5)
    assert log[0].prev_hash == GENESIS_HASH and all(b.prev_hash == a.hash for a, b in itertools.pairwise(log))
    canonical = json.dumps(log[0].fields(), sort_keys=True, separators=(",", ":")).encode()
    assert log[0].hash == hashlib.sha256(bytes(32) + canonical).hexdigest()
    res = verify(log)
    assert res.ok and res.checked == 5 and res.head_seq == 5 and res.head_hash == log[-1].hash
    assert verify([]).ok and verify_log(b"").ok


def test_a_segment_verifies_from_its_anchor():
    log = simple_log(6)
    assert verify(log[3:], start_seq=4, start_prev=log[2].hash).ok
    bad = verify(log[3:], start_seq=4, start_prev=log[1].hash)
    assert not bad.ok and bad.index == 0 and bad.seq == 4


@PROPS
@given(logs(1, 4))
def test_storage_form_round_trips_and_is_strict(log):
    data = encode_log(log)
    assert [decode_record(line) for line in data.splitlines()] == log
    assert verify_log(data).ok
    line = encode_record(log[0])
    for bad in (line.replace(b",", b", ", 1), b"{" + line[1:-1] + b',"seq":1}', line + b" ",
                line.replace(b'"at_ms":', b'"at_ms":NaN,"x":', 1)):
        with pytest.raises(InvalidInput):
            decode_record(bad)


def test_chain_validates_and_names_the_bad_field():
    good = {"seq": 1, "at_ms": 5, "accessor": "ca_1", "outcome": "denied", "code": "denied"}
    chain(GENESIS_HASH, good)
    for change, field in [({"seq": 0}, "seq"), ({"at_ms": -1}, "at_ms"), ({"outcome": "maybe"}, "outcome"),
                          ({"target": 7}, "target"), ({"agent": "x" * 2000}, "agent"), ({"colour": 1}, "colour"),
                          ({"detail": {"x": float("nan")}}, "detail"), ({"detail": [1]}, "detail")]:
        with pytest.raises(InvalidInput, match=field):
            chain(GENESIS_HASH, {**good, **change})
    with pytest.raises(InvalidInput, match="prev_hash"):
        chain("abc", good)


# -- secrets never enter a record ----------------------------------------------------------------


def test_redact_masks_secret_values_and_keeps_the_rest():
    secret = format_secret(bytes(range(32)))
    d = {"name": "web", "token": secret, "Authorization": "Bearer x", "accessor": "ca_1", "token_accessor": "ca_2",
         "env": {"PORT": "80", "DB_PASSWORD": "hunter2"}, "secrets": {"api": "k1", "db": {"pw": "k2"}},
         "args": ["--flag", f"--key={secret}"], "api_key": ["a", "b"], "n": 3}
    out = redact(d)
    assert out == {"name": "web", "token": MASK, "Authorization": MASK, "accessor": "ca_1", "token_accessor": "ca_2",
                   "env": {"PORT": "80", "DB_PASSWORD": MASK}, "secrets": {"api": MASK, "db": {"pw": MASK}},
                   "args": ["--flag", f"--key={MASK}"], "api_key": MASK, "n": 3}
    assert d["token"] == secret  # a copy, not in place
    rec = chain(GENESIS_HASH, {"seq": 1, "at_ms": 0, "outcome": "ok", "target": f"x {secret}", "detail": d})
    assert secret not in encode_record(rec).decode() and "hunter2" not in encode_record(rec).decode()


# -- tampering -----------------------------------------------------------------------------------


@PROPS
@given(logs(), st.data())
def test_any_single_byte_edit_is_found_at_its_line(log, data):
    stored = encode_log(log)
    pos = data.draw(st.integers(0, len(stored) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != stored[pos]))
    edited = stored[:pos] + bytes([value]) + stored[pos + 1:]
    res = verify_log(edited)
    line = stored[:pos].count(b"\n")
    assert not res.ok and res.index == line and res.seq == line + 1, res
    assert res.problem in (Problem.MALFORMED, Problem.EDITED)


@PROPS
@given(logs(3), st.data())
def test_a_removed_record_is_found_and_named(log, data):
    k = data.draw(st.integers(0, len(log) - 2))
    res = verify(log[:k] + log[k + 1:])
    assert not res.ok and res.problem is Problem.REMOVED and res.index == k and res.seq == k + 1
    assert f"seq {k + 1} missing" in res.message
    many = verify(log[:k] + log[k + 2:]) if k + 2 < len(log) else None
    assert many is None or (many.problem is Problem.REMOVED and f"seqs {k + 1}..{k + 2}" in many.message)


@PROPS
@given(logs(), st.data())
def test_reordered_records_are_found_at_the_first_moved_one(log, data):
    k = data.draw(st.integers(0, len(log) - 2))
    m = data.draw(st.integers(k + 1, len(log) - 1))
    swapped = list(log)
    swapped[k], swapped[m] = swapped[m], swapped[k]
    res = verify(swapped)
    assert not res.ok and res.problem is Problem.REORDERED and res.index == k and res.seq == k + 1
    moved = list(log)
    moved.insert(m, moved.pop(k))
    res = verify(moved)
    assert not res.ok and res.problem is Problem.REORDERED and res.index == k


@PROPS
@given(logs(), st.data())
def test_an_inserted_record_is_found(log, data):
    k = data.draw(st.integers(0, len(log) - 1))
    how = data.draw(st.sampled_from(["copy", "forged", "random"]))
    if how == "copy":
        intruder = data.draw(st.sampled_from(log))
    elif how == "forged":  # right seq, right link: a forger who read the log
        intruder = chain(log[k - 1].hash if k else GENESIS_HASH, data.draw(field_sets(k + 1)))
    else:
        prev = data.draw(st.binary(min_size=32, max_size=32)).hex()
        intruder = chain(prev, data.draw(field_sets(data.draw(st.integers(1, len(log) + 2)))))
    res = verify(log[:k] + [intruder] + log[k:])
    # An exact copy of the record it precedes is indistinguishable from it: the second is named.
    expected = k + 1 if intruder == log[k] else k
    assert not res.ok and res.problem is Problem.INSERTED and res.index == expected, (how, res)


@PROPS
@given(logs(), st.data())
def test_a_record_rewritten_and_rehashed_is_named_by_the_broken_link(log, data):
    k = data.draw(st.integers(0, len(log) - 2))
    fields = {**log[k].fields(), "target": log[k].target + "!"}
    forged = chain(log[k].prev_hash, fields)
    res = verify([*log[:k], forged, *log[k + 1:]])
    assert not res.ok and res.problem is Problem.BROKEN_LINK and res.index == k and res.seq == k + 1


def test_a_truncated_last_line_is_torn():
    stored = encode_log(simple_log(3))
    res = verify_log(stored[:-10])
    assert not res.ok and res.problem is Problem.MALFORMED and res.index == 2 and "torn" in res.message
    assert res.head_seq == 2


# -- checkpoints ---------------------------------------------------------------------------------


class Signer:
    """An Ed25519 key the way an agent holds one: signs checkpoint messages, verifies by key id."""

    def __init__(self, key_id: str = "srv1-2024") -> None:
        self.key_id, self.key = key_id, Ed25519PrivateKey.from_private_bytes(bytes(range(32)))

    def checkpoint(self, rec: AuditRecord, at_ms: int = 9) -> Checkpoint:
        sig = self.key.sign(checkpoint_message(rec.seq, rec.hash, at_ms, self.key_id))
        return Checkpoint(rec.seq, rec.hash, at_ms, self.key_id, sig.hex())

    def verify(self, key_id: str, message: bytes, signature: bytes) -> bool:
        if key_id != self.key_id:
            return False
        try:
            self.key.public_key().verify(signature, message)
        except InvalidSignature:
            return False
        return True


def test_checkpoints_vouch_for_the_chain():
    s, log = Signer(), simple_log(10)
    cps = [s.checkpoint(log[3]), s.checkpoint(log[7]), s.checkpoint(log[9])]
    assert verify_checkpoints(log, cps, s.verify).ok
    assert Checkpoint.from_dict(cps[0].to_dict()) == cps[0]
    assert verify_checkpoints(log[5:], cps, s.verify, start_seq=6, start_prev=log[4].hash).ok


@PROPS
@given(st.integers(0, 9))
def test_a_rewritten_tail_passes_alone_but_not_against_checkpoints(k):
    s, log = Signer(), simple_log(10)
    cps = [s.checkpoint(log[2]), s.checkpoint(log[6]), s.checkpoint(log[9])]
    fields = [r.fields() for r in log]
    fields[k]["target"] = "elsewhere"
    rewritten = build(fields[:k], GENESIS_HASH)
    rewritten += build(fields[k:], rewritten[-1].hash if rewritten else GENESIS_HASH)
    assert verify(rewritten).ok
    res = verify_checkpoints(rewritten, cps, s.verify)
    first_vouched = max((c.seq for c in cps if c.seq <= k), default=0) + 1
    assert not res.ok and res.problem is Problem.CHECKPOINT_MISMATCH and res.seq == first_vouched


def test_a_cut_tail_and_a_bad_signature_are_found():
    s, log = Signer(), simple_log(6)
    cp = s.checkpoint(log[5])
    res = verify_checkpoints(log[:4], [cp], s.verify)
    assert not res.ok and res.problem is Problem.TRUNCATED and res.seq == 5 and res.index == 4
    forged = Checkpoint(cp.seq, cp.head_hash, cp.at_ms + 1, cp.key_id, cp.signature)
    res = verify_checkpoints(log, [forged], s.verify)
    assert not res.ok and res.problem is Problem.BAD_SIGNATURE and res.index is None
    other = Signer("elsewhere").checkpoint(log[5])
    assert verify_checkpoints(log, [other], s.verify).problem is Problem.BAD_SIGNATURE
    assert verify_checkpoints(log[:5], [s.checkpoint(log[4])], s.verify).ok


def test_checkpoint_messages_are_domain_separated_and_checkpoints_validated():
    msg = checkpoint_message(3, "a" * 64, 5, "k")
    assert msg.startswith(b"canidae audit checkpoint v1\n")
    assert msg != checkpoint_message(3, "a" * 64, 6, "k") != checkpoint_message(4, "a" * 64, 5, "k")
    for args in [(3, "x", 5, "k", "00"), (3, "a" * 64, 5, "", "00"), (3, "a" * 64, 5, "k", "zz"),
                 (-1, "a" * 64, 5, "k", "00")]:
        with pytest.raises(InvalidInput):
            Checkpoint(*args)
