"""How CLI commands reach the cluster: one typed client built from the global options."""

from __future__ import annotations

from canidae.agent.client import Client, resolve_target
from canidae.cli.output import GLOBALS


def client(timeout: float = 10.0) -> Client:
    target = resolve_target(",".join(GLOBALS.addr) or None, GLOBALS.token, str(GLOBALS.config_path))
    return Client(target, timeout=timeout)
