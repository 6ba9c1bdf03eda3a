"""TensorBoard in a browser, on a failing and a passing run of ``examples/wrong_backward.py``:
the first screen says which run fails and where, and the report text says the rest (slow)."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gradwatch.integration import card as _card
from gradwatch.integration import text as _text
from tests.browser import (
    CARDS,
    DEEP_TEXT,
    GROUPS,
    HEIGHT,
    Chromium,
    browser_command,
    fetch,
    log_runs,
    tensorboard,
)
from tests.callback_models import QUIET_LIGHTNING

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(*QUIET_LIGHTNING)]
FAILING, PASSING = "wrong_backward/version_0", "fixed_backward/version_0"


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The two runs, TensorBoard on them and a browser page."""
    if browser_command() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs headless Chromium: .ci/run installs Debian's `chromium`")
        pytest.skip("no headless Chromium here (apt-get install -y chromium)")
    root = tmp_path_factory.mktemp("runs")
    with pytest.warns(UserWarning, match="the gradient check failed"):
        checks = log_runs(root)
    pictures = tmp_path_factory.mktemp("pictures")
    with tensorboard(root) as address:
        page = Chromium()
        try:
            yield {"address": address, "page": page, "checks": checks, "pictures": pictures}
        finally:
            page.close()


def _card_of(check: Any, step: int, run: str) -> _card.CardContent:
    """What the card of the check at ``step`` of ``run`` says, from the callback's reports."""
    history = [
        _card.Point(s, _text.difference_of(r), _text.verdict_of(r))
        for s, r in check.reports.items()
        if s < step
    ]
    return _card.card_content(step, check.reports[step], history, run)


def test_the_first_screen_says_which_run_fails_and_names_the_parameter(
    board: dict[str, Any],
) -> None:
    page = board["page"]
    page.open(f"{board['address']}/")  # as TensorBoard prints it: no settings in the address
    cards = page.wait_for(CARDS, lambda cards: sum(c["loaded"] for c in cards) == 2)
    page.screenshot(board["pictures"] / "time_series.png")
    groups = [g for g in page.evaluate(GROUPS) if g != "Pinned"]  # pinned by the reader
    assert groups[0] == "GradientCheck"  # the first group of the page
    assert [c["title"] for c in cards] == ["GradientCheck/gradcheck"] * 2
    shown = {run: c for c in cards for run in (FAILING, PASSING) if run in c["text"]}
    assert set(shown) == {FAILING, PASSING}
    for run, card in shown.items():
        assert card["bottom"] <= HEIGHT  # whole on the first screen, no scrolling, no paging
        # Legible in a 1280 × 800 window: the card's smallest type is 12 CSS pixels or more.
        assert card["width"] * _card.SMALLEST / _card.WIDTH >= 12
        picture = np.asarray(Image.open(io.BytesIO(fetch(card["src"]))).convert("RGB"))
        content = _card_of(board["checks"][run], 10, run)
        assert content.run == run  # the whole run name, which the card's title cuts
        assert np.array_equal(picture, _card.render(content))  # the page shows this card
    failing, passing = (
        _card_of(board["checks"][FAILING], 10, FAILING),
        _card_of(board["checks"][PASSING], 10, PASSING),
    )
    assert failing.title == "FAIL at step 10" and passing.title == "PASS at step 10"
    assert failing.rows[0][:2] == ("fail", "hidden.bias")  # the worst parameter, first
    assert [row[0] for row in failing.rows[1:]] == ["pass"] * 3
    assert {row[0] for row in passing.rows} == {"pass"}
    assert [p.verdict for p in failing.history] == ["fail", "fail"]


def test_the_report_text_names_the_verdict_and_each_parameter(board: dict[str, Any]) -> None:
    page = board["page"]
    page.open(f"{board['address']}/#text")
    text = page.wait_for(DEEP_TEXT, lambda t: "FAIL at step 10" in t and "PASS at step 10" in t)
    page.screenshot(board["pictures"] / "text.png")
    assert "gradcheck/report" in text
    assert re.search(
        r"FAIL at step 10: difference \d\.\de-0\d \(pass <= 1e-07, fail > 1e-03\)", text
    )
    assert re.search(r"PASS at step 10: difference \d\.\de-0\d", text)
    assert re.search(r"hidden\.bias 9\.\d\de-01 fail", text)
    assert "very likely a bug in backprop. The first wrong gradient enters" in text
    assert "evaluation:" not in text
