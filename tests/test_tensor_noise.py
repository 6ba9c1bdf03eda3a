"""J's noise along a tensor (``gradwatch.evidence.escalation.tensor_noise``): measured at the
stride of the readings it judges, reaching as far as their re-check's 4h and no further, never
below J's rounding floor.

The reach is what the first attempt (reverted) got wrong: a direction along which J did not move
grew 16× per try until J moved, and over a saturated hardtanh (J flat until a kink ~1e-2 away)
that measured the kink as noise and hid a planted one-component bug
(``tests/test_properties.py::test_corrupted_component_is_named_worst``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradwatch.evidence.escalation import tensor_noise
from gradwatch.evidence.noise import HALF_NORMAL_Q75, PROBE_DIRECTIONS, rounding_floor
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


class _Probed:
    """J along a tensor's probes (``gradwatch.evidence.escalation._noise_along``), scripted per
    direction: ``fourths[d]`` is the fourth difference direction d reads (J = 0 at θ and at its
    first three points, ``fourths[d]`` at the fourth; J = (1, 2, 3, 4)·2⁻³⁰, a line, where it is
    None), and a direction in ``still`` leaves J at θ's value on the first ``tries`` tries. Every
    call is kept: the components probed and the rows."""

    def __init__(
        self, fourths: list[float | None], still: frozenset[int] = frozenset(), tries: int = 1
    ) -> None:
        self.fourths, self.still, self.tries = fourths, still, tries
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        first = not self.calls
        self.calls.append((support.copy(), rows.copy()))
        blocks = range(len(rows) // 4) if first else sorted(self.still)
        out: list[float] = []
        for d in blocks:
            f = self.fourths[d]
            moved = [0.0, 0.0, 0.0, f] if f is not None else [k * 2.0**-30 for k in (1, 2, 3, 4)]
            out += [0.0] * 4 if d in self.still and len(self.calls) <= self.tries else moved
        return np.array(out)


def _along(j: _Probed, support: np.ndarray, gaps: np.ndarray, seed: int = 3) -> float:
    from gradwatch.evidence.escalation import _noise_along

    return _noise_along(j, 0.0, support, gaps, seed)  # type: ignore[arg-type]


def test_a_tensors_probes_move_distinct_components_by_a_quarter_to_half_their_gap() -> None:
    # Eight components, fewer than a probe's width: each is moved once per row, by k·s·(±1)·gap
    # at k = 1..4, s drawn per direction in [1/4, 1/2), both signs; the same seed, the same rows.
    support, gaps = np.arange(10, 18), np.linspace(1e-7, 8e-7, 8)
    j = _Probed([2.0**-30] * PROBE_DIRECTIONS)
    _along(j, support, gaps)
    ((probed, rows),) = j.calls
    assert sorted(probed) == list(support)
    unit = rows.reshape(PROBE_DIRECTIONS, 4, 8) / gaps[probed - 10] / np.arange(1.0, 5)[:, None]
    stride = np.abs(unit[:, 0, 0])
    np.testing.assert_allclose(np.abs(unit), np.broadcast_to(stride[:, None, None], unit.shape))
    assert np.all((stride >= 0.25) & (stride < 0.5))
    signs = np.unique(np.round(unit / stride[:, None, None], 12))
    assert list(signs) == [-1.0, 1.0]
    again = _Probed([2.0**-30] * PROBE_DIRECTIONS)
    _along(again, support, gaps)
    np.testing.assert_array_equal(again.calls[0][1], rows)


def test_a_direction_that_left_j_still_is_probed_once_more_at_twice_its_stride() -> None:
    # The even directions leave J at θ's value; they alone are probed again, twice as far, and
    # then read. Where J never moves, nothing is measured: no noise, after two tries.
    support, gaps = np.arange(5), np.full(5, 1e-7)
    still = frozenset(range(0, PROBE_DIRECTIONS, 2))
    j = _Probed([2.0**-30] * PROBE_DIRECTIONS, still)
    assert _along(j, support, gaps) > 0
    (_, first), (_, second) = j.calls
    blocks = first.reshape(PROBE_DIRECTIONS, 4, 5)
    np.testing.assert_array_equal(second.reshape(-1, 4, 5), 2 * blocks[sorted(still)])
    flat = _Probed([2.0**-30] * PROBE_DIRECTIONS, frozenset(range(PROBE_DIRECTIONS)), tries=2)
    assert _along(flat, support, gaps) == 0.0 and len(flat.calls) == 2


U = 2.0**-30  # a fourth difference that every sum below carries exactly


@pytest.mark.parametrize(
    ("small", "large", "fourth"), [(U, 1e3 * U, U), (U, 12 * U, 12 * U), (None, U, U)]
)
def test_a_tensors_noise_is_the_75th_percentile_of_its_fourths_without_the_jumps(
    small: float | None, large: float, fourth: float
) -> None:
    # 40 of 64 directions read `small`, 24 read `large`. Beyond 12 times the median (the small
    # ones) the large are jumps and left out: σ is the small ones' q75 over q75(|N|)·√70; at 12
    # times, not beyond, they count, and the q75 over all 64 is one of the 24. Where the median
    # is 0 (40 lines, None: J linear along them), nothing is a jump.
    j = _Probed([small] * 40 + [large] * 24)
    sigma = _along(j, np.arange(40), np.full(40, 1e-7))
    assert sigma == pytest.approx(fourth / (HALF_NORMAL_Q75 * math.sqrt(70.0)), rel=1e-12, abs=0)


class _Rough:
    """J = 1 + noise of size 1e-14 along any probe: a tensor's own noise, 100 times the 1e-16 that
    its readings were first read against."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(5)

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return 1.0 + 1e-14 * self.rng.standard_normal(len(rows))


