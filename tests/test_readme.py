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


def test_the_readme_links_every_page_of_the_site_s_nav_and_each_link_resolves() -> None:
    text = README.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", text))
    assert all((README.parent / page).is_file() for page in linked)
    nav = re.findall(
        r"^  - [^:]+: ([\w.-]+\.md)$", (README.parent / "mkdocs.yml").read_text(), re.M
    )
    assert len(nav) >= 10
    assert {f"docs/{page}" for page in nav} - {"docs/index.md", "docs/api.md"} == linked


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
