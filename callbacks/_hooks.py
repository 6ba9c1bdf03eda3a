"""The callback's hooks, shared by the ``pytorch_lightning`` and the ``lightning`` flavours; the
rest of the callback is a file per story (see CONTRIBUTING.md): ``_options``, ``_outcome``,
``_logging``, ``_faults``.

Hooks decide *when* (an integer comparison on every batch), :func:`gradwatch.check_module` does
the check, :mod:`._logging` and :mod:`._outcome` say what was found. Of the trainer's state only
``global_step``, ``accumulate_grad_batches``, ``loggers``, ``callbacks``, ``strategy``,
``is_global_zero``, ``global_rank`` and ``world_size`` are read, and one private counter,
``fit_loop.epoch_loop._batches_that_stepped``: the step Lightning's own logging uses (see
:func:`._outcome.logged_step`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from gradwatch import GradCheckReport, PartitionError, check_module
from gradwatch.integration import faults as faults
from gradwatch.integration import text as text
from gradwatch.integration.objective import logging_muted
from gradwatch.module import CheckMode, DropoutMode, checked_parameters
from gradwatch.sharded import check_budget

from . import _faults
from . import _options as o
from ._logging import Logging
from ._options import Schedule, engine_options
from ._outcome import Outcome, logged_step

# LightningCLI configs check these arguments' ranges when they are parsed (see _options).
o.register()


class GradientCheckBase(Outcome, Logging):
    """Everything of ``GradientCheck`` but the Lightning base class (see
    ``gradwatch.callbacks``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # A wrong keyword is told here, in the name the user wrote and with the option meant:
        # Python's own error names `GradientCheckBase.__init__`. (LightningCLI reads the options
        # from `__init__`: an inherited `__new__` is not looked at.)
        wrong = o.wrong_call(cls, args, kwargs)
        if wrong is not None:
            raise wrong
        return super().__new__(cls)

    def __init__(
        self,
        *,
        at_init: bool = True,
        after_steps: o.AfterSteps = (100,),
        every_n_steps: o.EveryNSteps = None,
        epsilon: o.Epsilon = 1e-7,
        sample: o.Sample = None,
        include: str | Sequence[str] | None = None,
        dropout: DropoutMode = "off",
        mode: CheckMode = "components",
        thresholds: o.Bands = None,
        seed: o.Seed = 0,
        log_worst: o.LogWorst = 10,
        on_fail: o.OnFail = "warn",
        name: o.Name = text.DEFAULT_NAME,
        progress: bool = True,
        training_path: bool = False,
        replica_budget: int | None = None,
        warn_not_judged: bool = True,
    ) -> None:
        super().__init__()
        # The arguments check_module takes are checked by its own rules, told as the callback's.
        try:
            self.schedule = Schedule(
                at_init=o.check_flag("at_init", at_init),
                after_steps=o.check_steps(after_steps),
                every_n_steps=o.check_every_n_steps(every_n_steps),
            )
            self.epsilon = o.check_epsilon(epsilon)
            self.sample = o.check_sample(sample)
            self.include = o.check_include(include)
            self.dropout = cast(DropoutMode, o.check_choice("dropout", dropout, o.DROPOUT_MODES))
            self.mode = cast(CheckMode, o.check_choice("mode", mode, o.CHECK_MODES))
            self.thresholds = o.check_thresholds(thresholds)
            self.seed = o.check_seed(seed)
            self.log_worst = o.check_non_negative("log_worst", log_worst)
            self.on_fail = o.check_choice("on_fail", on_fail, o.ON_FAIL)
            self.name = o.check_name(name)
            self.progress = o.check_flag("progress", progress)
            self.training_path = o.check_flag("training_path", training_path)
            self.replica_budget = check_budget(replica_budget)
            self.warn_not_judged = o.check_flag("warn_not_judged", warn_not_judged)
        except (TypeError, ValueError) as err:
            raise o.told(err) from None  # raised here: the frames of the rule add nothing
        self._label = text.label(self.name)
        self._reset()
        # Lightning reads `state_key` at every hook call: build it once.
        self._state_key = o.state_key(self)

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
            _faults.require_no_collectives(trainer, pl_module)
            _faults.require_checkable(trainer)
            o.warn_if_named_alike(self, trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Here rather than at setup, still before any training step: Lightning calls the
        # module's `configure_model`, which may build the layers, after the callbacks' setup.
        _faults.require_objective(pl_module)
        _faults.require_plain_unless_sharded(trainer, pl_module)
        self._require_theta(pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Trainer(sync_batchnorm=True) converts BatchNorm layers after the callbacks' setup.
        _faults.require_no_collectives(trainer, pl_module)
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
        with o.prefixed():
            checked_parameters(pl_module, include)

    def _check(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # Nothing is recorded before the check has an outcome: a check stopped by
        # KeyboardInterrupt leaves the schedule as it was and runs again after a resume.
        step = trainer.global_step
        cause: Exception | None = None
        try:
            if _faults.sharded(trainer):  # every process its own batch: J is their mean
                report = _faults.run(
                    self, engine_options(self, trainer), pl_module, batch, batch_idx
                )
            else:  # under DDP every process checks process 0's batch and evaluates its share
                batch = _faults.same_batch(trainer, batch)
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
                "difference": text.difference_of(report),
                "verdict": text.verdict_of(report),
            }
        )
        self._next_due = self.schedule.first_due(step + 1)
        try:
            self._log(trainer, step, logged_step(trainer), report, history)
        except Exception as err:  # writing the logs is ours: training goes on
            why = faults.internal_error(err, " while writing the logs")
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


def _run(
    self: GradientCheckBase, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
) -> GradCheckReport:
    """One check of ``batch`` by the callback ``self``, with the module's logging muted."""
    with logging_muted(pl_module):
        return check_module(
            pl_module,
            _faults.module_objective(pl_module, batch_idx),
            batch,
            partition=_faults.partition(trainer),
            progress=self.progress and trainer.is_global_zero,
            **engine_options(self, trainer),
        )
