"""Progress of a long check: a bar on stderr with the evaluations of J done and the time left,
whose total is the work the check really does; nothing with ``progress=False``."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

import gradwatch
from gradwatch.check.eager import _planned
from gradwatch.reporting import progress as _progress
from tests import nets

# tqdm's "elapsed<remaining": the time left, known once the total and the rate are.
TIME_LEFT = re.compile(r"\d+/(\d+) \[\d\d:\d\d<\d\d:\d\d")


@pytest.fixture
def every_check_is_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar appears at once and is redrawn at every chunk (no waiting in tests)."""
    monkeypatch.setattr(_progress, "DELAY_S", 0.0)
    monkeypatch.setattr(_progress, "REFRESH_S", 0.0)
    monkeypatch.setattr(_progress, "LOG_REFRESH_S", 0.0)


def _check(**options: Any) -> gradwatch.GradCheckReport:
    return gradwatch.check_module(
        nets.cnn(), nets.cross_entropy, nets.classification_batch((1, 6, 6)), **options
    )


@pytest.mark.usefixtures("every_check_is_long")
def test_a_long_check_shows_the_time_left_against_the_work_it_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = _check()
    err = capsys.readouterr().err
    totals = {int(m.group(1)) for m in TIME_LEFT.finditer(err)}
    assert totals == {report.evaluations}
    assert "gradient check:" in err and "evaluations/s" in err


@pytest.mark.usefixtures("every_check_is_long")
def test_progress_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    _check(progress=False)
    assert capsys.readouterr().err == ""


def test_a_short_check_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    _check()  # well under DELAY_S
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("make", "shape", "options"),
    [
        (nets.mlp, (4,), {}),
        (nets.cnn, (1, 6, 6), {}),
        (nets.cnn, (1, 6, 6), {"sample": 30}),
    ],
)
def test_the_planned_total_is_the_number_of_evaluations_the_check_makes(
    make: Any, shape: tuple[int, ...], options: dict[str, Any]
) -> None:
    report = gradwatch.check_module(
        make(), nets.cross_entropy, nets.classification_batch(shape), progress=False, **options
    )
    # Exact where no component is estimated again at half the step (those extend the total) and
    # every tensor validates its way on a pair of its own; in a small sample, tensors with few
    # components share calls and validate together (two evaluations per tensor at most).
    planned = _planned(report.indices, report.layout, None, None)
    if "sample" in options:
        assert 0 <= planned - report.evaluations <= 2 * len(report.layout.names)
    else:
        assert planned == report.evaluations


def test_a_drift_check_plans_both_precisions() -> None:
    report = _check(progress=False, drift_dtype=torch.float32)
    assert _planned(report.indices, report.layout, None, torch.float32) == report.evaluations


def test_the_total_shows_once_evaluations_run_steadily_and_grows_past_the_plan(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _progress.progress_bar(True) as ticks:
        ticks(1)
        ticks.plan(30)
        for _ in range(_progress.STEADY_COUNT):
            ticks(1)  # the slow first evaluations: a count, no time left yet
        bar = ticks._bar
        assert bar is not None and (bar.n, bar.total) == (1 + _progress.STEADY_COUNT, None)
        ticks(12)
        bar = ticks._bar
        assert bar is not None and (bar.n, bar.total) == (21, 30)
        ticks(15)
        assert (bar.n, bar.total) == (36, 36)  # more than planned: the total follows


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_progress_must_be_a_bool(value: object) -> None:
    with pytest.raises(TypeError, match=rf"`progress` must be True or False; got {value!r}"):
        _check(progress=value)
