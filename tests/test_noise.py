"""J's noise, measured: the fourth difference along random directions, the rounding floor, and what
counts as a deterministic J. Each case has a known answer: J with noise of a chosen size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradwatch.evidence.noise import (
    PROBE_DIRECTIONS,
    JNoise,
    fourth_differences,
    measure_noise,
    probe_rows,
    rounding_floor,
)


def test_fourth_difference_cancels_cubics_and_sees_quartics() -> None:
    k = np.arange(5.0)
    rows = np.stack([1 + 2 * k - k**2 + 0.5 * k**3, k**4])
    np.testing.assert_allclose(fourth_differences(rows), [0.0, 24.0], atol=1e-12)


def test_probe_rows_step_each_component_by_whole_multiples_of_its_step() -> None:
    rows = probe_rows(np.array([1e-7, 2e-6]), np.array([[1.0, -1.0]]), np.array([16.0]))
    expected = np.array([[k * 16e-7, -k * 32e-6] for k in (1, 2, 3, 4)])
    np.testing.assert_allclose(rows, expected)


def _noisy_line(sigma: float, seed: int, level: float = 0.0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        theta = rows.sum(axis=1)
        return level + np.sin(theta) + sigma * rng.standard_normal(len(rows))

    return line


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sigma", [1e-16, 1e-12, 1e-6])
def test_measured_noise_is_within_a_factor_of_two_of_the_true_noise(
    seed: int, sigma: float
) -> None:
    # The center carries the same noise; the 75th percentile over 32 directions is robust.
    center = float(np.sin(0.0) + sigma * np.random.default_rng(seed + 100).standard_normal())
    noise = measure_noise(
        _noisy_line(sigma, seed), center, (), np.arange(40), np.full(40, 1e-4), seed, 0.0
    )
    assert sigma / 2 < noise.sigma < 2 * sigma
    assert noise.directions == PROBE_DIRECTIONS and noise.flat == 0


def test_a_kink_exactly_at_theta_is_not_read_as_noise() -> None:
    # J = Σ|θ_j| at θ = 0: every direction starts on the kink, and each stencil lies on one side.
    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.abs(rows).sum(axis=1)

    noise = measure_noise(line, 0.0, (), np.arange(8), np.full(8, 1e-7), 0, 0.0)
    assert noise.sigma < 1e-20  # only the rounding of sums of multiples of 1e-7


def test_a_j_rounded_to_a_coarse_grid_is_probed_at_longer_strides_until_it_moves() -> None:
    # J rounded to multiples of q = 1e-6 (like a float32 J inside a float64 check): at the
    # check's step (1e-9) J never moves, so its real resolution is found at longer strides.
    q = 1e-6

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.round((0.123456789 + rows.sum(axis=1)) / q) * q

    center = float(np.round(0.123456789 / q) * q)
    noise = measure_noise(line, center, (), np.arange(32), np.full(32, 1e-9), 0, 0.0)
    assert q / 20 < noise.sigma < q  # rounding to a grid of q: errors of about q/√12
    assert noise.flat < PROBE_DIRECTIONS


def test_the_spread_at_theta_is_non_determinism() -> None:
    noise = measure_noise(_noisy_line(1e-16, 0), 0.0, (3e-4,), np.arange(8), np.full(8, 1e-7), 0)
    assert noise.spread == 3e-4 and not noise.deterministic
    assert noise.effective == 3e-4


@pytest.mark.parametrize(("spread", "deterministic"), [(0.0, True), (4e-16, True), (1e-12, False)])
def test_deterministic_means_repeats_agree_to_a_few_ulps(
    spread: float, deterministic: bool
) -> None:
    noise = JNoise(sigma=1e-13, spread=spread, floor=rounding_floor(1.0), directions=16, flat=0)
    assert noise.deterministic is deterministic
    assert noise.effective == max(1e-13, spread)


def test_rounding_floor_is_an_ulp_over_root_twelve() -> None:
    assert rounding_floor(1.0) == 2**-52 / math.sqrt(12)
    assert rounding_floor(3.0) == 2 * 2**-52 / math.sqrt(12)  # ulp(3) = 2 ulp(1)
    assert rounding_floor(1.0, 2**-23) == 2**-23 / math.sqrt(12)
    assert rounding_floor(0.0) == 0.0 and rounding_floor(math.nan) == 0.0


def test_no_support_measures_nothing_but_keeps_the_floor() -> None:
    noise = measure_noise(_noisy_line(0.0, 0), 1.0, (1.0,), np.zeros(0, np.int64), np.zeros(0), 0)
    assert (noise.sigma, noise.directions) == (0.0, 0)
    assert noise.effective == rounding_floor(1.0)
