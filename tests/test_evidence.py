"""The evidence model's rules, each on numbers with a known answer: the reading table, the
re-check at longer steps (smooth or kink, the first gap explained, Richardson's estimate), the
re-check off a kink, the step fitted to J's noise, and the noise of a tensor measured where it
disagrees."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradwatch
from gradwatch import Verdict
from gradwatch.evidence.model import gather_evidence
from gradwatch.evidence.noise import NOISE_MULTIPLE
from gradwatch.evidence.objective import Moved
from gradwatch.evidence.readings import (
    AGREES,
    DISAGREES,
    NOT_JUDGED,
    OFF_KINK,
    ON_KINK,
    REASONS,
    STEP_LOST,
    WITHIN_NOISE,
    read,
)
from gradwatch.evidence.recheck import explained, extrapolate

NOISE = 1e-9  # the noise of each numeric value below
TOLERANCE = NOISE_MULTIPLE * NOISE


@pytest.mark.parametrize(
    ("analytic", "numeric", "reading", "reason"),
    [
        (1.0, 1.0 + TOLERANCE / 2, AGREES, 0),  # within noise, a gradient to compare
        (1.0, 1.0 + 2 * TOLERANCE, DISAGREES, 0),  # beyond noise (pass band 0 here)
        (2.0, 1.0, DISAGREES, 0),  # far beyond noise
        (0.0, 5 * TOLERANCE, DISAGREES, 0),  # zero gradient where J moves: a missing term
        (TOLERANCE / 2, -TOLERANCE / 3, NOT_JUDGED, WITHIN_NOISE),  # both within noise
        (0.0, 0.0, NOT_JUDGED, WITHIN_NOISE),
        (np.nan, 1.0, DISAGREES, 0),  # non-finite: the check fails
    ],
)
def test_the_reading_table(analytic: float, numeric: float, reading: int, reason: int) -> None:
    found, why = read(np.array([analytic]), np.array([numeric]), np.array([NOISE]), 0.0)
    assert (found[0], why[0]) == (reading, reason)


def test_a_relative_error_within_the_pass_band_never_disagrees() -> None:
    # 1e-8 relative: far beyond the noise of 1e-12, but inside the user's pass band of 1e-7.
    reading, _ = read(np.array([1.0]), np.array([1.0 + 2e-8]), np.array([1e-12]), 1e-7)
    assert reading[0] == AGREES
    reading, _ = read(np.array([1.0]), np.array([1.0 + 2e-8]), np.array([1e-12]), 1e-9)
    assert reading[0] == DISAGREES


def _pairs(f, theta: float, h: np.ndarray):  # type: ignore[no-untyped-def]
    return np.array([f(theta + x) for x in h]), np.array([f(theta - x) for x in h]), h


def test_two_steps_tell_curvature_from_a_kink_and_remove_truncation() -> None:
    h = np.array([1e-3])
    cubic = lambda x: x**3  # noqa: E731
    smooth, estimate, noise = extrapolate(
        cubic(1.0), _pairs(cubic, 1.0, 4 * h), _pairs(cubic, 1.0, 2 * h), 1e-16
    )
    assert smooth[0]
    assert estimate[0] == pytest.approx(3.0, abs=1e-9)  # n(2h) = 3 + 4h² is off by 4e-6
    # Richardson from 2h and 4h: √(16·(σ₁/2)² + (σ₁/4)²)/3 = 0.672·σ₁, below the first step's σ₁.
    first = 1e-16 / (np.sqrt(2) * h[0])
    assert noise[0] == pytest.approx(first * np.sqrt(4 + 1 / 16) / 3)
    assert noise[0] < first
    kink = abs
    smooth, _, _ = extrapolate(0.0, _pairs(kink, 0.0, 4 * h), _pairs(kink, 0.0, 2 * h), 1e-16)
    assert not smooth[0]  # J'' = 2/h halves when h doubles


def test_a_first_gap_truncation_does_not_explain_is_not_cleared() -> None:
    h = np.array([1e-3])
    cubic = lambda x: x**3  # noqa: E731
    wide, wider = _pairs(cubic, 1.0, 2 * h), _pairs(cubic, 1.0, 4 * h)
    assert explained(_pairs(cubic, 1.0, h), wide, wider, 1e-16)[0]
    shifted = lambda x: x**3 + 1e-9 * np.sign(x - 1)  # noqa: E731  a jump of J at θ
    assert not explained(_pairs(shifted, 1.0, h), wide, wider, 1e-16)[0]


class _Relu:
    """J(θ) = relu(θ₀) + 2θ₁ + ¼·θ₂²: a kink in θ₀ at θ₀ = 0."""

    def __init__(self, theta: np.ndarray, slope: float = 1.0, jitter: bool = True) -> None:
        self.theta, self.slope, self.jitter = theta, slope, jitter

    def cost(self, t: np.ndarray) -> float:
        return max(t[0], 0.0) + 2 * t[1] + 0.25 * t[2] ** 2

    def grad(self, t: np.ndarray) -> np.ndarray:
        return np.array([self.slope * float(t[0] > 0), 2.0, 0.5 * t[2]])

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.eye(3)
        plus = [self.cost(self.theta + hk * e[i]) for i, hk in zip(at, h, strict=True)]
        minus = [self.cost(self.theta - hk * e[i]) for i, hk in zip(at, h, strict=True)]
        return np.array(plus), np.array(minus)

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        values = self.theta[np.asarray(at)]
        return ((values + h) - (values - h)) / 2

    def values(self, at: np.ndarray) -> np.ndarray:
        return self.theta[np.asarray(at)]

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        moved = np.repeat(self.theta[None], len(rows), 0)
        moved[:, support] += rows
        return np.array([self.cost(t) for t in moved])

    def jittered(self, attempt: int) -> Moved | None:
        if not self.jitter:
            return None
        moved = _Relu(self.theta + np.array([1e-4, 0.0, 0.0]), self.slope)
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


def _gather(j: _Relu, analytic: np.ndarray, h: float = 1e-7) -> gradwatch.evidence.model.Evidence:
    steps = np.full(3, h)
    return gather_evidence(
        j, analytic, j.pairs(np.arange(3), steps), j.cost(j.theta), steps, 1e-16, 1e-7
    )


def test_a_kink_at_theta_is_read_again_off_the_kink() -> None:
    j = _Relu(np.array([0.0, 1.0, 0.5]))
    found = _gather(j, np.array([0.0, 2.0, 0.25]))  # relu'(0) = 0: backprop's convention
    assert list(found.reading) == [AGREES, AGREES, AGREES]
    assert found.kink[0] and found.recheck[0] == OFF_KINK
    assert found.analytic[0] == 1.0 and found.numeric[0] == pytest.approx(1.0, abs=1e-8)
    assert found.first_numeric[0] == pytest.approx(0.5)  # the two-sided mean of 0 and 1


def test_a_wrong_gradient_behind_a_kink_disagrees_off_the_kink() -> None:
    j = _Relu(np.array([0.0, 1.0, 0.5]), slope=2.0)  # backprop doubles relu's slope
    found = _gather(j, np.array([0.0, 2.0, 0.25]))
    assert found.reading[0] == DISAGREES and found.recheck[0] == OFF_KINK
    assert found.analytic[0] == 2.0


def test_a_kink_with_no_backprop_to_run_again_is_not_judged() -> None:
    j = _Relu(np.array([0.0, 1.0, 0.5]), jitter=False)
    found = _gather(j, np.array([0.0, 2.0, 0.25]))
    assert (found.reading[0], found.reason[0]) == (NOT_JUDGED, ON_KINK)
    assert list(found.reading[1:]) == [AGREES, AGREES]


class _WeakKink(_Relu):
    """J = 0.01·relu(θ₀) + W·relu(θ₀ − K) + 2(θ₁ − 1) + ¼(θ₂² − ¼), with backprop's slope of the
    first ReLU ×``slope``. The first jittered θ (θ₀ = 1e-4) puts the weak kink K at 4h/3
    (h = 1e-7): J'' is then the same at 2h and 4h and the fit explains n(h) (residual W/8 under 8
    times its noise), yet Richardson's estimate is W/9 off, beyond its tolerance (a unit behind a
    BN scale the jitter moved off zero, in a ResNet with ``zero_init_residual``). The next
    jittered θ is past it."""

    W, K = 4.5e-8, 1e-4 + 4e-7 / 3

    def cost(self, t: np.ndarray) -> float:
        # The parts in θ₁ and θ₂ are 0 at θ: J's rounding stays below the σ_J of 1e-16 read with.
        kinks = 0.01 * max(t[0], 0.0) + self.W * max(t[0] - self.K, 0.0)
        return kinks + 2 * (t[1] - 1) + 0.25 * (t[2] ** 2 - 0.25)

    def grad(self, t: np.ndarray) -> np.ndarray:
        first = 0.01 * self.slope * float(t[0] > 0) + self.W * float(t[0] > self.K)
        return np.array([first, 2.0, 0.5 * t[2]])

    def jittered(self, attempt: int) -> Moved | None:
        moved = _WeakKink(self.theta + np.array([1e-4 if attempt == 0 else 2e-4, 0.0, 0.0]))
        moved.slope = self.slope
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


@pytest.mark.parametrize("slope", [1.0, 1.02])
def test_a_gap_off_the_kink_stands_only_where_a_second_jittered_theta_shows_it(
    slope: float,
) -> None:
    j = _WeakKink(np.array([0.0, 1.0, 0.5]), slope)
    found = _gather(j, j.grad(j.theta))
    assert found.kink[0] and found.recheck[0] == OFF_KINK
    if slope == 1.0:  # agrees at the second θ: the gap came from where the first one stood
        assert (found.reading[0], found.reason[0]) == (NOT_JUDGED, ON_KINK)
    else:  # a wrong backward: 2% off at both
        assert found.reading[0] == DISAGREES
    assert list(found.reading[1:]) == [AGREES, AGREES]


def test_a_lost_step_is_not_judged() -> None:
    # J = θ₀ + 1e-10·θ₁ at θ₁ = 1e10: 1e10 ± 1e-7 == 1e10 in float64.
    report = gradwatch.check_function(
        lambda t: float(t[0] + 1e-10 * t[1]), np.array([0.5, 1e10]), np.array([1.0, 1e-10])
    )
    assert report.component(1).reading == "not judged"
    assert report.component(1).reason == REASONS[STEP_LOST] == "step lost"
    assert report.component(0).reading == "agrees"


def test_a_lost_step_measures_nothing() -> None:
    # θ₁ = 1e10: θ₁ ± 1e-7 == θ₁, so J(θ+h) = J(θ−h) measures no slope: its numeric value is 0,
    # with infinite noise, not a number that could be read as a gradient.
    found = _gather(_Relu(np.array([0.5, 1e10, 0.5])), np.array([1.0, 2.0, 0.25]))
    assert (found.reading[1], found.reason[1]) == (NOT_JUDGED, STEP_LOST)
    assert found.numeric[1] == 0.0 and found.first_numeric[1] == 0.0
    assert found.noise[1] == np.inf
    assert list(found.reading[[0, 2]]) == [AGREES, AGREES]


class _Pole(_Relu):
    """J is infinite off θ₁ (a log barrier at its edge): J(θ ± h·e₁) = inf, J(θ) finite."""

    def cost(self, t: np.ndarray) -> float:
        return np.inf if t[1] != self.theta[1] else super().cost(t)


@pytest.mark.parametrize("pole", [False, True])
def test_a_lost_step_or_an_infinite_j_beside_theta_warns_of_nothing(pole: bool) -> None:
    # A lost step divides J's noise by a gap of 0; inf − inf is NaN. Both are read (not judged,
    # step lost; a numeric of NaN disagrees as first read), and NumPy's warnings are not the
    # user's business.
    j = (
        _Pole(np.array([0.5, 1.0, 0.5]), jitter=False)
        if pole
        else _Relu(np.array([0.5, 1e10, 0.5]))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = _gather(j, np.array([1.0, 2.0, 0.25]))
    expected = (DISAGREES, 0) if pole else (NOT_JUDGED, STEP_LOST)
    assert (found.reading[1], found.reason[1]) == expected
    assert np.isnan(found.numeric[1]) == pole and (found.noise[1] == np.inf) != pole
    assert list(found.reading[[0, 2]]) == [AGREES, AGREES]


def test_a_material_example_at_a_large_step_is_truncation_not_a_bug() -> None:
    # J = θ³ at θ = 1, ε = 0.01: the two-sided estimate 3.0001 is off by ε²·J‴/6 = 1e-4.
    report = gradwatch.check_function(
        lambda t: float(t[0] ** 3), np.array([1.0]), [3.0], epsilon=0.01
    )
    assert report.verdict is Verdict.PASS
    assert report.component(0).recheck == "longer steps"
    wrong = gradwatch.check_function(
        lambda t: float(t[0] ** 3), np.array([1.0]), [3.001], epsilon=0.01
    )
    assert wrong.verdict is Verdict.WARN  # 3.001 vs 3: 1.7e-4, beyond noise, within warn_max


def test_gradient_check_re_checks_kinks_when_grad_is_a_function() -> None:
    j = _Relu(np.array([0.0, 1.0, 0.5]))
    as_array = gradwatch.check_function(j.cost, j.theta, j.grad(j.theta))
    assert (
        as_array.component(0).reading == "not judged"
        and as_array.component(0).reason == "on a kink"
    )
    assert as_array.verdict is Verdict.PASS and as_array.parameters["theta"].not_judged == 1
    as_function = gradwatch.check_function(j.cost, j.theta, j.grad)
    assert as_function.component(0).recheck == "off kink"
    assert as_function.reading_counts == {"agrees": 3, "disagrees": 0, "not judged": 0}
    wrong = gradwatch.check_function(j.cost, j.theta, _Relu(j.theta, slope=3.0).grad)
    assert wrong.verdict is Verdict.FAIL and wrong.worst(1)[0].label == "theta[0]"


class _Jump(_Relu):
    """J(θ) = θ₀ + ``JUMP``·[θ₀ < −1e-3] + 2θ₁ + ¼·θ₂²: a jump (a routing decision of top-k
    experts that flips) 1e-3 below θ₀ = 0, within every step of a float32 re-check (h = 5e-3,
    h/2, h/4); backprop's slope in θ₀ is ``slope``."""

    JUMP = 17 * 1e-7  # 17σ_J: 12σ in the slope at h, under 8σ in J'' at any step

    def cost(self, t: np.ndarray) -> float:
        return t[0] + self.JUMP * float(t[0] < -1e-3) + 2 * t[1] + 0.25 * t[2] ** 2

    def grad(self, t: np.ndarray) -> np.ndarray:
        return np.array([self.slope, 2.0, 0.5 * t[2]])

    def jittered(self, attempt: int) -> Moved | None:
        moved = _Jump(self.theta + np.array([0.1, 0.0, 0.0]), self.slope)
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


