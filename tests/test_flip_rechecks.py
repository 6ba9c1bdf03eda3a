"""First disagreements at float32's step (issue 19): the re-check at h/2 and h/4 clears a gap only
where the truncation it measures explains it; the rest are read at a jittered θ, where a
disagreement stands once a second jittered θ shows it too. Each case is J with a known answer: a
small slope (2e-4, 14σ of the first reading) and routing flips (jumps of J) placed near θ."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradwatch.evidence.model import gather_evidence
from gradwatch.evidence.objective import Moved
from gradwatch.evidence.readings import (
    AGREES,
    DISAGREES,
    LONGER_STEPS,
    NOT_JUDGED,
    OFF_KINK,
    ON_KINK,
    WITHIN_NOISE,
)

SIGMA = 1e-7  # J's noise in float32 near J ~ 1
STEP = 5e-3  # float32's auto step: the re-check runs at h/2 and h/4
SLOPE = 2e-4  # the first reading's noise is SIGMA / (√2·STEP) = 1.4e-5: 14σ
JUMP = 17 * SIGMA  # a flip 3e-3 from θ₀: n(h) is 12σ off, n(h/2) and n(h/4) do not cross it


class _Routed:
    """J(θ) = SLOPE·min(θ₀, flat) + Σ JUMP·[θ₀ < p] over ``flips`` p + 2θ₁ + ¼θ₂², with backprop's
    slope in θ₀ ×``factor``; the k-th jittered θ moves θ₀ by 0.1·(k + 1)."""

    def __init__(
        self, theta: np.ndarray, factor: float, flips: tuple[float, ...], flat: float = math.inf
    ) -> None:
        self.theta, self.factor, self.flips, self.flat = theta, factor, flips, flat
        self.slope = SLOPE

    def cost(self, t: np.ndarray) -> float:
        jumps = sum(JUMP * float(t[0] < p) for p in self.flips)
        return self.slope * min(t[0], self.flat) + jumps + 2 * t[1] + 0.25 * t[2] ** 2

    def grad(self, t: np.ndarray) -> np.ndarray:
        return np.array([self.factor * self.slope * float(t[0] < self.flat), 2.0, 0.5 * t[2]])

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.eye(3)
        plus = [self.cost(self.theta + hk * e[i]) for i, hk in zip(at, h, strict=True)]
        minus = [self.cost(self.theta - hk * e[i]) for i, hk in zip(at, h, strict=True)]
        return np.array(plus), np.array(minus)

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def values(self, at: np.ndarray) -> np.ndarray:
        return self.theta[np.asarray(at)]

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), self.cost(self.theta))

    def jittered(self, attempt: int) -> Moved | None:
        moved = type(self)(
            self.theta + np.array([0.1 * (attempt + 1), 0.0, 0.0]),
            self.factor, self.flips, self.flat,
        )  # fmt: skip
        moved.slope = self.slope
        return Moved(moved, moved.grad(moved.theta), moved.cost(moved.theta))


def _gather(j: _Routed):  # type: ignore[no-untyped-def]
    steps = np.full(3, STEP)
    first = j.pairs(np.arange(3), steps)
    return gather_evidence(j, j.grad(j.theta), first, j.cost(j.theta), steps, SIGMA, 1e-7)


@pytest.mark.parametrize("factor", [1.0, -1.0], ids=["correct", "sign-flipped"])
def test_a_gap_the_short_steps_cannot_explain_is_read_at_a_jittered_theta(factor: float) -> None:
    # Richardson's noise from h/2 and h/4 is 5.4x the first reading's: with its tolerance, the
    # sign flip (28σ at h) read "within noise" there. A flip 3e-3 below θ₀ puts the correct
    # slope 12σ off at h. Read at a jittered θ with the first reading's tolerance, the correct
    # slope agrees, the sign flip disagrees there and at a second jittered θ.
    found = _gather(_Routed(np.array([0.0, 1.0, 0.5]), factor, (-3e-3,)))
    assert found.recheck[0] == OFF_KINK and found.kink[0]
    assert found.reading[0] == (AGREES if factor == 1.0 else DISAGREES)
    assert found.analytic[0] == factor * SLOPE and found.numeric[0] == pytest.approx(SLOPE)
    assert list(found.reading[1:]) == [AGREES, AGREES]


@pytest.mark.parametrize("factor", [1.0, -1.0], ids=["correct", "sign-flipped"])
def test_a_disagreement_at_one_jittered_theta_stands_where_the_second_shows_it_too(
    factor: float,
) -> None:
    # The first jittered θ (0.1) sits 3e-3 above a flip of its own, the second (0.2) is clear.
    found = _gather(_Routed(np.array([0.0, 1.0, 0.5]), factor, (-3e-3, 0.097)))
    assert found.recheck[0] == OFF_KINK
    if factor == 1.0:  # agrees at the second θ: the gap came from where the first one stood
        assert (found.reading[0], found.reason[0]) == (NOT_JUDGED, ON_KINK)
    else:
        assert found.reading[0] == DISAGREES
        assert found.numeric[0] == pytest.approx(SLOPE)  # the second θ's reading


def test_a_second_jittered_theta_with_nothing_to_compare_keeps_the_first_disagreement() -> None:
    # J is flat in θ₀ from 0.15 on: the second jittered θ (0.2) reads 0 against 0, no evidence
    # either way; the first jittered θ's disagreement stands, values and all (its −h side
    # crosses the flip at 0.097: 12σ below the slope).
    found = _gather(_Routed(np.array([0.0, 1.0, 0.5]), 1.0, (-3e-3, 0.097), flat=0.15))
    assert (found.reading[0], found.recheck[0]) == (DISAGREES, OFF_KINK)
    assert found.analytic[0] == SLOPE
    assert found.numeric[0] == pytest.approx(SLOPE - JUMP / (2 * STEP))


def test_a_truncation_the_short_steps_measure_clears_the_gap() -> None:
    # J = 1e3·θ₀³ at θ₀ = 1 (h = 5e-3): n(h) is off by h²·J‴/6 = 2.5e-2, which h/2 and h/4
    # measure far beyond their noise; Richardson's estimate is read, and agrees.
    class Cubic(_Routed):
        def cost(self, t: np.ndarray) -> float:
            return 1e3 * t[0] ** 3 + 2 * t[1] + 0.25 * t[2] ** 2

        def grad(self, t: np.ndarray) -> np.ndarray:
            return np.array([3e3 * t[0] ** 2 * self.factor, 2.0, 0.5 * t[2]])

    for factor, reading in [(1.0, AGREES), (1.001, DISAGREES)]:
        j = Cubic(np.array([1.0, 1.0, 0.5]), factor, ())
        found = _gather(j)
        assert (found.reading[0], found.recheck[0]) == (reading, LONGER_STEPS if factor == 1.0
                                                         else OFF_KINK)  # fmt: skip
        assert found.reason[0] != WITHIN_NOISE


def test_a_gradient_the_short_steps_see_and_agree_with_is_read_there() -> None:
    # A slope of 1e-2 (700σ of the first reading), 12σ off at h from the flip: h/2 and h/4 see
    # it (far beyond their noise) and agree with backprop, as they always could.
    j = _Routed(np.array([0.0, 1.0, 0.5]), 1.0, (-3e-3,))
    j.slope = 1e-2
    found = _gather(j)
    assert (found.reading[0], found.recheck[0]) == (AGREES, LONGER_STEPS)
    assert not found.kink[0]


class _Asked(_Routed):
    """``tests._Routed``, keeping the jittered θs asked for."""

    def jittered(self, attempt: int):  # type: ignore[no-untyped-def]
        self.__dict__.setdefault("asked", []).append(attempt)
        return super().jittered(attempt)


class _CubeAtZero(_Asked):
    """J = 100·θ₀³ at θ₀ = 0 (no slope, a truncation of 100·h² = 2.5e-3 at float32's step h),
    backprop 3e2·θ₀² + ``factor``."""

    def cost(self, t: np.ndarray) -> float:
        return 100 * t[0] ** 3 + 2 * t[1] + 0.25 * t[2] ** 2

    def grad(self, t: np.ndarray) -> np.ndarray:
        return np.array([300 * t[0] ** 2 + self.factor, 2.0, 0.5 * t[2]])


# A slope of 1e-2 with six flips of J (17σ each) 1e-3 above θ₀, inside h/4: J'' at h/2 and h/4
# differ (−JT/s²), and Richardson's estimate across them is slope − (7/3)·JT/h.
KINKED = 1e-2 - 7 / 3 * 6 * JUMP / STEP


@pytest.mark.parametrize(
    ("kind", "factor", "reading", "recheck", "asked"),
    [
        ("cube", 0.0, NOT_JUDGED, LONGER_STEPS, []),
        ("cube", 3e-3, DISAGREES, OFF_KINK, [0, 1]),
        ("line", 0.0, DISAGREES, OFF_KINK, [0, 1]),
        ("kink", KINKED / 1e-2, DISAGREES, OFF_KINK, [0, 1]),
    ],
    ids=["truncation", "truncation-and-bug", "detached", "kinked"],
)
def test_a_gap_at_float32s_step_is_cleared_by_the_truncation_it_measures_only(
    kind: str, factor: float, reading: int, recheck: int, asked: list[int]
) -> None:
    # Each first reading is ~30σ or more off. J = 100·θ₀³: h/2 and h/4 see no gradient (within
    # 8 times their noise, 6.1e-4), and the gap is the truncation n(h) − g = 2.5e-3, measured
    # beyond that noise: read there, within noise (backprop 3e-3 disagrees there, and at two
    # jittered θs). J = 4.5e-4·θ₀ with backprop 0 (detached): n(h) − g = 0 explains nothing,
    # though n(h) + g would: read at two jittered θs, no more, the gap stands. J with flips
    # inside h/4: not smooth there, read off the kink, even where backprop is what Richardson's
    # estimate across the flips reads (a wrong backward; 1e-2 at the jittered θs).
    theta = np.array([0.0, 1.0, 0.5])
    j = _CubeAtZero(theta, factor, ()) if kind == "cube" else _Asked(theta, factor, ())
    if kind == "line":
        j.slope = 4.5e-4
    if kind == "kink":
        j.flips, j.slope = (1e-3,) * 6, 1e-2
    found = _gather(j)
    assert (found.reading[0], found.recheck[0]) == (reading, recheck)
    assert j.__dict__.get("asked", []) == asked
