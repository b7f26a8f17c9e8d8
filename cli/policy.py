"""``canidae policy apply|list|show|delete``: the policies API tokens act under.

A policy is a TOML file (the format is in ``canidae.core.acl``): rules over pack and node names
(exact, ``prefix-*`` or ``*``) and over the operator and audit surfaces, each granting ``read``,
``write`` or a list of capabilities, or ``deny``. Deny wins; the most specific rule of a policy
decides; nothing matching means denied. ``management`` and ``read-only`` are built in.
"""

from __future__ import annotations

import tomllib
from typing import Annotated

import typer
from rich.table import Table

from canidae.cli.connect import client
from canidae.cli.output import JsonOption, console, emit
from canidae.core.errors import InvalidInput

app = typer.Typer(help="Apply, list, show and delete access policies.", no_args_is_help=True, add_completion=False)

PolicyArg = Annotated[str, typer.Argument(metavar="POLICY", help="A policy name.", show_default=False)]


@app.command("apply", epilog="Example: canidae policy apply ci.toml")
def policy_apply(
    file: Annotated[str, typer.Argument(metavar="FILE", help="The policy, as TOML.", show_default=False)],
    json: JsonOption = False,
) -> None:
    """Create or replace the policy FILE describes; tokens naming it act under it at their next request."""
    try:
        with open(file, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise InvalidInput(f"cannot read {file}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{file} is not valid TOML: {e}") from None
    with client() as c:
        out = c.apply_policy(doc)
    emit(out, json, lambda: console.print(f"{'created' if out['created'] else 'replaced'} policy "
                                          f"{out['policy']['name']}"))


@app.command("list")
def policy_list(json: JsonOption = False) -> None:
    """List policies, the built-in ones first."""
    with client() as c:
        policies = c.policies()

    def human() -> None:
        t = Table("policy", "built in", "description")
        for p in policies:
            t.add_row(p["name"], "yes" if p["builtin"] else "", p.get("description", ""))
        console.print(t)
    emit({"policies": policies}, json, human)


@app.command("show")
def policy_show(name: PolicyArg, json: JsonOption = False) -> None:
    """Show a policy's rules and the live tokens that name it."""
    with client() as c:
        out = c.policy(name)

    def human() -> None:
        console.print(f"policy {name}" + (" (built in)" if out["builtin"] else ""))
        for r in out["rules"]:
            console.print(f"  {r}")
        console.print("tokens: " + (", ".join(out["tokens"]) or "none"))
    emit(out, json, human)


@app.command("delete")
def policy_delete(name: PolicyArg, json: JsonOption = False) -> None:
    """Delete a policy; tokens that name it lose what it granted at their next request."""
    with client() as c:
        out = c.delete_policy(name)
    emit(out, json, lambda: console.print(f"deleted policy {name}"))
