"""Constructor checks of ``GradientCheck``: raised at construction (also from a LightningCLI
config), each naming the argument, the accepted values and the value received."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NoReturn

import numpy as np

ON_FAIL = ("warn", "raise", "ignore")
DROPOUT = ("off", "freeze")
MODES = ("components", "directions")


def _reject(
    name: str, accepted: str, value: object, error: type[Exception] = ValueError
) -> NoReturn:
    raise error(f"GradientCheck: `{name}` must be {accepted}; got {value!r}")


def _is_int(value: object) -> bool:
    # bool is an int to Python, never to a user writing `after_steps: [true]`.
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_flag(name: str, value: object) -> bool:
    """``True`` or ``False``."""
    if not isinstance(value, bool | np.bool_):
        _reject(name, "True or False", value, TypeError)
    return bool(value)


def check_steps(value: object) -> tuple[int, ...]:
    """``after_steps``: a step or a list of them, each a non-negative int; sorted, duplicates
    dropped."""
    accepted = "a non-negative int or a list of them, e.g. [100, 1000]"
    steps = [value] if _is_int(value) else value
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
        _reject("after_steps", accepted, value, TypeError)
    for step in steps:
        if not _is_int(step):
            _reject("after_steps", accepted, value, TypeError)
        if step < 0:
            _reject("after_steps", accepted, value)
    return tuple(sorted({int(s) for s in steps}))


def check_optional_count(name: str, value: object, example: str) -> int | None:
    """``None`` or a positive int (``every_n_steps``, ``components``)."""
    if value is None:
        return None
    accepted = f"None or a positive int, e.g. {example}"
    if not _is_int(value):
        _reject(name, accepted, value, TypeError)
    if value <= 0:  # type: ignore[operator]
        _reject(name, accepted, value)
    return int(value)  # type: ignore[call-overload]


def check_non_negative(name: str, value: object) -> int:
    """A non-negative int (``seed``, ``log_worst``)."""
    if not _is_int(value):
        _reject(name, "a non-negative int", value, TypeError)
    if value < 0:  # type: ignore[operator]
        _reject(name, "a non-negative int", value)
    return int(value)  # type: ignore[call-overload]


def check_positive_float(name: str, value: object, accepted: str, upper: float = math.inf) -> float:
    """A finite float in (0, ``upper``) (``epsilon``, ``pass_max``, ``warn_max``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        _reject(name, accepted, value, TypeError)
    number = float(value)
    if not (math.isfinite(number) and 0.0 < number < upper):
        _reject(name, accepted, value)
    return number


def check_epsilon(value: object) -> float | Literal["auto"]:
    """The step ε: a finite float in (0, 1), or ``"auto"`` (the engine picks one per component)."""
    if value == "auto":
        return "auto"
    accepted = "a finite float in (0, 1), e.g. 1e-7, or 'auto'"
    return check_positive_float("epsilon", value, accepted, upper=1.0)


def check_bands(pass_max: object, warn_max: object) -> tuple[float, float]:
    """The verdict bands: 0 < ``pass_max`` <= ``warn_max``, both finite."""
    low = check_positive_float("pass_max", pass_max, "a positive finite float, e.g. 1e-7")
    high = check_positive_float("warn_max", warn_max, "a positive finite float, e.g. 1e-3")
    if low > high:
        raise ValueError(
            "GradientCheck: `pass_max` must not exceed `warn_max` (pass <= pass_max < warn <= "
            f"warn_max < fail); got pass_max={pass_max!r}, warn_max={warn_max!r}"
        )
    return low, high


def check_include(value: object) -> tuple[str, ...] | None:
    """``None`` (every trainable parameter) or glob pattern(s) of parameter names."""
    accepted = "None or a glob of parameter names or a list of them, e.g. ['encoder.*']"
    if value is None:
        return None
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, Sequence) or not patterns:
        _reject("include", accepted, value, TypeError)
    if not all(isinstance(p, str) and p for p in patterns):
        _reject("include", accepted, value, TypeError)
    return tuple(patterns)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        _reject(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value
