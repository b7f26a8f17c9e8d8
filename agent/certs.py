"""The cluster's TLS certificates: its CA, one certificate per agent, and the files that hold them.

Every HTTP hop of a cluster (CLI to agent, agent to server, agent to agent) is TLS, verified
against the cluster's own CA. The CA is made where the operator runs ``cluster up``,
``agent init`` or ``fleet bootstrap``; its private key stays there (``ca.key``, mode 0600, next
to the identity file) and is copied to no agent. Each agent gets ``ca.pem`` (the CA's
certificate: what it trusts), its own ``agent.pem`` and ``agent.key`` (mode 0600), issued for
the addresses it is reached at (subject alternative names: the IP or DNS name of its API
address; on loopback, also ``127.0.0.1`` and ``localhost``).

Keys are ECDSA P-256: every TLS client we meet (Python's ssl, curl, wrk) takes them, and a
handshake costs less than with RSA. Certificates are valid for ten years (the CA twenty): a
cluster re-issues them by running ``agent init`` again, not on a timer.

The client side (an ``ssl.SSLContext`` that trusts the CA) is ``canidae.agent.client.tls``; the
server side is ``server_ssl_options`` here, handed to uvicorn by the agent daemon.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from canidae.core.errors import InvalidInput

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
AGENT_CERT = "agent.pem"
AGENT_KEY = "agent.key"
_CA_DAYS = 20 * 365
_CERT_DAYS = 10 * 365
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write atomically with ``mode`` from the first byte (a key is never readable by others)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    # Back-dated an hour: a host whose clock is a little behind still accepts a fresh certificate.
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def names_for(api: str, extra: Iterable[str] = ()) -> list[str]:
    """The names an agent's certificate is issued for: its API host, ``extra`` ones, and on
    loopback ``127.0.0.1`` and ``localhost``. An agent listening on every address (0.0.0.0)
    is reached by the names given in ``extra`` only."""
    host = api.rpartition(":")[0].strip("[]")
    names = [] if host in ("0.0.0.0", "::", "") else [host]
    names += [n for n in extra if n]
    if any(is_loopback(n) for n in names):
        names += LOOPBACK_NAMES
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    if not out:
        raise InvalidInput(f"the agent's certificate needs a name: {api} listens on every address; "
                           f"give the names it is reached by (--san)")
    return out


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            try:
                entries.append(x509.DNSName(n))
            except ValueError as e:
                raise InvalidInput(f"{n!r} is neither an IP address nor a DNS name: {e}") from None
    return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True)
class ClusterCA:
    """The cluster CA: its certificate and, where the operator keeps it, its private key."""

    cert_pem: bytes
    key_pem: bytes

    @staticmethod
    def new(cluster: str = "canidae") -> ClusterCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} cluster CA")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return ClusterCA(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @staticmethod
    def load(cert_path: str, key_path: str) -> ClusterCA:
        try:
            with open(cert_path, "rb") as f:
                cert_pem = f.read()
            with open(key_path, "rb") as f:
                key_pem = f.read()
        except FileNotFoundError as e:
            raise InvalidInput(f"cluster CA file {e.filename} does not exist") from None
        ca = ClusterCA(cert_pem, key_pem)
        try:
            ca._cert(), ca._key()
        except ValueError as e:
            raise InvalidInput(f"{cert_path} / {key_path} are not a cluster CA: {e}") from None
        return ca

    @staticmethod
    def open_or_create(directory: str, cluster: str = "canidae") -> tuple[ClusterCA, bool]:
        """The CA kept in ``directory`` (``ca.pem``, ``ca.key``), made there when missing."""
        cert, key = os.path.join(directory, CA_CERT), os.path.join(directory, CA_KEY)
        if os.path.exists(cert) or os.path.exists(key):
            return ClusterCA.load(cert, key), False
        ca = ClusterCA.new(cluster)
        ca.write(directory)
        return ca, True

    def write(self, directory: str) -> None:
        """``ca.pem`` (mode 0644: it is public) and ``ca.key`` (mode 0600) in ``directory``."""
        write_private(os.path.join(directory, CA_KEY), self.key_pem)
        write_private(os.path.join(directory, CA_CERT), self.cert_pem, 0o644)

    def _cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an ECDSA key")
        return key

    def issue(self, node: str, names: Iterable[str]) -> tuple[bytes, bytes]:
        """A certificate for agent ``node`` valid for ``names`` (IPs and DNS names) as a server
        and a client: (certificate PEM, private key PEM)."""
        names = list(names)
        if not names:
            raise InvalidInput(f"the certificate of {node} needs at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        ca_cert, ca_key = self._cert(), self._key()
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
                .add_extension(_san(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


@dataclass(frozen=True)
class AgentTLS:
    """Where one agent's TLS files are: the CA it trusts, its certificate and key."""

    ca: str
    cert: str
    key: str

    @staticmethod
    def in_dir(directory: str, name: str = "agent") -> AgentTLS:
        """``ca.pem``, ``NAME.pem`` and ``NAME.key`` in ``directory`` (absolute paths)."""
        directory = os.path.abspath(directory)
        return AgentTLS(os.path.join(directory, CA_CERT), os.path.join(directory, f"{name}.pem"),
                        os.path.join(directory, f"{name}.key"))


def write_agent_files(ca: ClusterCA, node: str, names: Iterable[str], directory: str,
                      name: str = "agent") -> AgentTLS:
    """Issue ``node``'s certificate and write the CA certificate, it and its key (0600) into
    ``directory`` (as ``ca.pem``, ``NAME.pem``, ``NAME.key``); never the CA's key."""
    cert, key = ca.issue(node, names)
    where = AgentTLS.in_dir(directory, name)
    write_private(where.key, key)
    write_private(where.cert, cert, 0o644)
    write_private(where.ca, ca.cert_pem, 0o644)
    return where


def server_ssl_options(cert: str, key: str) -> dict[str, str]:
    """What uvicorn needs to serve TLS with this agent's certificate (it makes the context)."""
    for what, path in (("tls_cert", cert), ("tls_key", key)):
        if not os.path.exists(path):
            raise InvalidInput(f"{what} file {path} does not exist")
    return {"ssl_certfile": cert, "ssl_keyfile": key}


def signed_by(cert_pem: bytes, ca: ClusterCA) -> bool:
    """Whether ``ca`` issued this certificate (its signature checks with the CA's key)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        cert.verify_directly_issued_by(ca._cert())
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def subject_names(cert_pem: bytes) -> list[str]:
    """The names a certificate is valid for (tests and ``agent doctor`` show them)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


__all__ = ["AGENT_CERT", "AGENT_KEY", "CA_CERT", "CA_KEY", "AgentTLS", "ClusterCA", "is_loopback", "names_for",
           "server_ssl_options", "signed_by", "subject_names", "write_agent_files", "write_private"]