@pytest.mark.parametrize("slope", [1.0, 1.01])
def test_a_jump_within_float32_steps_is_read_at_a_jittered_theta(slope: float) -> None:
    # At float32's step the re-check runs at h/2 and h/4, whose noise cannot tell the jump from a
    # slope (J'' moves by 204σ/h² against a tolerance of 268σ/h²): Richardson there reads 10σ off.
    # Read once at a jittered θ, at h with the first tolerance: the correct slope agrees, a slope
    # 1% off (700σ at h) disagrees.
    j = _Jump(np.array([0.0, 1.0, 0.5]), slope)
    steps = np.full(3, 5e-3)
    found = gather_evidence(
        j, j.grad(j.theta), j.pairs(np.arange(3), steps), j.cost(j.theta), steps, 1e-7, 1e-7
    )
    assert found.recheck[0] == OFF_KINK and found.kink[0]
    assert found.reading[0] == (AGREES if slope == 1.0 else DISAGREES)
    assert list(found.reading[1:]) == [AGREES, AGREES]


class _Flipping(_Relu):
    """The first jitter puts θ₀ on relu's active side, the next ones on its flat side."""

    def jittered(self, attempt: int) -> Moved | None:
        moved = _Relu(
            self.theta + np.array([1e-4 if attempt == 0 else -1e-4, 0.0, 0.0]), self.slope
        )
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


