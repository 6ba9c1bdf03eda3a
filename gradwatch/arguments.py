"""The argument rules of gradwatch's public calls, shared with integrations (``gradwatch.callbacks``
checks the options it hands the engine by these same rules): each raises early, naming the
argument, the accepted values and the value received — a ``TypeError`` for a wrong type, a
``ValueError`` for a wrong value — and returns the value in the form the engine uses.

``CHECK_MODES`` are the values of ``check_module(mode=...)``, ``DROPOUT_MODES`` those of
``dropout=``.

Example:
    >>> from gradwatch.arguments import check_epsilon
    >>> check_epsilon(1e-6), check_epsilon("auto")
    (1e-06, 'auto')
    >>> check_epsilon(2.0)
    Traceback (most recent call last):
    ...
    ValueError: `epsilon` must be 'auto' or a finite float in (0, 1), e.g. 1e-7; got 2.0
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NoReturn, ParamSpec, TypeVar

import numpy as np
import torch

from gradwatch.verdict import Thresholds

__all__ = [
    "CHECK_MODES",
    "DROPOUT_MODES",
    "check_choice",
    "check_epsilon",
    "check_flag",
    "check_include",
    "check_memory_budget",
    "check_non_negative",
    "check_optional_count",
    "check_sample",
    "check_seed",
    "check_thresholds",
    "check_torch_dtype",
    "is_int",
    "reject",
    "renamed",
]

DROPOUT_MODES = ("off", "freeze")
CHECK_MODES = ("components", "directions")


def reject(
    name: str, accepted: str, value: object, error: type[Exception] = ValueError
) -> NoReturn:
    """Raises ``error`` saying that argument ``name`` must be ``accepted`` and got ``value``.

    Example:
        >>> reject("every_n_steps", "a positive int", 0)
        Traceback (most recent call last):
        ...
        ValueError: `every_n_steps` must be a positive int; got 0
    """
    raise error(f"`{name}` must be {accepted}; got {value!r}")


def is_int(value: object) -> bool:
    """An int, numpy's included; never a bool (an int to Python, never to a user).

    Example:
        >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(3.0)
        (True, True, False, False)
    """
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_flag(name: str, value: object) -> bool:
    """``True`` or ``False`` (numpy's bool included), returned as a bool.

    Example:
        >>> check_flag("log_histograms", np.bool_(True))
        True
        >>> check_flag("log_histograms", 1)
        Traceback (most recent call last):
        ...
        TypeError: `log_histograms` must be True or False; got 1
    """
    if not isinstance(value, bool | np.bool_):
        reject(name, "True or False", value, TypeError)
    return bool(value)


def check_epsilon(epsilon: object) -> float | Literal["auto"]:
    """ε must be ``"auto"`` or a finite float in (0, 1): a step of 1 or more measures a secant,
    not a slope.

    Example:
        >>> check_epsilon(1e-7)
        1e-07
    """
    if epsilon == "auto":
        return "auto"
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float | np.floating):
        reject("epsilon", "'auto' or a float in (0, 1), e.g. 1e-7", epsilon, TypeError)
    value = float(epsilon)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        reject("epsilon", "'auto' or a finite float in (0, 1), e.g. 1e-7", epsilon)
    return value


def check_thresholds(thresholds: object) -> Thresholds:
    """``None`` means the material's bands; a mapping is read as ``Thresholds(**mapping)``.

    Example:
        >>> check_thresholds(None) == Thresholds()
        True
        >>> check_thresholds({"pass_max": 1e-6, "warn_max": 1e-3}).pass_max
        1e-06
    """
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
    """``None`` or a positive int; ``accepted`` says so in the message.

    Example:
        >>> check_optional_count("max_batches", None, "None or a positive int") is None
        True
        >>> check_optional_count("max_batches", 0, "None or a positive int")
        Traceback (most recent call last):
        ...
        ValueError: `max_batches` must be None or a positive int; got 0
    """
    if value is None:
        return None
    if not is_int(value):
        reject(name, accepted, value, TypeError)
    if value <= 0:  # type: ignore[operator]
        reject(name, accepted, value)
    return int(value)  # type: ignore[call-overload]


def check_sample(sample: object) -> int | None:
    """``None`` (every component) or a positive int (a seeded sample of that many).

    Example:
        >>> check_sample(2000), check_sample(None)
        (2000, None)
    """
    return check_optional_count("sample", sample, "None (all) or a positive int, e.g. 2000")


def renamed(old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """The value of an option renamed from ``old`` to ``new`` (whose default is None): ``old``
    still works for one release, with a DeprecationWarning; both at once is an error.

    Example:
        >>> renamed("components", "sample", None, 100)
        100
    """
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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def removed_keywords(
    **replacements: str,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A public function whose keywords ``replacements`` names were removed: passing one raises
    the TypeError that says what replaces it (Python's own would name the old keyword alone).
    The signature, docstring and annotations stay the function's (``functools.wraps``)."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            old = sorted(replacements.keys() & kwargs.keys())
            if old:
                raise TypeError(
                    f"{function.__name__}() got `{old[0]}`, removed in 0.3.0; use "
                    f"{replacements[old[0]]}"
                )
            return function(*args, **kwargs)

        return checked

    return decorate


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """A string option: one of ``choices``.

    Example:
        >>> check_choice("mode", "directions", CHECK_MODES)
        'directions'
        >>> check_choice("dropout", "on", DROPOUT_MODES)
        Traceback (most recent call last):
        ...
        ValueError: `dropout` must be one of 'off', 'freeze'; got 'on'
    """
    if value not in choices:
        reject(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return str(value)


def check_non_negative(name: str, value: object) -> int:
    """A non-negative int.

    Example:
        >>> check_non_negative("first_step", 0)
        0
    """
    if not is_int(value):
        reject(name, "a non-negative int", value, TypeError)
    if value < 0:  # type: ignore[operator]
        reject(name, "a non-negative int", value)
    return int(value)  # type: ignore[call-overload]


def check_memory_budget(memory_budget: object, default: int) -> int:
    """``None`` (``default`` bytes) or a positive int of bytes: what one batched call of the
    check may hold.

    Example:
        >>> check_memory_budget(None, 2**30), check_memory_budget(2**20, 2**30)
        (1073741824, 1048576)
    """
    accepted = f"None (default {default // 2**20} MiB) or a positive int of bytes, e.g. 2**30"
    found = check_optional_count("memory_budget", memory_budget, accepted)
    return default if found is None else found


def check_seed(seed: object) -> int:
    """A non-negative int seed.

    Example:
        >>> check_seed(0)
        0
    """
    return check_non_negative("seed", seed)


def check_torch_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    """A real floating torch dtype (torch.float64 recommended).

    Example:
        >>> check_torch_dtype(torch.float64)
        torch.float64
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        reject(name, "a real floating torch dtype (torch.float64 recommended)", dtype, TypeError)
    return dtype


def check_include(value: object) -> tuple[str, ...] | None:
    """``None`` (every trainable parameter) or glob pattern(s) of parameter names: a str or a
    non-empty list of non-empty strs (an empty list selects nothing to check).

    Example:
        >>> check_include("encoder.*"), check_include(None)
        (('encoder.*',), None)
    """
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
