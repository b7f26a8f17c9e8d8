"""``canidae audit tail|export|verify|checkpoint|checkpoints``: the agents' audit trails.

Every agent keeps its own hash-chained audit log of the state changes and refusals it saw and
commits its signed head through Raft. ``tail`` and ``export`` read one agent's log (the
contacted agent's, or ``--agent N``'s through the servers); ``verify`` checks a log on this
side, from the agent (``--agent``) or from a copy of its data dir (``--dir``), against the heads
the cluster committed, and names the first bad record: exit 0 intact, 1 tampered with. Reading
needs the ``read`` capability on ``audit`` (API tokens: ask a server agent).
"""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Annotated, Any

import typer

from canidae.cli.connect import client
from canidae.cli.history import fmt_time, parse_since
from canidae.cli.output import NODE_METAVAR, JsonOption, NdjsonOption, console, emit, wants_json
from canidae.core.errors import CanidaeError, OperationFailed

app = typer.Typer(help="Read, export and verify the agents' audit logs.", no_args_is_help=True,
                  add_completion=False)

POLL_WAIT_S = 10
PAGE = 1000

AgentOption = Annotated[str | None, typer.Option("--agent", metavar=NODE_METAVAR,
                                                 help="Agent N's log (default: the contacted agent's).",
                                                 show_default=False)]
TokenFilter = Annotated[str | None, typer.Option("--token", metavar="ACCESSOR",
                                                 help="Only requests made with this token (its accessor, ca_...).",
                                                 show_default=False)]
ActionFilter = Annotated[str | None, typer.Option("--action", metavar="ACTION",
                                                  help="Only this action (pack.spawn, token.create ...; "
                                                       "a trailing * matches a prefix: 'pack.*').",
                                                  show_default=False)]
SinceFilter = Annotated[str | None, typer.Option("--since", metavar="WHEN",
                                                 help="Only records since then: 90s, 15m, 2h, 7d, a UTC time "
                                                      "(2025-06-01T12:00:00) or ms since the epoch.",
                                                 show_default=False)]


def _params(agent: str | None, token: str | None, action: str | None, since: str | None) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if agent:
        p["agent"] = agent
    if token:
        p["token"] = token
    if action:
        p["action"] = action
    if since:
        p["since"] = parse_since(since)
    return p


def _line(r: dict[str, Any]) -> str:
    who = r["accessor"] or r["detail"].get("caller", "-")
    code = f" {r['code']}" if r["code"] else ""
    return (f"{fmt_time(r['at_ms'])}  #{r['seq']:<6} {r['agent']:<8} {r['action']:<18} {r['target'] or '-':<20} "
            f"{r['outcome']}{code:<14} {who}  {r['remote']}  {r['request_id']}")


def _print(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(jsonlib.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        console.print(_line(r), markup=False, highlight=False, soft_wrap=True)


@app.command("tail", epilog="Example: canidae audit tail --follow --action 'pack.*'")
def audit_tail(
    agent: AgentOption = None, token: TokenFilter = None, action: ActionFilter = None, since: SinceFilter = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records until interrupted.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", metavar="N", min=0, max=1000,
                                       help="Start with the last N matching records.")] = 20,
    json: NdjsonOption = False,
) -> None:
    """Print an agent's newest audit records, oldest first; with --follow, as they are written.

    One line per record: time (UTC), seq, agent, action, target, outcome and error code, token
    accessor, remote address, request id. With --json: NDJSON, one record per line.
    """
    as_json = wants_json(json)
    params = _params(agent, token, action, since)
    with client(timeout=POLL_WAIT_S + 15.0) as c:
        resp = c.request("GET", "/v1/audit", params={**params, "limit": max(lines, 1), "newest": 1})
        for r in resp["records"][-lines:] if lines else []:
            _print(r, as_json)
        cursor = resp["head"]["seq"] if not resp["records"] else max(resp["head"]["seq"], resp["records"][-1]["seq"])
        while follow:
            resp = c.request("GET", "/v1/audit", params={**params, "after": cursor, "limit": PAGE,
                                                         "wait": POLL_WAIT_S}, timeout=POLL_WAIT_S + 15.0)
            for r in resp["records"]:
                _print(r, as_json)
            cursor = max(cursor, resp["next_after"])