@pytest.mark.parametrize(("slope", "reading"), [(1.0, AGREES), (2.0, DISAGREES)])
def test_the_first_jitter_that_reads_a_kink_smoothly_settles_it(slope: float, reading: int) -> None:
    # Read at the first jitter (active side): a later one on the flat side (no gradient there)
    # must not overwrite that reading with "within noise".
    found = _gather(_Flipping(np.array([0.0, 1.0, 0.5]), slope), np.array([0.0, 2.0, 0.25]))
    assert (found.reading[0], found.recheck[0], found.analytic[0]) == (reading, OFF_KINK, slope)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_non_finite_gradient_disagrees_as_first_read_with_no_re_check(bad: float) -> None:
    # J = θ·θ: backprop's value of component 1 is not a number. No longer step can explain that
    # gap, so it is not re-checked: it disagrees at its first reading (n = −2 at ε = 1e-7), and the
    # finite components beside it agree.
    theta = np.array([0.5, -1.0, 2.0])
    grad = 2 * theta
    grad[1] = bad
    report = gradwatch.check_function(lambda t: float(t @ t), theta, grad)
    assert report.verdict is Verdict.FAIL
    found = report.component(1)
    assert (found.reading, found.reason, found.recheck) == ("disagrees", "", "")
    assert found.numeric == pytest.approx(-2.0, abs=1e-6)
    assert [report.component(i).reading for i in (0, 2)] == ["agrees", "agrees"]


