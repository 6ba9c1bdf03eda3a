"""J's noise, measured: how far apart two evaluations of J may be for reasons other than slope.

Every evaluation of J carries rounding error. How much depends on J, not only on its size: a J
that is a small difference of large terms (a sum of normalized outputs, a loss after training)
carries the rounding of those terms, and a J computed partly in a lower precision carries that
precision's rounding. So the noise is measured on the J at hand:

J is evaluated at five points along a random ±1 direction u, θ + k·s·u for k = 0, 1, 2, 3, 4
(each moved component stepping by a fraction s of its own check step, s = 1/64 to start: the
rounding of J does not depend on how far it moved, and a short stride rarely crosses a kink near
θ). The fourth difference
J₀ − 4J₁ + 6J₂ − 4J₃ + J₄ cancels every polynomial part of J up to degree 3, so what remains is
noise (the degree-4 term s⁴·J⁗ is ~1e-28 at these steps), with variance (1 + 16 + 36 + 16 + 1)σ²
= 70σ² for independent errors of size σ. The points lie on one side of θ, so a kink exactly at θ
(a ReLU whose input is exactly 0, a max-pool tie) is not inside the stencil. Where J does not
move at all along a direction (J rounds every point to the same value, as when J is computed in
float32 inside a float64 check), the direction is probed again with s 16 times larger, until J
moves: the spread found there is J's real resolution. The 75th percentile over the directions,
divided by that percentile of |N(0, 1)|, 1.1503, is a robust σ (a direction that happens to
cross a kink is an outlier it ignores).

A jump in J (a top-k routing decision that flips, a kink, a discontinuity) that many directions
cross would still inflate that percentile: its fourth difference is the jump's size, not
rounding. So the directions come in mirrored pairs, u and −u, whose stencils lie on either side
of θ: a jump reachable from θ lies on one side only, so at most one half of each pair crosses it,
however many pairs do (a flip near θ is crossed by about half of all directions, as often a
majority as not). The smaller half of each pair is rounding, and the median of those smaller
halves, scaled by how the smaller of two |N(0, 1)| relates to one, is a median of |fourth
difference| that no single jump reaches. A direction whose fourth difference exceeds
JUMP_FACTOR times that median is counted as crossing a jump and left out, and σ is the 75th
percentile of the rest. Where more than half the pairs cross jumps on both sides (several
flips), the median is a jump's reading, and σ is what it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "JNoise",
    "NoiseProbes",
    "fourth_differences",
    "measure_noise",
    "noise_sigma",
    "probe_rows",
    "rounding_floor",
]

# The one tolerance of every reading (gradwatch.evidence.model), in units of the measured noise. A
# Gaussian error passes 8σ with probability 1e-15, so even with σ_J underestimated by 1.5× (see
# PROBE_DIRECTIONS) a check of 1e5 components sees a false disagreement with odds of 1 in 100
# (5.3σ: 1e-7 each). Rounding errors are bounded tighter than a Gaussian's, and the probes move
# θ's first layers, whose perturbations pass through every later operation, so σ_J bounds each
# component's noise.
NOISE_MULTIPLE = 8.0
# How many random directions measure the noise: PROBE_DIRECTIONS / 2 directions and their
# mirrors. The 75th percentile of 64 Gaussian |errors| underestimates σ by 1.5× with odds of 8e-4
# and by 2× never in 1e6 checks (simulated), which the noise multiple of the readings absorbs: 8σ
# read as 5.3σ is still passed by chance only 1e-7 of the time. (A direction and its mirror share
# only J(θ), 1 of the 70 parts of each fourth difference's variance: they count as independent.)
# 32 pairs, not 16: 64 directions cut σ's scatter by √2 (with 16 pairs, J with a large constant
# part read 25% noisier at one seed of tests/test_power.py, and a 0.1% bug there passed).
PROBE_DIRECTIONS = 64
# How many of those pairs a check measures first. The rest are measured only where they could
# change a verdict (gradwatch.evidence.probing: a reading within the first pairs' scatter of its
# threshold) or where the first pairs cross a jump (FIRST_JUMP_FACTOR). The 75th percentile of 32
# Gaussian |errors| reads σ 1.5× low with odds of 1.4% and 2× low with 1.4e-4 (simulated over
# 2e5: the odds tensor_test.NOISE_MARGIN and NOISE_MULTIPLE are set for), 1.5× high with 1.4e-3.
# 128 evaluations fewer: a third of the zoo's smallest checks.
FIRST_PAIRS = 16
# How many components each direction moves: enough for J to move by many ulps, few enough that
# the moved distance √32·h keeps the degree-4 term negligible.
PROBE_WIDTH = 32
# The first stride, in check steps: J's rounding is the same at any stride, while the odds that
# a direction crosses a kink near θ (a ReLU input within reach) shrink with it. A direction along
# which J did not move is probed again at a 16× longer stride, up to 5 times (1/64 · 16⁵ = 16384
# steps): J rounded to float32 inside a float64 check moves within that.
PROBE_START = 1 / 64
PROBE_GROWTH = 16.0
PROBE_TRIES = 6
# The stencil's coefficients: J₀ − 4J₁ + 6J₂ − 4J₃ + J₄; the sum of their squares is 70.
FOURTH = np.array([1.0, -4.0, 6.0, -4.0, 1.0])
# The 75th percentile of |N(0, 1)|: turns that percentile of |noise| into a standard deviation.
# A percentile, not the mean: a direction that crosses a kink near θ is an outlier (up to a
# quarter of them are ignored).
HALF_NORMAL_Q75 = 1.1503493803760079
# The median of the smaller of two |N(0, 1)|: Φ⁻¹(1 − 1/(2√2)), where P(both > t) = 1/2. The
# median of the pairs' smaller halves over this, times the median of |N(0, 1)| (0.6745), is the
# median of one direction's |fourth difference|, read from halves that no single jump reaches.
PAIR_MIN_MEDIAN = 0.3757445949145003
HALF_NORMAL_MEDIAN = 0.6744897501960817
# A direction reads a jump, not rounding, when its |fourth difference| exceeds this many times
# that median (8.1σ of a fourth difference). 32 Gaussian pairs have a direction beyond it in 8e-5
# of checks (simulated over 1e6; the median of 32 smaller halves scatters more than that of 64
# directions, hence 12 and not 10), and leaving that one out lowers σ by ~3% (the 75th percentile
# of 63 instead of 64), which the noise multiple absorbs. Rounding errors have tails lighter than
# a Gaussian's. A jump kept because it is below this raises σ by at most 12 · 0.6745 / 1.1503 ≈
# 7× the bulk's; the routing flips of float32 Mixtrals read ≥ 60× the bulk's largest.
JUMP_FACTOR = 12.0
# The first pairs ask for the rest when a direction exceeds this many times the median read from
# their 16 smaller halves (or J stood still along one): 16 Gaussian pairs have one beyond it in
# 1.4% of checks (simulated over 4e5), which then cost 128 evaluations more. Unasked, no direction
# reaches JUMP_FACTOR, so the jump rule, calibrated on 32 pairs, only ever runs over 32 pairs:
# where flips are common (a float32 mixture of experts: ≥ 60× the bulk) every pair is measured.
FIRST_JUMP_FACTOR = 8.0

# J at θ + (rows @ e_support) for each row: rows[r, j] is the displacement of component
# support[j] in θ's units.
Line = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class JNoise:
    """What was measured of J's noise.

    ``sigma`` is the noise of one evaluation of J (the standard deviation of its error), measured
    along ``directions`` probes (``flat`` of them never moved J, and carry no information);
    ``spread`` is how far apart evaluations of J at the same θ came out (0.0 when J is
    deterministic); ``floor`` is the least rounding any J carries, an ulp of J over √12 (J
    rounded once to the check's precision); ``cost`` is J(θ); ``jumps`` of the directions
    crossed a jump in J (their fourth difference beyond ``JUMP_FACTOR`` times the median) and
    were left out of ``sigma``. ``effective`` is the noise the readings use: the largest of the
    three.

    Example:
        >>> n = JNoise(sigma=1e-16, spread=0.0, floor=6e-17, directions=16, flat=0, cost=2.3)
        >>> n.effective, n.deterministic
        (1e-16, True)
    """

    sigma: float
    spread: float
    floor: float
    directions: int
    flat: int
    cost: float = float("nan")
    jumps: int = 0

    @property
    def effective(self) -> float:
        """The noise of one evaluation of J that the readings use: the largest of J's measured
        noise, the spread of evaluations at the same θ, and the rounding floor."""
        return max(self.sigma, self.spread, self.floor)

    @property
    def deterministic(self) -> bool:
        """Whether evaluations at the same θ agree, to within a few ulps of J.

        Rounding is a function of θ: the same evaluation at the same θ gives the same value. A
        J that differs there draws random numbers or keeps state between calls (or runs kernels
        that add in a varying order); its spread is noise the probes cannot tell from rounding,
        since they see it too.
        """
        return self.spread <= NOISE_MULTIPLE * self.floor


def rounding_floor(cost: float, unit: float = float(np.finfo(np.float64).eps)) -> float:
    """The least noise a J of this value carries: rounded once to a precision of machine epsilon
    ``unit``, its error is uniform over an ulp, of standard deviation ulp/√12.

    Example:
        >>> f"{rounding_floor(1.0):.2e}"
        '6.41e-17'
    """
    if not math.isfinite(cost) or cost == 0:
        return 0.0
    return unit * 2.0 ** math.floor(math.log2(abs(cost))) / math.sqrt(12.0)


def fourth_differences(values: np.ndarray) -> np.ndarray:
    """J₀ − 4J₁ + 6J₂ − 4J₃ + J₄ of each row of five values along a line.

    Example:
        >>> fourth_differences(np.array([[0.0, 1.0, 8.0, 27.0, 64.0]]))  # k³: no noise
        array([0.])
    """
    with np.errstate(invalid="ignore", over="ignore"):  # an infinite J: NaN, left out
        return np.asarray(values, dtype=np.float64) @ FOURTH


def probe_rows(support_steps: np.ndarray, signs: np.ndarray, stride: np.ndarray) -> np.ndarray:
    """The displacements of the probes: for each direction d and k = 1..4, k·stride[d]·signs[d]·h.

    Returns shape ``(4·len(signs), len(support_steps))``, four rows per direction.
    """
    k = np.arange(1, 5, dtype=np.float64)
    scaled = signs * support_steps[None, :] * stride[:, None]
    return (k[None, :, None] * scaled[:, None, :]).reshape(-1, support_steps.size)


def measure_noise(
    line: Line,
    center: float,
    repeats: tuple[float, ...],
    support: np.ndarray,
    support_steps: np.ndarray,
    seed: int,
    floor: float | None = None,
) -> JNoise:
    """Measures J's noise along random ±1 directions over the components ``support`` (each moved
    by its step ``support_steps``), from J(θ) = ``center``; ``repeats`` are other evaluations of
    J at θ itself (their spread is J's non-determinism). Every pair is measured (a check that
    reads its components first measures the first pairs alone: :class:`NoiseProbes`).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> def line(support, rows):  # J = θ·θ at θ = 1 with noise of size 1e-12 per evaluation
        ...     theta = 1.0 + rows.sum(axis=1)
        ...     return theta**2 + 1e-12 * rng.standard_normal(len(rows))
        >>> noise = measure_noise(line, 1.0, (1.0,), np.array([0]), np.array([1e-3]), 0, 1e-16)
        >>> bool(0.3e-12 < noise.sigma < 3e-12), noise.directions
        (True, 64)
    """
    return NoiseProbes(line, center, repeats, support, support_steps, seed, floor).every()


class NoiseProbes:
    """J's noise measured in two parts over the same ``PROBE_DIRECTIONS`` directions (drawn once
    from the seed): the first ``FIRST_PAIRS`` mirrored pairs, and the rest where asked.

    :meth:`first` measures the first pairs, and the rest at once where those cross a jump or J
    stood still along one of them (the jump rule needs every pair's median: see
    ``FIRST_JUMP_FACTOR``); :meth:`every` measures whatever pairs are left. The arguments are
    :func:`measure_noise`'s.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> def line(support, rows):  # J = θ·θ at θ = 1 with noise of size 1e-12 per evaluation
        ...     return (1.0 + rows.sum(axis=1)) ** 2 + 1e-12 * rng.standard_normal(len(rows))
        >>> probes = NoiseProbes(line, 1.0, (), np.array([0]), np.array([1e-3]), 0, 1e-16)
        >>> probes.first().directions, probes.every().directions
        (32, 64)
    """

    def __init__(
        self,
        line: Line,
        center: float,
        repeats: tuple[float, ...],
        support: np.ndarray,
        support_steps: np.ndarray,
        seed: int,
        floor: float | None = None,
    ) -> None:
        self._line, self._center = line, center
        self._spread = max((abs(r - center) for r in repeats), default=0.0)
        self._floor = rounding_floor(center) if floor is None else floor
        rng = np.random.default_rng([seed, 7])
        width = min(PROBE_WIDTH, support.size)
        picks = rng.choice(support.size, width, replace=False)  # one support: one batched call
        self._chosen, self._steps = support[picks], support_steps[picks]
        half = rng.choice([-1.0, 1.0], size=(PROBE_DIRECTIONS // 2, width))
        # direction d and its mirror, d + PROBE_DIRECTIONS / 2
        self._signs = np.concatenate([half, -half])
        self._found = np.full(PROBE_DIRECTIONS, np.nan)
        self._flat = np.zeros(PROBE_DIRECTIONS, dtype=bool)
        self._pairs = 0 if support.size else PROBE_DIRECTIONS // 2  # pairs measured so far
        self._coarse = False  # whether J stood still along a direction: its grid is coarse there

    def first(self) -> JNoise:
        """J's noise from the first ``FIRST_PAIRS`` pairs, or from every pair where they asked."""
        self._measure(FIRST_PAIRS)
        fourths = self._fourths()
        finite = fourths[np.isfinite(fourths)]
        smaller = np.fmin(fourths[:, 0], fourths[:, 1])
        median = float(np.nanmedian(smaller)) if np.isfinite(smaller).any() else 0.0
        median *= HALF_NORMAL_MEDIAN / PAIR_MIN_MEDIAN
        if self._coarse or np.any(finite > FIRST_JUMP_FACTOR * median):
            return self.every()
        return self._noise()

    def every(self) -> JNoise:
        """J's noise from all ``PROBE_DIRECTIONS`` directions."""
        self._measure(PROBE_DIRECTIONS // 2)
        return self._noise()

    def _measure(self, pairs: int) -> None:
        """Measures pairs up to ``pairs`` (those not measured yet): one batched call per stride."""
        half = PROBE_DIRECTIONS // 2
        new = np.arange(self._pairs, max(pairs, self._pairs))
        if new.size == 0:
            return
        self._pairs = int(new[-1]) + 1
        pending = np.concatenate([new, new + half])
        stride = np.full(pending.size, PROBE_START)
        for _ in range(PROBE_TRIES):
            rows = probe_rows(self._steps, self._signs[pending], stride)
            values = self._line(self._chosen, rows).reshape(-1, 4)
            values = np.concatenate([np.full((pending.size, 1), self._center), values], 1)
            moved = np.any(values != values[:, :1], axis=1)
            self._found[pending[moved]] = np.abs(fourth_differences(values[moved]))
            pending, stride = pending[~moved], stride[~moved]
            self._coarse = self._coarse or pending.size > 0
            if pending.size == 0:
                break
            stride *= PROBE_GROWTH
        self._flat[pending] = True

    def _fourths(self) -> np.ndarray:
        """The |fourth differences| of the pairs measured, one row per pair."""
        return self._found.reshape(2, -1).T[: self._pairs]

    def _noise(self) -> JNoise:
        directions = 2 * self._pairs if self._chosen.size else 0
        if directions == 0:
            return JNoise(0.0, self._spread, self._floor, 0, 0, self._center)
        sigma, jumps = noise_sigma(self._fourths(), self._coarse)
        flat = int(self._flat.reshape(2, -1).T[: self._pairs].sum())
        return JNoise(sigma, self._spread, self._floor, directions, flat, self._center, jumps)


def noise_sigma(fourths: np.ndarray, coarse: bool = False) -> tuple[float, int]:
    """σ of one evaluation of J from the |fourth differences| of mirrored pairs of directions (one
    row per pair; NaN where a direction measured nothing), and how many directions were left out
    as crossing a jump (beyond ``JUMP_FACTOR`` times the median read from the pairs' smaller
    halves). Where J is ``coarse`` (it stood still along a direction at the first stride), its
    fourth differences are steps of its grid, the smaller half of a pair often none (0, or the
    float64 residue of adding multiples of the grid), and give no scale to call a jump by.

    Example:
        >>> rounding = np.linspace(0.5, 1.5, 64).reshape(32, 2) * np.sqrt(70.0)  # σ ≈ 1
        >>> rounding[:20, 0] = 1e3  # a jump on one side of θ, crossed by 20 of the 32 pairs
        >>> sigma, jumps = noise_sigma(rounding)
        >>> round(sigma, 2), jumps
        (1.16, 20)
    """
    fourths = np.asarray(fourths, dtype=np.float64)
    finite = fourths[np.isfinite(fourths)]
    if finite.size == 0:
        return 0.0, 0
    smaller = np.fmin(fourths[:, 0], fourths[:, 1])  # NaN only where neither half measured
    smaller = smaller[np.isfinite(smaller)]
    median = float(np.median(smaller)) * HALF_NORMAL_MEDIAN / PAIR_MIN_MEDIAN
    # A median of 0 (most smaller halves flat) gives no scale either.
    scaled = median > 0 and not coarse
    jump = finite > JUMP_FACTOR * median if scaled else np.zeros(finite.size, dtype=bool)
    bulk = finite[~jump]
    sigma = float(np.quantile(bulk, 0.75) / (HALF_NORMAL_Q75 * np.sqrt(70.0)))
    return sigma, int(jump.sum())
