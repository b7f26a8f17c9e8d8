"""The scenario language of the simulator: one step per line, parsed and checked up front.

This module owns the text format and its validation, nothing else: it builds ``Step`` values
that ``core.sim`` runs. A scenario reads like etcd's raft testdata::

    # 2,000 nodes, 100,000 packs, then chaos
    topology zones=3 regions=4 cells=10 nodes=2000 cpu=16000 mem=65536 packs=110
    spawn 100000 cpu=100 mem=64 over=60000
    kill node=random count=50
    kill zone=z1
    join nodes=20
    check
    expect unplaced=0 balance<=1.25

Blank lines and ``#`` comments are ignored. The first word is the operation; then an optional
positional count (``spawn 100000``, ``advance 500``) and ``key=value`` options (``expect`` also
takes ``key<=value`` and ``key>=value``). Every mistake is an ``InvalidInput`` naming the line.

Operations (options in brackets are optional):

    topology zones= regions= cells= nodes= cpu= mem= packs= [load=1.25] [vnodes=160]
    spawn N [cpu=100] [mem=64] [prefix=p] [zone=] [region=] [cell=] [node=] [spread=zone|region|cell]
            [group=] [over=MS] [batch=1000]
    kill node=ID|random [count=1] | kill zone=Z | kill region=Z/R | kill cell=Z/R/C
    revive node=ID|all | revive zone=Z
    cordon node=ID|random [count=1]       uncordon node=ID|all
    join nodes=N [zone=] [region=] [cell=] [cpu=] [mem=] [packs=] [weight=1]
    stop count=N
    advance MS
    check
    expect KEY=V ...    keys: placed unplaced packs nodes ready down cordoned moved balance
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from canidae.core.errors import InvalidInput
from canidae.core.types import validate_name

EXPECT_KEYS = ("placed", "unplaced", "packs", "nodes", "ready", "down", "cordoned", "moved", "balance")

# Per operation: the options it accepts, whether it takes a positional count, and its required options.
_OPS: dict[str, tuple[frozenset[str], bool, frozenset[str]]] = {
    "topology": (
        frozenset({"zones", "regions", "cells", "nodes", "cpu", "mem", "packs", "load", "vnodes"}),
        False,
        frozenset({"zones", "regions", "cells", "nodes", "cpu", "mem", "packs"}),
    ),
    "spawn": (
        frozenset(
            {"cpu", "mem", "prefix", "zone", "region", "cell", "node", "spread", "group", "over", "batch"}
        ),
        True,
        frozenset(),
    ),
    "kill": (frozenset({"node", "count", "zone", "region", "cell"}), False, frozenset()),
    "revive": (frozenset({"node", "zone"}), False, frozenset()),
    "cordon": (frozenset({"node", "count"}), False, frozenset({"node"})),
    "uncordon": (frozenset({"node"}), False, frozenset({"node"})),
    "join": (
        frozenset({"nodes", "zone", "region", "cell", "cpu", "mem", "packs", "weight"}),
        False,
        frozenset({"nodes"}),
    ),
    "stop": (frozenset({"count"}), False, frozenset({"count"})),
    "advance": (frozenset(), True, frozenset()),
    "check": (frozenset(), False, frozenset()),
    "expect": (frozenset(EXPECT_KEYS), False, frozenset()),
}

_INT_KEYS = frozenset(
    {"zones", "regions", "cells", "nodes", "cpu", "mem", "packs", "vnodes", "count", "over", "batch"}
)
_FLOAT_KEYS = frozenset({"load", "weight"})
_NAME_KEYS = frozenset({"prefix", "zone", "group"})


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a scenario: the operation, its positional count, its options, where it came from."""

    op: str
    count: int | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    # For expect: key -> (comparison, value); comparison is "=", "<=" or ">=".
    expect: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    line: int = 0
    text: str = ""

    def __str__(self) -> str:
        return self.text or self.op


def parse_scenario(text: str) -> list[Step]:
    """Parse and validate a whole scenario (see the module docstring for the language)."""
    steps: list[Step] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            steps.append(parse_line(line, number))
    if not steps:
        raise InvalidInput("the scenario is empty: it needs at least a topology line")
    if steps[0].op != "topology":
        raise InvalidInput(
            f"line {steps[0].line}: the scenario must start with a topology line, not {steps[0].op}"
        )
    for s in steps[1:]:
        if s.op == "topology":
            raise InvalidInput(f"line {s.line}: only one topology line is allowed")
    return steps


