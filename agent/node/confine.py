"""What a pack member sees and may do once it leaves the agent: the privilege drop, in order.

This module owns the command line that takes a member from the agent's gate (a root shell with a
clean environment) to its own command, and the environment it then gets. In order:

1. ``unshare --mount [--net]``: a mount namespace of its own (and, for ``network = "none"``, an
   empty network namespace), still as root;
2. ``mount --fstab``: one mount call, from a table written per pack, that gives the member a
   private ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (fresh tmpfs) and replaces the agent's data dir
   with an empty tmpfs holding only the pack's own working directory (bound in through a
   descriptor opened before the data dir was covered). So nothing of the agent (journal, run
   records, other packs, keys, the config) is even visible, and a pack leaves no file behind in
   a world-writable directory of the host;
3. ``setpriv``: the pack's uid and gid, no supplementary groups, ``NoNewPrivs`` and an empty
   capability bounding set (setuid binaries grant nothing);
4. ``env -i`` and a shell *as the pack's user* that reads the member's environment from its
   stdin (a pipe the agent writes and closes) and execs the command.

The spec's environment (and decrypted secrets) is thus never seen by any process running as
root: loader variables cannot reach ``sh``, ``mount`` or ``setpriv``, and values never appear on
a command line (``/proc/<pid>/cmdline`` is world-readable) or in a file. Without root (no pack
users) only steps 3 (``NoNewPrivs``) and 4 apply.

Nothing here starts or watches a process: the exec driver does.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass

UNSHARE = shutil.which("unshare") or ""
MOUNT = shutil.which("mount") or ""
SETPRIV = shutil.which("setpriv") or ""
ENV = shutil.which("env") or "/usr/bin/env"
CAT = shutil.which("cat") or "/bin/cat"
SH = "/bin/sh"
# Exit status of the confinement step when it cannot be set up (namespaces, mounts).
CONFINE_FAILED = 113

# The member's side: a shell running as the pack's user, with an empty environment, evaluates the
# ``export K='V'`` lines the agent wrote on its stdin, then becomes the command with stdin closed.
MEMBER_SH = f'eval "$({CAT})" || exit {CONFINE_FAILED}; exec "$@" </dev/null'
# Root's side inside the new namespaces: hold the working directory open (fd 9) while the data dir
# is covered, mount the table, then drop privileges.
NAMESPACE_SH = f'exec 9<"$1" && {MOUNT} -c --fstab "$2" -a && exec 9<&- && cd "$1" || exit {CONFINE_FAILED}; ' \
               'shift 2; exec "$@"'
SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Confinement:
    """How one member is confined: its user (None: the agent's own), its network and its paths."""

    uid: int | None
    gid: int | None
    network: str          # "host" | "none"
    work: str             # the pack's working directory (absolute)
    data_dir: str         # the agent's data dir, hidden from the member
    fstab: str            # the pack's mount table (written by ``write_fstab``)
    namespaces: bool      # steps 1 and 2 (root, with unshare and mount on this host)


def available(root: bool) -> dict[str, bool]:
    """Which protections this host can give (the doctor and the driver's description report it)."""
    return {"no_new_privs": bool(SETPRIV), "no_capabilities": bool(SETPRIV) and root,
            "private_tmp": bool(UNSHARE and MOUNT) and root, "hidden_data_dir": bool(UNSHARE and MOUNT) and root,
            "network_none": bool(UNSHARE) and root}


def fstab_text(c: Confinement) -> str:
    """The mount table of a member's namespace, mounted in file order by one ``mount -a``."""
    def field(path: str) -> str:  # fstab escapes blanks and backslashes in octal
        return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    opts = "nosuid,nodev"
    lines = [f"canidae-tmp /tmp tmpfs mode=1777,{opts} 0 0",
             f"canidae-tmp /var/tmp tmpfs mode=1777,{opts} 0 0",
             f"canidae-tmp /dev/shm tmpfs mode=1777,{opts} 0 0",
             # When the data dir lies under /tmp it is already gone; X-mount.mkdir makes its path again.
             f"canidae-data {field(c.data_dir)} tmpfs mode=0711,{opts},X-mount.mkdir=0711 0 0",
             f"/proc/self/fd/9 {field(c.work)} none bind,X-mount.mkdir=0711 0 0"]
    return "\n".join(lines) + "\n"


def write_fstab(c: Confinement) -> None:
    fd = os.open(c.fstab, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(fstab_text(c))


def argv(c: Confinement, command: list[str]) -> list[str]:
    """The command line that runs ``command`` confined; its stdin must carry ``env_payload``."""
    member = [ENV, "-i", SH, "-c", MEMBER_SH, "canidae-member", *command]
    if SETPRIV:
        drop = [SETPRIV, "--nnp"]
        if c.uid is not None:
            drop += [f"--reuid={c.uid}", f"--regid={c.gid}", "--clear-groups", "--bounding-set=-all",
                     "--inh-caps=-all"]
        member = [*drop, "--", *member]
    if not c.namespaces:
        return member
    flags = ["--mount", "--propagation", "private"] + (["--net"] if c.network == "none" else [])
    return [UNSHARE, *flags, "--", SH, "-c", NAMESPACE_SH, "canidae-confine", c.work, c.fstab, *member]


def env_payload(env: dict[str, str]) -> bytes:
    """The member's environment as shell ``export`` lines (names checked, values quoted)."""
    lines = []
    for k, v in env.items():
        if not SHELL_NAME.match(k):
            raise ValueError(f"environment variable name {k!r} is not a valid name")
        lines.append(f"export {k}={shlex.quote(v)}")
    return ("\n".join(lines) + "\n").encode()


__all__ = ["Confinement", "CONFINE_FAILED", "argv", "available", "env_payload", "fstab_text", "write_fstab"]
