"""The agent's data dir is private: this module owns its permissions, and nothing else.

Everything an agent keeps (Raft journal and snapshots, event segments, mailboxes, run records,
logs, keys) is root's alone: the dir is 0700, the process creates files under umask 077 (0600
files, 0700 dirs, whatever library writes them: pysyncobj's journal, the logging module), and on
start whatever an older version left readable by others is tightened. The packs' working
directories are left as they are: they are the packs' own (the exec driver owns their modes).
"""

from __future__ import annotations

import os
import stat

PRIVATE_UMASK = 0o077


def make_private(data_dir: str) -> None:
    """Set the process umask, create the data dir 0700, and tighten what is already there."""
    os.umask(PRIVATE_UMASK)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    root = os.path.abspath(data_dir)
    packs = os.path.join(root, "exec", "packs")
    for top, dirs, files in os.walk(root):
        if os.path.dirname(top) == packs:
            dirs[:] = [d for d in dirs if d != "work"]  # a pack's own files
        for name in [top, *(os.path.join(top, f) for f in files)]:
            try:
                st = os.lstat(name)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
                continue
            os.chmod(name, stat.S_IMODE(st.st_mode) & 0o700)


__all__ = ["PRIVATE_UMASK", "make_private"]
