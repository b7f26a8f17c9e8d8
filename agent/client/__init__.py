"""canidae.agent.client: how anything outside an agent talks to agents.

The typed HTTP client (``calls``) and the typed calls of the exec and yip routes
(``execcalls``). The CLI, operator tooling, benchmarks and tests use it; it imports only
``canidae.core``.
"""

from canidae.agent.client.calls import (
    Client,
    Target,
    config_path,
    decode_answer,
    read_cli_config,
    resolve_target,
)

__all__ = ["Client", "Target", "config_path", "decode_answer", "read_cli_config", "resolve_target"]
