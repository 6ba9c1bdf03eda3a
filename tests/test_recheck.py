"""The re-check's formulas on known answers, at their boundaries: the smoothness test and the noise
of Richardson's estimate, the explanation of a first reading, the fitted and longest steps; and
the tensor test's bound."""

from __future__ import annotations

import numpy as np
import pytest

from gradwatch.evidence.noise import NOISE_MULTIPLE
from gradwatch.evidence.recheck import (
    explained,
    extrapolate,
    fitted_steps,
    longest_steps,
    multiples,
    reread,
)
from gradwatch.evidence.tensor_test import chi2_bound, convicts, tensor_test

SIGMA, H = 1e-12, 1e-4


def _pair(slope: float, curvature: float, s: float) -> tuple[np.ndarray, ...]:
    """J(θ ± s) for J = slope·x + ½·curvature·x² around J(θ) = 0."""
    half = 0.5 * curvature * s * s
    return np.array([slope * s + half]), np.array([-slope * s + half]), np.array([s])


def test_richardson_noise_is_known() -> None:
    _, _, noise = extrapolate(0.0, _pair(1.0, 0.0, 2 * H), _pair(1.0, 0.0, H), SIGMA)
    s1, s2 = SIGMA / (np.sqrt(2) * 2 * H), SIGMA / (np.sqrt(2) * H)
    assert noise[0] == pytest.approx(np.sqrt(s2**2 + s1**2 / 16) / 0.75, rel=1e-12)


@pytest.mark.parametrize(("share", "smooth"), [(0.999, True), (1.001, False)])
def test_smoothness_is_the_curvature_within_its_noise(share: float, smooth: bool) -> None:
    spread = SIGMA * np.sqrt(2 / (2 * H) ** 4 + 2 / H**4 + (2 / H**2 - 2 / (2 * H) ** 2) ** 2)
    jump = share * NOISE_MULTIPLE * spread
    found, estimate, _ = extrapolate(0.0, _pair(1.0, 0.0, 2 * H), _pair(1.0, jump, H), SIGMA)
    assert bool(found[0]) is smooth
    assert np.isfinite(estimate[0])


def test_steps_that_do_not_shrink_or_were_lost_are_never_smooth() -> None:
    same, _, _ = extrapolate(0.0, _pair(1.0, 0.0, H), _pair(1.0, 0.0, H), SIGMA)
    lost, _, _ = extrapolate(0.0, _pair(1.0, 0.0, H), _pair(1.0, 0.0, 0.0), SIGMA)
    assert not same[0] and not lost[0]


def test_richardson_removes_the_h_squared_term() -> None:
    # n(s) = 3 + 5·s²: Richardson from 2h and h gives 3.
    def pair(s: float) -> tuple[np.ndarray, ...]:
        n = 3.0 + 5.0 * s * s
        return np.array([n * s]), np.array([-n * s]), np.array([s])

    _, estimate, _ = extrapolate(0.0, pair(0.2), pair(0.1), SIGMA)
    assert estimate[0] == pytest.approx(3.0, rel=1e-12)


def _slope_pair(n: float, s: float) -> tuple[np.ndarray, ...]:
    return np.array([n * s]), np.array([-n * s]), np.array([s])


@pytest.mark.parametrize(
    ("share", "explains"), [(0.9995, True), (1.0005, False), (-1.0005, False), (-0.9995, True)]
)
def test_the_first_reading_is_explained_within_the_residuals_noise(
    share: float, explains: bool
) -> None:
    g, k = 2.0, 1e3  # n(s) = g + k·s²
    w = 0.25  # (4h² − h²) / (16h² − 4h²)
    noise = (SIGMA / np.sqrt(2)) * np.sqrt(
        1 / H**2 + (1 + w) ** 2 / (2 * H) ** 2 + w**2 / (4 * H) ** 2
    )
    first = _slope_pair(g + k * H**2 + share * NOISE_MULTIPLE * noise, H)
    wide, wider = _slope_pair(g + 4 * k * H**2, 2 * H), _slope_pair(g + 16 * k * H**2, 4 * H)
    assert bool(explained(first, wide, wider, SIGMA)[0]) is explains


def test_fitted_steps_follow_js_relative_noise_between_float64_and_float32() -> None:
    values, steps = np.array([0.5, -4.0]), np.full(2, 1e-7)
    np.testing.assert_allclose(fitted_steps(values, steps, 1e-10, 1e5), [1e-5, 4e-5], rtol=1e-12)
    eps64, eps32 = np.finfo(np.float64).eps, np.finfo(np.float32).eps
    low = fitted_steps(values, steps, 1e-30, 1.0)  # below float64's rounding: float64's step
    np.testing.assert_allclose(low, np.cbrt(eps64) * np.array([1.0, 4.0]), rtol=1e-12)
    flat = fitted_steps(values, steps, 1e-16, 0.0)  # J = 0: no scale, float32's step
    np.testing.assert_allclose(flat, np.cbrt(eps32) * np.array([1.0, 4.0]), rtol=1e-6)
    np.testing.assert_allclose(flat, longest_steps(values), rtol=1e-12)
    unknown = fitted_steps(values, steps, 0.0, 0.0)  # 0/0: nothing known, float32's step too
    np.testing.assert_allclose(unknown, longest_steps(values), rtol=1e-12)
    assert fitted_steps(values, np.full(2, 1.0), 1e-10, 1e5).tolist() == [1.0, 1.0]  # never shorter


