"""Command lines answered without the typer tree: ``canidae [globals] pack list [options] --json``.

Scripts and completions call ``canidae --json pack list`` in loops; with typer, rich and the noun
loaded it took about 0.4 s, most of it imports. Here the same command line is parsed by hand and
answered by the same code (``canidae.cli.packlist.list_packs``) and printed as ``emit`` prints it,
loading only the client and core.

Only exact shapes are taken: the global options (``--json``, ``--addr``, ``--token``,
``--config``), then ``pack list`` with ``--node``, ``--zone``, ``--state``, ``--limit``, ``--after``,
``--stale``, ``--json``, JSON output asked for. Anything else, a value the typer command would
refuse included, returns None and the full CLI answers it (its help, its usage errors). Failures
go through ``canidae.cli.main.report_failure`` (the one place they become an exit code), which is
loaded only then.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from canidae.agent.client import Client, resolve_target
from canidae.cli.packlist import STATES, list_packs

GLOBAL_VALUES = ("--addr", "--token", "--config")
LIST_VALUES = ("--node", "--zone", "--state", "--limit", "--after")
LIST_FLAGS = ("--stale", "--json")


def _valid_addrs(value: str) -> bool:
    """As ``--addr`` is checked by the full CLI: host:port items, comma-separated."""
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return False
    return True


def parse(argv: Sequence[str]) -> dict[str, Any] | None:
    """The options of a ``pack list`` command line this module answers, or None."""
    args = list(argv)
    opts: dict[str, Any] = {"json": False}
    i = 0

    def value(word: str) -> tuple[str, str] | None:
        nonlocal i
        name, eq, given = word.partition("=")
        if eq:
            i += 1
            return name, given
        if i + 1 >= len(args):
            return None
        i += 2
        return name, args[i - 1]

    while i < len(args) and args[i].startswith("-"):  # the global options
        word = args[i]
        if word == "--json":
            opts["json"] = True
            i += 1
            continue
        if word.partition("=")[0] not in GLOBAL_VALUES:
            return None
        got = value(word)
        if got is None:
            return None
        opts[got[0]] = got[1]
    if args[i:i + 2] != ["pack", "list"]:
        return None
    i += 2
    while i < len(args):
        word = args[i]
        if word in LIST_FLAGS:
            opts[word] = True
            i += 1
            continue
        if word.partition("=")[0] not in LIST_VALUES:
            return None
        got = value(word)
        if got is None:
            return None
        opts[got[0]] = got[1]
    if not (opts["json"] or opts.get("--json")):
        return None  # tables are rich's: the full CLI prints them
    limit = opts.get("--limit", "1000")
    state = opts.get("--state")
    addr = opts.get("--addr", os.environ.get("CANIDAE_ADDR"))
    if not (limit.isascii() and limit.isdigit() and int(limit) >= 1) or (state is not None and state not in STATES) \
            or (addr is not None and not _valid_addrs(addr)):
        return None  # the full CLI says what is wrong with it
    return {"addr": addr, "token": opts.get("--token"), "config": opts.get("--config"),
            "node": opts.get("--node") or None, "zone": opts.get("--zone") or None, "state": state,
            "limit": int(limit), "after": opts.get("--after") or None, "stale": bool(opts.get("--stale"))}


def answer(argv: Sequence[str]) -> int | None:
    """Answer ``argv`` here and return its exit code, or None when the full CLI must answer it."""
    opts = parse(argv)
    if opts is None:
        return None
    try:
        addrs = ",".join(p.strip() for p in (opts["addr"] or "").split(",") if p.strip())
        target = resolve_target(addrs or None, opts["token"], os.path.expanduser(opts["config"])
                                if opts["config"] else None)
        with Client(target) as c:
            listed = list_packs(c, node=opts["node"], zone=opts["zone"], state=opts["state"], limit=opts["limit"],
                                after=opts["after"], stale=opts["stale"])
        sys.stdout.write(json.dumps(listed, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()
    except BaseException as exc:  # noqa: BLE001 - mapped by the one place that maps failures
        from canidae.cli.main import report_failure
        return report_failure(exc, list(argv))
    return 0

