"""The readings of components, their codes, and the arrays that carry them while the evidence
model (:mod:`gradwatch.evidence.model`) fills them in: a reading is a test of |a − n| against the
tolerance of n's measured noise, whatever |a| and |n| are."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradwatch.evidence.noise import NOISE_MULTIPLE

__all__ = [
    "AGREES",
    "DISAGREES",
    "FITTED_STEP",
    "LONGER_STEPS",
    "NOT_JUDGED",
    "OFF_KINK",
    "ON_KINK",
    "READINGS",
    "REASONS",
    "RECHECKS",
    "STEP_LOST",
    "WIDER",
    "WITHIN_NOISE",
    "Evidence",
    "Record",
    "read",
]

READINGS = ("agrees", "disagrees", "not judged")
AGREES, DISAGREES, NOT_JUDGED = 0, 1, 2
REASONS = ("", "within noise", "on a kink", "step lost")
WITHIN_NOISE, ON_KINK, STEP_LOST = 1, 2, 3
# The last re-check: gradwatch.check.generic_point.
RECHECKS = ("", "longer steps", "off kink", "fitted step", "generic point")
LONGER_STEPS, OFF_KINK, FITTED_STEP = 1, 2, 3
# The steps of the re-check, in units of the first step: a truncation error grows 4× per doubling
# (see gradwatch.evidence.recheck).
WIDER = (2.0, 4.0)


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


class Record:
    """The evidence arrays while they are being filled in; ``sigma`` is J's noise behind each
    component's reading (J's noise measured first, or its tensor's where that was larger)."""

    def __init__(
        self, analytic: np.ndarray, numeric: np.ndarray, noise: np.ndarray, sigma: np.ndarray
    ) -> None:
        self.analytic, self.numeric, self.noise = analytic.copy(), numeric.copy(), noise.copy()
        self.first_numeric, self.sigma = numeric.copy(), sigma.copy()
        # Backprop's value at θ itself: a reading off a kink replaces ``analytic`` with backprop's
        # at the jittered θ, and a later reading at θ (the fitted step) must compare with θ's own.
        self.at_theta = analytic.copy()
        size = analytic.size
        self.reading = np.zeros(size, np.int8)
        self.reason = np.zeros(size, np.int8)
        self.recheck = np.zeros(size, np.int8)
        self.kink = np.zeros(size, bool)
        # The step each reading was taken at (the first step until a longer one is read): J's
        # noise behind a reading is measured at that stride
        # (gradwatch.evidence.escalation.tensor_noise).
        self.step = np.full(size, np.nan)

    def set(
        self,
        at: np.ndarray,
        values: tuple[np.ndarray, np.ndarray, np.ndarray],
        pass_max: float,
        recheck: int,
    ) -> None:
        analytic, numeric, noise = values
        self.analytic[at], self.numeric[at], self.noise[at] = analytic, numeric, noise
        self.reading[at], self.reason[at] = read(analytic, numeric, noise, pass_max)
        self.recheck[at] = recheck

    def within_noise(self) -> np.ndarray:
        """Positions read as zero within noise (not on a kink, not a lost step)."""
        return np.flatnonzero((self.reading == NOT_JUDGED) & (self.reason == WITHIN_NOISE))

    def measured(self) -> np.ndarray:
        """Whether each component has a reading of its value: judged, or within noise."""
        return (self.reading != NOT_JUDGED) | (self.reason == WITHIN_NOISE)

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
