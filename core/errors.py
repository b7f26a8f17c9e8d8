"""Typed errors of canidae, each with a stable wire code, an HTTP status and a CLI exit code.

This module owns the one mapping between failures and what users see. The API answers
``{"error": {"code": ..., "message": ...}}`` with ``http_status``; the CLI prints one line and
exits with ``exit_code``. Nothing else in the code base invents codes.

    CanidaeError                      code             exit  http
    ├── InvalidInput                  invalid_input      2   400
    │   └── PayloadTooLarge           too_large          2   413
    ├── NotAuthenticated              unauthenticated    4   401
    ├── PermissionDenied              denied             4   403
    ├── NotFound                      not_found          5   404
    ├── Conflict                      conflict           6   409
    │   ├── AlreadyExists             exists             6   409
    │   ├── NoCapacity                no_capacity        6   409
    │   └── WrongState                wrong_state        6   409
    ├── Unavailable                   unavailable        3   503
    │   ├── NoLeader                  no_leader          3   503
    │   └── Timeout                   timeout            3   504
    ├── Overloaded                    overloaded         7   429
    ├── NotImplementedYet             not_implemented    1   501
    └── OperationFailed               failed             1   500

Exit codes (the CLI contract): 0 ok; 1 operation failed; 2 usage or invalid input; 3 cluster
unavailable; 4 not authenticated or denied; 5 not found; 6 conflict; 7 overloaded (the agents
refused the request for load, the client retried as told by ``Retry-After``, and gave up).
"""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_DENIED = 4
EXIT_NOT_FOUND = 5
EXIT_CONFLICT = 6
EXIT_OVERLOADED = 7

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 operation failed; 2 usage or invalid input; "
    "3 cluster unavailable (no leader, timeout, unreachable); 4 not authenticated or denied by policy; "
    "5 not found; 6 conflict (exists, no capacity, wrong state); "
    "7 overloaded (refused for load: Retry-After waited out, still refused)."
)


class CanidaeError(Exception):
    """Base of every expected failure. ``message`` is one human line; ``details`` is JSON-able."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = EXIT_FAILED
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}

    @staticmethod
    def from_wire(body: dict[str, Any], http_status: int | None = None) -> CanidaeError:
        """Rebuild the typed error from an API answer (unknown codes fall back on the status)."""
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return OperationFailed(f"unexpected error answer (HTTP {http_status})")
        cls = _BY_CODE.get(str(err.get("code")))
        if cls is None:
            cls = _BY_STATUS.get(http_status or 500, OperationFailed)
        details = err.get("details") if isinstance(err.get("details"), dict) else None
        return cls(str(err.get("message", "")), details)


class InvalidInput(CanidaeError):
    code, exit_code, http_status = "invalid_input", EXIT_USAGE, 400


class PayloadTooLarge(InvalidInput):
    code, http_status = "too_large", 413


class NotAuthenticated(CanidaeError):
    code, exit_code, http_status = "unauthenticated", EXIT_DENIED, 401


class PermissionDenied(CanidaeError):
    code, exit_code, http_status = "denied", EXIT_DENIED, 403


class NotFound(CanidaeError):
    code, exit_code, http_status = "not_found", EXIT_NOT_FOUND, 404


class Conflict(CanidaeError):
    code, exit_code, http_status = "conflict", EXIT_CONFLICT, 409


class AlreadyExists(Conflict):
    code = "exists"


class NoCapacity(Conflict):
    """Nothing fits. ``details["levels"]`` says why at each level of the hierarchy."""

    code = "no_capacity"


class WrongState(Conflict):
    code = "wrong_state"


class Unavailable(CanidaeError):
    code, exit_code, http_status = "unavailable", EXIT_UNAVAILABLE, 503


class NoLeader(Unavailable):
    code = "no_leader"


class Timeout(Unavailable):
    code, http_status = "timeout", 504


class Overloaded(CanidaeError):
    """Refused for load before anything was done (safe to repeat). ``details``: ``class`` (the
    request's priority class), ``reason`` (queue_full, queue_wait, pressure) and ``retry_after_s``
    (also sent as the ``Retry-After`` header)."""

    code, exit_code, http_status = "overloaded", EXIT_OVERLOADED, 429

    @property
    def retry_after_s(self) -> float:
        v = self.details.get("retry_after_s")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 1.0


class NotImplementedYet(CanidaeError):
    code, exit_code, http_status = "not_implemented", EXIT_FAILED, 501


class OperationFailed(CanidaeError):
    code, exit_code, http_status = "failed", EXIT_FAILED, 500


def _all_subclasses(cls: type[CanidaeError]) -> list[type[CanidaeError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[str, type[CanidaeError]] = {c.code: c for c in _all_subclasses(CanidaeError)}
_BY_STATUS: dict[int, type[CanidaeError]] = {
    400: InvalidInput, 401: NotAuthenticated, 403: PermissionDenied, 404: NotFound,
    409: Conflict, 413: PayloadTooLarge, 429: Overloaded, 501: NotImplementedYet, 503: Unavailable, 504: Timeout,
}

__all__ = [
    "CanidaeError", "InvalidInput", "PayloadTooLarge", "NotAuthenticated", "PermissionDenied",
    "NotFound", "Conflict", "AlreadyExists", "NoCapacity", "WrongState", "Unavailable", "NoLeader",
    "Timeout", "Overloaded", "NotImplementedYet", "OperationFailed", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE",
    "EXIT_UNAVAILABLE", "EXIT_DENIED", "EXIT_NOT_FOUND", "EXIT_CONFLICT", "EXIT_OVERLOADED", "EXIT_CODES_HELP",
]
