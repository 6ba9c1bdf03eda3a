"""J's noise, measured: the fourth difference along random directions, the rounding floor, and what
counts as a deterministic J. Each case has a known answer: J with noise of a chosen size."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from gradwatch.evidence.noise import (
    HALF_NORMAL_MEDIAN,
    HALF_NORMAL_Q75,
    JUMP_FACTOR,
    PAIR_MIN_MEDIAN,
    PROBE_DIRECTIONS,
    JNoise,
    fourth_differences,
    measure_noise,
    noise_sigma,
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
    repeated = measure_noise(
        _noisy_line(0.0, 0), 1.0, (1.5,), np.zeros(0, np.int64), np.zeros(0), 0
    )
    assert repeated == JNoise(0.0, 0.5, rounding_floor(1.0), 0, 0, 1.0, 0)


# --- Jumps in J (issue 19): probes crossing a routing flip on one side of θ leave σ alone -------


def _stepped_line(sigma: float, crossing: int, jump: float):  # type: ignore[no-untyped-def]
    # Noise σ on a smooth J; along the first `crossing` directions of the first batch, J jumps
    # by `jump` between their second and third points (a routing boundary 2.5 strides away).
    # Directions 0-31 are the first halves of the mirrored pairs, 32-63 their mirrors: up to 32
    # crossing, each pair crosses on one side (as one flip does); beyond, both sides of some.
    noisy = _noisy_line(sigma, 0)

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        values = noisy(support, rows)
        direction, point = np.divmod(np.arange(len(rows)), 4)
        return values + jump * ((direction < crossing) & (point >= 2))

    return line


def _stepped(crossing: int) -> JNoise:
    return measure_noise(
        _stepped_line(1e-12, crossing, 1e-8), 0.0, (), np.arange(32), np.full(32, 1e-4), 0, 0.0
    )


def test_each_direction_is_paired_with_its_mirror() -> None:
    seen: list[np.ndarray] = []

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        seen.append(rows.copy())
        return np.sin(rows.sum(axis=1)) + 1e-12 * np.arange(len(rows)) ** 2

    measure_noise(line, 0.0, (), np.arange(8), np.full(8, 1e-4), 0, 0.0)
    rows = seen[0].reshape(PROBE_DIRECTIONS, 4, -1)
    half = PROBE_DIRECTIONS // 2
    np.testing.assert_array_equal(rows[half:], -rows[:half])
    assert len({tuple(np.sign(r[0])) for r in rows}) > half  # the pairs' directions differ


@pytest.mark.parametrize("crossing", [1, 15, 17, 32, 40])
def test_probes_crossing_a_jump_on_one_side_of_theta_leave_the_noise_unchanged(
    crossing: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mixtral as written at seed 2: one routing flip, crossed by one half of each pair (fourth
    # differences ~1e-4 against ~1e-6 on the other halves).
    alone = _stepped(0)
    noise = _stepped(crossing)
    assert alone.jumps == 0 and noise.jumps == crossing
    # The same rounding, read from the 64 - k directions that did not cross: their percentile.
    assert 0.7 * alone.sigma < noise.sigma < 1.5 * alone.sigma
    assert 0.5e-12 < noise.sigma < 2e-12
    monkeypatch.setattr("gradwatch.evidence.noise.JUMP_FACTOR", math.inf)  # no jump rule
    old = _stepped(crossing)
    assert old.jumps == 0
    if crossing <= 15:  # a quarter of the directions: the 75th percentile ignored them already
        assert old.sigma < 2e-12
    else:  # it read the jump's 3·1e-8 as rounding
        assert old.sigma > 300 * alone.sigma


@pytest.mark.parametrize("crossing", [48, 64])
def test_where_half_the_pairs_or_more_cross_jumps_on_both_sides_the_noise_is_what_it_is(
    crossing: int,
) -> None:
    noise = _stepped(crossing)
    # The median of the smaller halves is a jump's reading (3·1e-8: the stencil's −4 + 1).
    assert noise.jumps == 0
    assert noise.sigma > 3e-8 / (1.2 * math.sqrt(70))


def test_a_pair_is_read_by_the_half_that_measured() -> None:
    # A direction that never moved J (NaN) leaves its mirror to stand for the pair: here the
    # rounding halves, whose median finds the jump on the other side of three pairs.
    q75 = 1.1503493803760079 * math.sqrt(70.0)
    fourths = np.full((8, 2), q75)
    fourths[:3, 0], fourths[3:6, 0] = 1e3, np.nan
    sigma, jumps = noise_sigma(fourths)
    assert jumps == 3 and sigma == pytest.approx(1.0, rel=1e-12)
    fourths[:, 1] = np.nan  # the pairs' only halves: three jumps and two rounding, no scale
    assert noise_sigma(fourths)[1] == 0


def test_no_probe_is_a_jump_without_a_scale_to_compare_with() -> None:
    # Most smaller halves read exactly 0 (J coarse): the median gives no scale, nothing is left
    # out.
    sigma, jumps = noise_sigma(np.array([[0.0, 0.0], [0.0, 5.0]]))
    assert jumps == 0 and sigma > 0


def test_a_coarse_j_gives_no_scale_to_call_a_jump_by() -> None:
    # J stood still along a direction at the first stride: its fourth differences are its grid's
    # steps (1e-6 here) or the float64 residue of adding them (~1e-17), and a residue is no scale.
    fourths = np.array([[1e-17, 3e-6], [2e-17, 4e-6], [3e-6, 3e-6], [1e-6, 1e-17]])
    assert noise_sigma(fourths)[1] == 5  # every step of the grid, read against a residue
    sigma, jumps = noise_sigma(fourths, coarse=True)
    assert jumps == 0 and sigma == pytest.approx(3e-6 / (1.1503493803760079 * math.sqrt(70)))


def test_sigma_is_the_bulk_q75_over_the_half_normal_q75_of_a_fourth_difference() -> None:
    # A fourth difference of iid noise σ has σ·√70 (1² + 4² + 6² + 4² + 1²); |·|'s 0.75 quantile is
    # HALF_NORMAL_Q75 times that. No fourth difference: no noise measured, no jump.
    q75 = 1.1503493803760079 * math.sqrt(70.0)
    sigma, jumps = noise_sigma(np.full((5, 2), 3.0 * q75))
    assert sigma == pytest.approx(3.0, rel=1e-12) and jumps == 0
    assert noise_sigma(np.zeros((0, 2))) == (0.0, 0)
    assert noise_sigma(np.full((3, 2), np.nan)) == (0.0, 0)  # no direction measured anything


def test_no_repeat_at_theta_is_no_spread() -> None:
    noise = measure_noise(_noisy_line(1e-12, 0), 0.0, (), np.arange(8), np.full(8, 1e-4), 0, 0.0)
    assert noise.spread == 0.0 and noise.effective == noise.sigma > 0


def test_a_j_that_moves_only_after_four_growths_of_the_stride_is_found_there() -> None:
    # J = float32(1 + x) read along one component with a step of 1e-10: an ulp of float32 at 1
    # (u = 1.2e-7) is ~1200 steps, so J stays at 1 for the strides 1/64, 1/4, 4 and 64 (the
    # stencil's farthest point, 4·64 steps, is 2.6e-8 < u/4) and moves at 1024 (4·1024 steps =
    # 4.1e-7). Every direction is found there, its fourth difference one or two ulps.
    u = float(np.finfo(np.float32).eps)

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return (np.float32(1.0) + rows[:, 0].astype(np.float32)).astype(np.float64)

    noise = measure_noise(line, 1.0, (), np.arange(1), np.full(1, 1e-10), 0, 0.0)
    assert noise.flat == 0 and noise.directions == PROBE_DIRECTIONS
    per_fourth = HALF_NORMAL_Q75 * math.sqrt(70.0)  # σ from a 75th percentile of |fourths|
    assert u / per_fourth <= noise.sigma <= 2 * u / per_fourth


@pytest.mark.parametrize("factor", [30.0, 1e3, None])
def test_a_jump_is_beyond_twelve_times_the_median_of_one_direction(factor: float | None) -> None:
    # 20 of 32 pairs cross a jump on one side; every smaller half reads 1, so one direction's
    # median is 0.6745 / 0.3757 = 1.8 and a jump lies beyond 21.5: at 30 and 1e3 they are left
    # out. At exactly 12 times that median (None) they are not beyond it, and count.
    edge = JUMP_FACTOR * (1.0 * HALF_NORMAL_MEDIAN / PAIR_MIN_MEDIAN)
    fourths = np.ones((32, 2))
    fourths[:20, 0] = edge if factor is None else factor
    sigma, jumps = noise_sigma(fourths)
    q75 = 1.0 if factor is not None else edge  # of the 64, or of the 44 left
    assert (sigma, jumps) == (
        q75 / (HALF_NORMAL_Q75 * math.sqrt(70.0)),
        0 if factor is None else 20,
    )


def test_a_j_that_stood_still_along_one_direction_has_no_scale_for_jumps() -> None:
    # Direction 0 leaves J at J(θ) at the first stride (J's grid is coarse there) and moves at
    # 16 times it. 20 directions read 1e3, the rest 1: no jump rule, σ is the q75 of all 64.
    calls: list[int] = []

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows) // 4)
        if len(calls) > 1:
            return np.array([0.0, 0.0, 0.0, 1.0])
        fourth = np.where((np.arange(64) >= 1) & (np.arange(64) <= 20), 1e3, 1.0)
        out = np.zeros((64, 4))
        out[:, 3] = fourth
        out[0] = 0.0
        return out.ravel()

    noise = measure_noise(line, 0.0, (), np.arange(8), np.full(8, 1e-7), 0, 0.0)
    assert calls == [64, 1] and noise.jumps == 0
    assert noise.sigma == 1e3 / (HALF_NORMAL_Q75 * math.sqrt(70.0))


def test_an_infinite_or_overflowing_j_reads_no_fourth_difference_and_no_warning() -> None:
    # J infinite at two points (inf − 4·inf) reads NaN, which noise_sigma leaves out; J at 1e308
    # overflows to inf. Neither is the user's business: no warning reaches their console.
    rows = np.array([[np.inf, np.inf, 0.0, 0.0, 0.0], [0.0, 1.0, 1e308, 2.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = fourth_differences(rows)
    assert np.isnan(found[0]) and found[1] == np.inf


def test_the_floor_given_is_the_floor_kept() -> None:
    # A check passes the floor of its own precision (float32's for a float32 J): it replaces
    # rounding_floor(J(θ)), which is float64's.
    floor = rounding_floor(1.0, 2**-23)
    noise = measure_noise(_noisy_line(1e-9, 0), 1.0, (), np.arange(8), np.full(8, 1e-4), 0, floor)
    assert noise.floor == floor != rounding_floor(1.0)
    assert noise.effective == max(noise.sigma, floor)


def test_a_j_that_never_moves_is_flat_along_every_direction() -> None:
    # J stands at J(θ) through every stride: no direction measures anything, every one is flat.
    noise = measure_noise(
        lambda support, rows: np.full(len(rows), 2.0), 2.0, (), np.arange(8), np.full(8, 1e-4), 0
    )
    assert noise == JNoise(0.0, 0.0, rounding_floor(2.0), PROBE_DIRECTIONS, PROBE_DIRECTIONS, 2.0)
