"""``canidae keys list|status|rotate|retire``: the cluster's keyrings.

A keyring per purpose (``token``: API token secret hashes, ``pack``: pack token signatures,
``secrets``: pack secrets at rest, ``audit``: audit checkpoint signatures), each key prepublished,
active, retiring or retired. ``rotate`` publishes a new key everywhere, waits ``--prepublish``,
activates it (``--by region``: region after region) and leaves the old one retiring: what it
signed still verifies and what it sealed still opens; sealed pack secrets are rewrapped under the
new key in the background (``status``: n of m). ``retire`` drops a retiring key once nothing
needs it. API tokens need the operator ``keys`` capability to change keys, ``read`` to look.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from canidae.cli.connect import client
from canidae.cli.output import JsonOption, TimeoutOption, WaitOption, console, emit, err_console
from canidae.core.errors import InvalidInput, OperationFailed, Timeout
from canidae.core.keyring import PURPOSES

app = typer.Typer(help="List, rotate and retire the cluster's keys (token, pack, secrets, audit).",
                  no_args_is_help=True, add_completion=False)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, None: 1}


def parse_duration(text: str) -> float:
    """``--prepublish``: seconds, or a number and a unit (``30s``, ``10m``, ``1h``)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise InvalidInput(f"--prepublish {text!r}: expected a duration such as 5s, 10m, 1h")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _table(keys: list[dict[str, Any]]) -> Table:
    from canidae.cli.history import fmt_time
    t = Table("id", "purpose", "state", "regions", "changed")
    for k in keys:
        t.add_row(k["id"], k["purpose"], k["state"], ", ".join(k.get("regions", [])), fmt_time(k["changed_at"]))
    return t


@app.command("list")
def keys_list(json: JsonOption = False) -> None:
    """Every key: id, purpose, state (prepublished, active, retiring, retired), regions switched."""
    with client() as c:
        keys = c.keys()
    emit({"keys": keys}, json, lambda: console.print(_table(keys)))


def _status_human(out: dict[str, Any]) -> None:
    t = Table("purpose", "active", "prepublished", "retiring (still needed by)")
    for p, s in out["purposes"].items():
        t.add_row(p, s["active"] or "-",
                  ", ".join(f"{k['id']}" + (f" in {'+'.join(k['regions'])}" if k["regions"] else "")
                            for k in s["prepublished"]) or "-",
                  ", ".join(f"{k['id']} ({k['in_use']})" for k in s["retiring"]) or "-")
    console.print(t)
    r = out["rewrap"]
    console.print(f"secrets rewrapped: {r['under_active_key']} of {r['sealed_values']} sealed values under the "
                  f"active key" + ("" if r["done"] else " (rewrap under way)"))
    for rot in out.get("rotations", [])[-3:]:
        console.print(f"rotation {', '.join(f'{p}={k}' for p, k in rot['keys'].items())}: {rot['step']}"
                      + (f" ({rot['error']})" if rot.get("error") else ""))


@app.command("status")
def keys_status(json: JsonOption = False) -> None:
    """Per purpose the active key, rotations under way, retiring keys and what still needs them,
    and how many sealed secrets are rewrapped under the active key (n of m)."""
    with client() as c:
        out = c.keys_status()
    emit(out, json, lambda: _status_human(out))


@app.command("rotate", epilog="Example: canidae keys rotate --purpose secrets --prepublish 10s --by region")
def keys_rotate(
    purpose: Annotated[list[str] | None, typer.Option(
        "--purpose", metavar="PURPOSE", help=f"Rotate this keyring only ({', '.join(PURPOSES)}; repeat for "
                                             "more). Default: every one.", show_default=False)] = None,
    prepublish: Annotated[str, typer.Option(
        "--prepublish", metavar="DURATION", help="How long the new key is published everywhere before it "
                                                 "signs (5s, 10m, 1h; at least 2s).")] = "2s",
    by: Annotated[str | None, typer.Option(
        "--by", metavar="region", help="Activate region after region (in name order) instead of everywhere at once.",
        show_default=False)] = None,
    wait: WaitOption = True, timeout: TimeoutOption = 120.0,
    json: JsonOption = False,
) -> None:
    """Rotate keys: publish a new one, activate it, leave the old one retiring (still verifying and
    opening); sealed secrets are rewrapped in the background."""
    purposes = purpose or None
    for p in purposes or []:
        if p not in PURPOSES:
            raise InvalidInput(f"--purpose {p!r}: one of {', '.join(PURPOSES)}")
    if by is not None and by != "region":
        raise InvalidInput(f"--by {by!r}: only 'region' is supported")
    pre = parse_duration(prepublish)
    with client() as c:
        out = c.rotate_keys(purposes, pre, by_region=by == "region")
        rotation = out["rotation"]
        if wait:
            deadline = time.monotonic() + timeout
            while True:
                states = {k["id"]: k for k in c.keys()}
                if all(states.get(kid, {}).get("state") == "active" for kid in rotation["keys"].values()):
                    break
                mine = [r for r in c.keys_status().get("rotations", []) if r["keys"] == rotation["keys"]]
                if mine and mine[-1].get("error"):
                    raise OperationFailed(f"rotation failed: {mine[-1]['error']}")
                if time.monotonic() > deadline:
                    raise Timeout(f"the new keys are not active after {timeout:g} s (see 'canidae keys status')")
                time.sleep(0.2)
            out["active"] = True
            out["keys"] = [states[kid] for kid in rotation["keys"].values()]

    def human() -> None:
        for p, kid in rotation["keys"].items():
            console.print(f"{p}: new key {kid} " + ("active" if wait else "prepublished (activation under way)"))
        if not wait:
            err_console.print("follow it with 'canidae keys status'")
    emit(out, json, human)


@app.command("retire", epilog="Example: canidae keys retire 1a2b3c4d")
def keys_retire(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The retiring key's id.", show_default=False)],
    json: JsonOption = False,
) -> None:
    """Retire a retiring key: what it signed or sealed is refused from then on. Refused (exit 6)
    while sealed secrets or live API tokens still need it."""
    with client() as c:
        out = c.retire_key(key_id)
    emit(out, json, lambda: console.print(f"retired {key_id}"))