class _Tries(_Relu):
    """J = relu(θ₀) + relu(θ₁) + ¼·θ₂² at θ = (0, 0, 0.5): two kinks at θ. Backprop's slope of
    the second ReLU is ×``slope``. Jitter ``attempt`` moves θ₀ and θ₁ by ``OFFSETS[attempt]``:
    θ₀ lands on its flat side (no gradient: within noise) at the first two tries and the last,
    on its slope at the third; θ₁ on its slope at every try."""

    OFFSETS = ((-1e-4, 1e-4), (-1e-4, 2e-4), (1e-4, 3e-4), (-2e-4, 4e-4))

    def cost(self, t: np.ndarray) -> float:
        return max(t[0], 0.0) + max(t[1], 0.0) + 0.25 * t[2] ** 2

    def grad(self, t: np.ndarray) -> np.ndarray:
        return np.array([float(t[0] > 0), self.slope * float(t[1] > 0), 0.5 * t[2]])

    def jittered(self, attempt: int) -> Moved | None:
        moved = _Tries(self.theta + np.r_[self.OFFSETS[attempt], 0.0], self.slope)
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_a_kink_is_tried_at_each_jitter_until_one_reads_it(slope: float) -> None:
    # θ₀ is read at the third jittered θ (the first two leave it within noise), and only there:
    # the last try, which confirms θ₁'s disagreement (a wrong backward) when there is one, frees
    # no more kinks. θ₁ agrees at the first try, or disagrees there and at the second.
    j = _Tries(np.array([0.0, 0.0, 0.5]), slope)
    found = _gather(j, j.grad(j.theta))
    assert found.kink[:2].all() and list(found.recheck[:2]) == [OFF_KINK, OFF_KINK]
    assert found.reading[0] == AGREES and found.numeric[0] == pytest.approx(1.0, abs=1e-8)
    assert found.reading[1] == (AGREES if slope == 1.0 else DISAGREES)
    assert found.analytic[1] == slope and found.reading[2] == AGREES


