"""The rule of names (packs, nodes, zones, regions, cells, policies): one regex and its check.

A module of its own, re-exported by ``canidae.core.types``, so that callers that need only the
rule (the client checks every name it puts in a path) do not build every value type to get it.
"""

from __future__ import annotations

import re

from canidae.core.errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
NAME_RULE = "1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"


def validate_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid name for a pack, node, zone, region or cell."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):  # "$" alone lets "name\n" through
        shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:40] + "...")
        raise InvalidInput(f"invalid {kind} name {shown}: must be {NAME_RULE}")
    return value


__all__ = ["NAME_RE", "NAME_RULE", "validate_name"]
