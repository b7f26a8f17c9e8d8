"""Nouns of the ``canidae`` command whose real module is not written yet.

Each noun here is a real typer sub-app with the verbs, arguments and options the command-line
contract (DESIGN.md) asks for, so ``--help``, the shell completions and the man page are right
before the work behind them exists. Every command raises
:class:`~canidae.core.errors.NotImplementedYet` naming itself; none prints anything, because
invented output would be worse than an honest error.

When a noun gets its real module (``cli/yip.py`` exposing ``app``), its entry in
``canidae.cli.main.NOUNS`` points there and its sub-app here is deleted. Keep verbs, arguments
and options compatible when moving them, or regenerate the completions and man page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from canidae.cli.output import (
    JsonOption,
    StaleOption,
    TimeoutOption,
    WaitOption,
)
from canidae.cli.params import NodeOpt, TopSort, ZoneOpt
from canidae.core.errors import NotImplementedYet

__all__ = [
    "audit", "autoscale", "keys", "metrics", "policy",
    "token", "top",
]


def _unavailable(command: str) -> NoReturn:
    raise NotImplementedYet(f"{command} is not available yet")


def _noun(help_text: str) -> typer.Typer:
    # no_args_is_help: a noun without a verb prints its help (a usage error, exit 2; see main.py).
    return typer.Typer(help=help_text, no_args_is_help=True, add_completion=False)


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
autoscale = _noun("See what the autoscaler would do and what it did.")


@autoscale.command("plan")
def autoscale_plan(stale: StaleOption = False, json: JsonOption = False) -> None:
    """Show the scaling decision for the current load, without acting on it."""
    _unavailable("autoscale plan")


@autoscale.command("status")
def autoscale_status(json: JsonOption = False) -> None:
    """Show the autoscaler's policies and its recent decisions."""
    _unavailable("autoscale status")


# ---------------------------------------------------------------------------------------------
token = _noun("Create, list and revoke API tokens.")


@token.command("create")
def token_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the token.", show_default=False)],
    policy: Annotated[
        list[str] | None, typer.Option("--policy", metavar="POLICY", help="Policy granted; repeatable.")
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", metavar="DURATION", help="Lifetime, e.g. 12h or 30d (default: none).")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Create a token and print its secret once."""
    _unavailable("token create")


@token.command("list")
def token_list(json: JsonOption = False) -> None:
    """List tokens (never their secrets)."""
    _unavailable("token list")


@token.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="Id of the token.", show_default=False)],
    json: JsonOption = False,
) -> None:
    """Revoke a token at once on every agent."""
    _unavailable("token revoke")


# ---------------------------------------------------------------------------------------------
policy = _noun("Manage the access policies that tokens grant.")


@policy.command("list")
def policy_list(json: JsonOption = False) -> None:
    """List policies."""
    _unavailable("policy list")


@policy.command("show")
def policy_show(
    name: Annotated[str, typer.Argument(metavar="POLICY", help="Name of the policy.", show_default=False)],
    json: JsonOption = False,
) -> None:
    """Show the rules of a policy."""
    _unavailable("policy show")


@policy.command("apply")
def policy_apply(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Policy file (TOML).", show_default=False)],
    json: JsonOption = False,
) -> None:
    """Create or replace a policy from a file."""
    _unavailable("policy apply")


@policy.command("delete")
def policy_delete(
    name: Annotated[str, typer.Argument(metavar="POLICY", help="Name of the policy.", show_default=False)],
    json: JsonOption = False,
) -> None:
    """Delete a policy."""
    _unavailable("policy delete")


# ---------------------------------------------------------------------------------------------
keys = _noun("Inspect and rotate the cluster's signing and encryption keys.")


@keys.command("list")
def keys_list(json: JsonOption = False) -> None:
    """List keys with their scope, age and state."""
    _unavailable("keys list")


@keys.command("rotate")
def keys_rotate(
    region: Annotated[str | None, typer.Option("--region", help="Only this region's keys.")] = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 60.0,
    json: JsonOption = False,
) -> None:
    """Rotate keys; the old ones stay valid until every agent has the new ones."""
    _unavailable("keys rotate")


# ---------------------------------------------------------------------------------------------
audit = _noun("Read the audit log of who did what.")


@audit.command("list")
def audit_list(
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, help="Entries to show, newest last.")] = 100,
    json: JsonOption = False,
) -> None:
    """List recent audit entries."""
    _unavailable("audit list")


@audit.command("tail")
def audit_tail(json: JsonOption = False) -> None:
    """Print audit entries as they are written."""
    _unavailable("audit tail")


# ---------------------------------------------------------------------------------------------
# Top-level commands (no verb).


def metrics(
    node_name: NodeOpt = None,
    zone: ZoneOpt = None,
    prometheus: Annotated[
        bool, typer.Option("--prometheus", help="Print the Prometheus text format.")
    ] = False,
    stale: StaleOption = False,
    json: JsonOption = False,
) -> None:
    """Print cluster metrics aggregated by cell, region and zone."""
    _unavailable("metrics")


def top(
    interval: Annotated[
        float, typer.Option("--interval", metavar="SECONDS", min=0.1, help="Refresh period.")
    ] = 2.0,
    sort: Annotated[TopSort, typer.Option("--sort", help="Order of the rows.")] = TopSort.CPU,
    once: Annotated[bool, typer.Option("--once", help="Print one screen and exit.")] = False,
    json: JsonOption = False,
) -> None:
    """Show nodes and packs by resource use, refreshed live."""
    _unavailable("top")