@app.command("export", epilog="Example: canidae audit export --agent s1 --since 1d > s1-audit.ndjson")
def audit_export(agent: AgentOption = None, token: TokenFilter = None, action: ActionFilter = None,
                 since: SinceFilter = None) -> None:
    """Write an agent's whole audit log (or what the filters keep) to stdout as NDJSON, oldest first:
    one record per line, with its seq, prev_hash and hash."""
    params = _params(agent, token, action, since)
    cursor = 0
    with client(timeout=60.0) as c:
        while True:
            resp = c.request("GET", "/v1/audit", params={**params, "after": cursor, "limit": PAGE}, timeout=60.0)
            for r in resp["records"]:
                _print(r, True)
            if len(resp["records"]) < PAGE:
                return
            cursor = resp["next_after"]


@app.command("verify", epilog="Examples: canidae audit verify --agent c1;  "
                               "canidae audit verify --dir /var/lib/canidae --checkpoints heads.json")
def audit_verify(
    agent: AgentOption = None,
    dir: Annotated[str | None, typer.Option("--dir", metavar="DATADIR",
                                            help="Check a copy of an agent's data dir instead (offline).",
                                            show_default=False)] = None,
    checkpoints: Annotated[str | None, typer.Option(
        "--checkpoints", metavar="FILE", help="With --dir: the signed heads, as saved by "
                                              "'canidae audit checkpoints --agent N --json' (default: ask the "
                                              "cluster when one is configured; without any, only the chain is "
                                              "checked).", show_default=False)] = None,
    json: JsonOption = False,
) -> None:
    """Check an audit log: every record's hash and link, and the heads the agent signed and committed
    through Raft (which find a cut tail or a rewritten, re-hashed log). Exit 0 intact; 1 tampered
    with, naming the first bad record (seq, segment file and line) and why."""
    from canidae.agent.ops import auditcheck

    if dir is not None:
        meta, segments = auditcheck.read_dir(dir)
        heads = auditcheck.read_heads_file(checkpoints) if checkpoints else None
        if heads is None and (agent or meta["agent"]):
            try:
                with client() as c:
                    heads = auditcheck.fetch_heads(c, agent or meta["agent"])
            except CanidaeError as e:  # offline: the chain alone is still checked
                console.print(f"note: no signed heads from the cluster ({e}); checking the chain only",
                              style="yellow", markup=False) if not wants_json(json) else None
    else:
        with client(timeout=60.0) as c:
            meta0 = c.request("GET", "/v1/audit", params={"raw": 1, **({"agent": agent} if agent else {})})
            heads = auditcheck.fetch_heads(c, meta0["agent"])  # the heads first: the log must hold them all
            meta, segments = auditcheck.fetch_log(c, agent)
    result, info = auditcheck.check(segments, meta.get("key_id", ""), heads)
    out = {"agent": meta.get("agent", ""), "segments": len(segments), **info, **result.to_dict(),
           "verdict": result.describe()}

    def human() -> None:
        console.print(f"agent {out['agent'] or '?'} key {info['key_id'] or '?'}: {result.describe()}", markup=False,
                      highlight=False, soft_wrap=True)
    if not result.ok:
        raise OperationFailed(f"audit log of agent {out['agent'] or '?'}: {result.describe()}", out)
    emit(out, json, human)


@app.command("checkpoint")
def audit_checkpoint(agent: AgentOption = None, json: JsonOption = False) -> None:
    """Have an agent sign its audit head now and commit it through Raft (it also does so every
    audit.checkpoint_s when its log grew)."""
    with client(timeout=20.0) as c:
        out = c.request("POST", "/v1/audit/checkpoint", params={"agent": agent} if agent else None, timeout=20.0)
    cp = out["checkpoint"]
    emit(out, json, lambda: console.print(f"agent {out['agent']}: head seq {cp['seq']} {cp['head_hash'][:16]} "
                                          f"signed by {cp['key_id']}, committed", markup=False))


@app.command("checkpoints")
def audit_checkpoints(agent: Annotated[str, typer.Option("--agent", metavar=NODE_METAVAR, help="The agent.",
                                                         show_default=False)],
                      json: JsonOption = False) -> None:
    """The audit heads agent N signed and committed: its audit keys (the last is its current log) and
    their newest checkpoints. Save with --json for 'audit verify --dir ... --checkpoints FILE'."""
    from canidae.agent.ops import auditcheck

    with client() as c:
        out = auditcheck.fetch_heads(c, agent)

    def human() -> None:
        for k in out["keys"]:
            cps = k["checkpoints"]
            newest = f"newest seq {cps[-1]['seq']} at {fmt_time(cps[-1]['at_ms'])}" if cps else "none"
            console.print(f"{k['key_id']}  registered {fmt_time(k['registered_at'])}  {len(cps)} checkpoint(s), "
                          f"{newest}", markup=False)
    emit(out, json, human)
