"""The callback's logic, shared by the ``pytorch_lightning`` and the ``lightning`` flavours.

Hooks decide *when* (an integer comparison on every batch), :func:`gradwatch.check_module` does
the check, the helpers of :mod:`._logs` say what was found. Of the trainer's state only
``global_step``, ``accumulate_grad_batches``, ``loggers``, ``callbacks``, ``strategy``,
``is_global_zero``, ``global_rank`` and ``world_size`` are read, and one private counter,
``fit_loop.epoch_loop._batches_that_stepped``: the step Lightning's own logging uses (see
:func:`_logged_step`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from gradwatch import GradCheckReport, PartitionError, Thresholds, check_module
from gradwatch.arguments import (
    CHECK_MODES,
    DROPOUT_MODES,
    check_choice,
    check_epsilon,
    check_non_negative,
    check_sample,
    check_seed,
    check_thresholds,
    renamed,
)
from gradwatch.module import CheckMode, DropoutMode, checked_parameters
from gradwatch.sharded import check_budget

from . import _cli, _distributed, _faults, _logs, _sharded, _training_path
from . import _validate as v
from ._objective import (
    logging_muted,
    objective,
    require_objective,
)
from ._outcome import Outcome, logged_step
from ._schedule import Schedule

# LightningCLI configs check these arguments' ranges when they are parsed (see _cli).
_cli.register()


class GradientCheckBase(Outcome):
    """Everything of ``GradientCheck`` but the Lightning base class (see ``gradient_check.py``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # A wrong keyword is told here, in the name the user wrote and with the option meant:
        # Python's own error names `GradientCheckBase.__init__`. (LightningCLI reads the options
        # from `__init__`: an inherited `__new__` is not looked at.)
        wrong = v.wrong_call(cls, args, kwargs)
        if wrong is not None:
            raise wrong
        return super().__new__(cls)

    def __init__(
        self,
        *,
        at_init: bool = True,
        after_steps: _cli.AfterSteps = (100,),
        every_n_steps: _cli.EveryNSteps = None,
        epsilon: _cli.Epsilon = 1e-7,
        sample: _cli.Sample = None,
        include: str | Sequence[str] | None = None,
        dropout: DropoutMode = "off",
        mode: CheckMode = "components",
        thresholds: _cli.Bands = None,
        seed: _cli.Seed = 0,
        log_worst: _cli.LogWorst = 10,
        on_fail: v.OnFail = "warn",
        name: _cli.Name = _logs.DEFAULT_NAME,
        progress: bool = True,
        training_path: bool = False,
        replica_budget: int | None = None,
        warn_not_judged: bool = True,
        components: _cli.Sample = None,
        pass_max: _cli.PassMax = None,
        warn_max: _cli.WarnMax = None,
    ) -> None:
        super().__init__()
        # The arguments check_module takes are checked by its own rules, told as the callback's.
        try:
            self.schedule = Schedule(
                at_init=v.check_flag("at_init", at_init),
                after_steps=v.check_steps(after_steps),
                every_n_steps=_cli.check_every_n_steps(every_n_steps),
            )
            self.epsilon = check_epsilon(epsilon)
            self.sample = check_sample(renamed("components", "sample", components, sample))
            self.include = v.check_include(include)
            self.dropout = cast(DropoutMode, check_choice("dropout", dropout, DROPOUT_MODES))
            self.mode = cast(CheckMode, check_choice("mode", mode, CHECK_MODES))
            self.thresholds = _bands(thresholds, pass_max, warn_max)
            self.seed = check_seed(seed)
            self.log_worst = check_non_negative("log_worst", log_worst)
            self.on_fail = check_choice("on_fail", on_fail, v.ON_FAIL)
            self.name = v.check_name(name)
            self.progress = v.check_flag("progress", progress)
            self.training_path = v.check_flag("training_path", training_path)
            self.replica_budget = check_budget(replica_budget)
            self.warn_not_judged = v.check_flag("warn_not_judged", warn_not_judged)
        except (TypeError, ValueError) as err:
            raise v.told(err) from None  # raised here: the frames of the rule add nothing
        self._label = _logs.label(self.name)
        self._reset()
        # Lightning reads `state_key` at every hook call: build it once.
        self._state_key = _state_key(self)

    def _reset(self) -> None:
        """The state of one run: what was checked, what is due, what J was seen to do."""
        self.reports: dict[int, GradCheckReport] = {}
        self._checks: list[dict[str, Any]] = []
        self._next_due: float = math.inf
        self._loss_found = False  # whether a check of this run has had J from the module
        self._postponed_from: int | None = None  # a due check waiting for a batch with J
        self._told: set[int] = set()  # loggers told they get scalars only (by id)

    @property
    def state_key(self) -> str:
        """One key per check (its name, schedule, θ and method), so several ``GradientCheck``
        callbacks keep separate states."""
        return self._state_key

    @property
    def checked_steps(self) -> tuple[int, ...]:
        """The steps checked so far, including those restored from a checkpoint."""
        return tuple(int(c["step"]) for c in self._checks)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            # Every fit starts afresh (a callback reused for the folds of a cross-validation
            # checks each); a resumed fit gets its checks back from the checkpoint, which
            # Lightning loads after the callbacks' setup.
            self._reset()
            _distributed.require_no_collectives(trainer, pl_module)
            _sharded.require_checkable(trainer)
            _warn_if_named_alike(self, trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Here rather than at setup, still before any training step: Lightning calls the
        # module's `configure_model`, which may build the layers, after the callbacks' setup.
        require_objective(pl_module)
        _sharded.require_plain_unless_sharded(trainer, pl_module)
        self._require_theta(pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Trainer(sync_batchnorm=True) converts BatchNorm layers after the callbacks' setup.
        _distributed.require_no_collectives(trainer, pl_module)
        # From where training (re)starts, past the last check (restored from a checkpoint): no
        # step is checked twice, and steps before a resume point are not made up.
        after_last = max(self.checked_steps, default=-1) + 1
        self._next_due = self.schedule.first_due(max(trainer.global_step, after_last))

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step < self._next_due:
            return
        # With gradient accumulation, only the first micro-batch of an optimizer step.
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self._check(trainer, pl_module, batch, batch_idx)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        missed = set(self.schedule.unreached(trainer.global_step))
        if self._postponed_from is not None:
            missed.add(self._postponed_from)
        if missed:
            rank_zero_info(
                f"{self._label}: training stopped at step {trainer.global_step}, before the "
                f"check(s) scheduled at step(s) {sorted(missed)}; lower `after_steps` or train "
                "longer"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"checks": [dict(c) for c in self._checks]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checks = [dict(c) for c in state_dict.get("checks", [])]
        # A check that compared components had J from the module (see _postpone).
        self._loss_found = any(math.isfinite(c.get("difference", math.nan)) for c in self._checks)

    def _require_theta(self, pl_module: nn.Module) -> None:
        # The engine's own rules for θ (no trainable parameters, meta device, integer ones, an
        # `include` matching nothing), raised at setup rather than at the first check.
        include = None if self.include is None else list(self.include)
        with v.prefixed():
            checked_parameters(pl_module, include)

    def _check(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # Nothing is recorded before the check has an outcome: a check stopped by
        # KeyboardInterrupt leaves the schedule as it was and runs again after a resume.
        step = trainer.global_step
        cause: Exception | None = None
        try:
            if _sharded.sharded(trainer):  # every process its own batch: J is their mean
                report = _sharded.run(
                    self, engine_options(self, trainer), pl_module, batch, batch_idx
                )
            else:  # under DDP every process checks process 0's batch and evaluates its share
                batch = _distributed.same_batch(trainer, batch)
                report = _run(self, trainer, pl_module, batch, batch_idx)
            self._loss_found = True
        except Exception as err:  # a failed check; KeyboardInterrupt goes through
            if isinstance(err, PartitionError) and err.interrupted:
                raise  # another process was stopped (Ctrl+C): stop this one too
            outcome, failed = _faults.outcome(trainer, pl_module, batch, err, self)
            if outcome == "postponed":
                self._postpone(step)
                return
            if failed is None:  # gradwatch's own error: said, not logged as a verdict
                self._next_due = self.schedule.first_due(step + 1)
                self._report_ours(trainer, step, err, outcome, "nothing was logged for this check")
                return
            report, cause = failed, err
        if self._postponed_from is not None:
            note = (
                f"postponed from step {self._postponed_from}: `training_step` returned None for "
                "that step's batch"
            )
            report = replace(report, notes=(*report.notes, note))
            self._postponed_from = None
        self.reports[step] = report
        history = self._history()
        self._checks.append(
            {
                "step": step,
                "difference": _logs.difference_of(report),
                "verdict": _logs.verdict_of(report),
            }
        )
        self._next_due = self.schedule.first_due(step + 1)
        try:
            self._log(trainer, step, logged_step(trainer), report, history)
        except Exception as err:  # writing the logs is ours: training goes on
            why = _faults.internal_error(err, " while writing the logs")
            self._report_ours(trainer, step, err, why, "the check's logs may be incomplete")
        self._act(trainer, step, report, cause)

    def _postpone(self, step: int) -> None:
        """``training_step`` skipped this batch (returned None): the check stays due and runs on
        the next batch (the first micro-batch of the next optimizer step) that has a loss."""
        if self._postponed_from is None:
            self._postponed_from = step
        rank_zero_info(
            f"{self._label} at step {step}: postponed to the next batch, as `training_step` "
            "returned None for this one (a skipped batch)"
        )


def _state_key(check: GradientCheckBase) -> str:
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


def _run(
    self: GradientCheckBase, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
) -> GradCheckReport:
    """One check of ``batch`` by the callback ``self``, with the module's logging muted."""
    with logging_muted(pl_module):
        return check_module(
            pl_module,
            objective(pl_module, batch_idx),
            batch,
            partition=_distributed.partition(trainer),
            progress=self.progress and trainer.is_global_zero,
            **engine_options(self, trainer),
        )


def engine_options(check: GradientCheckBase, trainer: Any) -> dict[str, Any]:
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
        "training_path": check.training_path and _training_path.of_trainer(trainer),
    }


def _warn_if_named_alike(self: GradientCheckBase, trainer: Any) -> None:
    """Two callbacks logging under one name mix their tags: said once, by the first of them."""
    checks = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, GradientCheckBase)]
    alike = [c for c in checks if c.name == self.name]
    if len(alike) > 1 and alike[0] is self:  # said once, by the first of them
        rank_zero_warn(
            f"GradientCheck: {len(alike)} GradientCheck callbacks log under the name "
            f"{self.name!r}, so their tags and console lines mix; give each its own "
            "`name`, e.g. name='gradcheck/encoder'"
        )


def _bands(thresholds: object, pass_max: float | None, warn_max: float | None) -> Thresholds:
    """``thresholds``, as the engine takes them; ``pass_max``/``warn_max``, their spelling of an
    earlier release, still work for one with a DeprecationWarning."""
    if pass_max is None and warn_max is None:
        return check_thresholds(thresholds)
    if thresholds is not None:
        raise TypeError("pass `thresholds` alone: `pass_max` and `warn_max` are its old spelling")
    warnings.warn(
        "`pass_max` and `warn_max` are deprecated and will be removed in the next release; use "
        "thresholds={'pass_max': ..., 'warn_max': ...} (or gradwatch.Thresholds)",
        DeprecationWarning,
        stacklevel=4,
    )
    old = Thresholds()
    return Thresholds(
        pass_max=old.pass_max if pass_max is None else pass_max,
        warn_max=old.warn_max if warn_max is None else warn_max,
    )
