"""Every Python block of the README and the docs runs on its own, in a fresh process, and prints
what its page shows, by the rule of ``tests/doc_blocks.py`` (which holds on every CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import doc_blocks

EXAMPLES = [e for page in doc_blocks.pages() for e in doc_blocks.examples(page)]
# One example is a check of a small model: a minute is far more than any needs on a busy machine.
EXAMPLE_TIMEOUT_S = 300


def test_the_rule_takes_the_noise_s_last_digits_and_nothing_else() -> None:
    # the Swish example's figures on two CPU kernel paths (issue 20): the same line
    assert doc_blocks.figures_agree(
        "  3.weight          2.06e-08    2.5e-08          48/0/0  pass",
        "  3.weight          2.31e-08    2.1e-08          48/0/0  pass",
    )
    assert doc_blocks.figures_agree(
        "FAIL, difference 4.328e-02 (noise floor 6.7e-08)",
        "FAIL, difference 4.33e-02 (noise floor 6.4e-08)",
    )


@pytest.mark.parametrize(
    ("shown", "printed"),
    [
        ("pass 1.3e-07", "pass 1.3e-06"),  # a figure at the noise, in the wrong decade
        ("pass 1.3e-07", "pass -1.3e-07"),  # … or of the wrong sign
        ("fail 1.4e-01", "fail 1.6e-01"),  # a bug's figure off in its second digit
        ("0/64/0  fail", "1/63/0  fail"),  # a count
        ("0.weight[13, 0]", "0.weight[12, 0]"),  # an index
        ("0.weight  fail", "0.bias  fail"),  # a name
        ("pass 1.5e-09", "warn 1.5e-09"),  # a verdict
        ("pass 1.5e-09", "pass 1.5e-09 more"),  # a word more
    ],
)
def test_the_rule_fails_a_line_that_differs(shown: str, printed: str) -> None:
    assert not doc_blocks.figures_agree(shown, printed)
    assert doc_blocks.missing([shown], [printed]) == [shown]


def test_the_pages_have_examples_and_their_fragments_are_titled() -> None:
    assert len(doc_blocks.examples(doc_blocks.ROOT / "README.md")) >= 2
    assert len(EXAMPLES) >= 9
    for page in doc_blocks.pages():
        for block in doc_blocks.blocks(page):
            # ```py is not a kind here: a fragment is a ```python block with a title
            assert block.kind != "py", f"{page.name}:{block.line}: use ```python title=…"


def test_a_block_titled_with_a_file_of_the_repository_is_that_file() -> None:
    titled = [
        (page, block)
        for page in doc_blocks.pages()
        for block in doc_blocks.blocks(page)
        if block.title and (doc_blocks.ROOT / block.title).is_file()
    ]
    assert any(block.title == "examples/config.yaml" for _, block in titled)
    for page, block in titled:
        real = (doc_blocks.ROOT / block.title).read_text(encoding="utf-8")  # type: ignore[operator]
        assert block.code == real, f"{page.name}:{block.line} is not {block.title} as it is"


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_the_example_runs_alone_and_prints_what_its_page_shows(
    example: doc_blocks.Example, tmp_path: Path
) -> None:
    # A fresh process in an empty folder: nothing borrowed from another block or from the repo.
    done = subprocess.run(
        [sys.executable, "-c", example.code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{example.name} stopped:\n{done.stderr[-3000:]}"
    printed = [line.rstrip() for line in done.stdout.splitlines()]
    lost = doc_blocks.missing(example.shown or [], printed)
    assert not lost, f"{example.name} shows lines it does not print:\n" + "\n".join(
        [*lost, "--- it printed:", *printed]
    )
