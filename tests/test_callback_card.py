"""The TensorBoard card reads at 1280 × 800: no type below 28 of its pixels (12.7 CSS pixels as
TensorBoard shows it), at most 450 high, and the run's whole name, shrunk or wrapped, never cut."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import gradwatch
from gradwatch.callbacks import _logging
from gradwatch.integration import card as _card

ROOM = _card.WIDTH - 40  # the run's lines, between the card's margins


def _report() -> gradwatch.GradCheckReport:
    # Six parameters, one wrong: four rows and a footer.
    layout = {"hidden.weight": 2, "hidden.bias": 1, "out.weight": 1, "out.bias": 1, "extra": 1}
    grad = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 3.0])
    return gradwatch.check_function(lambda t: float(t @ t), np.ones(6), grad, layout=layout)


@pytest.mark.parametrize(
    ("run", "size", "lines"),
    [
        ("wrong_backward/version_0", 32, 1),
        ("a_longer_experiment_name_for_a_sweep/version_10", 28, 1),  # shrunk
        ("a_really_long_experiment_name_for_the_sweep/lr_0.001_bs_64/version_12", 28, 2),
        ("x" * 120, 28, 3),  # no "/": broken anywhere
    ],
    ids=["fits", "shrunk", "wrapped-after-a-slash", "wrapped-anywhere"],
)
def test_the_run_name_is_shown_whole(run: str, size: int, lines: int) -> None:
    found_size, found = _card.run_lines(run)
    assert "".join(found) == run  # never cut
    assert (found_size, len(found)) == (size, lines)
    assert all(_card._font(found_size).getlength(line) <= ROOM for line in found)
    if lines == 2:
        assert found[0] == "a_really_long_experiment_name_for_the_sweep/"


def test_no_type_on_the_card_is_below_the_smallest(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = _card._font

    def recorded(size: int) -> Any:
        sizes.append(size)
        return real(size)

    monkeypatch.setattr(_card, "_font", recorded)
    history = [_card.Point(s, 10.0**-s, "fail") for s in range(1, 5)]
    content = _card.card_content(10, _report(), history, "wrong_backward/version_0")
    assert len(content.rows) == _card.ROWS and content.footer == "and 1 more: 1 pass"
    image = _card.render(content)
    assert min(sizes) == _card.SMALLEST == 28
    assert image.shape == (444, 720, 3)  # within 720 × 450, TensorBoard's box at twice its size


def test_the_run_is_named_as_tensorboard_names_it() -> None:
    logger = SimpleNamespace(save_dir="runs", log_dir="runs/wrong_backward/version_0")
    assert _logging.run_name(logger) == "wrong_backward/version_0"
    assert _logging.run_name(SimpleNamespace(log_dir="/tmp/logs/version_2")) == "version_2"
    assert _logging.run_name(SimpleNamespace()) == ""