class _Local(_Tries):
    """As ``_Tries``, with backprop's slope of the second ReLU doubled only below θ₁ = 1.5e-4 (a
    gap that comes from where θ stands), and only four jittered θ's to read at."""

    def grad(self, t: np.ndarray) -> np.ndarray:
        return np.array(
            [float(t[0] > 0), (1.0 + float(t[1] < 1.5e-4)) * float(t[1] > 0), 0.5 * t[2]]
        )

    def jittered(self, attempt: int) -> Moved | None:
        moved = _Local(self.theta + np.r_[self.OFFSETS[attempt], 0.0])
        moved.OFFSETS = self.OFFSETS
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


@pytest.mark.parametrize(
    ("later", "reading", "reason"),
    [(3e-4, NOT_JUDGED, ON_KINK), (0.0, DISAGREES, 0)],
    ids=["agrees-later", "on-the-kink-at-every-later-try"],
)
def test_a_first_gap_off_a_kink_waits_through_rough_tries(
    later: float, reading: int, reason: int
) -> None:
    # θ₁'s first jittered θ (1e-4) reads the doubled slope. The second sits on the kink again (J
    # rough there): no evidence either way, the gap waits. At the third, 3e-4, the slope agrees:
    # the gap came from where θ stood ("not judged, on a kink"). Where every later θ sits on the
    # kink, the first gap stands as measured after the last of the four tries.
    j = _Local(np.array([0.0, 0.0, 0.5]))
    j.OFFSETS = ((-1e-4, 1e-4), (1e-4, 0.0), (1e-4, later), (1e-4, later))
    found = _gather(j, j.grad(j.theta))
    assert (found.reading[1], found.reason[1], found.recheck[1]) == (reading, reason, OFF_KINK)
    assert found.reading[0] == AGREES and found.reading[2] == AGREES


class _Flip(_Relu):
    """J = 2θ₁ + 40θ₁³ + ¼·θ₂² + θ₀ at θ = (0, 0, 0.5), with backprop's value for θ₁ wrong (2.5)
    at θ only, as where a routing decision flips within the step; right at the jittered θ of each
    ``attempt`` (θ₁ moved by 1e-4·(attempt + 1))."""

    def cost(self, t: np.ndarray) -> float:
        return t[0] + 2 * t[1] + 40 * t[1] ** 3 + 0.25 * t[2] ** 2

    def grad(self, t: np.ndarray) -> np.ndarray:
        return np.array([1.0, 2.0 + 120 * t[1] ** 2, 0.5 * t[2]])

    def jittered(self, attempt: int) -> Moved | None:
        moved = _Flip(self.theta + np.array([0.0, 1e-4 * (attempt + 1), 0.0]))
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


