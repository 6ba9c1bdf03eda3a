"""The verdict bands of the course material: great, take a careful look, very likely a bug."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

__all__ = ["Thresholds", "Verdict"]


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
