"""``fleet upgrade --wheel FILE``: the last bootstrap's wheelhouse with canidae's wheel replaced;
the digest (the upgrade's target) follows the bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from canidae.agent.ops.fleet.wheelhouse import describe, with_wheel
from canidae.core.errors import InvalidInput


def test_with_wheel_replaces_only_canidae(tmp_path: Path) -> None:
    base = tmp_path / "house"
    base.mkdir()
    (base / "canidae-0.1.0-py3-none-any.whl").write_bytes(b"old")
    (base / "httpx-0.27.0-py3-none-any.whl").write_bytes(b"dep")
    before = describe(str(base))
    new = tmp_path / "dist" / "canidae-0.2.0-py3-none-any.whl"
    new.parent.mkdir()
    new.write_bytes(b"new")
    after = with_wheel(str(base), str(new), str(base))
    assert after.files == ("canidae-0.2.0-py3-none-any.whl", "httpx-0.27.0-py3-none-any.whl")
    assert after.digest != before.digest and (base / "canidae-0.2.0-py3-none-any.whl").read_bytes() == b"new"
    assert with_wheel(str(base), str(new), str(base)).digest == after.digest  # the same wheel: the same target

    with pytest.raises(InvalidInput, match="not a canidae wheel"):
        with_wheel(str(base), str(base / "httpx-0.27.0-py3-none-any.whl"), str(base))
    with pytest.raises(InvalidInput, match="no earlier wheelhouse"):
        with_wheel(str(tmp_path / "none"), str(new), str(tmp_path / "none"))
