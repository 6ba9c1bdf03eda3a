"""Argument checks shared by the public functions: raised early, naming the argument, the accepted
values and the value received."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from gradwatch.verdict import Thresholds

DROPOUT_MODES = ("off", "freeze")
CHECK_MODES = ("components", "directions")


def check_epsilon(epsilon: object) -> float | Literal["auto"]:
    """ε must be ``"auto"`` or a finite float in (0, 1): a step of 1 or more measures a secant,
    not a slope."""
    if epsilon == "auto":
        return "auto"
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | np.floating):
        raise TypeError(
            f"`epsilon` must be 'auto' or a float in (0, 1), e.g. 1e-7; got {epsilon!r}"
        )
    value = float(epsilon)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(
            f"`epsilon` must be 'auto' or a finite float in (0, 1), e.g. 1e-7; got {epsilon!r}"
        )
    return value


def check_thresholds(thresholds: object) -> Thresholds:
    """``None`` means the material's bands; a mapping is read as ``Thresholds(**mapping)``."""
    if thresholds is None:
        return Thresholds()
    if isinstance(thresholds, Thresholds):
        return thresholds
    if isinstance(thresholds, Mapping):
        return Thresholds(**thresholds)
    raise TypeError(
        "`thresholds` must be None, a gradwatch.Thresholds or a mapping "
        f"{{'pass_max': ..., 'warn_max': ...}}; got {thresholds!r}"
    )


def check_components(components: object) -> int | None:
    """``None`` (every component) or a positive int (a seeded sample of that many)."""
    if components is None:
        return None
    if isinstance(components, bool) or not isinstance(components, int | np.integer):
        raise TypeError(f"`components` must be None (all) or a positive int; got {components!r}")
    if components <= 0:
        raise ValueError(f"`components` must be None (all) or a positive int; got {components!r}")
    return int(components)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """A string option: one of ``choices``."""
    if value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {accepted}; got {value!r}")
    return str(value)


def check_seed(seed: object) -> int:
    """A non-negative int seed."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"`seed` must be a non-negative int; got {seed!r}")
    if seed < 0:
        raise ValueError(f"`seed` must be a non-negative int; got {seed!r}")
    return int(seed)
