"""J's noise from the first pairs, and every pair where a reading asks: the first pairs ask for the
rest where they cross a jump or J stands still; a reading within MARGIN of its threshold asks;
the rest are the same directions a check measuring every pair takes."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import pytest

import gradwatch
from gradwatch import Thresholds, Verdict
from gradwatch.evidence.noise import (
    FIRST_JUMP_FACTOR,
    FIRST_PAIRS,
    HALF_NORMAL_MEDIAN,
    PAIR_MIN_MEDIAN,
    PROBE_DIRECTIONS,
    JNoise,
    NoiseProbes,
    measure_noise,
    rounding_floor,
)
from gradwatch.evidence.probing import MARGIN, asks_for_more, gather_with_probes
from gradwatch.evidence.readings import (
    AGREES,
    NOT_JUDGED,
    ON_KINK,
    WITHIN_NOISE,
    Evidence,
    read,
)

STEP = 1e-4


def _rounding(sigma: float, f: Any = lambda rows: np.sin(rows.sum(axis=1))) -> Any:
    """A line whose error of size ``sigma`` is a function of the point (as rounding is)."""

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        errors = [
            np.random.default_rng(
                int.from_bytes(hashlib.blake2b(r.tobytes()).digest()[:8])
            ).normal()
            for r in rows
        ]
        return f(rows) + sigma * np.asarray(errors)

    return line


def _probes(line: Any) -> NoiseProbes:
    return NoiseProbes(line, 0.0, (), np.arange(32), np.full(32, STEP), 0, 0.0)


def test_the_first_pairs_alone_then_the_rest_are_the_directions_of_every_pair() -> None:
    probes = _probes(_rounding(1e-12))
    first = probes.first()
    assert first.directions == 2 * FIRST_PAIRS and first.jumps == 0
    assert 0.5e-12 < first.sigma < 2e-12
    # The rest measured later: the same directions, so the same σ as a check measuring every pair
    every = probes.every()
    assert every.directions == PROBE_DIRECTIONS
    alone = measure_noise(_rounding(1e-12), 0.0, (), np.arange(32), np.full(32, STEP), 0, 0.0)
    assert every == alone and every.sigma != first.sigma


def test_a_jump_crossed_by_the_first_pairs_asks_for_every_pair_at_once() -> None:
    # A step of 1e-8 on one side of θ (where the first moved component has gone beyond 1.5
    # strides): one half of each pair crosses it; its fourth differences are 3e-8, the others'
    # ~1e-12·√70.
    smooth = _rounding(1e-12)
    stepped = _rounding(1e-12, lambda r: np.sin(r.sum(axis=1)) + 1e-8 * (r[:, 0] > 1.5 * STEP / 64))
    noise = _probes(stepped).first()
    assert noise.directions == PROBE_DIRECTIONS and noise.jumps == PROBE_DIRECTIONS // 2
    # Left out, the jumps leave the rounding's σ (every pair of the smooth line, for comparison).
    assert 0.7 < noise.sigma / _probes(smooth).every().sigma < 1.5


def test_a_j_that_stands_still_along_a_first_direction_asks_for_every_pair() -> None:
    q = 1e-6  # J rounded to multiples of q: at strides of 1e-9 it does not move

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.round((0.123456789 + rows.sum(axis=1)) / q) * q

    center = float(np.round(0.123456789 / q) * q)
    probes = NoiseProbes(line, center, (), np.arange(32), np.full(32, 1e-9), 0, 0.0)
    assert probes.first().directions == PROBE_DIRECTIONS


def _one(numeric: float, noise: float = 1e-3) -> Evidence:
    one = np.ones(1)
    codes = np.full(1, AGREES, np.int8), np.zeros(1, np.int8), np.zeros(1, np.int8)
    return Evidence(one, np.array([numeric]), one * noise, *codes, one > 1, one)


# gap in units of the tolerance 8σ: within MARGIN of 1 either way asks, beyond it does not (at 3,
# the one-component tensor's test is 24²/134.8 = 4.3 times its bound: beyond MARGIN² too).
@pytest.mark.parametrize(
    ("gap", "asks"),
    [(0.25, False), (0.6, False), (0.75, True), (1.0, True), (1.4, True), (3.0, False)],
)
def test_a_component_within_the_margin_of_its_tolerance_asks(gap: float, asks: bool) -> None:
    assert asks_for_more(_one(1.0 + gap * 8e-3), np.zeros(1, int), 1e-7) is asks


def test_a_gap_within_the_pass_band_never_asks() -> None:
    # 6σ with σ = 1e-9: a relative gap of 3e-9, under the pass band 1e-7; it cannot disagree.
    assert asks_for_more(_one(1.0 + 6e-9, 1e-9), np.zeros(1, int), 1e-7) is False
    assert asks_for_more(_one(1.0 + 6e-9, 1e-9), np.zeros(1, int), 1e-9) is True


# 400 components each off by z·σ: S / bound = z²·400 / 2264 (1.59 at 3σ); each gap z/8 < 1/MARGIN.
# (At 2σ, 0.71; at 3.75σ, 2.48: just past MARGIN² = 2.25.)
@pytest.mark.parametrize(
    ("z", "asks"),
    [(1.5, False), (2.0, True), (2.5, True), (3.0, True), (3.75, False), (4.5, False)],
)
def test_a_tensor_within_the_margin_of_its_bound_asks(z: float, asks: bool) -> None:
    a = np.full(400, 1.0)
    codes = np.full(400, AGREES, np.int8), np.zeros(400, np.int8), np.zeros(400, np.int8)
    evidence = Evidence(a, a + z * 1e-9, np.full(400, 1e-9), *codes, a > 1, a)
    assert z / 8 < 1 / MARGIN
    assert asks_for_more(evidence, np.zeros(400, int), 1e-12) is asks
    assert asks_for_more(evidence, np.zeros(400, int), 1e-7) is False  # D under the pass band


def _noisy(sigma: float, f: Any) -> Any:
    def cost(t: np.ndarray) -> float:
        digest = hashlib.blake2b(np.asarray(t, np.float64).tobytes(), digest_size=8).digest()
        return float(f(t)) + sigma * float(
            np.random.default_rng(int.from_bytes(digest)).standard_normal()
        )

    return cost


SIGMA, EPSILON = 1e-12, 1e-3  # ε = 1e-3 on a linear J: no truncation, the fitted step no longer
NOISE = SIGMA / (np.sqrt(2) * EPSILON)  # of the two-sided estimate


@pytest.mark.parametrize("shift", [0.0, 0.1])
@pytest.mark.parametrize(("error", "directions"), [(0.0, 32), (6.0, 64), (40.0, 32)])
def test_a_check_takes_every_pair_where_a_reading_sits_near_its_tolerance(
    shift: float, error: float, directions: int
) -> None:
    # J = s·θ over 40 components with σ_J = 1e-12, slopes of 1400–2800σ_i; backprop's θ₀ off by
    # `error`·σ_i. Right, and 40σ off (a twin that fails: 2.8%), every reading is far from its
    # tolerance: the first pairs alone. At 6σ the reading is within MARGIN of its 8σ: every pair.
    # (`shift` moves θ: other rounding errors.)
    slopes = np.linspace(1.0, 2.0, 40) * 1e-6
    cost = _noisy(SIGMA, lambda t: float(slopes @ t))
    theta = np.linspace(-1.0, 1.0, 40) + shift
    grad = slopes + error * NOISE * (np.arange(40) == 0)
    report = gradwatch.check_function(
        cost, theta, grad, epsilon=EPSILON, layout={"a": (1,), "b": (39,)}
    )
    assert report.j_noise.directions == directions
    assert SIGMA / 2 < report.j_noise.sigma < 2 * SIGMA
    if error < 8.0:
        assert report.verdict is Verdict.PASS
    else:
        assert report.verdict is Verdict.FAIL and report.parameters_with("fail") == ["a"]


def _diluted(numeric: float, analytic: float = 0.0, noise: float = 1.0) -> Evidence:
    """One component (a, n, σ) beside 200 that agree exactly in the same tensor: the tensor's test
    stays far under its bound (12² / chi2_bound(201) = 0.11), so the component's rule alone asks."""
    a, n = np.r_[analytic, np.ones(200)], np.r_[numeric, np.ones(200)]
    codes = np.full(201, AGREES, np.int8), np.zeros(201, np.int8), np.zeros(201, np.int8)
    return Evidence(a, n, np.r_[noise, np.ones(200)], *codes, a > 2, n)


