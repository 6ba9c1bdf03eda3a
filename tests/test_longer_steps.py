"""A disagreement that stands at the first step is read once more at the step fitted to J's noise
(``gradwatch.evidence.model._at_longer_steps``): a gap that shrinks as 1/step was J's noise at
the short step (a float32 staircase, the as-written Funnel of ``tests/test_funnel.py``) and
clears there, under a narrower tolerance; a wrong backward's gap is the same at every step and
stands, with its first reading shown."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from gradwatch.evidence import model
from gradwatch.evidence.model import _at_longer_steps
from gradwatch.evidence.readings import (
    AGREES,
    DISAGREES,
    FITTED_STEP,
    Record,
    read,
)
from gradwatch.evidence.recheck import fitted_steps, longest_steps

SLOPE, STEP, SIGMA, CENTER = 2.0, 1e-7, 1e-10, 1.0
# The first reading's numeric value, 0.02 off the slope: 28σ of its noise σ/(√2·h) = 7e-4, as a
# stair of J crossed by the first step reads.
FIRST = SLOPE + 0.02
FITTED = float(fitted_steps(np.zeros(1), np.full(1, STEP), SIGMA, CENTER)[0])  # 4.6e-4


class Line:
    """J = CENTER + SLOPE·x, with a kink at x = ``kink`` (J turns by 5 per unit of x there) and a
    narrow bump of 1e-6 at x = ``bump`` (a stair that one evaluation lands on)."""

    def __init__(self, kink: float = np.inf, bump: float = np.inf) -> None:
        self.kink, self.bump = kink, bump

    def cost(self, x: float) -> float:
        stair = 1e-6 if abs(x - self.bump) < 0.1 * FITTED else 0.0
        return CENTER + SLOPE * x + 5.0 * max(x - self.kink, 0.0) + stair

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.cost(s) for s in h]), np.array([self.cost(-s) for s in h])

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def values(self, at: np.ndarray) -> np.ndarray:
        return np.zeros(len(at))

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.array([self.cost(float(r.sum())) for r in rows])


def _read(j: Line, analytic: float, step: float = STEP, at_fitted: bool = False) -> Record:
    a, n = np.array([analytic]), np.array([FIRST])
    noise = np.full(1, SIGMA / (np.sqrt(2) * step))
    record = Record(a, n, noise, np.full(1, SIGMA))
    record.reading, record.reason = read(a, n, noise, 1e-7)
    record.step[:] = FITTED if at_fitted else step
    assert record.reading[0] == DISAGREES
    _at_longer_steps(j, record, CENTER, np.full(1, step), 1e-7)  # type: ignore[arg-type]
    return record


@pytest.mark.parametrize("planted", [False, True])
def test_a_gap_that_shrinks_with_the_step_clears_and_a_bugs_stands(planted: bool) -> None:
    record = _read(Line(), SLOPE * (0.99 if planted else 1.0))
    if planted:  # 1% off at every step: the first reading stands, values and all
        assert (record.reading[0], record.recheck[0]) == (DISAGREES, 0)
        assert record.numeric[0] == FIRST and record.step[0] == STEP
    else:
        assert (record.reading[0], record.recheck[0]) == (AGREES, FITTED_STEP)
        assert abs(record.numeric[0] - SLOPE) < 1e-9 and record.step[0] == FITTED


def test_where_j_is_not_smooth_at_the_longer_step_the_first_reading_stands() -> None:
    record = _read(Line(kink=1.5 * FITTED), SLOPE)
    assert (record.reading[0], record.recheck[0], record.numeric[0]) == (DISAGREES, 0, FIRST)


@pytest.mark.parametrize("planted", [False, True])
def test_where_j_is_not_smooth_at_the_fitted_step_a_longer_rung_reads_it(planted: bool) -> None:
    # The bump sits at 2H: J'' at H and 2H disagree. At float32's step (4.9e-3, 16H capped) and
    # twice it J is smooth: read there, the correct gradient agrees and the planted one stands.
    record = _read(Line(bump=2 * FITTED), SLOPE * (0.99 if planted else 1.0))
    if planted:
        assert (record.reading[0], record.recheck[0], record.numeric[0]) == (DISAGREES, 0, FIRST)
    else:
        assert (record.reading[0], record.recheck[0]) == (AGREES, FITTED_STEP)
        assert record.step[0] == float(longest_steps(np.zeros(1))[0])


def test_a_reading_at_a_fitted_step_or_one_no_shorter_is_not_read_again() -> None:
    # Already at the fitted step: the longer step is the one it was read at.
    assert _read(Line(), SLOPE, at_fitted=True).numeric[0] == FIRST
    # A first step as long as the fitted one (1e-3 > 4.6e-4): nothing longer to read at.
    assert _read(Line(), SLOPE, step=1e-3).numeric[0] == FIRST


class Stairs:
    """J = CENTER + SLOPE·x plus an error of 1e-9·N(0, 1) constant over each cell of 1e-5 in x
    (``key`` seeds the cells): J rounded through one coarse intermediate, as through the float32
    attention scores of an as-written Funnel. The first step (1e-7) stays within one cell, where
    J's noise is what the first probes measured (``SIGMA``, 1e-10); the fitted step (4.6e-4)
    spans ~46 cells, and J's noise at its stride is the cells' 1e-9."""

    def __init__(self, key: int) -> None:
        self.key = key

    def cost(self, x: np.ndarray) -> np.ndarray:
        cells = np.floor(np.asarray(x, np.float64) / 1e-5).astype(np.int64)
        rngs = (np.random.default_rng([int(c) + 2**40, self.key]) for c in cells)
        return CENTER + SLOPE * np.asarray(x) + 1e-9 * np.array([r.standard_normal() for r in rngs])

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.cost(np.asarray(h)), self.cost(-np.asarray(h))

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def values(self, at: np.ndarray) -> np.ndarray:
        return np.zeros(len(at))

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.cost(rows.sum(axis=1))


@pytest.mark.parametrize("key", [1, 2, 3])
@pytest.mark.parametrize("planted", [False, True])
def test_a_reread_is_judged_against_j_noise_at_its_own_stride(planted: bool, key: int) -> None:
    # Richardson's estimate at H carries the cells' error, ~2e-6 here: against J's noise at H's
    # stride (measured 0.8e-9 to 1.3e-9 over cell keys 0-11 and seeds 0-3) the correct gradient
    # agrees; against the first probes' 1e-10 it stood disagreeing at these keys (below). A
    # gradient 1% off is 0.02 off at every step: its first reading stands, its noise with it.
    analytic = SLOPE * (0.99 if planted else 1.0)
    record = _read(Stairs(key), analytic)  # type: ignore[arg-type]
    if planted:
        assert (record.reading[0], record.recheck[0], record.step[0]) == (DISAGREES, 0, STEP)
        assert record.numeric[0] == FIRST and record.sigma[0] == SIGMA
    else:
        assert (record.reading[0], record.recheck[0], record.step[0]) == (
            AGREES,
            FITTED_STEP,
            FITTED,
        )
        assert 0.5e-9 < record.sigma[0] < 2e-9
    # The cause: the same re-read against the first stride's noise leaves the first reading.
    with mock.patch.object(model, "noise_at", lambda *args: 0.0):
        record = _read(Stairs(key), SLOPE)  # type: ignore[arg-type]
    assert (record.reading[0], record.recheck[0], record.sigma[0]) == (DISAGREES, 0, SIGMA)


def test_each_tensors_noise_at_the_longer_step_is_its_own_from_the_check_seed() -> None:
    # Two tensors (components 0 and 2, and 1), each read again at the fitted step: J's noise at
    # that stride is measured along each tensor's own components, from the check's seed (a
    # tensor's noise pooled with another's would read it against that one's).
    n = 3
    a, first = np.full(n, SLOPE), np.full(n, FIRST)
    noise = np.full(n, SIGMA / (np.sqrt(2) * STEP))
    record = Record(a, first, noise, np.full(n, SIGMA))
    record.reading, record.reason = read(a, first, noise, 1e-7)
    record.step[:] = STEP
    calls: list[tuple[tuple[int, ...], int]] = []

    def noise_at(objective, center, support, steps, seed):  # type: ignore[no-untyped-def]
        calls.append((tuple(int(i) for i in support), seed))
        return 0.0

    with mock.patch.object(model, "noise_at", noise_at):
        _at_longer_steps(
            Line(),  # type: ignore[arg-type]
            record,
            CENTER,
            np.full(n, STEP),
            1e-7,
            np.array([0, 1, 0]),
            5,
        )
    assert calls == [((0, 2), 5), ((1,), 5)]
    assert list(record.reading) == [AGREES] * n and list(record.recheck) == [FITTED_STEP] * n


def test_the_check_hands_its_tensors_and_seed_to_the_reading_at_longer_steps() -> None:
    seen: list[tuple[list[int], int]] = []

    def at_longer_steps(objective, record, center, steps, pass_max, groups, seed):  # type: ignore[no-untyped-def]
        seen.append((list(groups), seed))

    j, steps = Line(), np.full(2, STEP)
    with mock.patch.object(model, "_at_longer_steps", at_longer_steps):
        model.gather_evidence(
            j,  # type: ignore[arg-type]
            np.full(2, SLOPE),
            j.pairs(np.arange(2), steps),
            CENTER,
            steps,
            SIGMA,
            1e-7,
            np.array([3, 4]),
            5,
        )
    assert seen == [([3, 4], 5)]
