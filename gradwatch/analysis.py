"""Reading the differences honestly: the rounding floor, kinks, and suspicious components.

The material's bands assume a smooth J evaluated in exact-enough arithmetic. Two things break that
in real networks, and both can be measured from J(θ − h), J(θ), J(θ + h):

* rounding: each J carries an error of a few ulps of |J|; the two-sided difference divides it by
  2h, so every numeric component carries noise of about u·|J|/h (u the unit roundoff);
* kinks (ReLU at 0, max-pool ties): across a kink the one-sided slopes (J(θ+h) − J(θ))/h and
  (J(θ) − J(θ−h))/h disagree by the jump in slope, whatever h is, and the two-sided estimate is
  their mean, which no backprop returns. Any value between the two slopes is a valid subgradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradwatch.numeric import same_cost

__all__ = ["ComponentAnalysis", "analyse_components", "determinism_note", "rounding_noise"]

Halved = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

# Typical rounding noise of one numeric component, in units of ε_mach·|J|/h. Calibrated on
# correct float64 MLPs and CNNs: the observed RMS error is 0.3-0.4 ε_mach·|J|/h.
NOISE_SCALE = 0.5
# The largest rounding error among many components, in units of that typical noise (the maximum
# of 17,226 components measured 2.5; 8 leaves a margin so correct models are never flagged).
NOISE_MARGIN = 8.0
# How far above (rounding + smooth curvature) a component's error must be to be called suspicious.
SUSPICION_FACTOR = 10.0
# How far the one-sided slopes must disagree, relative to smooth curvature, to be called a kink.
KINK_FACTOR = 100.0
MIN_FOR_TYPICAL = 16
TYPICAL_QUANTILE = 0.25
# Fraction of the jump in slope by which the analytic value may sit outside the one-sided slopes.
SLOPE_TOLERANCE = 1e-3
# Bound on |J'''| / |J''| per unit of θ used for the truncation error (measured on correct MLPs
# and CNNs: no component's error exceeded the rounding margin at all).
TRUNCATION_FACTOR = 100.0
# A smooth gap halves when the step halves (ratio 0.5); a kink at θ keeps it (ratio 1).
HALVING_TOLERANCE = 0.25
# Curvature moves both one-sided slopes by the same amount when the step halves; a kink moves
# the slope on its side alone. Differences in those moves within this fraction are curvature.
SYMMETRY_TOLERANCE = 0.5
# How many components measure the rounding noise when errors stand above the modelled noise.
CALIBRATION_SAMPLE = 64
# Median of |N(0, 1)|: turns a median absolute deviation into a standard deviation.
HALF_NORMAL_MEDIAN = 0.6745


def rounding_noise(cost: float, steps: np.ndarray, machine_epsilon: float) -> np.ndarray:
    """Typical rounding noise of each two-sided estimate: about ε_mach·|J| / 2h.

    Each J is off by a fraction of an ulp of |J|; the difference of two of them is divided by 2h.

    Example:
        >>> float(rounding_noise(2.0, np.array([1e-7]), 2**-52)[0])  # doctest: +ELLIPSIS
        2.22...e-09
    """
    return NOISE_SCALE * machine_epsilon * max(abs(cost), np.finfo(np.float64).tiny) / steps


def determinism_note(first: float, again: float, epsilon: float, remedy: str) -> str | None:
    """The failure to report when two evaluations of J at the same θ disagree, else None.

    Example:
        >>> determinism_note(1.0, 1.0, 1e-7, "") is None
        True
        >>> determinism_note(1.0, 1.5, 1e-7, "Seed it.")[:40]
        'J is not deterministic: two evaluations '
    """
    if same_cost(first, again):
        return None
    return (
        f"J is not deterministic: two evaluations at the same θ gave {first!r} and {again!r}, "
        f"so each numeric component may be off by up to {abs(first - again) / (2 * epsilon):.1e} "
        f"and the difference means nothing. {remedy}"
    )


@dataclass(frozen=True)
class ComponentAnalysis:
    """Per-component findings next to the numeric estimate.

    ``noise``: typical rounding noise of each numeric component; ``bound``: the largest error a
    correct gradient may show (rounding, with margin, plus the truncation term); ``kink``: the
    step crossed a non-differentiable point and the analytic value lies between the one-sided
    slopes (accepted); ``flagged``: the error is far above ``bound`` and not an accepted kink;
    ``off_slope``: the step sits on a kink (the gap stays when the step halves) but the analytic
    value lies outside the one-sided slopes. That happens where many examples sit on the same
    kink at once (a ReLU unit whose pre-activation is exactly 0 for the whole batch, as after
    pruning): backprop's convention there (relu'(0) = 0 in every example) need not be a slope of
    J, whether or not backprop is correct, so the check cannot judge those components.
    """

    noise: np.ndarray
    bound: np.ndarray
    kink: np.ndarray
    flagged: np.ndarray
    off_slope: np.ndarray | None = None


def analyse_components(
    analytic: np.ndarray,
    plus: np.ndarray,
    minus: np.ndarray,
    center: float,
    steps: np.ndarray,
    machine_epsilon: float,
    halved: Halved | None = None,
) -> ComponentAnalysis:
    """Finds kinks and suspicious components from J(θ ± h·e_i) and J(θ).

    Where the one-sided slopes disagree and the analytic value lies between them, a kink is
    likely but not proven: smooth curvature also opens a gap, h·|J''|. ``halved(positions)``
    returns J(θ ± h/2·e_i) for those components: a smooth gap halves with the step, the jump at
    a kink stays. Without it, too few components to know the typical curvature make only
    rounding ruled out.

    Example:
        >>> relu = lambda x: max(x, 0.0)  # a kink at 0: one-sided slopes 0 and 1
        >>> a = analyse_components(np.array([0.0]), np.array([relu(1e-7)]),
        ...                        np.array([relu(-1e-7)]), relu(0.0), np.array([1e-7]), 2**-52)
        >>> bool(a.kink[0]), bool(a.flagged[0])
        (True, False)
    """
    h = np.asarray(steps, dtype=np.float64)
    noise = rounding_noise(center, h, machine_epsilon)
    numeric = (plus - minus) / (2 * h)
    upper = (plus - center) / h
    lower = (center - minus) / h
    gap = np.abs(upper - lower)  # h·|J''| where J is smooth, the jump in slope at a kink
    error = np.abs(analytic - numeric)
    # Smooth curvature: the typical h·|J''| over all components (most steps cross no kink);
    # too few components to tell typical from special, and only rounding is ruled out.
    # A low quantile, not the median: it stays a smooth component's gap while up to three in
    # four components sit on kinks (whole layers of pruned or dead ReLU units).
    finite = gap[np.isfinite(gap)]
    enough = finite.size >= MIN_FOR_TYPICAL
    typical = float(np.quantile(finite, TYPICAL_QUANTILE)) if enough else 0.0
    curvature = KINK_FACTOR * typical
    if halved is not None:
        noise = noise * _noise_factor(noise, numeric, error, gap, curvature, h, halved)
    margin = NOISE_MARGIN * noise
    crossed = (gap > curvature + 2 * margin) & (error > margin)
    # Each one-sided slope is itself off by h·|J''|/2 on its side of the kink; that curvature is
    # not the typical one, so allow a small fraction of the jump as well.
    slack = 2 * margin + curvature / 2 + SLOPE_TOLERANCE * gap
    between = (analytic >= np.minimum(upper, lower) - slack) & (
        analytic <= np.maximum(upper, lower) + slack
    )
    off_slope = np.zeros_like(crossed)
    if halved is not None and crossed.any():
        crossed &= ~_smooth_when_halved(crossed, gap, plus, minus, center, h, margin, halved)
        off_slope = crossed & ~between  # on a kink for sure, backprop outside its slopes
    kink = crossed & between
    # The central estimate's truncation error is h^2·|J'''|/6; with |J'''| taken as at most
    # TRUNCATION_FACTOR·|J''| per unit of θ, that is TRUNCATION_FACTOR·h·gap (gap = h·|J''|).
    bound = margin + np.where(crossed, 0.0, TRUNCATION_FACTOR * h * gap)
    with np.errstate(invalid="ignore"):
        flagged = ~kink & ~off_slope & ((error > SUSPICION_FACTOR * bound) | ~np.isfinite(error))
    return ComponentAnalysis(noise, bound, kink, flagged, off_slope)


def _smooth_when_halved(
    candidates: np.ndarray,
    gap: np.ndarray,
    plus: np.ndarray,
    minus: np.ndarray,
    center: float,
    h: np.ndarray,
    margin: np.ndarray,
    halved: Halved,
) -> np.ndarray:
    """True where halving the step changes the one-sided slopes as curvature does: the gap
    between them halves, and both move towards each other by the same amount (h·|J''|/4 each).

    A kink at θ keeps the gap. A kink within the step of θ but not at it (an example whose
    pre-activation is 1e-6 from 0) may shrink the gap by any ratio, but only the slope on its
    side moves: the other side's slope, over a stretch without the kink, stays. Neither test
    uses the analytic value, so a wrong gradient cannot pass for a kink.
    """
    positions = np.flatnonzero(candidates)
    plus_half, minus_half = halved(positions)
    step = h[positions] / 2
    noise = 4 * margin[positions]  # each slope at h/2 carries twice the rounding of one at h
    with np.errstate(invalid="ignore", divide="ignore"):  # an infinite J gives NaN: no kink
        upper = (plus[positions] - center) / h[positions]
        lower = (center - minus[positions]) / h[positions]
        upper_half, lower_half = (plus_half - center) / step, (center - minus_half) / step
        moved_up, moved_down = upper - upper_half, lower_half - lower
        ratio = np.abs(upper_half - lower_half) / gap[positions]
        lopsided = np.abs(moved_up - moved_down) > (
            SYMMETRY_TOLERANCE * (np.abs(moved_up) + np.abs(moved_down)) + noise
        )
    halves = (ratio > 0.5 - HALVING_TOLERANCE) & (ratio < 0.5 + HALVING_TOLERANCE)
    smooth = np.zeros_like(candidates)
    smooth[positions] = halves & ~lopsided
    return smooth


def _noise_factor(
    noise: np.ndarray,
    numeric: np.ndarray,
    error: np.ndarray,
    gap: np.ndarray,
    curvature: float,
    h: np.ndarray,
    halved: Halved,
) -> float:
    """How much larger the rounding noise really is than ``noise`` models (1.0 when it is not).

    The model, ε_mach·|J|/h, assumes J is rounded like a number of its own size. J after some
    training, or a KL divergence, is a small difference of large terms, and carries the rounding
    of those terms. Where errors stand above the modelled noise, a sample of those components is
    estimated again at h/2: the estimate of the true derivative stays (a bug stays with it),
    the rounding noise doubles and is drawn anew, so the two estimates differ by rounding alone,
    about √5 times its typical size at h. Steps that cross a kink are left out (their estimate
    moves with h).
    """
    with np.errstate(invalid="ignore"):
        above = np.isfinite(error) & (error > NOISE_MARGIN * noise) & ~(gap > curvature)
    positions = np.flatnonzero(above)
    if positions.size == 0:
        return 1.0
    if positions.size > CALIBRATION_SAMPLE:  # evenly spread, reproducibly
        positions = positions[np.linspace(0, positions.size - 1, CALIBRATION_SAMPLE).astype(int)]
    plus_half, minus_half = halved(positions)
    numeric_half = (plus_half - minus_half) / h[positions]
    with np.errstate(divide="ignore", invalid="ignore"):
        moved = np.abs(numeric_half - numeric[positions]) / (np.sqrt(5.0) * noise[positions])
    moved = moved[np.isfinite(moved)]
    if moved.size == 0:
        return 1.0
    return max(1.0, float(np.median(moved)) / HALF_NORMAL_MEDIAN)
