"""The client side of the cluster's TLS: whom a caller trusts, and what it says when trust fails.

``client_context(ca)`` is the one ``ssl.SSLContext`` every caller uses (the CLI's ``Client``,
``ServerLink``, ``AgentHops``, operator tooling): it trusts the cluster CA only (not the system's
store: a certificate from any public CA is no agent of this cluster), checks the host name
against the certificate's names and requires TLS 1.2 or later. With no CA file (``ca=""``) it
trusts the system's store, for a cluster behind certificates of the operator's own.

``scheme(insecure_http)`` is "https" unless a cluster was made with ``--insecure-http``.
``tls_problem(exc)`` finds a certificate failure in an exception's causes and says it in one line.

Certificates are issued by ``canidae.agent.certs``.
"""

from __future__ import annotations

import functools
import re
import ssl


@functools.lru_cache(maxsize=16)
def client_context(ca: str = "") -> ssl.SSLContext:
    """A verifying client context trusting ``ca`` (a PEM file, or PEM text: what a pack's
    members get in ``CANIDAE_CA_PEM``), cached."""
    if ca.lstrip().startswith("-----BEGIN"):
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca)
        except ssl.SSLError as e:
            from canidae.core.errors import InvalidInput
            raise InvalidInput(f"the cluster CA is not a PEM certificate: {e.reason or e}") from None
    elif ca:
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        except FileNotFoundError:
            from canidae.core.errors import InvalidInput
            raise InvalidInput(f"the cluster CA file {ca} does not exist") from None
        except ssl.SSLError as e:
            from canidae.core.errors import InvalidInput
            raise InvalidInput(f"the cluster CA file {ca} is not a PEM certificate: {e.reason or e}") from None
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def scheme(insecure_http: bool) -> str:
    return "http" if insecure_http else "https"


def tls_problem(exc: BaseException) -> str | None:
    """"certificate not trusted: <why>" when ``exc`` (or one of its causes) is a TLS failure."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {e.verify_message or e.reason}"
        if isinstance(e, ssl.SSLError):
            return f"TLS failed: {e.reason or e}"
        text = str(e)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            why = re.sub(r"\s*\(_ssl\.c:\d+\)?", "", text.rpartition("certificate verify failed:")[2]).strip(" )")
            return f"TLS certificate not trusted: {why}"
        if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
            return "TLS failed: the other side does not speak TLS (an agent made with --insecure-http?)"
        e = e.__cause__ or e.__context__
        seen += 1
    return None


__all__ = ["client_context", "scheme", "tls_problem"]
