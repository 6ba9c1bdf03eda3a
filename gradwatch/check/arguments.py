"""Argument checks shared by the public functions (and ``gradwatch.callbacks``): raised early,
naming the argument, the accepted values and the value received."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NoReturn

import numpy as np
import torch

from gradwatch.verdict import Thresholds

DROPOUT_MODES = ("off", "freeze")
CHECK_MODES = ("components", "directions")


def reject(
    name: str, accepted: str, value: object, error: type[Exception] = ValueError
) -> NoReturn:
    """Raises ``error`` saying that argument ``name`` must be ``accepted`` and got ``value``."""
    raise error(f"`{name}` must be {accepted}; got {value!r}")


def is_int(value: object) -> bool:
    """An int, numpy's included; never a bool (an int to Python, never to a user)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_flag(name: str, value: object) -> bool:
    """``True`` or ``False``."""
    if not isinstance(value, bool | np.bool_):
        reject(name, "True or False", value, TypeError)
    return bool(value)


def check_epsilon(epsilon: object) -> float | Literal["auto"]:
    """ε must be ``"auto"`` or a finite float in (0, 1): a step of 1 or more measures a secant,
    not a slope."""
    if epsilon == "auto":
        return "auto"
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | np.floating):
        reject("epsilon", "'auto' or a float in (0, 1), e.g. 1e-7", epsilon, TypeError)
    value = float(epsilon)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        reject("epsilon", "'auto' or a finite float in (0, 1), e.g. 1e-7", epsilon)
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


def check_optional_count(name: str, value: object, accepted: str) -> int | None:
    """``None`` or a positive int; ``accepted`` says so in the message."""
    if value is None:
        return None
    if not is_int(value):
        reject(name, accepted, value, TypeError)
    if value <= 0:  # type: ignore[operator]
        reject(name, accepted, value)
    return int(value)  # type: ignore[call-overload]


def check_sample(sample: object) -> int | None:
    """``None`` (every component) or a positive int (a seeded sample of that many)."""
    return check_optional_count("sample", sample, "None (all) or a positive int, e.g. 2000")


def renamed(old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """The value of an option renamed from ``old`` to ``new`` (whose default is None): ``old``
    still works for one release, with a DeprecationWarning; both at once is an error."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"`{old}` is the old name of `{new}`: pass `{new}` alone; got both")
    warnings.warn(
        f"`{old}` is deprecated and will be removed in the next release; use `{new}`",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """A string option: one of ``choices``."""
    if value not in choices:
        reject(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return str(value)


def check_non_negative(name: str, value: object) -> int:
    """A non-negative int."""
    if not is_int(value):
        reject(name, "a non-negative int", value, TypeError)
    if value < 0:  # type: ignore[operator]
        reject(name, "a non-negative int", value)
    return int(value)  # type: ignore[call-overload]


def check_memory_budget(memory_budget: object, default: int) -> int:
    """``None`` (``default`` bytes) or a positive int of bytes: what one batched call of the
    check may hold."""
    accepted = f"None (default {default // 2**20} MiB) or a positive int of bytes, e.g. 2**30"
    found = check_optional_count("memory_budget", memory_budget, accepted)
    return default if found is None else found


def check_seed(seed: object) -> int:
    """A non-negative int seed."""
    return check_non_negative("seed", seed)


def check_torch_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    """A real floating torch dtype (torch.float64 recommended)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        reject(name, "a real floating torch dtype (torch.float64 recommended)", dtype, TypeError)
    return dtype


def check_include(value: object) -> tuple[str, ...] | None:
    """``None`` (every trainable parameter) or glob pattern(s) of parameter names: a str or a
    non-empty list of non-empty strs (an empty list selects nothing to check)."""
    accepted = "None, a glob of parameter names or a non-empty list of them, e.g. ['encoder.*']"
    if value is None:
        return None
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, Sequence) or isinstance(patterns, bytes):
        reject("include", accepted, value, TypeError)
    if not all(isinstance(p, str) for p in patterns):
        reject("include", accepted, value, TypeError)
    if not patterns or not all(patterns):
        reject("include", accepted, value)
    return tuple(patterns)
