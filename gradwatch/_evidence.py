"""The evidence model: what each checked component's two numbers show, from measurements alone.

Component i has backprop's value a_i and the two-sided estimate n_i = (J(θ+h·e_i) − J(θ−h·e_i))/2h.
Its noise σ_i = σ_J / (√2·h) comes from J's measured noise σ_J (:mod:`gradwatch._noise`): each of
the two evaluations carries σ_J, their difference is divided by 2h. Each component gets one
reading (``K`` = ``NOISE_MULTIPLE``):

============  =================================================================================
reading       requires
============  =================================================================================
disagrees     |a − n| > K·σ_i and |a − n| / (|a| + |n|) > pass_max, also after the re-checks
agrees        not disagrees, and max(|a|, |n|) > K·σ_i: there was a gradient to compare
not judged    both |a| and |n| within K·σ_i ("within noise": a zero gradient as far as J can
              tell); or the step sits on a kink that re-checks at nearby points could not leave
              ("on a kink"); or θ_i ± h == θ_i in the check's precision ("step lost")
============  =================================================================================

A first reading of "disagrees" is never final. The component is re-checked at half the step:
J'' estimated from the steps h and h/2 must agree to within its noise for J to be smooth there,
and then Richardson's estimate (4·n(h/2) − n(h)) / 3, free of the h² truncation error, is read
instead ("half step"). Where J'' does not agree (a kink: it doubles when the step halves at a
kink sitting at θ), θ is moved by a small seeded jitter off the kink set, backprop is run again
there, and the component is read at that nearby point ("off kink"), up to ``JITTER_TRIES`` times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gradwatch._noise import NOISE_MULTIPLE

__all__ = [
    "AGREES",
    "DISAGREES",
    "NOISE_MULTIPLE",
    "NOT_JUDGED",
    "READINGS",
    "REASONS",
    "RECHECKS",
    "Evidence",
    "Moved",
    "Objective",
    "gather_evidence",
    "read",
]

# A kink is left by moving θ this many steps in a random direction: a kink that sat at θ then
# lies ~1000 steps away, and the check's ±h crosses one with odds of about 1 in 1000. Each try
# puts a unit sitting on its kink on either side with even odds (on the flat side there is no
# gradient to compare), so three tries leave one unjudged with odds of 1 in 8.
JITTER_STEPS = 1000.0
JITTER_TRIES = 3

READINGS = ("agrees", "disagrees", "not judged")
AGREES, DISAGREES, NOT_JUDGED = 0, 1, 2
REASONS = ("", "within noise", "on a kink", "step lost")
WITHIN_NOISE, ON_KINK, STEP_LOST = 1, 2, 3
RECHECKS = ("", "half step", "off kink", "generic point")  # the last: gradwatch._generic
HALF_STEP, OFF_KINK = 1, 2


class Objective(Protocol):
    """J near θ, as the evidence model needs it; ``positions`` index the checked components."""

    def pairs(self, positions: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """J(θ + h·e_i) and J(θ − h·e_i) for each position i and its step h."""
        ...

    def half_gaps(self, positions: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """((θ_i + h) − (θ_i − h)) / 2 as the check's precision stores it (0: the step is lost)."""
        ...

    def jittered(self, attempt: int) -> Moved | None:
        """The same J at a nearby θ (seeded by ``attempt``), with backprop there; None when the
        check has no backprop to run again (a fixed gradient array)."""
        ...


@dataclass(frozen=True)
class Moved:
    """J at a jittered θ: its objective, backprop's value at every checked position, and J there."""

    objective: Objective
    analytic: np.ndarray
    center: float


@dataclass(frozen=True)
class Evidence:
    """Per checked component: the values its reading compared (``analytic``, ``numeric``: at θ,
    or at the re-check), the noise σ_i of that numeric value, the reading and, for "not judged",
    the reason (codes into ``READINGS`` and ``REASONS``), the re-check that gave the reading
    (``RECHECKS``), whether its step crossed a kink at θ, and the two-sided estimate at θ."""

    analytic: np.ndarray
    numeric: np.ndarray
    noise: np.ndarray
    reading: np.ndarray
    reason: np.ndarray
    recheck: np.ndarray
    kink: np.ndarray
    first_numeric: np.ndarray


