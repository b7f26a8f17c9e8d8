"""``canidae token create|list|show|revoke|self|rotate-bootstrap``: API tokens and what they may do.

A token has a public accessor id (``ca_...``: what logs, events and these commands name) and a
secret (``cs_...``) shown once, by ``create``; give it to a program as ``CANIDAE_TOKEN``. What a
token may do is the union of its policies (``canidae policy``), deny winning. ``self --can``
asks the cluster whether the current token may do something, and why: exit 0 yes, 4 no.
``rotate-bootstrap`` replaces the admin token (``canidae.agent.ops.admintoken``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.cli.connect import client
from canidae.cli.output import JsonOption, console, emit
from canidae.core.errors import InvalidInput, PermissionDenied

app = typer.Typer(help="Create, list, show and revoke API tokens; ask what the current token may do.",
                  no_args_is_help=True, add_completion=False)

_TTL = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}

AccessorArg = Annotated[str, typer.Argument(metavar="ACCESSOR", help="The token's accessor id (ca_...).",
                                            show_default=False)]


def parse_ttl(text: str) -> int:
    """``--ttl`` in seconds: a number and a unit (``90s``, ``15m``, ``1h``, ``30d``)."""
    m = _TTL.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise InvalidInput(f"--ttl {text!r}: expected a positive number and a unit: 90s, 15m, 1h, 30d")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def _expires(t: dict[str, Any]) -> str:
    from canidae.cli.history import fmt_time
    if t.get("revoked"):
        return "revoked"
    if t.get("expires_at_ms") is None:
        return "never"
    return ("expired " if t.get("expired") else "") + fmt_time(t["expires_at_ms"])


def _table(tokens: list[dict[str, Any]]) -> Table:
    t = Table("accessor", "name", "policies", "expires")
    for tok in tokens:
        t.add_row(tok["accessor"], tok["name"], ", ".join(tok["policies"]), _expires(tok))
    return t


@app.command("create", epilog="Example: canidae token create --name ci-runner --policy ci --ttl 30d")
def token_create(
    name: Annotated[str, typer.Option("--name", help="A name for people (not unique).", show_default=False)],
    policy: Annotated[list[str], typer.Option("--policy", help="A policy the token acts under (repeat for more).",
                                              show_default=False)],
    ttl: Annotated[str | None, typer.Option("--ttl", help="Expire after this long (90s, 15m, 1h, 30d).",
                                            show_default=False)] = None,
    json: JsonOption = False,
) -> None:
    """Create a token. Its secret is printed this once: store it now."""
    ttl_s = parse_ttl(ttl) if ttl is not None else None
    with client() as c:
        made = c.create_token(name, policy, ttl_s)

    def human() -> None:
        console.print(_table([made["token"]]))
        console.print(f"secret: {made['secret']}  (shown once; use it as CANIDAE_TOKEN)")
        for p in made.get("policies_not_found", []):
            console.print(f"note: policy {p!r} does not exist yet: it grants nothing until applied")
    emit(made, json, human)


@app.command("list")
def token_list(json: JsonOption = False) -> None:
    """List tokens (revoked and expired ones included): accessor, name, policies, expiry."""
    with client() as c:
        tokens = c.tokens()
    emit({"tokens": tokens}, json, lambda: console.print(_table(tokens)))


@app.command("show")
def token_show(accessor: AccessorArg, json: JsonOption = False) -> None:
    """Show one token (never its secret)."""
    with client() as c:
        tok = c.token(accessor)
    emit({"token": tok}, json, lambda: console.print(_table([tok])))


@app.command("revoke")
def token_revoke(accessor: AccessorArg, json: JsonOption = False) -> None:
    """Revoke a token: every agent refuses it from the next request on."""
    with client() as c:
        out = c.revoke_token(accessor)

    def human() -> None:
        console.print(f"revoked {accessor}" + ("" if out.get("in_force_on_all_servers") else
                                              f" (not yet confirmed by {', '.join(out.get('not_confirmed', []))})"))
    emit(out, json, human)


@app.command("self", epilog="Example: canidae token self --can spawn web")
def token_self(
    can: Annotated[tuple[str, str] | None, typer.Option(
        "--can", metavar="CAP RESOURCE", help="Ask whether the token may CAP (spawn, stop, read, cordon ...) "
                                              "on RESOURCE (a pack or node name; '-' for operator and audit).",
        show_default=False)] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="The resource kind when CAP fits several "
                                                            "(read: pack, node, operator, audit).",
                                             show_default=False)] = None,
    json: JsonOption = False,
) -> None:
    """Who the current token is; with --can, whether it may do something and why (exit 4 if not)."""
    cap, resource = can if can else (None, None)
    if cap == "read" and kind is None:
        kind = "pack"
    with client() as c:
        out = c.token_self(can=cap, kind=kind, name=None if resource in (None, "-") else resource)
    decision = out.get("decision")

    def human() -> None:
        console.print(f"{out['kind']} {out['name']} {out['accessor']}")
        if decision is not None:
            console.print(decision["explanation"])
    if decision is not None and not decision["allowed"]:
        raise PermissionDenied(decision["explanation"], decision)
    emit(out, json, human)


@app.command("rotate-bootstrap", epilog="Example: canidae token rotate-bootstrap")
def token_rotate_bootstrap(json: JsonOption = False) -> None:
    """Replace the admin (bootstrap) token: a new one is made here and written to the CLI config
    (and the cluster's identity.toml); every agent refuses the old one from then on."""
    from canidae.agent.client import resolve_target
    from canidae.agent.client.calls import config_path
    from canidae.agent.ops.admintoken import rotate_admin_token
    from canidae.cli.output import GLOBALS
    target = resolve_target(",".join(GLOBALS.addr) or None, GLOBALS.token, str(GLOBALS.config_path))
    out = rotate_admin_token(target, config_path(str(GLOBALS.config_path)))

    def human() -> None:
        console.print(f"admin token rotated (epoch {out['admin_epoch']}); written to {', '.join(out['written']) or 'nowhere'}")
        if "token" in out:
            console.print(f"new admin token: {out['token']}  (update CANIDAE_TOKEN: the old one is refused)")
        for n in out["client_agents_not_confirmed"]:
            console.print(f"note: client agent {n} has not confirmed the new token yet")
    emit(out, json, human)
