"""The examples in the docstrings of ``gradwatch.callbacks``, run from the installed package.

pytest's ``--doctest-modules`` would import ``callbacks/`` a second time, as a top-level package
named ``callbacks`` beside ``gradwatch.callbacks``; here each module is imported once, by its
installed name.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import gradwatch.callbacks

MODULES = sorted(
    f"gradwatch.callbacks.{m.name}"
    for m in pkgutil.iter_modules(gradwatch.callbacks.__path__)
    if m.name != "lightning" or importlib.util.find_spec("lightning") is not None
)


@pytest.mark.parametrize("name", ["gradwatch.callbacks", *MODULES])
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert failed == 0, f"{failed} of {attempted} examples failed in {name}"


def _oversized(folder: Path) -> list[str]:
    """What breaks issue 22's rule for ``callbacks/``: more than 8 ``.py`` files, or a file over
    350 lines."""
    files = sorted(folder.glob("*.py"))
    found = [f"{len(files)} files"] if len(files) > 8 else []
    return found + [p.name for p in files if len(p.read_text().splitlines()) > 350]


def test_the_callback_is_at_most_eight_files_of_at_most_350_lines(tmp_path: Path) -> None:
    # The callback in a few files, one story each; what needs no Lightning lives in
    # gradwatch/_callback_*.py. A ninth file is a story that belongs in one of these.
    assert _oversized(Path(gradwatch.callbacks.__file__).parent) == []
    for k in range(9):  # the planted twins: a ninth file, then a long one
        (tmp_path / f"m{k}.py").write_text("")
    assert _oversized(tmp_path) == ["9 files"]
    (tmp_path / "m0.py").write_text("x = 1\n" * 351)
    assert _oversized(tmp_path) == ["9 files", "m0.py"]
