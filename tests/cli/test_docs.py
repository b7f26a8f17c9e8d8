"""The committed completions and man page match the command tree (scripts/gen_docs.py)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from canidae.core import errors

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("completions/canidae.bash", "completions/_canidae", "completions/canidae.fish", "man/canidae.1")


def load_gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("canidae_gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_docs = load_gen_docs()


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return gen_docs.generate()


def copy_committed(to: Path) -> None:
    for rel in GENERATED:
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, to / rel)


def test_committed_files_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    code = gen_docs.main(["--check"])
    assert code == 0, capsys.readouterr().err + " -- regenerate with: python scripts/gen_docs.py"


def test_check_names_the_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy_committed(tmp_path)
    with (tmp_path / "man/canidae.1").open("a") as f:
        f.write(".\\\" hand edit\n")
    (tmp_path / "completions/canidae.fish").unlink()
    assert gen_docs.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "python scripts/gen_docs.py" in err
    listed = set(err.rpartition("): ")[2].strip().split(", "))
    assert listed == {"man/canidae.1", "completions/canidae.fish"}
    # --check changes nothing.
    assert not (tmp_path / "completions/canidae.fish").exists()


def test_generate_then_check_passes(tmp_path: Path) -> None:
    assert gen_docs.main(["--root", str(tmp_path)]) == 0
    assert gen_docs.main(["--check", "--root", str(tmp_path)]) == 0


def test_output_does_not_depend_on_environment(
    generated: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANIDAE_ADDR", "10.1.2.3:9999")
    monkeypatch.setenv("CANIDAE_TOKEN", "secret-token")
    monkeypatch.setenv("COLUMNS", "33")
    again = gen_docs.generate()
    assert again == generated
    assert all("secret-token" not in text and "10.1.2.3" not in text for text in again.values())


def test_no_path_of_this_machine_leaks(generated: dict[str, str]) -> None:
    for text in generated.values():
        assert str(Path.home()) not in text
        assert str(ROOT) not in text


def test_man_page_has_every_section_and_command(generated: dict[str, str]) -> None:
    page = generated["man/canidae.1"]
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "ENVIRONMENT", "FILES", "EXIT STATUS",
                    "EXAMPLES"):
        assert f".SH {section}\n" in page
    tree = gen_docs.command_tree()
    for cmd in tree.walk():
        if cmd is not tree:
            assert f'.SS "{cmd.name.replace("-", chr(92) + "-")}"' in page, cmd.name
    for var in ("CANIDAE_ADDR", "CANIDAE_TOKEN", "CANIDAE_DEBUG"):
        assert f".B {var}\n" in page
    assert "~/.config/canidae/config.toml" in page
    for code in (errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_UNAVAILABLE,
                 errors.EXIT_DENIED, errors.EXIT_NOT_FOUND, errors.EXIT_CONFLICT):
        assert f".TP\n.B {code}\n" in page
    assert "\\-\\-members" in page


def test_man_page_is_clean_troff(tmp_path: Path, generated: dict[str, str]) -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    page = tmp_path / "canidae.1"
    page.write_text(generated["man/canidae.1"])
    proc = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""


def test_completions_name_every_command(generated: dict[str, str]) -> None:
    tree = gen_docs.command_tree()
    for cmd in tree.walk():
        if cmd.is_group:
            words = " ".join(child.path[-1] for child in cmd.children)
            assert f'"{cmd.name}") echo "{words}"' in generated["completions/canidae.bash"]
            assert f"_{'__'.join(p.replace('-', '_') for p in cmd.path)}() {{" in generated["completions/_canidae"]
            assert f"case '{cmd.name}'" in generated["completions/canidae.fish"]