# readings.read disagrees where |a − n| > 8σ and the relative gap > pass_max, both strict. A gap of
# exactly 1/MARGIN of the tolerance reaches it only where σ_J is more than MARGIN too high: it does
# not ask; exactly MARGIN falls to it where σ_J is MARGIN too low: it asks. A relative gap exactly
# at the pass band (|1 − 3| / 4 = 0.5) cannot disagree: it does not ask, its gap at the tolerance.
@pytest.mark.parametrize(
    ("numeric", "analytic", "noise", "pass_max", "asks"),
    [(8 / MARGIN, 0.0, 1.0, 1e-7, False), (8 * MARGIN, 0.0, 1.0, 1e-7, True),
     (3.0, 1.0, 0.25, 0.5, False), (3.0, 1.0, 0.25, 0.49, True)],
)  # fmt: skip
def test_a_component_exactly_at_the_margin_or_the_pass_band(
    numeric: float, analytic: float, noise: float, pass_max: float, asks: bool
) -> None:
    gap = abs(analytic - numeric) / (8 * noise)
    assert gap in (1 / MARGIN, MARGIN, 1.0)  # exactly, in floats
    assert asks_for_more(_diluted(numeric, analytic, noise), np.zeros(201, int), pass_max) is asks


@pytest.mark.parametrize(("reason", "asks"), [(WITHIN_NOISE, True), (ON_KINK, False)])
def test_a_tensor_of_components_within_noise_asks_and_one_on_a_kink_does_not(
    reason: int, asks: bool
) -> None:
    # 400 zeros read 3σ off: each "not judged, within noise" (3e-9 under the tolerance 8e-9), a
    # measured value that the tensor test counts (S / bound = 1.59, within MARGIN²); the same
    # values "on a kink" are no measurement: the tensor has nothing to test.
    a, n, s = np.zeros(400), np.full(400, 3e-9), np.full(400, 1e-9)
    reading, within = read(a, n, s, 1e-7)
    assert (reading == NOT_JUDGED).all() and (within == WITHIN_NOISE).all()
    codes = reading, np.full(400, reason, np.int8), np.zeros(400, np.int8)
    evidence = Evidence(a, n, s, *codes, a > 1, n)
    assert asks_for_more(evidence, np.zeros(400, int), 1e-7) is asks


