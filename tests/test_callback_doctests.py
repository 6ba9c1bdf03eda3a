"""The examples in the docstrings of ``gradwatch.callbacks``, run from the installed package.

pytest's ``--doctest-modules`` would import ``callbacks/`` a second time, as a top-level package
named ``callbacks`` beside ``gradwatch.callbacks``; here each module is imported once, by its
installed name.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

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
