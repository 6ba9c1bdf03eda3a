"""Verdicts: how a parameter's verdict and the check's follow from the components' readings
(:mod:`gradwatch.evidence.model`), and the material's bands they use.

With D the material's formula over a parameter's judged components (those that agree or
disagree), and the tensor test (:mod:`gradwatch.evidence.tensor_test`) over its measured components
(judged, or read as within noise: where it convicts, D is taken over those):

===========  ========================================================================
verdict      a parameter's, when
===========  ========================================================================
fail         a component disagrees, or the tensor test convicts, and D > warn_max
warn         a component disagrees, or the tensor test convicts, and D <= warn_max
pass         neither, one component at least agrees, and D <= warn_max
not judged   no component was judged, or none disagrees but D > warn_max (J's noise is
             as large as the gradient: the check can neither clear nor convict it)
===========  ========================================================================

The check's verdict is the worst verdict among the parameters that were judged (fail, then warn,
then pass); it is "not judged" only when no parameter was, and "fail" when the check itself
broke (a NaN or infinite J or gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from gradwatch.common.numeric import relative_difference
from gradwatch.evidence.readings import AGREES, DISAGREES, NOT_JUDGED, REASONS, WITHIN_NOISE
from gradwatch.evidence.tensor_test import convicts, tensor_test

__all__ = ["ParameterResult", "Thresholds", "Verdict", "parameter_verdict", "worst_verdict"]

# "Too close to J's noise": a parameter whose components were judged, none disagreeing, but whose
# difference is above warn_max all the same (see the table above).
NOISY = "too close to J's noise"
# A parameter convicted by the tensor test alone: no single component stands out.
SHARED = "errors shared across components"


class Verdict(str, Enum):
    """What a check found: backprop very likely correct (pass), a measured discrepancy to look at
    (warn), very likely a bug (fail), or nothing the measurements could judge (not judged).

    Example:
        >>> Verdict.PASS == "pass", Verdict.FAIL.level, Verdict.NOT_JUDGED.level
        (True, 2, -1)
    """

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    NOT_JUDGED = "not judged"

    @property
    def level(self) -> int:
        """0 pass, 1 warn, 2 fail, and −1 not judged (what the callback logs as a scalar)."""
        return ("not judged", "pass", "warn", "fail").index(self.value) - 1

    def __str__(self) -> str:
        return self.value


_DEFAULTS = {"pass_max": "1e-7", "warn_max": "1e-3"}


def _check_band(name: str, value: object) -> float:
    accepted = f"`{name}` must be a positive finite float, e.g. {_DEFAULTS[name]}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{accepted}; got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{accepted}; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Thresholds:
    """The verdict bands: pass ≤ ``pass_max`` < warn ≤ ``warn_max`` < fail.

    The defaults are the course material's: 1e-7 or smaller is great, above 1e-3 is very likely a
    bug, in between deserves a careful look at the components.

    Example:
        >>> Thresholds().classify(2e-5)
        <Verdict.WARN: 'warn'>
        >>> Thresholds(pass_max=1e-5).classify(2e-6)
        <Verdict.PASS: 'pass'>
    """

    pass_max: float = 1e-7
    warn_max: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "pass_max", _check_band("pass_max", self.pass_max))
        object.__setattr__(self, "warn_max", _check_band("warn_max", self.warn_max))
        if self.pass_max > self.warn_max:
            raise ValueError(
                "`pass_max` must not exceed `warn_max` (pass <= pass_max < warn <= warn_max < "
                f"fail); got pass_max={self.pass_max!r}, "
                f"warn_max={self.warn_max!r}"
            )

    def classify(self, difference: float) -> Verdict:
        """The verdict of one difference; NaN (non-finite values) is a fail."""
        if not difference <= self.warn_max:  # NaN lands here too
            return Verdict.FAIL
        return Verdict.PASS if difference <= self.pass_max else Verdict.WARN


@dataclass(frozen=True)
class ParameterResult:
    """One parameter tensor's verdict (see the module's table), its difference D over its judged
    components (NaN when none was judged), its noise floor (the difference J's measured noise
    alone produces over them), how many components had each reading, for "not judged" the
    reason (for a verdict the tensor test alone gave, that it did), and ``tensor_test``: the
    tensor test's Σz² over its bound (above 1: the errors together exceed J's noise).

    Example:
        >>> r = ParameterResult("fc.bias", Verdict.NOT_JUDGED, math.nan, math.nan, 0, 0, 8,
        ...                     "within noise")
        >>> r.judged
        0
    """

    name: str
    verdict: Verdict
    difference: float
    noise_floor: float
    agrees: int
    disagrees: int
    not_judged: int
    reason: str = ""
    tensor_test: float = math.nan

    @property
    def judged(self) -> int:
        """Components that agree or disagree."""
        return self.agrees + self.disagrees


def worst_verdict(verdicts: list[Verdict]) -> Verdict:
    """The check's verdict from its parameters': the worst judged one, else "not judged".

    Example:
        >>> worst_verdict([Verdict.PASS, Verdict.NOT_JUDGED, Verdict.WARN])
        <Verdict.WARN: 'warn'>
    """
    judged = [v for v in verdicts if v is not Verdict.NOT_JUDGED]
    return max(judged, key=lambda v: v.level) if judged else Verdict.NOT_JUDGED


def parameter_verdict(
    name: str,
    a: np.ndarray,
    n: np.ndarray,
    noise: np.ndarray,
    reading: np.ndarray,
    reason: np.ndarray,
    warn_max: float,
    pass_max: float = 0.0,
) -> ParameterResult:
    """One parameter's result from its components' values, noise, readings and reasons (codes of
    :mod:`gradwatch.evidence.readings`), by the table above."""
    agrees, disagrees, skipped = (
        int(np.sum(reading == r)) for r in (AGREES, DISAGREES, NOT_JUDGED)
    )
    judged = reading != NOT_JUDGED
    measured = judged | (reason == WITHIN_NOISE)
    test = tensor_test(a, n, noise, measured)
    shared = convicts(a, n, noise, measured, pass_max)
    d, floor = judged_figures(a, n, noise, measured if shared else judged)
    if disagrees or shared:
        verdict = Verdict.WARN if d <= warn_max else Verdict.FAIL
        why = "" if disagrees else SHARED
    elif not judged.any():
        common = np.bincount(reason[~judged], minlength=len(REASONS))
        why = REASONS[int(np.argmax(common))] if skipped else ""
        verdict = Verdict.NOT_JUDGED
    elif d <= warn_max:
        verdict, why = Verdict.PASS, ""
    else:
        verdict, why = Verdict.NOT_JUDGED, NOISY
    return ParameterResult(name, verdict, d, floor, agrees, disagrees, skipped, why, test)


def judged_figures(
    a: np.ndarray, n: np.ndarray, noise: np.ndarray, judged: np.ndarray
) -> tuple[float, float]:
    """The material's formula over the judged components, and the noise floor: the same formula
    with J's measured noise in place of the errors (NaN for both when none was judged)."""
    if not judged.any():
        return math.nan, math.nan
    scale = float(np.linalg.norm(n[judged]) + np.linalg.norm(a[judged]))
    floor = float(np.linalg.norm(noise[judged])) / scale if scale > 0 else math.nan
    return relative_difference(n[judged], a[judged]), floor
