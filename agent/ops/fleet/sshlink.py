"""One SSH connection to a fleet host (asyncssh): host key checked, commands run, files copied.

Host keys are always checked against a known_hosts file. A host listed there must present a
listed key, or the connection is refused (``HostKeyChanged``: never silently accepted). A host
not listed is refused too (``HostKeyUnknown``), unless ``accept_new``: then its key is recorded
on first use, like OpenSSH's ``StrictHostKeyChecking=accept-new``. Nothing here turns checking
off. Connection failures (refused, timed out, no route, authentication) are ``Unreachable``.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from dataclasses import dataclass
from typing import Any, Self

from canidae.agent.ops.fleet.inventory import Host
from canidae.core.errors import OperationFailed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # asyncssh still imports DSA, which cryptography deprecates
    import asyncssh


class Unreachable(OperationFailed):
    """SSH did not get to a shell on the host."""


class HostKeyUnknown(OperationFailed):
    pass


class HostKeyChanged(OperationFailed):
    pass


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


def _host_pattern(host: Host) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


def _listed(known_hosts: str, host: Host) -> bool:
    if not os.path.exists(known_hosts):
        return False
    try:
        trusted, ca, *_ = asyncssh.read_known_hosts(known_hosts).match(host.address, host.address, host.port)
    except (OSError, ValueError) as e:
        raise HostKeyChanged(f"cannot read known_hosts {known_hosts}: {e}") from None
    return bool(trusted or ca)


def _record(known_hosts: str, host: Host, key: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(known_hosts)), mode=0o700, exist_ok=True)
    line = f"{_host_pattern(host)} {key.export_public_key('openssh').decode().strip()}\n"
    fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line)


class Link:
    """An open SSH connection to ``host``; use ``async with await Link.open(...)``."""

    def __init__(self, host: Host, conn: Any) -> None:
        self.host = host
        self.conn = conn

    @classmethod
    async def open(cls, host: Host, known_hosts: str, accept_new: bool, timeout: float) -> Link:
        listed = _listed(known_hosts, host)
        if not listed and not accept_new:
            raise HostKeyUnknown(f"host key of {host.name} ({_host_pattern(host)}) is not in {known_hosts}: "
                                 f"refused (pass --accept-new to record it on first use)")
        options: dict[str, Any] = {"username": host.user, "known_hosts": known_hosts if listed else None,
                                   "connect_timeout": timeout, "login_timeout": timeout}
        if host.key:
            options["client_keys"] = [host.key]
            options["agent_path"] = None
        try:
            conn = await asyncio.wait_for(asyncssh.connect(host.address, host.port, **options), timeout)
        except asyncssh.HostKeyNotVerifiable as e:
            raise HostKeyChanged(
                f"host key of {host.name} ({_host_pattern(host)}) does not match {known_hosts}: refused "
                f"({e.reason}); if the host was reinstalled, remove its line "
                f"(ssh-keygen -R '{_host_pattern(host)}' -f {known_hosts}) and re-run with --accept-new") from None
        except asyncssh.PermissionDenied as e:
            raise Unreachable(f"ssh {host.user}@{_host_pattern(host)}: authentication refused ({e.reason})") from None
        except (TimeoutError, OSError, asyncssh.Error) as e:
            why = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise Unreachable(f"ssh {host.user}@{_host_pattern(host)}: {why}") from None
        if not listed:
            _record(known_hosts, host, conn.get_server_host_key())
        return cls(host, conn)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.conn.close()
        await self.conn.wait_closed()

    async def run(self, command: str, timeout: float = 600.0, stdin: str | None = None) -> Result:
        """Run ``command``; ``stdin`` is fed to it (then end of file)."""
        try:
            p = await asyncio.wait_for(self.conn.run(command, check=False, input=stdin), timeout)
        except asyncssh.Error as e:
            raise Unreachable(f"ssh {self.host.name}: {e.reason}") from None
        except TimeoutError:
            raise OperationFailed(f"no answer within {timeout:g} s") from None
        status = p.exit_status if p.exit_status is not None else 255
        return Result(status, str(p.stdout or ""), str(p.stderr or ""))

    async def put(self, files: list[tuple[str, str]]) -> None:
        """Copy local files to remote paths over SFTP."""
        try:
            async with self.conn.start_sftp_client() as sftp:
                for local, remote in files:
                    await sftp.put(local, remote)
        except (OSError, asyncssh.SFTPError) as e:
            raise OperationFailed(f"copy over SFTP failed: {getattr(e, 'reason', None) or e}") from None

    async def write(self, remote: str, data: bytes, mode: int = 0o600) -> None:
        """Write ``data`` to ``remote`` (mode set before any byte is written), atomically."""
        try:
            async with self.conn.start_sftp_client() as sftp:
                tmp = remote + ".tmp"
                async with sftp.open(tmp, "wb", attrs=asyncssh.SFTPAttrs(permissions=mode)) as f:
                    await f.write(data)
                await sftp.chmod(tmp, mode)
                await sftp.posix_rename(tmp, remote)
        except (OSError, asyncssh.SFTPError) as e:
            raise OperationFailed(f"writing {remote} over SFTP failed: {getattr(e, 'reason', None) or e}") from None


__all__ = ["HostKeyChanged", "HostKeyUnknown", "Link", "Result", "Unreachable"]
