"""``GradientCheck``'s argument types as a LightningCLI config sees them: each checked, when the
config is parsed, by the rule the constructor applies, so a value out of range (``after_steps:
[-100]``) is one parser error naming the argument, as a wrong choice already is.

LightningCLI parses configs with jsonargparse, which checks a value against its parameter's type
before anything is built; a range is no type, so each argument gets a class that jsonargparse
knows by registration (its public ``register_type``), whose deserializer is the argument's rule.
To type checkers and readers the names stand for the plain types (see ``TYPE_CHECKING`` below);
without jsonargparse installed nothing is registered and nothing changes.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

from gradwatch.arguments import (
    check_epsilon,
    check_non_negative,
    check_optional_count,
    check_sample,
    check_seed,
    check_thresholds,
    reject,
)
from gradwatch.verdict import Thresholds

from . import _validate as v

__all__ = [
    "AfterSteps",
    "Bands",
    "Epsilon",
    "EveryNSteps",
    "LogWorst",
    "Name",
    "PassMax",
    "Sample",
    "Seed",
    "WarnMax",
]

EVERY = "None or a positive int, e.g. 1000"


def check_every_n_steps(value: object) -> int | None:
    """``every_n_steps``: None or a positive int."""
    return check_optional_count("every_n_steps", value, EVERY)


def check_band(name: str, value: object) -> float:
    """``pass_max``, ``warn_max``: a positive finite float (their order is checked together,
    by :class:`gradwatch.Thresholds`)."""
    accepted = "a positive finite float, e.g. 1e-7"
    if isinstance(value, bool) or not isinstance(value, int | float):
        reject(name, accepted, value, TypeError)
    if not (math.isfinite(value) and value > 0):
        reject(name, accepted, value)
    return float(value)


if TYPE_CHECKING:
    AfterSteps: TypeAlias = int | Sequence[int]
    EveryNSteps: TypeAlias = int | None
    Epsilon: TypeAlias = float | Literal["auto"]
    Sample: TypeAlias = int | None
    Bands: TypeAlias = Thresholds | Mapping[str, float] | None
    PassMax: TypeAlias = float | None
    WarnMax: TypeAlias = float | None
    Seed: TypeAlias = int
    LogWorst: TypeAlias = int
    Name: TypeAlias = str
else:

    class _Checked:
        """An argument checked by ``rule`` when a config is parsed."""

        rule: ClassVar[Callable[[Any], Any]]

    def _type(name: str, rule: Callable[[Any], Any], doc: str) -> type:
        return type(name, (_Checked,), {"rule": staticmethod(rule), "__doc__": doc})

    AfterSteps = _type("AfterSteps", v.check_steps, "A non-negative int or a list of them.")
    EveryNSteps = _type("EveryNSteps", check_every_n_steps, "None or a positive int.")
    Epsilon = _type("Epsilon", check_epsilon, "'auto' or a float in (0, 1).")
    Sample = _type("Sample", check_sample, "None or a positive int.")
    Bands = _type("Bands", check_thresholds, "None or {pass_max: ..., warn_max: ...}.")
    PassMax = _type("PassMax", lambda x: x is None or check_band("pass_max", x), "Deprecated.")
    WarnMax = _type("WarnMax", lambda x: x is None or check_band("warn_max", x), "Deprecated.")
    Seed = _type("Seed", check_seed, "A non-negative int.")
    LogWorst = _type("LogWorst", lambda x: check_non_negative("log_worst", x), "An int >= 0.")
    Name = _type("Name", v.check_name, "A non-empty str without spaces.")


def _plain(value: Any) -> Any:
    """How a value is written back into a config: a tuple as a list, bands as a mapping."""
    if isinstance(value, Thresholds):
        return {"pass_max": value.pass_max, "warn_max": value.warn_max}
    return list(value) if isinstance(value, tuple) else value


def _deserializer(kind: Any) -> Callable[[Any], Any]:
    def checked(value: Any) -> Any:
        with v.prefixed():
            kind.rule(value)
        return value

    return checked


def register() -> bool:
    """Registers the argument types with jsonargparse, when it is installed; whether it was."""
    if importlib.util.find_spec("jsonargparse") is None:
        return False
    from jsonargparse.typing import register_type

    kinds = (
        AfterSteps,
        EveryNSteps,
        Epsilon,
        Sample,
        Bands,
        PassMax,
        WarnMax,
        Seed,
        LogWorst,
        Name,
    )
    for kind in kinds:
        register_type(
            kind,
            serializer=_plain,
            deserializer=_deserializer(kind),
            type_check=lambda value, kind: False,  # every value goes through its rule
        )
    return True
