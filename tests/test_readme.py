"""The README is a front page: short, the install line and the callback on its first screen, the
recipe in plain words; its shell commands (and the docs') are the ones CI runs. Its Python blocks
run and print what they show: tests/test_docs.py, with every page of the docs."""

from __future__ import annotations

import re
from pathlib import Path

from tests import readme_commands

README = Path(__file__).resolve().parent.parent / "README.md"
FIRST_SCREEN_LINES = 80  # what a 1280x800 browser window or a tall terminal shows at once
FRONT_PAGE_LINES = 300  # "a few hundred lines at most": the rest lives under docs/


def test_the_first_screen_has_the_install_line_and_the_callback() -> None:
    first = "\n".join(README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN_LINES])
    assert re.search(r"^pip install gradwatch\b", first, re.MULTILINE)
    assert "from gradwatch.callbacks import GradientCheck" in first
    assert "GradientCheck(" in first and "Trainer(" in first


def test_the_readme_is_a_front_page_in_plain_words() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= FRONT_PAGE_LINES
    assert "material" not in text  # the recipe is defined, not referred to
    for recipe in ("two-sided difference", "ε = 1e-7", "1e-7", "1e-3", "deep-learning courses"):
        assert recipe in text
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", text))
    pages = {f"docs/{p.name}" for p in (README.parent / "docs").glob("*.md")}
    assert linked == pages - {"docs/index.md", "docs/api.md"}, "every page linked, none missing"


def test_the_shell_commands_are_the_ones_ci_runs() -> None:
    # CI runs them after `make test` (.ci/run: python -m tests.readme_commands), as written.
    found = [
        c
        for page in readme_commands.pages()
        for c in readme_commands.commands(page.read_text(encoding="utf-8"))
    ]
    assert [(c.line, c.status, c.address) for c in found] == [
        ("make wrong-backward", 0, None),
        (".venv/bin/python examples/wrong_backward.py --fixed", 0, None),
        ("make tensorboard", 0, "http://localhost:6006/?smoothing=0"),
        ("make demo", 0, None),
        (".venv/bin/python examples/cli.py fit --config examples/config.yaml", 0, None),
        (".venv/bin/python examples/wrong_backward.py --raise", 1, None),
    ]
    assert "readme_commands" in (README.parent / ".ci" / "run").read_text()