def parse_line(line: str, number: int = 0) -> Step:
    """Parse one non-empty line into a ``Step``."""
    where = f"line {number}: " if number else ""
    words = line.split()
    op = words[0].lower()
    if op not in _OPS:
        raise InvalidInput(
            f"{where}unknown operation {words[0]!r} (expected one of {', '.join(sorted(_OPS))})"
        )
    allowed, positional, required = _OPS[op]
    count: int | None = None
    args: dict[str, Any] = {}
    expect: dict[str, tuple[str, float]] = {}
    for i, word in enumerate(words[1:]):
        if op == "expect":
            ekey, cmp, bound = _split_expect(word, where)
            if ekey in expect:
                raise InvalidInput(f"{where}{ekey} is given twice")
            expect[ekey] = (cmp, bound)
            continue
        if "=" not in word:
            if positional and i == 0:
                count = _int(op, word, where)
                continue
            if op in ("revive", "uncordon") and word == "all":
                args["node"] = "all"
                continue
            raise InvalidInput(f"{where}expected key=value, got {word!r}")
        key, _, value = word.partition("=")
        if key not in allowed:
            raise InvalidInput(
                f"{where}{op} takes no option {key!r} (it takes {', '.join(sorted(allowed)) or 'none'})"
            )
        if key in args:
            raise InvalidInput(f"{where}{key} is given twice")
        args[key] = _value(key, value, where)
    missing = sorted(required - set(args))
    if missing:
        raise InvalidInput(f"{where}{op} needs {', '.join(k + '=' for k in missing)}")
    if positional and op in ("spawn", "advance") and count is None:
        raise InvalidInput(f"{where}{op} needs a count, e.g. '{op} 100'")
    _check_step(op, args, expect, where)
    return Step(op, count, args, expect, number, line)


def _split_expect(word: str, where: str) -> tuple[str, str, float]:
    for cmp in ("<=", ">=", "="):
        if cmp in word:
            key, _, value = word.partition(cmp)
            break
    else:
        raise InvalidInput(f"{where}expect takes key=value, key<=value or key>=value, got {word!r}")
    if key not in EXPECT_KEYS:
        raise InvalidInput(f"{where}expect knows no {key!r} (it knows {', '.join(EXPECT_KEYS)})")
    try:
        return key, cmp, float(value)
    except ValueError:
        raise InvalidInput(f"{where}expect {key}: {value!r} is not a number") from None


def _int(key: str, value: str, where: str) -> int:
    try:
        n = int(value.replace("_", ""))
    except ValueError:
        raise InvalidInput(f"{where}{key} must be an integer, got {value!r}") from None
    if n < 0:
        raise InvalidInput(f"{where}{key} must not be negative, got {n}")
    return n


def _value(key: str, value: str, where: str) -> Any:
    if key in _INT_KEYS:
        return _int(key, value, where)
    if key in _FLOAT_KEYS:
        try:
            f = float(value)
        except ValueError:
            raise InvalidInput(f"{where}{key} must be a number, got {value!r}") from None
        return f
    if key == "spread":
        if value not in ("zone", "region", "cell"):
            raise InvalidInput(f"{where}spread must be zone, region or cell, got {value!r}")
        return value
    if key in _NAME_KEYS:
        try:
            return validate_name(key, value)
        except InvalidInput as e:
            raise InvalidInput(f"{where}{e.message}") from None
    if not value:
        raise InvalidInput(f"{where}{key} needs a value")
    return value


def _check_step(op: str, args: Mapping[str, Any], expect: Mapping[str, Any], where: str) -> None:
    if op == "topology":
        for k in ("zones", "regions", "cells", "nodes", "cpu", "mem", "packs"):
            if args[k] < 1:
                raise InvalidInput(f"{where}topology {k} must be at least 1")
        if "load" in args and not args["load"] > 1.0:
            raise InvalidInput(f"{where}load (the load factor) must be above 1.0, got {args['load']}")
        if args.get("vnodes", 1) < 1:
            raise InvalidInput(f"{where}vnodes must be at least 1")
    elif op == "spawn":
        if args.get("batch", 1) < 1:
            raise InvalidInput(f"{where}batch must be at least 1")
        if "group" in args and "spread" not in args:
            raise InvalidInput(f"{where}group= only means something with spread=")
    elif op == "kill":
        targets = [k for k in ("node", "zone", "region", "cell") if k in args]
        if len(targets) != 1:
            raise InvalidInput(f"{where}kill needs exactly one of node=, zone=, region=, cell=")
        if "count" in args and args.get("node") != "random":
            raise InvalidInput(f"{where}count= goes with node=random")
        if args.get("region") is not None and args["region"].count("/") != 1:
            raise InvalidInput(f"{where}region must be a scoped id like z1/r2, got {args['region']!r}")
        if args.get("cell") is not None and args["cell"].count("/") != 2:
            raise InvalidInput(f"{where}cell must be a scoped id like z1/r2/c3, got {args['cell']!r}")
    elif op == "revive":
        if len([k for k in ("node", "zone") if k in args]) != 1:
            raise InvalidInput(f"{where}revive needs exactly one of node=ID|all, zone=Z")
    elif op == "cordon":
        if "count" in args and args.get("node") != "random":
            raise InvalidInput(f"{where}count= goes with node=random")
    elif op == "join":
        if args["nodes"] < 1:
            raise InvalidInput(f"{where}join nodes must be at least 1")
        if "weight" in args and not args["weight"] > 0:
            raise InvalidInput(f"{where}weight must be positive")
        if ("region" in args or "cell" in args) and not (
            "zone" in args and "region" in args and "cell" in args
        ):
            raise InvalidInput(
                f"{where}join places new nodes in zone=, region= and cell= together (or zone= alone, or none)"
            )
    elif op == "expect" and not expect:
        raise InvalidInput(f"{where}expect needs at least one key=value")


__all__ = ["EXPECT_KEYS", "Step", "parse_line", "parse_scenario"]
