"""The wheelhouse a fleet installs from: canidae's wheel and every dependency's, built on the
operator's machine so that the hosts need no package index.

``prepare`` builds canidae's wheel from its source tree (``pip wheel . --no-deps``, with a fixed
``SOURCE_DATE_EPOCH`` so unchanged sources give the same bytes; again only when the sources
changed) and the dependencies' wheels once per dependency list and Python version (``pip wheel
.``); both are kept in a cache directory. Or it
takes a directory of wheels given by the operator. Its ``digest`` names exactly the files, so a
host that already runs these wheels is not reinstalled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass

from canidae.core.errors import InvalidInput, OperationFailed

# 1980-01-01: the earliest time a zip file can hold.
_EPOCH = "315532800"


@dataclass(frozen=True)
class Wheelhouse:
    path: str
    files: tuple[str, ...]   # file names of the wheels, sorted
    digest: str              # sha256 over names and contents
    sums: tuple[str, ...] = ()  # each file's sha256, in the order of files

    @property
    def canidae_wheel(self) -> str:
        return next(f for f in self.files if f.startswith("canidae-"))


def source_tree(given: str | None = None) -> str | None:
    """The canidae source tree ``given`` (when it is one), else the one this program runs from,
    when it runs from one (an editable install)."""
    if given is not None:
        root = os.path.abspath(given)
    else:
        import canidae
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(canidae.__file__))))
    try:
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            return root if tomllib.load(f).get("project", {}).get("name") == "canidae" else None
    except (OSError, tomllib.TOMLDecodeError):
        return None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(path: str) -> Wheelhouse:
    """The wheels in ``path``; one of them must be canidae's."""
    try:
        files = tuple(sorted(f for f in os.listdir(path) if f.endswith(".whl")))
    except OSError as e:
        raise InvalidInput(f"wheelhouse {path}: {e.strerror}") from None
    if not any(f.startswith("canidae-") for f in files):
        raise InvalidInput(f"wheelhouse {path} has no canidae wheel (canidae-*.whl)")
    sums = tuple(_sha256(os.path.join(path, f)) for f in files)
    h = hashlib.sha256()
    for f, s in zip(files, sums, strict=True):
        h.update(f"{f}\0{s}\n".encode())
    return Wheelhouse(os.path.abspath(path), files, h.hexdigest(), sums)


def _pip_wheel(args: list[str], what: str) -> None:
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", *args], check=False, capture_output=True, text=True,
                       env={**os.environ, "SOURCE_DATE_EPOCH": _EPOCH}, timeout=900)
    if p.returncode != 0:
        tail = " ".join((p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1:])
        raise OperationFailed(f"building {what} failed: {tail}")


def _deps_key(root: str) -> str:
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    spec = "\n".join(sorted(project.get("dependencies", [])))
    return hashlib.sha256(f"{sys.version}\n{sys.platform}\n{spec}".encode()).hexdigest()[:16]


def _tree_key(root: str) -> str:
    """A digest of what goes into canidae's wheel: the packages' sources and the metadata files."""
    h = hashlib.sha256()
    for top in ("pyproject.toml", "README.md", "core", "agent", "cli", "src"):
        base = os.path.join(root, top)
        paths = [base] if os.path.isfile(base) else sorted(
            os.path.join(d, f) for d, dirs, files in os.walk(base) if "__pycache__" not in d for f in files
            if not f.endswith((".pyc", ".pyo")))
        for path in paths:
            h.update(f"{os.path.relpath(path, root)}\0{_sha256(path)}\n".encode())
    return h.hexdigest()[:16]


def default_cache() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "canidae", "wheels")


def prepare(dest: str, given: str | None = None, cache: str | None = None,
            source: str | None = None) -> Wheelhouse:
    """A wheelhouse in ``dest``: a copy of ``given``, else built from the source tree (``source``,
    else the one this program runs from)."""
    if given is not None:
        return describe(given)
    root = source_tree(source)
    if root is None:
        if source is not None:
            raise InvalidInput(f"--source {source}: not a canidae source tree (no pyproject.toml naming canidae)")
        raise InvalidInput("canidae does not run from its source tree here: give a directory of wheels "
                           "(canidae's and its dependencies') with --wheelhouse, or a source tree with --source")
    deps = os.path.join(cache or default_cache(), f"deps-{_deps_key(root)}")
    if not os.path.isdir(deps):
        os.makedirs(os.path.dirname(deps), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="deps-", dir=os.path.dirname(deps))
        try:
            _pip_wheel(["-w", tmp, root], "the dependencies' wheels")
            for f in os.listdir(tmp):
                if f.startswith("canidae-"):
                    os.remove(os.path.join(tmp, f))
            os.replace(tmp, deps)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    # canidae's wheel is built again only when its sources changed.
    own = os.path.join(cache or default_cache(), f"canidae-{_tree_key(root)}")
    if not os.path.isdir(own):
        tmp = tempfile.mkdtemp(prefix="canidae-", dir=os.path.dirname(own))
        try:
            _pip_wheel(["--no-deps", "-w", tmp, root], "canidae's wheel")
            os.replace(tmp, own)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest, mode=0o700)
    for src in (deps, own):
        for f in os.listdir(src):
            shutil.copyfile(os.path.join(src, f), os.path.join(dest, f))
    return describe(dest)


def with_wheel(base: str, wheel: str, dest: str) -> Wheelhouse:
    """The wheelhouse ``base`` (the one the last bootstrap installed) with its canidae wheel replaced
    by ``wheel``, in ``dest``: an upgrade given only a new canidae wheel."""
    name = os.path.basename(wheel)
    if not (name.startswith("canidae-") and name.endswith(".whl")) or not os.path.isfile(wheel):
        raise InvalidInput(f"--wheel {wheel}: not a canidae wheel file (canidae-*.whl), nor a directory of wheels")
    old = describe(base) if os.path.isdir(base) else None
    if old is None:
        raise InvalidInput(f"--wheel {wheel}: no earlier wheelhouse in {base} to take the dependencies from: "
                           "give a directory of every wheel, or --source")
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o700)
    for f in old.files:
        if not f.startswith("canidae-"):
            shutil.copyfile(os.path.join(base, f), os.path.join(tmp, f))
    shutil.copyfile(wheel, os.path.join(tmp, name))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return describe(dest)


__all__ = ["Wheelhouse", "default_cache", "describe", "prepare", "source_tree", "with_wheel"]
