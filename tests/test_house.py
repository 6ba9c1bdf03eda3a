"""The house's habits (CONTRIBUTING.md, "The map of the house"): no folder of gradwatch/ holds more
than 12 modules, callbacks/ holds at most 8 files, and no file of gradwatch/ or callbacks/ is
longer than 350 lines; the callback imports no ``gradwatch._*`` module (lint-imports' contract
names the private wings; a wildcard there cannot say "a name starting with _"). Each rule is also
run on a planted tree that breaks it, so a rule that finds nothing is seen to find."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A folder that holds more modules than this is two concerns (CONTRIBUTING.md).
MAX_MODULES = 12
# A file longer than this is two concepts (CONTRIBUTING.md, STYLE.md habit 9).
MAX_LINES = 350
# The callback in a few files, one story each (issue 22); what needs no Lightning lives in
# gradwatch/integration/. A ninth file is a story that belongs in one of these.
MAX_CALLBACK_FILES = 8


def crowded_folders(package: Path, root: Path = ROOT) -> dict[str, int]:
    """Each folder of ``package`` holding more than MAX_MODULES modules (``__init__.py`` aside),
    with its count."""
    found = {}
    for folder in sorted({package, *(p.parent for p in package.rglob("*.py"))}):
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        if len(modules) > MAX_MODULES:
            found[folder.relative_to(root).as_posix()] = len(modules)
    return found


def long_files(*folders: Path, root: Path = ROOT) -> dict[str, int]:
    """Each Python file under ``folders`` longer than MAX_LINES lines, with its length."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                found[path.relative_to(root).as_posix()] = lines
    return found


def test_no_folder_of_gradwatch_holds_more_than_12_modules() -> None:
    assert crowded_folders(ROOT / "gradwatch") == {}


def test_no_file_of_the_engine_or_the_callback_is_longer_than_350_lines() -> None:
    assert long_files(ROOT / "gradwatch", ROOT / "callbacks") == {}


def too_many_files(folder: Path) -> int | None:
    """The number of ``.py`` files in ``folder`` if more than MAX_CALLBACK_FILES, else None."""
    count = len(list(folder.glob("*.py")))
    return count if count > MAX_CALLBACK_FILES else None


def test_the_callback_is_at_most_8_files() -> None:
    assert too_many_files(ROOT / "callbacks") is None


@pytest.mark.parametrize(("files", "found"), [(8, None), (9, 9)])
def test_a_planted_ninth_callback_file_is_found(tmp_path: Path, files: int, found: int) -> None:
    for k in range(files):
        (tmp_path / f"m{k}.py").write_text("")
    assert too_many_files(tmp_path) == found


def test_every_wing_is_a_package_setuptools_installs() -> None:
    # A wing missing from pyproject's `packages` would import here and be absent once installed.
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    wings = sorted(p.parent.name for p in (ROOT / "gradwatch").glob("*/__init__.py"))
    assert wings and [w for w in wings if f'"gradwatch.{w}"' not in text] == []


def private_imports(folder: Path) -> list[str]:
    """Each ``gradwatch._*`` module (at any depth) the files of ``folder`` import."""
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            found += [
                n
                for n in names
                if n.startswith("gradwatch.")
                and not n.startswith("gradwatch.callbacks")
                and any(part.startswith("_") for part in n.split(".")[1:])
            ]
    return found


def test_the_callback_imports_no_private_gradwatch_module() -> None:
    assert private_imports(ROOT / "callbacks") == []


def test_a_planted_private_import_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "import gradwatch.integration.text\n"
        "from gradwatch import _callback_text as text, check_module\n"
        "from gradwatch.integration import faults\n"
        "import gradwatch._evaluate\n"
    )
    found = ["gradwatch._callback_text", "gradwatch._evaluate"]
    assert private_imports(tmp_path) == found


@pytest.mark.parametrize(("modules", "crowded"), [(12, {}), (13, {"pkg/wing": 13})])
def test_a_planted_crowded_folder_is_found(tmp_path: Path, modules: int, crowded: dict) -> None:
    wing = tmp_path / "pkg" / "wing"
    wing.mkdir(parents=True)
    for path in [wing / "__init__.py", *(wing / f"m{i}.py" for i in range(modules))]:
        path.write_text('"""A module."""\n')
    assert crowded_folders(tmp_path / "pkg", root=tmp_path) == crowded


@pytest.mark.parametrize(("lines", "long"), [(350, {}), (351, {"pkg/big.py": 351})])
def test_a_planted_long_file_is_found(tmp_path: Path, lines: int, long: dict) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "big.py").write_text("x = 1\n" * lines)
    assert long_files(tmp_path / "pkg", root=tmp_path) == long
