"""Waiting for a condition with a deadline: the one poller of drills, scale tests, soak and tests.

A condition is polled until it returns something true, which ``wait_until`` returns. A condition
that raises means "not yet" (these poll clusters that are starting or recovering on purpose);
the last such error is named in the ``Timeout`` raised when the deadline passes. A condition that
can no longer come true (an agent exited while we wait for it) raises ``Abandon(error)``, and
the wait ends at once with that error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from canidae.core.errors import Timeout


class Abandon(Exception):
    """Raised by a condition that can no longer come true: ``wait_until`` raises ``error`` at once."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``cond`` every ``interval`` s until it is true; return its value, or raise ``Timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Abandon as e:
            raise e.error from None
        except Exception as e:  # a failed poll of a live cluster is "not yet"
            last = e
        if time.monotonic() >= deadline:
            because = f" (last error: {type(last).__name__}: {last})" if last is not None else ""
            raise Timeout(f"{what}: not reached within {timeout:g} s{because}")
        time.sleep(interval)


def seconds_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> float:
    """``wait_until``, timed: how many seconds it took (drills and scale tests report it)."""
    t0 = time.monotonic()
    wait_until(cond, timeout, what, interval)
    return time.monotonic() - t0
