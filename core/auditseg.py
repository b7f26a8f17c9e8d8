"""An audit log as files: segment names, and verifying a whole log of segments against checkpoints.

An agent's audit log is a run of segment files in ``<data dir>/audit/``, each named by the seq of
its first record (``seg-00000000000000000001.log``); their concatenation in name order is the log
(``canidae.core.audit``: one canonical record per line). This module names segments and checks
a log given as ``(name, bytes)`` pairs, naming the first bad record by seq, segment and line, so
the same check serves an auditor holding a copy of the data dir and the CLI that fetched the
lines from the agent. It reads no file itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from canidae.core.audit import (
    AuditRecord,
    Checkpoint,
    Problem,
    VerifyResult,
    VerifySignature,
    decode_record,
    verify,
    verify_checkpoints,
)
from canidae.core.errors import InvalidInput

SEGMENT_RE = re.compile(r"^seg-(\d{20})\.log$")


def segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:020d}.log"


def first_seq_of(name: str) -> int | None:
    m = SEGMENT_RE.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class LogCheck:
    """A verdict on a whole log: the core ``VerifyResult`` and where its first bad record lies."""

    result: VerifyResult
    segment: str | None = None   # the segment holding the first bad record (None: none named)
    line: int | None = None      # its line in that segment, from 1
    checkpoints: int = 0         # checkpoints checked

    @property
    def ok(self) -> bool:
        return self.result.ok

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "segment": self.segment, "line": self.line,
                "checkpoints_checked": self.checkpoints}

    def describe(self) -> str:
        r = self.result
        if r.ok:
            return (f"ok: {r.checked} records, head seq {r.head_seq} ({r.head_hash[:16]}), "
                    f"{self.checkpoints} checkpoint(s) checked")
        where = f" ({self.segment} line {self.line})" if self.segment is not None else ""
        first = f"first bad record: seq {r.seq}{where}: " if r.seq is not None else ""
        return f"{r.problem.value if r.problem else 'bad'}: {first}{r.message}"


def check_log(segments: Sequence[tuple[str, bytes]], checkpoints: Sequence[Checkpoint] = (),
              verify_sig: VerifySignature | None = None) -> LogCheck:
    """Decode every line strictly, verify the chain and, with ``verify_sig``, the checkpoints.

    The earliest problem wins: a checkpoint that the records before a broken link already
    contradict is named before the break itself."""
    lines: list[bytes] = []
    where: list[tuple[str, int]] = []
    torn: tuple[str, int] | None = None
    for name, data in segments:
        parts = data.split(b"\n")
        tail = parts.pop()
        for i, line in enumerate(parts):
            lines.append(line)
            where.append((name, i + 1))
        if tail:  # a segment must end with a newline: anything after the last one is torn
            lines.append(tail)
            where.append((name, len(parts) + 1))
            torn = torn or (name, len(parts) + 1)
    records: list[AuditRecord] = []
    malformed: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        try:
            if torn is not None and where[i] == torn:
                raise InvalidInput("the line is incomplete (no newline): torn")
            records.append(decode_record(line))
        except InvalidInput as e:
            malformed = (i, e.message)
            break
    chain = verify(records)
    prefix = records if chain.ok else records[:chain.index or 0]
    cps = list(checkpoints) if verify_sig is not None else []
    if cps:
        head = prefix[-1].seq if prefix else 0
        early = verify_checkpoints(prefix, [c for c in cps if c.seq <= head], verify_sig)  # type: ignore[arg-type]
        if not early.ok:
            return _located(early, where, len(cps))
    if not chain.ok:
        return _located(chain, where, 0)
    if malformed is not None:
        i, why = malformed
        bad = VerifyResult(False, len(records), chain.head_seq, chain.head_hash, Problem.MALFORMED, i,
                           chain.head_seq + 1, f"line {where[i][1]} of {where[i][0]}: {why}")
        return _located(bad, where, 0)
    if cps:
        return _located(verify_checkpoints(records, cps, verify_sig), where, len(cps))  # type: ignore[arg-type]
    return LogCheck(chain)


def _located(result: VerifyResult, where: list[tuple[str, int]], checked: int) -> LogCheck:
    if result.index is not None and 0 <= result.index < len(where):
        name, line = where[result.index]
        return LogCheck(result, name, line, checked)
    return LogCheck(result, None, None, checked)


__all__ = ["SEGMENT_RE", "LogCheck", "check_log", "first_seq_of", "segment_name"]
