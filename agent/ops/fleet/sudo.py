"""The sudo password of a fleet run: none, given by the operator (a file or an environment
variable, for scripts), or asked once on the terminal when the first host needs it, then used
for every host.

Each host's sudo is checked up front (``sudo -n true``). When that says a password is needed and
the run has one, ``sudo -S -p '' true`` proves it; from then on every root command of that host
is one ``sudo -S -p '' sh -c ...`` fed the password on stdin (never on a command line, never
logged, never in an error: sudo's own messages do not echo it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from canidae.core.errors import InvalidInput

ENV = "CANIDAE_SUDO_PASSWORD"


def _one_line(text: str, where: str) -> str:
    text = text.removesuffix("\n")
    if not text or "\n" in text or "\0" in text:
        raise InvalidInput(f"{where}: a sudo password is one non-empty line")
    return text


def read_password_file(path: str) -> str:
    try:
        with open(path) as f:
            return _one_line(f.read(), f"--sudo-password-file {path}")
    except OSError as e:
        raise InvalidInput(f"--sudo-password-file {path}: {e.strerror}") from None


class SudoPassword:
    """The run's one sudo password: ``given``, else asked with ``ask`` (once, by the first host that
    needs it; the others wait for that answer), else none."""

    def __init__(self, given: str | None = None, ask: Callable[[], str] | None = None) -> None:
        self._value = given
        self._ask = ask
        self._asked = given is not None
        self._lock = asyncio.Lock()

    @classmethod
    def from_options(cls, path: str | None, ask: Callable[[], str] | None) -> SudoPassword:
        """From ``--sudo-password-file``, else ``$CANIDAE_SUDO_PASSWORD``, else ``ask`` when given."""
        if path is not None:
            return cls(read_password_file(path))
        env = os.environ.get(ENV)
        if env:
            return cls(_one_line(env, ENV))
        return cls(None, ask)

    async def get(self) -> str | None:
        async with self._lock:
            if not self._asked and self._ask is not None:
                self._asked = True
                answer = await asyncio.to_thread(self._ask)
                self._value = answer.rstrip("\n") or None
            return self._value

    def __repr__(self) -> str:  # never the password itself
        return f"SudoPassword({'set' if self._value else 'none'})"


__all__ = ["ENV", "SudoPassword", "read_password_file"]
