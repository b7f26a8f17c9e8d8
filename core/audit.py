"""The audit trail: hash-chained records, their canonical encoding, verification and checkpoints.

This module owns what an audit record is, the bytes it is stored as, and how a log of them is
checked. It must not read clocks, write files or sign anything: the agent stamps ``at_ms``,
appends and syncs the encoded lines before it answers the request, and signs checkpoints with
its Ed25519 key outside core (``cryptography``); here only the bytes to sign are defined and
signatures are checked through a callback.

Every record carries ``prev_hash``, the hash of the record before it (``GENESIS_HASH`` for the
first), and ``hash = sha256(bytes(prev_hash) || canonical(fields))`` where ``canonical`` is
sorted-key, compact, UTF-8 JSON of every field but the two hashes. A log on disk is one encoded
record per line (``encode_record``: the same canonical JSON, now with both hashes), each line
ending in a newline. Decoding is strict: a line that is not exactly the canonical encoding of
the record it parses to is malformed, so any change of a stored byte is seen.

``verify`` walks a log and names the first record that is out of place and why: edited (its
content does not match its hash), removed (a gap in seqs), reordered (a genuine record out of
place), inserted (a copy, a second record claiming a seq, or one that links to nothing) or a
broken link (a record re-hashed after an edit: only a checkpoint can tell which one). A log whose
tail was cut, or that was rewritten and re-hashed from some record on, is consistent by itself:
``verify_checkpoints`` catches those against chain heads signed and committed through Raft.

Secrets never enter a record: ``redact`` masks values under secret-looking keys and any string
shaped like a canidae token secret, and ``chain`` applies it to every field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from canidae.core.errors import InvalidInput
from canidae.core.tokens import SECRET_RE

GENESIS_HASH = "0" * 64
MASK = "***"
MAX_FIELD_CHARS = 1024
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
# Keys whose values are credentials; "accessor" ids are public and stay readable.
_SECRET_KEY_RE = re.compile(r"secret|token|passw|private.?key|api.?key|credential|authorization|cookie",
                            re.IGNORECASE)
_STR_FIELDS = ("accessor", "agent", "remote", "action", "target", "code", "request_id")
_CHECKPOINT_DOMAIN = b"canidae audit checkpoint v1\n"


class Outcome(StrEnum):
    OK = "ok"
    DENIED = "denied"   # refused by policy or authentication (code says which)
    FAILED = "failed"   # accepted, then failed (code is the error's wire code)


def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY_RE.search(key)) and not key.lower().endswith("accessor")


def _mask_all(value: Any) -> Any:
    # Keep the shape of a secrets table (which names changed is worth auditing), never a value.
    if isinstance(value, Mapping):
        return {str(k): _mask_all(v) for k, v in value.items()}
    return MASK


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every secret masked: values of secret-looking keys
    (``secret``, ``token``, ``password``, ``DB_PASSWORD`` in an env table...; all values of a
    ``secrets`` table) and any string that contains a canidae token secret."""
    if isinstance(value, Mapping):
        return {str(k): (_mask_all(v) if _is_secret_key(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return SECRET_RE.sub(MASK, value)
    return value


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited request. ``detail`` is JSON-like and already redacted; treat it as read-only."""

    seq: int
    at_ms: int
    accessor: str
    agent: str
    remote: str
    action: str
    target: str
    outcome: Outcome
    code: str
    request_id: str
    detail: Mapping[str, Any] = field(hash=False)
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        # Verification hashes prev_hash as bytes: a malformed one must fail here, not there.
        for what, h in (("prev_hash", self.prev_hash), ("hash", self.hash)):
            if not isinstance(h, str) or not _HEX64_RE.match(h):
                raise InvalidInput(f"audit record: {what} must be 64 lowercase hex digits")

    def fields(self) -> dict[str, Any]:
        """Everything the hash covers (all but the two hashes)."""
        return {"seq": self.seq, "at_ms": self.at_ms, "accessor": self.accessor, "agent": self.agent,
                "remote": self.remote, "action": self.action, "target": self.target,
                "outcome": self.outcome.value, "code": self.code, "request_id": self.request_id,
                "detail": self.detail}

    def computed_hash(self) -> str:
        return record_hash(self.prev_hash, self.fields())

    def to_dict(self) -> dict[str, Any]:
        return {**self.fields(), "prev_hash": self.prev_hash, "hash": self.hash}


def record_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + _canonical(fields)).hexdigest()


def _int_field(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def chain(prev_hash: str, fields: Mapping[str, Any]) -> AuditRecord:
    """The record that follows ``prev_hash`` (``GENESIS_HASH`` first), fields redacted and hashed.

    ``fields``: seq, at_ms, accessor, agent, remote, action, target, outcome, and optionally code,
    request_id, detail. Raises ``InvalidInput`` naming the bad field."""
    if not isinstance(prev_hash, str) or not _HEX64_RE.match(prev_hash):
        raise InvalidInput("audit record: prev_hash must be 64 hex digits")
    unknown = set(fields) - {"seq", "at_ms", "outcome", "detail", *_STR_FIELDS}
    if unknown:
        raise InvalidInput(f"audit record: unknown field '{min(unknown)}'")
    clean: dict[str, Any] = {"seq": _int_field("audit record: seq", fields.get("seq"), 1),
                             "at_ms": _int_field("audit record: at_ms", fields.get("at_ms"), 0)}
    for name in _STR_FIELDS:
        value = fields.get(name, "")
        if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
            raise InvalidInput(f"audit record: {name} must be a string of at most {MAX_FIELD_CHARS} characters")
        clean[name] = redact(value)
    try:
        outcome = Outcome(str(fields.get("outcome")))
    except (ValueError, TypeError):
        raise InvalidInput("audit record: outcome must be ok, denied or failed, "
                           f"got {fields.get('outcome')!r}") from None
    detail = fields.get("detail") or {}
    if not isinstance(detail, Mapping):
        raise InvalidInput("audit record: detail must be a table")
    detail = redact(detail)
    try:
        _canonical(detail)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"audit record: detail is not plain JSON ({e})") from None
    clean["outcome"], clean["detail"] = outcome.value, detail
    return AuditRecord(**{**clean, "outcome": outcome}, prev_hash=prev_hash,
                       hash=record_hash(prev_hash, clean))


# -- storage form --------------------------------------------------------------------------------

_RECORD_KEYS = frozenset({"seq", "at_ms", "outcome", "detail", "prev_hash", "hash", *_STR_FIELDS})


def encode_record(record: AuditRecord) -> bytes:
    """One log line, without its newline."""
    return _canonical(record.to_dict())


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate key")
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_record(line: bytes) -> AuditRecord:
    """Parse one line; ``InvalidInput`` unless it is exactly a canonical record encoding."""
    try:
        d = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"not a JSON record ({e})") from None
    if not isinstance(d, dict) or set(d) != _RECORD_KEYS:
        raise InvalidInput("not an audit record (wrong fields)")
    try:
        record = AuditRecord(
            seq=_int_field("seq", d["seq"], 1), at_ms=_int_field("at_ms", d["at_ms"], 0),
            **{k: _str(d, k) for k in (*_STR_FIELDS, "prev_hash", "hash")},
            outcome=Outcome(d["outcome"]),
            detail=d["detail"] if isinstance(d["detail"], dict) else _bad("detail"))
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"not an audit record ({e})") from None
    if encode_record(record) != line:
        raise InvalidInput("record is not in canonical form")
    return record


def _str(d: Mapping[str, Any], key: str) -> str:
    value = d[key]
    return value if isinstance(value, str) else _bad(key)


def _bad(key: str) -> Any:
    raise InvalidInput(f"field {key} has the wrong type")


def encode_log(records: Sequence[AuditRecord]) -> bytes:
    return b"".join(encode_record(r) + b"\n" for r in records)


# -- verification --------------------------------------------------------------------------------


class Problem(StrEnum):
    MALFORMED = "malformed"            # a line that is not a canonical record (or a torn last line)
    EDITED = "edited"                  # content does not match its own hash
    REMOVED = "removed"                # seqs missing
    INSERTED = "inserted"              # a copy, a second claimant of a seq, or a record of no chain
    REORDERED = "reordered"            # a genuine record out of place
    BROKEN_LINK = "broken_link"        # right seq, wrong prev_hash: it or its predecessor was re-hashed
    TRUNCATED = "truncated"            # a checkpoint covers seqs the log no longer holds
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # the chain differs from a signed head
    BAD_SIGNATURE = "bad_signature"    # a checkpoint's signature does not verify


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """``ok``, or the first bad record: its position in the log (``index``, from 0) and ``seq``,
    the first seq not found in its place. ``head_*`` is the last record verified in place."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    problem: Problem | None = None
    index: int | None = None
    seq: int | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "problem": self.problem.value if self.problem else None, "index": self.index, "seq": self.seq,
                "message": self.message}


def verify(records: Sequence[AuditRecord], *, start_seq: int = 1,
           start_prev: str = GENESIS_HASH) -> VerifyResult:
    """Check a log (or a segment of one starting at ``start_seq`` after ``start_prev``)."""
    expected, prev, prev2 = start_seq, start_prev, ""
    for i, r in enumerate(records):
        if r.seq == expected and r.prev_hash == prev and r.computed_hash() == r.hash:
            expected, prev, prev2 = expected + 1, r.hash, prev
            continue
        problem, at, why = _classify(records, i, expected, prev, prev2, start_seq, start_prev)
        head = at - 1  # records before `at` were verified in place
        return VerifyResult(False, at, start_seq + head, records[head].hash if head >= 0 else start_prev,
                            problem, at, start_seq + at, why)
    return VerifyResult(True, len(records), expected - 1, prev)


def _classify(records: Sequence[AuditRecord], i: int, expected: int, prev: str, prev2: str,
              start_seq: int, start_prev: str) -> tuple[Problem, int, str]:
    """Why record ``i`` is out of place, and the position of the first bad record (``i`` or ``i-1``)."""
    r, t = records[i], records[i].seq
    later = records[i + 1:]
    if r.computed_hash() != r.hash:
        if later and later[0].seq == expected and later[0].prev_hash == prev:
            return Problem.INSERTED, i, f"position {i} holds a record of no chain (seq {expected} follows it)"
        stored = "" if t == expected else f" (stored as seq {t})"
        return Problem.EDITED, i, f"record seq {expected}{stored} does not match its hash: edited"
    copies = [j for j, o in enumerate(records) if j != i and o.hash == r.hash]
    if copies:
        return Problem.INSERTED, i, f"position {i} is a copy of seq {t} (also at position {copies[0]})"
    if i >= 1 and t == expected - 1 and r.prev_hash == prev2:
        # Two records claim seq t and link to seq t-1: the intruder is the one seq t+1 does not follow.
        follower = next((o for o in later if o.seq == t + 1), None)
        at = i if follower is not None and follower.prev_hash == records[i - 1].hash else i - 1
        return Problem.INSERTED, at, f"positions {i - 1} and {i} both claim seq {t}: position {at} was inserted"
    if t > expected:
        if any(o.seq == expected for o in later):
            # A genuine record links to the record of seq t-1 somewhere in this log.
            by_hash = {o.hash: o.seq for o in records}
            if by_hash.get(r.prev_hash) == t - 1 or (t == start_seq and r.prev_hash == start_prev):
                return Problem.REORDERED, i, f"seq {t} at position {i} comes before seq {expected}: reordered"
            return Problem.INSERTED, i, f"position {i} holds seq {t} linked to no record: inserted"
        missing = f"seq {expected}" if t == expected + 1 else f"seqs {expected}..{t - 1}"
        return Problem.REMOVED, i, f"{missing} missing before position {i}: removed"
    if t == expected:
        if any(o.seq == t and o.prev_hash == prev for o in later):
            return Problem.INSERTED, i, f"position {i} claims seq {t} but does not link to seq {t - 1}: inserted"
        # Most likely seq t-1 was edited and re-hashed (its own hash still checks); the log alone
        # cannot exclude that seq t was replaced instead. Name the earlier one.
        at = max(i - 1, 0)
        return Problem.BROKEN_LINK, at, (f"seq {t} does not link to the record before it: seq {t - 1} was "
                                         f"replaced and re-hashed, or seq {t} was")
    return Problem.INSERTED, i, f"seq {t} at position {i} is out of order (expected seq {expected}): inserted"


def verify_log(data: bytes, *, start_seq: int = 1, start_prev: str = GENESIS_HASH) -> VerifyResult:
    """Check a stored log: strict decoding of every line, then ``verify``."""
    lines = data.split(b"\n")
    torn = lines.pop() != b""  # the log ends with a newline; anything after the last one is torn
    records: list[AuditRecord] = []
    bad: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        try:
            records.append(decode_record(line))
        except InvalidInput as e:
            bad = (i, e.message)
            break
    if bad is None and torn:
        bad = (len(lines), "the last line is incomplete (no newline): torn")
    result = verify(records, start_seq=start_seq, start_prev=start_prev)
    if not result.ok or bad is None:
        return result
    return VerifyResult(False, len(records), result.head_seq, result.head_hash, Problem.MALFORMED,
                        bad[0], result.head_seq + 1, f"line {bad[0] + 1}: {bad[1]}")


# -- checkpoints ---------------------------------------------------------------------------------


def checkpoint_message(seq: int, head_hash: str, at_ms: int, key_id: str) -> bytes:
    """The bytes a checkpoint signs (domain-separated so no other signed message can pass for one)."""
    return _CHECKPOINT_DOMAIN + _canonical({"at_ms": at_ms, "head_hash": head_hash, "key_id": key_id,
                                            "seq": seq})


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed chain head, committed through Raft: the log held ``head_hash`` at ``seq``."""

    seq: int
    head_hash: str
    at_ms: int
    key_id: str
    signature: str  # hex

    def __post_init__(self) -> None:
        _int_field("checkpoint: seq", self.seq, 0)
        _int_field("checkpoint: at_ms", self.at_ms, 0)
        if not isinstance(self.head_hash, str) or not _HEX64_RE.match(self.head_hash):
            raise InvalidInput("checkpoint: head_hash must be 64 hex digits")
        if not isinstance(self.key_id, str) or not self.key_id:
            raise InvalidInput("checkpoint: key_id must be a non-empty string")
        try:
            bytes.fromhex(self.signature)
        except (TypeError, ValueError):
            raise InvalidInput("checkpoint: signature must be hex") from None

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.head_hash, self.at_ms, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "head_hash": self.head_hash, "at_ms": self.at_ms, "key_id": self.key_id,
                "signature": self.signature}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Checkpoint:
        try:
            return Checkpoint(d["seq"], d["head_hash"], d["at_ms"], d["key_id"], d["signature"])
        except KeyError as e:
            raise InvalidInput(f"checkpoint is missing {e.args[0]!r}") from None


VerifySignature = Callable[[str, bytes, bytes], bool]  # (key_id, message, signature) -> valid


def verify_checkpoints(records: Sequence[AuditRecord], checkpoints: Sequence[Checkpoint],
                       verify_sig: VerifySignature, *, start_seq: int = 1,
                       start_prev: str = GENESIS_HASH) -> VerifyResult:
    """``verify``, then every checkpoint: a valid signature, and the chain's hash at its seq.

    ``verify_sig`` returns False for a bad signature or an unknown key. Checkpoints older than the
    segment cannot be checked against it and are only signature-checked."""
    result = verify(records, start_seq=start_seq, start_prev=start_prev)
    if not result.ok:
        return result

    def fail(problem: Problem, first: int | None, why: str) -> VerifyResult:
        # ``first``: the earliest seq that may be bad (None: no record is named).
        head = result.head_seq if first is None else first - 1
        good = head - start_seq
        return VerifyResult(False, len(records), head, records[good].hash if good >= 0 else start_prev,
                            problem, None if first is None else first - start_seq, first, why)

    last_good = start_seq - 1  # the newest seq a checkpoint vouches for
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        if not verify_sig(cp.key_id, cp.message(), bytes.fromhex(cp.signature)):
            return fail(Problem.BAD_SIGNATURE, None,
                        f"checkpoint at seq {cp.seq} (key {cp.key_id}): signature does not verify")
        if cp.seq < start_seq - 1:
            continue
        if cp.seq > result.head_seq:
            return fail(Problem.TRUNCATED, result.head_seq + 1,
                        f"the log ends at seq {result.head_seq} but a checkpoint covers seq {cp.seq}: "
                        f"seqs {result.head_seq + 1}..{cp.seq} were removed")
        held = start_prev if cp.seq == start_seq - 1 else records[cp.seq - start_seq].hash
        if held != cp.head_hash:
            return fail(Problem.CHECKPOINT_MISMATCH, last_good + 1,
                        f"the chain at seq {cp.seq} differs from the checkpoint signed at {cp.at_ms} ms: "
                        f"records {last_good + 1}..{cp.seq} were rewritten")
        last_good = cp.seq
    return result


__all__ = [
    "GENESIS_HASH", "MASK", "AuditRecord", "Checkpoint", "Outcome", "Problem", "VerifyResult",
    "VerifySignature", "chain", "checkpoint_message", "decode_record", "encode_log", "encode_record",
    "record_hash", "redact", "verify", "verify_checkpoints", "verify_log",
]
