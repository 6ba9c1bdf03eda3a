"""The callback's own option rules, without Lightning: the schedule's (``after_steps``,
``every_n_steps``), ``name``'s, and a call the constructor would refuse (an unknown keyword, with
the option meant; an option removed in 0.3.0, with its replacement). Each message names the
argument, the accepted values and the value received; inside :func:`prefixed` it starts with
``GradientCheck:``. The options the callback hands to :func:`gradwatch.check_module` are checked
by the engine's own rules (``gradwatch.arguments``, ``gradwatch.Thresholds``), not here.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, get_args

from gradwatch.arguments import check_optional_count, is_int, reject

__all__ = [
    "ON_FAIL",
    "REMOVED",
    "OnFail",
    "check_every_n_steps",
    "check_name",
    "check_steps",
    "prefixed",
    "told",
    "wrong_call",
]

OnFail = Literal["warn", "raise", "ignore"]
ON_FAIL: tuple[str, ...] = get_args(OnFail)
# Options removed in 0.3.0 and the option that replaced each: "did you mean" names it.
REMOVED = {"components": "sample", "pass_max": "thresholds", "warn_max": "thresholds"}


@contextmanager
def prefixed() -> Iterator[None]:
    """A ``TypeError``/``ValueError`` raised inside (the engine's checks, the ones here) is raised
    again as the callback's: the same type, its message prefixed ``GradientCheck: ``."""
    try:
        yield
    except (TypeError, ValueError) as err:
        raise told(err) from None  # the check's own frames and message add nothing


def told(err: TypeError | ValueError) -> TypeError | ValueError:
    """``err`` as the callback's: the same type, its message prefixed ``GradientCheck: ``."""
    return type(err)(f"GradientCheck: {err}")


def wrong_call(cls: type, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> TypeError | None:
    """The ``TypeError`` for a call of ``cls`` its ``__init__`` would refuse, in ``cls``'s name
    (Python's names the base class whose ``__init__`` it is), with the option meant for an
    unknown keyword (``after_step``: ``after_steps``); None for a call it takes."""
    init = cls.__init__  # type: ignore[misc]  # the class's own, which the call runs
    signature = inspect.signature(init)
    try:
        # Partial: a missing argument is __init__'s to tell, and unpickling calls
        # `cls.__new__(cls)` with none.
        signature.bind_partial(None, *args, **kwargs)  # None for self
    except TypeError as err:
        options = [p for p in signature.parameters if p != "self"]
        for key in kwargs:
            if key not in options and not _takes_any_keyword(signature):
                close = [REMOVED[key]] if key in REMOVED else []
                close = close or difflib.get_close_matches(key, options, n=1)
                meant = f" did you mean `{close[0]}`?" if close else ""
                return TypeError(
                    f"{cls.__name__}: `{key}` is no option;{meant} its options: "
                    + ", ".join(options)
                )
        if "positional" in str(err):
            return TypeError(
                f"{cls.__name__} takes its options as keywords, e.g. "
                f"{cls.__name__}(after_steps=[100]); got {len(args)} positional: {args!r}"
            )
        return TypeError(f"{cls.__name__}: {err}")
    return None


def _takes_any_keyword(signature: inspect.Signature) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def check_steps(value: object) -> tuple[int, ...]:
    """``after_steps``: a step or a list of them, each a non-negative int; sorted, duplicates
    dropped."""
    accepted = "a non-negative int or a list of them, e.g. [100, 1000]"
    steps = [value] if is_int(value) else value
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
        reject("after_steps", accepted, value, TypeError)
    for step in steps:
        if not is_int(step):
            reject("after_steps", accepted, value, TypeError)
        if step < 0:
            reject("after_steps", accepted, value)
    return tuple(sorted({int(s) for s in steps}))


def check_name(value: object) -> str:
    """``name``: the prefix of every tag the callback logs, a non-empty str without spaces."""
    accepted = (
        "a non-empty str without spaces, the prefix of the logged tags, e.g. 'gradcheck/encoder'"
    )
    if not isinstance(value, str):
        reject("name", accepted, value, TypeError)
    if not value or any(c.isspace() for c in value):
        reject("name", accepted, value)
    return value


def check_every_n_steps(value: object) -> int | None:
    """``every_n_steps``: None or a positive int."""
    return check_optional_count("every_n_steps", value, "None or a positive int, e.g. 1000")
