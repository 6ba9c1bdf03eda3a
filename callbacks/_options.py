"""When the callback checks and with what: the schedule (pure integer arithmetic), the options
as a LightningCLI config sees them, the options handed to the engine, and the checkpoint key.

Every option is checked at construction by one rule: the engine's for what
:func:`gradwatch.check_module` takes (``gradwatch.arguments``, ``gradwatch.Thresholds``), the
callback's own for the rest (:mod:`gradwatch.integration.options`). This is the one file of
``gradwatch.callbacks`` that imports those rules.

LightningCLI parses configs with jsonargparse, which checks a value against its parameter's type
before anything is built; a range is no type, so each argument gets a class that jsonargparse
knows by registration (its public ``register_type``), whose deserializer is the argument's rule:
a value out of range (``after_steps: [-100]``) is one parser error naming the argument, as a
wrong choice already is. To type checkers and readers the names stand for the plain types (see
``TYPE_CHECKING`` below); without jsonargparse installed nothing is registered.
"""

from __future__ import annotations

import bisect
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

from pytorch_lightning.utilities import rank_zero_warn

from gradwatch.arguments import CHECK_MODES as CHECK_MODES
from gradwatch.arguments import DROPOUT_MODES as DROPOUT_MODES
from gradwatch.arguments import check_choice as check_choice
from gradwatch.arguments import check_epsilon as check_epsilon
from gradwatch.arguments import check_flag as check_flag
from gradwatch.arguments import check_include as check_include
from gradwatch.arguments import check_non_negative as check_non_negative
from gradwatch.arguments import check_sample as check_sample
from gradwatch.arguments import check_seed as check_seed
from gradwatch.arguments import check_thresholds as check_thresholds
from gradwatch.integration.options import ON_FAIL as ON_FAIL
from gradwatch.integration.options import OnFail as OnFail
from gradwatch.integration.options import check_every_n_steps as check_every_n_steps
from gradwatch.integration.options import check_name as check_name
from gradwatch.integration.options import check_steps as check_steps
from gradwatch.integration.options import prefixed as prefixed
from gradwatch.integration.options import told as told
from gradwatch.integration.options import wrong_call as wrong_call
from gradwatch.training_path import TrainingPath
from gradwatch.verdict import Thresholds

from ._logging import Logging