@pytest.mark.parametrize("size", [1, 50])
@pytest.mark.parametrize("planted", [False, True])
def test_a_tensor_with_a_disagreement_is_read_against_its_own_noise(
    size: int, planted: bool
) -> None:
    # One component of `size` (a = 1e-3) disagrees at 9σ of the first noise, too few to fail the
    # tensor test (S = 81 against 135 for one, 484 for fifty); a component beside it lost its
    # step. The tensor's noise, measured along it, is ~100× the first: the gap is read within it,
    # the lost step is not read. A planted gap of 1e-5 (~140σ of the tensor's noise) stands.
    from gradwatch.evidence.escalation import tensor_noise
    from gradwatch.evidence.readings import AGREES, DISAGREES, NOT_JUDGED, STEP_LOST, Record, read

    h, first = 1e-7, 1e-16
    a = np.full(size + 1, 1e-3)
    noise = np.r_[np.full(size, first / (np.sqrt(2) * h)), np.inf]
    n = a.copy()
    n[0] += 1e-5 if planted else 9 * noise[0]
    n[-1] = 0.0
    record = Record(a, n, noise, np.full(size + 1, first))
    record.reading, record.reason = read(a, n, noise, 1e-7)
    record.reading[-1], record.reason[-1] = NOT_JUDGED, STEP_LOST
    record.step[:] = h
    assert record.reading[0] == DISAGREES
    measured: set[tuple[int, bool]] = set()
    groups, steps = np.zeros(size + 1, np.int64), np.full(size + 1, h)
    tensor_noise(_Rough(), record, groups, 1.0, steps, 0, 1e-7, measured)  # type: ignore[arg-type]
    assert measured == {(0, False)}
    sigma = record.sigma[0]
    assert 30 * first < sigma < 300 * first
    np.testing.assert_array_equal(record.sigma, np.r_[np.full(size, sigma), first])
    np.testing.assert_allclose(record.noise[:size], sigma / (np.sqrt(2) * h), rtol=1e-15)
    assert record.reading[0] == (DISAGREES if planted else AGREES)
    assert record.reason[-1] == STEP_LOST and record.noise[-1] == np.inf


class _Stairs:
    """J = 1 + 1e-14·round(x / 10h) along a probe moving the components by x in all: flat within
    ±5h of θ, stairs beyond (J read through a coarse intermediate)."""

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return 1.0 + 1e-14 * np.round(rows.sum(axis=1) / 1e-6)


@pytest.mark.parametrize("before", [frozenset(), frozenset({(0, False)})])
def test_a_tensors_noise_is_measured_once_per_kind_of_step_over_that_kind_only(
    before: frozenset[tuple[int, bool]],
) -> None:
    # Tensor 0 disagrees at its first step h (component 0) and was read at a fitted step 16h
    # (component 1); tensor 1 (component 2, at 16h) asks for nothing; tensor 2 (component 3)
    # disagrees at 16h only. Probes at h's stride reach 4h and leave J flat: nothing measured,
    # component 0's noise stays. At 16h's they cross the stairs: components 1 and 3 are read
    # against that noise, each tensor's alone. A kind measured before is not measured again.
    from gradwatch.evidence.escalation import tensor_noise
    from gradwatch.evidence.readings import AGREES, DISAGREES, Record, read

    h, sigma = 1e-7, 1e-16
    step = np.array([h, 16 * h, 16 * h, 16 * h])
    a, noise = np.full(4, 1e-3), sigma / (np.sqrt(2) * step)
    n = a + 9 * noise * np.array([1.0, 0.0, 0.0, 1.0])
    record = Record(a, n, noise, np.full(4, sigma))
    record.reading, record.reason = read(a, n, noise, 1e-7)
    record.step[:] = step
    assert list(record.reading) == [DISAGREES, AGREES, AGREES, DISAGREES]
    measured = set(before)
    groups, steps = np.array([0, 0, 1, 2]), np.full(4, h)
    tensor_noise(_Stairs(), record, groups, 1.0, steps, 0, 1e-7, measured)  # type: ignore[arg-type]
    assert measured == {(0, False), (0, True), (2, True)}
    assert record.sigma[0] == record.sigma[2] == sigma < record.sigma[1] == record.sigma[3]
    assert list(record.reading) == [DISAGREES, AGREES, AGREES, AGREES]