def test_the_chi2_bound_is_known() -> None:
    # Wilson–Hilferty at z = 5.1993 (1 − 1e-7), times 2²: k = 1 and k = 1000.
    for k in (1, 1000):
        c = 2 / (9 * k)
        assert chi2_bound(k) == pytest.approx(4 * k * (1 - c + 5.199337582605575 * c**0.5) ** 3)
    assert chi2_bound(1000) / 4 == pytest.approx(1250.2, rel=1e-4)


@pytest.mark.parametrize(("share", "over"), [(0.99, False), (1.01, True)])
def test_the_tensor_test_is_s_over_its_bound(share: float, over: bool) -> None:
    k = 100
    z = np.sqrt(share * chi2_bound(k) / k)  # every component the same z: S = share · bound
    a = np.full(k, 1.0)
    ratio = tensor_test(a, a + z * 1e-9, np.full(k, 1e-9), np.ones(k, bool))
    assert ratio == pytest.approx(share, rel=1e-6)
    assert convicts(a, a + z * 1e-9, np.full(k, 1e-9), np.ones(k, bool), 0.0) is over


def test_the_tensor_test_reads_only_measured_finite_components() -> None:
    a = np.ones(4)
    n = np.array([1.0, 1.0, 1e9, 1.0])
    noise = np.array([1e-9, 0.0, 1e-9, np.inf])
    measured = np.array([True, True, False, True])
    assert tensor_test(a, n, noise, measured) == 0.0  # only component 0 counts
    assert np.isnan(tensor_test(a, n, noise, np.zeros(4, bool)))
    assert not convicts(a, n, noise, np.zeros(4, bool), 0.0)
    # a convicting S with D within the pass band does not convict
    assert not convicts(a, a + 1e-8, np.full(4, 1e-12), np.ones(4, bool), 1e-7)


def test_the_re_check_steps_are_longer_unless_4h_passes_float32s_step() -> None:
    values = np.array([0.5, -3.0])
    longest = longest_steps(values)
    assert multiples(values, longest / 4) == (2.0, 4.0)  # 4h exactly float32's step: still fits
    assert multiples(values, np.array([1e-7, longest[1] / 2])) == (0.5, 0.25)


class _Cubic:
    """J = Σ θ³, recording the steps the re-check evaluates."""

    def __init__(self, theta: np.ndarray) -> None:
        self.theta, self.steps_asked = theta, []  # type: list[np.ndarray]

    def cost(self, t: np.ndarray) -> float:
        return float(np.sum(t**3))

    def values(self, at: np.ndarray) -> np.ndarray:
        return self.theta[np.asarray(at)]

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.steps_asked.append(np.asarray(h))
        e = np.eye(self.theta.size)
        plus = [self.cost(self.theta + hk * e[i]) for i, hk in zip(at, h, strict=True)]
        minus = [self.cost(self.theta - hk * e[i]) for i, hk in zip(at, h, strict=True)]
        return np.array(plus), np.array(minus)


@pytest.mark.parametrize("explain", [True, False])
def test_reread_reads_richardson_and_explains_the_first_reading_when_asked(explain: bool) -> None:
    theta, h = np.array([1.0, 2.0]), np.full(2, 1e-3)
    sigma, at = np.full(2, 1e-14), np.arange(2)  # J ≈ 9 rounds at ~1e-15
    options = {} if explain else {"explain": False}  # explaining is the default
    smooth, estimate, noise = reread(_Cubic(theta), 10.0 - 1.0, at, h, sigma, None, **options)
    np.testing.assert_allclose(estimate, 3 * theta**2, rtol=1e-9)  # the h² term removed
    assert smooth.all() and (noise > 0).all()
    j = _Cubic(theta)
    reread(j, 9.0, at, h, sigma, None, **options)  # the first pair: evaluated only to explain it
    asked = np.concatenate(j.steps_asked)
    expected = [1e-3, 1e-3, 2e-3, 2e-3, 4e-3, 4e-3] if explain else [2e-3, 2e-3, 4e-3, 4e-3]
    np.testing.assert_allclose(asked, expected)
    # a first reading 0.5 off that the fit cannot explain: rejected only when explaining
    plus, minus = _Cubic(theta).pairs(at, h)
    first = (plus + np.array([1e-3, 0.0]), minus, h)
    smooth, _, _ = reread(_Cubic(theta), 9.0, at, h, sigma, first, **options)
    assert bool(smooth[1]) and bool(smooth[0]) is (not explain)