def read(
    analytic: np.ndarray, numeric: np.ndarray, noise: np.ndarray, pass_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """The readings of components from their two values and noise (the table above).

    Example:
        >>> reading, reason = read(np.array([1.0, 1.0, 0.0, 1e-12]), np.array([1.0, 2.0, 0.0, 0.0]),
        ...                        np.full(4, 1e-9), 1e-7)
        >>> [READINGS[r] for r in reading]
        ['agrees', 'disagrees', 'not judged', 'not judged']
        >>> REASONS[reason[3]]
        'within noise'
    """
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    tolerance = NOISE_MULTIPLE * np.asarray(noise, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.abs(a - n)
        relative = error / (np.abs(a) + np.abs(n))
        broken = ~(np.isfinite(a) & np.isfinite(n))
        disagrees = broken | ((error > tolerance) & (relative > pass_max))
        signal = np.maximum(np.abs(a), np.abs(n)) > tolerance
    reading = np.where(disagrees, DISAGREES, np.where(signal, AGREES, NOT_JUDGED)).astype(np.int8)
    reason = np.where(reading == NOT_JUDGED, WITHIN_NOISE, 0).astype(np.int8)
    return reading, reason


def _halved(
    center: float,
    first: tuple[np.ndarray, np.ndarray, np.ndarray],
    second: tuple[np.ndarray, np.ndarray, np.ndarray],
    sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From (J(θ+h), J(θ−h), h) at two steps: whether J is smooth there, Richardson's estimate of
    the slope and that estimate's noise.

    Smooth: J'' ≈ (J(θ+h) − 2J(θ) + J(θ−h)) / h² is the same at both steps to within its noise
    (at a kink sitting at θ it doubles when the step halves). Richardson: with n(h) = g + c·h²,
    g = (n(h₂) − r²·n(h)) / (1 − r²), r = h₂/h.
    """
    (p1, m1, h1), (p2, m2, h2) = first, second
    with np.errstate(invalid="ignore", divide="ignore"):
        c1, c2 = (p1 - 2 * center + m1) / h1**2, (p2 - 2 * center + m2) / h2**2
        spread = sigma * np.sqrt(2 / h1**4 + 2 / h2**4 + (2 / h2**2 - 2 / h1**2) ** 2)
        smooth = np.abs(c2 - c1) <= NOISE_MULTIPLE * spread
        r = h2 / h1
        n1, n2 = (p1 - m1) / (2 * h1), (p2 - m2) / (2 * h2)
        estimate = (n2 - r**2 * n1) / (1 - r**2)
        s1, s2 = sigma / (np.sqrt(2) * h1), sigma / (np.sqrt(2) * h2)
        noise = np.sqrt(s2**2 + r**4 * s1**2) / (1 - r**2)
    return smooth & (h2 > 0), estimate, noise


class _Record:
    """The evidence arrays while they are being filled in."""

    def __init__(self, analytic: np.ndarray, numeric: np.ndarray, noise: np.ndarray) -> None:
        self.analytic, self.numeric, self.noise = analytic.copy(), numeric.copy(), noise.copy()
        self.first_numeric = numeric.copy()
        size = analytic.size
        self.reading = np.zeros(size, np.int8)
        self.reason = np.zeros(size, np.int8)
        self.recheck = np.zeros(size, np.int8)
        self.kink = np.zeros(size, bool)

    def set(
        self,
        at: np.ndarray,
        analytic: np.ndarray,
        numeric: np.ndarray,
        noise: np.ndarray,
        pass_max: float,
        recheck: int,
    ) -> None:
        self.analytic[at], self.numeric[at], self.noise[at] = analytic, numeric, noise
        self.reading[at], self.reason[at] = read(analytic, numeric, noise, pass_max)
        self.recheck[at] = recheck

    def done(self) -> Evidence:
        return Evidence(
            self.analytic,
            self.numeric,
            self.noise,
            self.reading,
            self.reason,
            self.recheck,
            self.kink,
            self.first_numeric,
        )


def _at_two_steps(
    objective: Objective, at: np.ndarray, steps: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """J(θ ± h) and J(θ ± h/2) at positions ``at`` in one call, with the stored half-gaps."""
    both = np.concatenate([steps, steps / 2])
    plus, minus = objective.pairs(np.concatenate([at, at]), both)
    gaps = objective.half_gaps(np.concatenate([at, at]), both)
    k = at.size
    return (plus[:k], minus[:k], gaps[:k]), (plus[k:], minus[k:], gaps[k:])


def gather_evidence(
    objective: Objective,
    analytic: np.ndarray,
    first: tuple[np.ndarray, np.ndarray],
    center: float,
    steps: np.ndarray,
    sigma: float,
    pass_max: float,
) -> Evidence:
    """Readings of every checked component from backprop's ``analytic`` values, the two-sided
    pairs ``first`` = (J(θ+h·e_i), J(θ−h·e_i)) at ``steps`` h, J(θ) = ``center`` and J's noise
    ``sigma``; re-checks go through ``objective``.

    Example:
        >>> class Relu:  # J(θ) = relu(θ₀) + 2·θ₁ at θ = (0, 1): a kink in θ₀
        ...     def __init__(self, theta): self.theta = theta
        ...     def cost(self, t): return max(t[0], 0.0) + 2 * t[1]
        ...     def pairs(self, at, h):
        ...         moved = lambda s: [self.cost(self.theta + s * hk * np.eye(2)[i])
        ...                            for i, hk in zip(at, h)]
        ...         return np.array(moved(1)), np.array(moved(-1))
        ...     def half_gaps(self, at, h): return np.asarray(h, float)
        ...     def jittered(self, attempt):
        ...         moved = Relu(self.theta + [1e-4, 0.0])
        ...         return Moved(moved, np.array([1.0, 2.0]), moved.cost(moved.theta))
        >>> j = Relu(np.array([0.0, 1.0]))
        >>> h = np.full(2, 1e-7)
        >>> grad = np.array([1.0, 2.0])
        >>> found = gather_evidence(j, grad, j.pairs([0, 1], h), 2.0, h, 1e-16, 1e-7)
        >>> [READINGS[r] for r in found.reading], [RECHECKS[r] for r in found.recheck]
        (['agrees', 'agrees'], ['off kink', ''])
    """
    analytic = np.asarray(analytic, np.float64)
    steps = np.asarray(steps, np.float64)
    every = np.arange(analytic.size)
    gaps = objective.half_gaps(every, steps)
    plus, minus = first
    with np.errstate(invalid="ignore", divide="ignore"):
        numeric = np.where(gaps > 0, (plus - minus) / (2 * np.where(gaps > 0, gaps, 1.0)), 0.0)
        noise = np.where(gaps > 0, sigma / (np.sqrt(2) * gaps), np.inf)
    record = _Record(analytic, numeric, noise)
    record.reading, record.reason = read(analytic, numeric, noise, pass_max)
    lost = ~(gaps > 0)
    record.reading[lost], record.reason[lost] = NOT_JUDGED, STEP_LOST
    finite = np.isfinite(analytic) & np.isfinite(numeric)
    suspects = np.flatnonzero((record.reading == DISAGREES) & finite)
    if suspects.size:
        halved = _at_two_steps(objective, suspects, steps[suspects])
        smooth, estimate, spread = _halved(
            center, (plus[suspects], minus[suspects], gaps[suspects]), halved[1], sigma
        )
        at = suspects[smooth]
        record.set(at, analytic[at], estimate[smooth], spread[smooth], pass_max, HALF_STEP)
        record.kink[suspects[~smooth]] = True
        _off_kinks(objective, record, suspects[~smooth], steps, sigma, pass_max)
    return record.done()


def _off_kinks(
    objective: Objective,
    record: _Record,
    kinks: np.ndarray,
    steps: np.ndarray,
    sigma: float,
    pass_max: float,
) -> None:
    """Reads components whose step crossed a kink at a jittered θ where J is smooth. A component
    the jitter put on a flat side (a ReLU turned off: no gradient to compare) is tried again at
    the next jitter; those no jitter frees stay "not judged, on a kink"."""
    record.reading[kinks], record.reason[kinks] = NOT_JUDGED, ON_KINK
    for attempt in range(JITTER_TRIES):
        if kinks.size == 0:
            return
        moved = objective.jittered(attempt)
        if moved is None:
            return
        first, second = _at_two_steps(moved.objective, kinks, steps[kinks])
        smooth, estimate, spread = _halved(moved.center, first, second, sigma)
        at = kinks[smooth]
        record.set(at, moved.analytic[at], estimate[smooth], spread[smooth], pass_max, OFF_KINK)
        kinks = kinks[~smooth | (record.reading[kinks] == NOT_JUDGED)]
