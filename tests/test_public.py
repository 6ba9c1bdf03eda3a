"""The public surface: what ``gradwatch`` exports, and the old names that are gone."""

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
def test_an_old_module_name_is_gone(name: str, home: str) -> None:
    sys.modules.pop(f"gradwatch.{name}", None)
    with pytest.raises(ModuleNotFoundError, match=f"gradwatch.{name}"):
        importlib.import_module(f"gradwatch.{name}")
    assert importlib.import_module(home).__all__  # the private module stays, in its wing


def test_the_old_name_of_check_function_is_gone_and_says_what_replaces_it() -> None:
    with pytest.raises(
        AttributeError,
        match=r"gradient_check was removed in 0\.3\.0; use gradwatch\.check_function",
    ):
        gradwatch.gradient_check  # noqa: B018
    assert not hasattr(gradwatch, "gradient_check")
    with pytest.raises(AttributeError, match="no attribute 'gradient_checks'"):
        gradwatch.gradient_checks  # noqa: B018


def test_the_version_is_0_3_0() -> None:
    assert gradwatch.__version__ == "0.3.0"
