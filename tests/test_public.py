"""The public surface: what ``gradwatch`` exports, and the old module names that still import."""

from __future__ import annotations

import importlib
import sys

import pytest

import gradwatch


def test_everything_exported_exists_and_is_documented() -> None:
    for name in gradwatch.__all__:
        value = getattr(gradwatch, name)
        assert value.__doc__, name


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("numeric", "gradwatch.common.numeric"),
        ("directions", "gradwatch.check.directions"),
        ("sampling", "gradwatch.check.sampling"),
    ],
)
def test_an_old_module_name_imports_with_a_warning(name: str, home: str) -> None:
    sys.modules.pop(f"gradwatch.{name}", None)
    with pytest.warns(DeprecationWarning, match=f"gradwatch.{name} is deprecated"):
        old = importlib.import_module(f"gradwatch.{name}")
    new = importlib.import_module(home)
    assert all(getattr(old, n) is getattr(new, n) for n in new.__all__)
