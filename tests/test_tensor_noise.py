"""J's noise along a tensor (``gradwatch.evidence.escalation.tensor_noise``): measured at the
stride of the readings it judges, reaching as far as their re-check's 4h and no further, never
below J's rounding floor.

The reach is what the first attempt (reverted) got wrong: a direction along which J did not move
grew 16× per try until J moved, and over a saturated hardtanh (J flat until a kink ~1e-2 away)
that measured the kink as noise and hid a planted one-component bug
(``tests/test_properties.py::test_corrupted_component_is_named_worst``).
"""

from __future__ import annotations

import numpy as np
import pytest

from gradwatch.evidence.escalation import tensor_noise
from gradwatch.evidence.noise import rounding_floor
from gradwatch.evidence.readings import DISAGREES, NOT_JUDGED, Record, read

STEP, SIGMA = 1e-7, 1e-16


class Flat:
    """J = ``base`` + ``slope``·x, flat (slope 0) until kinks at |x| = ``kink`` steps, where J turns
    by 1 per unit of x: a hardtanh saturated at θ. θ ± s is stored with a half gap ``gap`` times
    the step (θ on a coarse grid: a float32 θ)."""

    def __init__(self, kink: float, gap: float = 1.0, base: float = 1.0, slope: float = 0.0):
        self.kink, self.gap, self.base, self.slope = kink * STEP, gap, base, slope

    def cost(self, x: float) -> float:
        return self.base + self.slope * x + max(abs(x) - self.kink, 0.0)

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return self.gap * np.asarray(h, np.float64)

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.array([self.cost(float(r.sum())) for r in rows])


def _measured(j: Flat, analytic: float = 0.5) -> Record:
    """One component whose backprop reads ``analytic`` against a numeric 0 at the first step (a
    planted bug in a saturated unit): it disagrees, and its tensor's noise is measured."""
    a, n = np.array([analytic]), np.zeros(1)  # J(θ+h) = J(θ−h)
    noise = np.full(1, SIGMA / (np.sqrt(2) * STEP))
    record = Record(a, n, noise, np.full(1, SIGMA))
    record.reading, record.reason = read(a, n, noise, 1e-7)
    record.step[:] = STEP
    assert record.reading[0] == DISAGREES
    groups, steps = np.zeros(1, np.int64), np.full(1, STEP)
    tensor_noise(j, record, groups, j.base, steps, 0, 1e-7, set())  # type: ignore[arg-type]
    return record


@pytest.mark.parametrize("kink", [5.0, 12.0, 1e5])
def test_a_flat_tensor_measures_no_noise_beyond_its_readings(kink: float) -> None:
    # The kinks lie beyond the re-check's 4h: the stencil never reaches them, J never moves, and
    # nothing is measured; the planted gap stands.
    record = _measured(Flat(kink))
    assert record.sigma[0] == SIGMA
    assert record.reading[0] == DISAGREES


@pytest.mark.parametrize("kink", [3.0, 3.5])
def test_a_direction_that_did_not_move_j_is_read_at_twice_the_stride(kink: float) -> None:
    # The first stride reaches 1 to 2 steps and leaves J flat; twice it reaches 2 to 4 steps and
    # crosses the kink at 3h: what J does within the re-check's reach is measured.
    record = _measured(Flat(kink))
    assert record.sigma[0] > 1e3 * SIGMA


def test_the_stride_is_the_readings_stored_half_gap() -> None:
    # θ on a grid twice as coarse as the step: the readings' points lie 2h away, the re-check's
    # 8h, and a kink at 6h is within their reach.
    assert _measured(Flat(6.0, gap=2.0)).sigma[0] > 1e3 * SIGMA
    assert _measured(Flat(6.0, gap=1.0)).sigma[0] == SIGMA


@pytest.mark.parametrize("planted", [False, True])
def test_a_tensors_noise_is_never_below_js_rounding_floor(planted: bool) -> None:
    # J = 1e10 + 2x: moves of 1e-7 are below J's ulp (1.9e-6), J never moves along the stencil,
    # and the reading J(θ+h) = J(θ−h) is 0 against backprop's 2. J's floor (rounded once,
    # ulp/√12) is the least noise the reading carries: within it the reading is zero, not a bug.
    j = Flat(1e9, base=1e10, slope=2.0)
    record = _measured(j, analytic=2.0 if not planted else 2.0 + 1e5)
    assert record.sigma[0] == rounding_floor(1e10)
    assert record.reading[0] == (DISAGREES if planted else NOT_JUDGED)