def test_a_component_with_no_gradient_on_either_side_neither_asks_nor_warns() -> None:
    # a = n = 0 (a parameter J does not use) in a tensor of its own: its relative gap is 0/0, no
    # gap; beside it, one component 2σ off. No RuntimeWarning reaches the user's console.
    a, n, s = np.array([1.0, 0.0]), np.array([1.002, 0.0]), np.full(2, 1e-3)
    evidence = Evidence(a, n, s, *read(a, n, s, 1e-7), np.zeros(2, np.int8), a > 2, n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert asks_for_more(evidence, np.array([0, 1]), 1e-7) is False


def test_each_tensor_is_tested_alone_after_one_with_nothing_to_test() -> None:
    # Tensor 0: 2000 components that agree exactly (D = 0: nothing to test). Tensor 1: 400 at 2σ
    # each, S / bound 0.71, within MARGIN² of 1: it asks. Tested together, the 2400 would read
    # 1600 / chi2_bound(2400) = 0.14, far under.
    a = np.ones(2400)
    n = a + np.r_[np.zeros(2000), np.full(400, 2e-9)]
    codes = np.full(2400, AGREES, np.int8), np.zeros(2400, np.int8), np.zeros(2400, np.int8)
    evidence = Evidence(a, n, np.full(2400, 1e-9), *codes, a > 1, n)
    assert asks_for_more(evidence, np.repeat([0, 1], [2000, 400]), 1e-12) is True


@pytest.mark.parametrize(("pass_max", "asks"), [(0.5, False), (0.49, True)])
def test_a_tensor_whose_difference_is_exactly_the_pass_band_does_not_ask(
    pass_max: float, asks: bool
) -> None:
    # One component, a = 1 and n = 3 at σ = 0.2: 10σ, S / bound = 100 / 134.8 = 0.74; its D is
    # |1 − 3| / 4 = 0.5 exactly. A tensor convicts only with D above the band (tensor_test):
    # at D = pass_max it cannot, and does not ask.
    assert asks_for_more(_one(3.0, 0.2), np.zeros(1, int), pass_max) is asks


class _Scripted:
    """Probes whose first pairs read σ_J = 2 with a spread of J at θ of 3, exactly MARGIN·σ_J."""

    def first(self) -> JNoise:
        return JNoise(sigma=2.0, spread=3.0, floor=0.0, directions=32, flat=0)

    def every(self) -> JNoise:
        return JNoise(sigma=2.5, spread=3.0, floor=0.0, directions=64, flat=0)


def test_a_spread_of_margin_times_the_first_sigma_keeps_the_first_pairs() -> None:
    # J = 3 + 1e7·θ₀, a reading at 0.9 of its tolerance against the spread (the noise it uses): it
    # would ask, but σ_J 1.5× low or high leaves the noise at the spread: the first pairs stand.
    # (Every pair's σ_J, 2.5, would not change the reading either.)
    h = np.full(1, 1e-3)

    class Line:
        def pairs(self, at: Any, h: Any) -> Any:
            return 3 + 1e7 * h, 3 - 1e7 * h

        def half_gaps(self, at: Any, h: Any) -> Any:
            return np.asarray(h, float)

        def values(self, at: Any) -> Any:
            return np.ones(len(at))

        def line(self, support: Any, rows: Any) -> Any:
            return 3 + 1e7 * rows.sum(axis=1)

    j, tolerance = Line(), 8 * 3.0 / (np.sqrt(2) * h[0])
    analytic = np.array([1e7 + 0.9 * tolerance])
    found, noise = gather_with_probes(
        j, analytic, j.pairs([0], h), 3.0, h, _Scripted(), 1e-7, np.zeros(1, int), 0, 1e-3
    )  # type: ignore[arg-type]
    assert asks_for_more(found, np.zeros(1, int), 1e-7)
    assert noise.directions == 32


# J = 3e5 + g·θ + θ·θ at θ = 0, |g| ~ 0.03: J's rounding (σ_i ≈ 2.6e-4 at ε = 1e-7) leaves a noise
# floor of ~1e-2. Above the default warn band 1e-3 it is too close to J's noise and read again at
# the fitted step; under a warn band of 0.1 it is judged as it is.
@pytest.mark.parametrize(("warn_max", "recheck"), [(1e-3, "fitted step"), (0.1, "")])
def test_the_users_warn_band_decides_which_tensor_is_too_close_to_j_noise(
    warn_max: float, recheck: str
) -> None:
    g = np.array([0.03, -0.02, 0.025])

    def cost(t: np.ndarray) -> float:
        return 3e5 + float(g @ t) + float(t @ t)

    report = gradwatch.check_function(
        cost, np.zeros(3), g, thresholds=Thresholds(1e-7, warn_max), layout={"a": (3,)}
    )
    assert report.verdict is Verdict.PASS, str(report)
    assert [report.component(i).recheck for i in range(3)] == [recheck] * 3


@pytest.mark.parametrize(("z", "directions"), [(0.0, 32), (1.5, 64)])
def test_a_check_takes_every_pair_where_one_tensors_test_sits_near_its_bound(
    z: float, directions: int
) -> None:
    # J = s·θ over 2400 components (σ_J = 1e-12, slopes of 1400–2800σ_i); backprop's "a" (400)
    # off by z·σ_i each. At 1.5σ a's test reads ~(400·3.25) / 2264 = 0.57, within MARGIN² of its
    # bound: every pair. Beside it "b" (2000, right): tested with a, the 2400 would read ~0.3.
    slopes = np.linspace(1.0, 2.0, 2400) * 1e-6
    cost = _noisy(SIGMA, lambda t: float(slopes @ t))
    grad = slopes + z * NOISE * (np.arange(2400) >= 2000)
    theta = np.linspace(-1.0, 1.0, 2400)
    report = gradwatch.check_function(
        cost, theta, grad, epsilon=EPSILON, layout={"b": (2000,), "a": (400,)}
    )
    assert report.j_noise.directions == directions
    assert report.verdict is Verdict.PASS, str(report)


def _scripted(mirrors: float) -> NoiseProbes:
    """Probes whose first call reads |fourth difference| 1 along the first halves of the first
    pairs and ``mirrors`` along their mirrors (J = 0, 0, 0, V at the four points); 1 after."""
    calls: list[int] = []

    def line(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows) // 4)
        fourth = np.ones(len(rows) // 4)
        if len(calls) == 1:  # pairs 0-15, then their mirrors 32-47
            fourth[FIRST_PAIRS:] = mirrors
        out = np.zeros((len(rows) // 4, 4))
        out[:, 3] = fourth
        return out.ravel()

    return NoiseProbes(line, 0.0, (), np.arange(32), np.full(32, STEP), 0, 0.0)


def test_the_first_pairs_scale_a_jump_by_the_smaller_half_of_each_pair() -> None:
    # Every mirror crosses a jump (1e3): the smaller halves read 1, and 1e3 is beyond 8 times
    # their median (14.4), so every pair is measured. Read from the mirrors, the median would be
    # the jump's, and no pair would ask.
    assert _scripted(1e3).first().directions == PROBE_DIRECTIONS
    assert _scripted(1.0).first().directions == 2 * FIRST_PAIRS


def test_a_first_direction_exactly_at_first_jump_factor_times_the_median_does_not_ask() -> None:
    edge = FIRST_JUMP_FACTOR * (1.0 * (HALF_NORMAL_MEDIAN / PAIR_MIN_MEDIAN))
    assert _scripted(edge).first().directions == 2 * FIRST_PAIRS
    assert _scripted(np.nextafter(edge, np.inf)).first().directions == PROBE_DIRECTIONS


@pytest.mark.parametrize("has_support", [False, True])
def test_first_pairs_with_nothing_measured_warn_of_nothing(has_support: bool) -> None:
    # No support, or a J that never moves (every direction flat: every pair is asked for): the
    # first pairs have no median, and NumPy's all-NaN warnings are not the user's business.
    support = np.arange(8) if has_support else np.zeros(0, np.int64)
    probes = NoiseProbes(
        lambda s, rows: np.full(len(rows), 2.0), 2.0, (), support, np.full(support.size, STEP), 0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        noise = probes.first()
    n = PROBE_DIRECTIONS if has_support else 0
    assert noise == JNoise(0.0, 0.0, rounding_floor(2.0), n, n, 2.0)