def test_a_gap_at_float32s_step_is_read_at_a_jittered_theta_with_the_first_tolerance() -> None:
    # h = 5e-3: 4h passes float32's step, so the re-check runs at h/2 and h/4, where θ₁'s gap
    # stands. At the jittered θ the step's truncation, 40·h² = 1e-3, is within the first
    # reading's tolerance 8·σ/(√2·h) = 1.13e-3 (σ = 1e-6): it agrees there, off the flip.
    j = _Flip(np.array([0.0, 0.0, 0.5]))
    steps = np.full(3, 5e-3)
    analytic = np.array([1.0, 2.5, 0.25])
    found = gather_evidence(
        j, analytic, j.pairs(np.arange(3), steps), j.cost(j.theta), steps, 1e-6, 1e-7
    )
    assert (found.reading[1], found.recheck[1]) == (AGREES, OFF_KINK) and found.kink[1]
    assert found.noise[1] == pytest.approx(1e-6 / (np.sqrt(2) * 5e-3))
    assert found.numeric[1] - found.analytic[1] == pytest.approx(1e-3, rel=1e-6)
    assert list(found.reading[[0, 2]]) == [AGREES, AGREES]


class _FarFlip(_Flip):
    """_Flip, whose jittered θ₁ is 1e17: there θ₁ ± h == θ₁, the step is lost."""

    def jittered(self, attempt: int) -> Moved | None:
        moved = _Flip(self.theta + np.array([0.0, 1e17, 0.0]))
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


def test_a_step_lost_at_the_jittered_theta_lets_the_gap_stand_and_warns_of_nothing() -> None:
    # The jittered θ's gap of 0 divides J(θ+h) − J(θ−h) = 0 and J's noise: no division warns on
    # the user's console, and the gap at θ, which the lost step cannot clear, still disagrees.
    j = _FarFlip(np.array([0.0, 0.0, 0.5]))
    steps = np.full(3, 5e-3)
    analytic = np.array([1.0, 2.5, 0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = gather_evidence(
            j, analytic, j.pairs(np.arange(3), steps), j.cost(j.theta), steps, 1e-6, 1e-7
        )
    assert list(found.reading) == [AGREES, DISAGREES, AGREES] and found.kink[1]


def test_a_wrong_gradient_at_the_first_step_is_re_read_at_longer_steps_not_off_a_flip() -> None:
    # J = θ·θ with backprop 1% off on θ₁, grad a function (a jittered θ could be read): at
    # ε = 1e-7 the re-check runs at 2h and 4h, where the gap stands; it is not read again at a
    # jittered θ, which only a re-check at float32's step (h/2 and h/4) asks for.
    theta = np.array([0.5, -1.0, 2.0])

    def grad(t: np.ndarray) -> np.ndarray:
        return 2 * t * np.array([1.0, 1.01, 1.0])

    report = gradwatch.check_function(lambda t: float(t @ t), theta, grad)
    found = report.component(1)
    assert (found.reading, found.recheck, found.kink) == ("disagrees", "longer steps", False)
    assert report.verdict is Verdict.FAIL


class _Counted(_Relu):
    """_Relu that records the step of every pair J is evaluated at."""

    def __init__(self, theta: np.ndarray) -> None:
        super().__init__(theta)
        self.steps: list[float] = []

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.steps.extend(float(s) for s in np.asarray(h))
        return super().pairs(at, h)


def test_the_re_check_reuses_the_first_pair_and_evaluates_j_at_2h_and_4h_only() -> None:
    # θ₂'s backprop 1% off: its first gap stands at 2h and 4h. The pair at h is the first
    # reading's, never evaluated again (two evaluations of J per component saved).
    j = _Counted(np.array([0.5, 1.0, 0.5]))
    steps = np.full(3, 1e-7)
    first = j.pairs(np.arange(3), steps)
    j.steps.clear()
    found = gather_evidence(
        j, np.array([1.0, 2.0, 0.25 * 1.01]), first, j.cost(j.theta), steps, 1e-16, 1e-7
    )
    assert list(found.reading) == [AGREES, AGREES, DISAGREES]
    assert 1e-7 not in j.steps and {2e-7, 4e-7} <= set(j.steps)
