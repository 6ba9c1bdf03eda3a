"""docs/power-models.md: each Python block runs on its own, in a fresh namespace, and prints what
the page shows in the ``text`` block after it."""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "power-models.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _examples() -> list[tuple[str, str]]:
    """(code, shown output) of each Python block followed by a text block."""
    found = [(m.group(1), m.group(2)) for m in BLOCK.finditer(PAGE.read_text(encoding="utf-8"))]
    return [
        (code, shown)
        for (kind, code), (after, shown) in itertools.pairwise(found)
        if kind == "python" and after == "text"
    ]


@pytest.mark.slow  # builds a Mixtral and checks three models
@pytest.mark.parametrize("number", range(3))
def test_each_example_prints_what_the_page_shows(number: int) -> None:
    pytest.importorskip("transformers")
    code, shown = _examples()[number]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(PAGE), "exec"), {"__name__": "__docs__"})
    printed = [line.rstrip() for line in out.getvalue().splitlines()]
    assert [line.rstrip() for line in shown.splitlines()] == printed


def test_the_page_has_its_three_examples() -> None:
    assert len(_examples()) == 3