@dataclass(frozen=True)
class Schedule:
    """The optimizer steps (``trainer.global_step`` values) at which a check is due.

    Step 0 is the random initialization (``at_init``); ``after_steps`` are single steps;
    ``every_n_steps`` adds n, 2n, 3n, ... (not 0: that is ``at_init``'s).

    Example:
        >>> schedule = Schedule(at_init=True, after_steps=(100,), every_n_steps=300)
        >>> [schedule.first_due(s) for s in (0, 1, 101, 301)]
        [0, 100, 300, 600]
    """

    at_init: bool
    after_steps: tuple[int, ...]  # sorted, unique, non-negative
    every_n_steps: int | None

    def first_due(self, lowest: int) -> float:
        """The first scheduled step at or after ``lowest``; ``math.inf`` when none is left.

        A float so that the hot path stays one comparison: ``global_step < first_due``.
        """
        candidates: list[int] = []
        if self.at_init and lowest <= 0:
            candidates.append(0)
        position = bisect.bisect_left(self.after_steps, lowest)
        if position < len(self.after_steps):
            candidates.append(self.after_steps[position])
        if self.every_n_steps is not None:
            n = self.every_n_steps
            candidates.append(max(-(-lowest // n), 1) * n)  # ceil(lowest / n), at least 1
        return min(candidates, default=math.inf)

    def unreached(self, final_step: int) -> tuple[int, ...]:
        """The ``after_steps`` a run that stops at ``final_step`` never gets to (no batch starts at
        the final step, so a check scheduled there does not run either)."""
        return tuple(s for s in self.after_steps if s >= final_step)


if TYPE_CHECKING:
    AfterSteps: TypeAlias = int | Sequence[int]
    EveryNSteps: TypeAlias = int | None
    Epsilon: TypeAlias = float | Literal["auto"]
    Sample: TypeAlias = int | None
    Bands: TypeAlias = Thresholds | Mapping[str, float] | None
    Seed: TypeAlias = int
    LogWorst: TypeAlias = int
    Name: TypeAlias = str
else:

    class _Checked:
        """An argument checked by ``rule`` when a config is parsed."""

        rule: ClassVar[Callable[[Any], Any]]

    def _type(name: str, rule: Callable[[Any], Any], doc: str) -> type:
        return type(name, (_Checked,), {"rule": staticmethod(rule), "__doc__": doc})

    AfterSteps = _type("AfterSteps", check_steps, "A non-negative int or a list of them.")
    EveryNSteps = _type("EveryNSteps", check_every_n_steps, "None or a positive int.")
    Epsilon = _type("Epsilon", check_epsilon, "'auto' or a float in (0, 1).")
    Sample = _type("Sample", check_sample, "None or a positive int.")
    Bands = _type("Bands", check_thresholds, "None or {pass_max: ..., warn_max: ...}.")
    Seed = _type("Seed", check_seed, "A non-negative int.")
    LogWorst = _type("LogWorst", lambda x: check_non_negative("log_worst", x), "An int >= 0.")
    Name = _type("Name", check_name, "A non-empty str without spaces.")


def _plain(value: Any) -> Any:
    """How a value is written back into a config: a tuple as a list, bands as a mapping."""
    if isinstance(value, Thresholds):
        return {"pass_max": value.pass_max, "warn_max": value.warn_max}
    return list(value) if isinstance(value, tuple) else value


def _deserializer(kind: Any) -> Callable[[Any], Any]:
    def checked(value: Any) -> Any:
        with prefixed():
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


def state_key(check: Any) -> str:
    """The callback's key in a checkpoint, from every option that says what is checked and when
    (not from those that only say how it is reported)."""
    s = check.schedule
    defining: dict[str, Any] = {
        "name": check.name,
        "at_init": s.at_init,
        "after_steps": s.after_steps,
        "every_n": s.every_n_steps,
        "include": check.include,
        "mode": check.mode,
        "components": check.sample,  # the key's old spelling: checkpoints keep their key
        "epsilon": check.epsilon,
        "dropout": check.dropout,
        "seed": check.seed,
        "pass_max": check.thresholds.pass_max,
        "warn_max": check.thresholds.warn_max,
    }
    if check.training_path:  # only when on: checkpoints of earlier versions keep their key
        defining["training_path"] = True
    return f"{type(check).__qualname__}{defining!r}"


def engine_options(check: Any, trainer: Any) -> dict[str, Any]:
    """The options of ``check`` that the engine's check takes as they are (the one checker of
    each is the engine's, told as the callback's at construction)."""
    return {
        "epsilon": check.epsilon,
        "include": check.include,
        "sample": check.sample,
        "dropout": check.dropout,
        "mode": check.mode,
        "seed": check.seed,
        "thresholds": check.thresholds,
        "training_path": check.training_path and training_path_of(trainer),
    }


def training_path_of(trainer: Any) -> TrainingPath:
    """How the Trainer computes the gradient: ``training_step`` under its precision plugin's
    ``train_step_context()`` (autocast for ``"bf16-mixed"``/``"16-mixed"``, float64 as the
    default dtype for ``"64-true"``), and the loss scale of its gradient scaler, if any
    (``"16-mixed"`` on CUDA). Only public API: ``trainer.precision_plugin``, the plugin's
    ``train_step_context`` and ``scaler``, ``GradScaler.get_scale()``."""
    plugin = trainer.precision_plugin
    scaler = getattr(plugin, "scaler", None)
    scale = 1.0
    if scaler is not None and scaler.is_enabled():
        scale = float(scaler.get_scale())
    return TrainingPath(context=plugin.train_step_context, loss_scale=scale)


def warn_if_named_alike(self: Any, trainer: Any) -> None:
    """Two callbacks logging under one name mix their tags: said once, by the first of them."""
    checks = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, Logging)]
    alike = [c for c in checks if c.name == self.name]
    if len(alike) > 1 and alike[0] is self:  # said once, by the first of them
        rank_zero_warn(
            f"GradientCheck: {len(alike)} GradientCheck callbacks log under the name "
            f"{self.name!r}, so their tags and console lines mix; give each its own "
            "`name`, e.g. name='gradcheck/encoder'"
        )
