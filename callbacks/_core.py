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
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from tqdm.auto import tqdm

from gradwatch import GradCheckReport, PartitionError, Thresholds, Verdict, check_module
from gradwatch._validate import (
    CHECK_MODES,
    DROPOUT_MODES,
    check_choice,
    check_components,
    check_epsilon,
    check_non_negative,
    check_seed,
)
from gradwatch.module import CheckMode, DropoutMode, checked_parameters

from . import _card, _cli, _distributed, _faults, _files, _logs, _tensorboard, _training_path
from . import _validate as v
from ._objective import (
    ObjectiveError,
    SkippedBatch,
    logging_muted,
    objective,
    require_objective,
)
from ._schedule import Schedule

# LightningCLI configs check these arguments' ranges when they are parsed (see _cli).
_cli.register()


class GradientCheckError(RuntimeError):
    """Raised by ``GradientCheck(on_fail="raise")`` when a scheduled check fails; stops ``fit``.

    Attributes:
        step: the ``trainer.global_step`` of the check.
        report: the :class:`gradwatch.GradCheckReport`; its summary is the message.
        name: the ``name`` of the callback that raised it.

    Example:
        >>> issubclass(GradientCheckError, RuntimeError)
        True
    """

    def __init__(self, step: int, report: GradCheckReport, name: str = _logs.DEFAULT_NAME) -> None:
        where = "" if report.verdict is Verdict.FAIL else " in another process (this one's follows)"
        super().__init__(
            f"{_logs.label(name)} at step {step}: the gradient check failed{where} "
            f"(on_fail='raise').\n{report}"
        )
        self.step = step
        self.report = report
        self.name = name

    def __reduce__(self) -> tuple[type[GradientCheckError], tuple[int, GradCheckReport, str]]:
        # Spawned workers send exceptions back pickled; rebuild from (step, report, name).
        return type(self), (self.step, self.report, self.name)


class GradientCheckBase:
    """Everything of ``GradientCheck`` but the Lightning base class (see ``gradient_check.py``)."""

    def __init__(
        self,
        *,
        at_init: bool = True,
        after_steps: _cli.AfterSteps = (100,),
        every_n_steps: _cli.EveryNSteps = None,
        epsilon: _cli.Epsilon = 1e-7,
        components: _cli.Components = None,
        include: str | Sequence[str] | None = None,
        dropout: DropoutMode = "off",
        mode: CheckMode = "components",
        pass_max: _cli.PassMax = 1e-7,
        warn_max: _cli.WarnMax = 1e-3,
        seed: _cli.Seed = 0,
        log_worst: _cli.LogWorst = 10,
        on_fail: v.OnFail = "warn",
        name: _cli.Name = _logs.DEFAULT_NAME,
        progress: bool = True,
        training_path: bool = False,
    ) -> None:
        super().__init__()
        # The arguments check_module takes are checked by its own rules, told as the callback's.
        with v.prefixed():
            self.schedule = Schedule(
                at_init=v.check_flag("at_init", at_init),
                after_steps=v.check_steps(after_steps),
                every_n_steps=_cli.check_every_n_steps(every_n_steps),
            )
            self._epsilon = check_epsilon(epsilon)
            self._components = check_components(components)
            self._include = v.check_include(include)
            self._dropout = cast(DropoutMode, check_choice("dropout", dropout, DROPOUT_MODES))
            self._mode = cast(CheckMode, check_choice("mode", mode, CHECK_MODES))
            self._thresholds = Thresholds(pass_max=pass_max, warn_max=warn_max)
            self._seed = check_seed(seed)
            self._log_worst = check_non_negative("log_worst", log_worst)
            self._on_fail = check_choice("on_fail", on_fail, v.ON_FAIL)
            self._name = v.check_name(name)
            self._progress = v.check_flag("progress", progress)
            self.training_path = v.check_flag("training_path", training_path)
        self._label = _logs.label(self._name)
        self._reset()
        # Lightning reads `state_key` at every hook call: build it once, from every option that
        # says what is checked and when (not from those that only say how it is reported).
        s = self.schedule
        defining = {
            "name": self._name,
            "at_init": s.at_init,
            "after_steps": s.after_steps,
            "every_n": s.every_n_steps,
            "include": self._include,
            "mode": self._mode,
            "components": self._components,
            "epsilon": self._epsilon,
            "dropout": self._dropout,
            "seed": self._seed,
            "pass_max": self._thresholds.pass_max,
            "warn_max": self._thresholds.warn_max,
        }
        if self.training_path:  # only when on: checkpoints of earlier versions keep their key
            defining["training_path"] = True
        self._state_key = f"{type(self).__qualname__}{defining!r}"

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
            self._warn_if_named_alike(trainer)

    def _warn_if_named_alike(self, trainer: Any) -> None:
        checks = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, GradientCheckBase)]
        alike = [c for c in checks if c._name == self._name]
        if len(alike) > 1 and alike[0] is self:  # said once, by the first of them
            rank_zero_warn(
                f"GradientCheck: {len(alike)} GradientCheck callbacks log under the name "
                f"{self._name!r}, so their tags and console lines mix; give each its own "
                "`name`, e.g. name='gradcheck/encoder'"
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Here rather than at setup, still before any training step: Lightning calls the
        # module's `configure_model`, which may build the layers, after the callbacks' setup.
        require_objective(pl_module)
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
        include = None if self._include is None else list(self._include)
        with v.prefixed():
            checked_parameters(pl_module, include)

    def _check(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # Nothing is recorded before the check has an outcome: a check stopped by
        # KeyboardInterrupt leaves the schedule as it was and runs again after a resume.
        step = trainer.global_step
        cause: Exception | None = None
        try:
            # Under DDP every process checks process 0's batch and evaluates its share.
            batch = _distributed.same_batch(trainer, batch)
            report = self._run(trainer, pl_module, batch, batch_idx)
            self._loss_found = True
        except Exception as err:  # a failed check; KeyboardInterrupt goes through
            if isinstance(err, PartitionError) and err.interrupted:
                raise  # another process was stopped (Ctrl+C): stop this one too
            outcome, failed = self._fault(trainer, pl_module, batch, err)
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
            self._log(trainer, step, _logged_step(trainer), report, history)
        except Exception as err:  # writing the logs is ours: training goes on
            why = _faults.internal_error(err, " while writing the logs")
            self._report_ours(trainer, step, err, why, "the check's logs may be incomplete")
        self._act(trainer, step, report, cause)

    def _history(self) -> list[_card.Point]:
        """The checks of this run so far (restored ones too), for the card's chart."""
        return [
            _card.Point(int(c["step"]), float(c.get("difference", math.nan)), str(c["verdict"]))
            for c in self._checks
        ]

    def _postpone(self, step: int) -> None:
        """``training_step`` skipped this batch (returned None): the check stays due and runs on
        the next batch (the first micro-batch of the next optimizer step) that has a loss."""
        if self._postponed_from is None:
            self._postponed_from = step
        rank_zero_info(
            f"{self._label} at step {step}: postponed to the next batch, as `training_step` "
            "returned None for this one (a skipped batch)"
        )

    def _run(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> GradCheckReport:
        with logging_muted(pl_module):
            return check_module(
                pl_module,
                objective(pl_module, batch_idx),
                batch,
                partition=_distributed.partition(trainer),
                epsilon=self._epsilon,
                include=self._include,
                components=self._components,
                dropout=self._dropout,
                mode=self._mode,
                seed=self._seed,
                thresholds=self._thresholds,
                progress=self._progress and trainer.is_global_zero,
                training_path=self.training_path and _training_path.of_trainer(trainer),
            )

    def _log(
        self,
        trainer: Any,
        step: int,
        logged_step: int,
        report: GradCheckReport,
        history: list[_card.Point],
    ) -> None:
        """The report as JSON next to the logs; scalars to every logger; TensorBoard's writers
        (rank zero) also get the card, the text, the histogram and the chart layout."""
        name, t = self._name, self._thresholds
        _files.write_report(trainer, name, step, logged_step, report)
        metrics = {**_logs.scalars(report, name), **_training_path.scalars(report, name)}
        for logger in trainer.loggers:
            writer = _tensorboard.writer_of(logger) if trainer.is_global_zero else None
            if writer is None:
                self._tell_scalars_only(trainer, logger)
                logger.log_metrics(metrics, step=logged_step)
                continue
            bands = _tensorboard.band_scalars(report, t.pass_max, t.warn_max, name)
            logger.log_metrics({**metrics, **bands}, step=logged_step)
            _tensorboard.add_layout(writer, self._layouts(trainer))
            _tensorboard.write(writer, step, report, history, self._log_worst, name, logged_step)

    def _tell_scalars_only(self, trainer: Any, logger: Any) -> None:
        """A TensorBoard logger whose writer cannot take the card, text, histogram and layout is
        told so, once, rather than silently given the scalars alone."""
        notice = _tensorboard.scalars_only(logger, self._label)
        if notice and trainer.is_global_zero and id(logger) not in self._told:
            self._told.add(id(logger))
            rank_zero_warn(notice)

    def _layouts(self, trainer: Any) -> list[tuple[str, float, float]]:
        """Every GradientCheck of the trainer as ``(name, pass_max, warn_max)``: TensorBoard
        shows one Custom Scalars layout per run, so the first to log writes all of them."""
        checks = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, GradientCheckBase)]
        if self not in checks:
            checks.append(self)
        return [(c._name, c._thresholds.pass_max, c._thresholds.warn_max) for c in checks]

    def _fault(
        self, trainer: Any, pl_module: Any, batch: Any, err: Exception
    ) -> tuple[str, GradCheckReport | None]:
        """What a check that raised comes to, the same in every process: ``("failed", report)``
        for the user's error (a failed report whose message says why and where); ``("postponed",
        None)`` when ``training_step`` skipped the batch (returned None) after an earlier check
        of the run had J from it; ``(reason, None)`` for an error inside gradwatch. An error no
        check can get past (J cannot be had from the module as written) is raised again."""
        outcome = "failed"
        if isinstance(err, ObjectiveError):
            skipped = isinstance(err, SkippedBatch) and self._loss_found
            outcome = "postponed" if skipped else "fatal"
        elif _faults.is_ours(err):
            outcome = "ours"
        where = ""
        if _distributed.shared(trainer):
            where = f" in process {trainer.global_rank} of {trainer.world_size}"
        why = {
            "failed": lambda: _faults.reason(err, batch, where),
            "ours": lambda: _faults.internal_error(err, where),
        }.get(outcome, lambda: str(err))()
        why, outcome = _distributed.agreed_fault(trainer, err, why, outcome)
        if outcome == "postponed":
            return outcome, None
        if outcome == "ours":
            return why, None
        if outcome == "fatal" and isinstance(err, ObjectiveError):
            raise err
        if outcome == "fatal":
            raise ObjectiveError(why) from err
        report = _faults.failed_report(
            pl_module, self._include, why, self._epsilon, self._thresholds
        )
        return outcome, report

    def _report_ours(
        self, trainer: Any, step: int, err: Exception, why: str, consequence: str
    ) -> None:
        """An error inside gradwatch: a warning that says so and what to attach to a bug report
        (the traceback, saved next to the logs where there are logs). Training goes on."""
        own = _faults.is_ours(err)  # this process raised it (the others heard of it)
        text = _faults.error_text(err, step, self._name)
        saved = _files.write_error(trainer, self._name, step, text) if own else None
        where = f"{self._label} at step {step}"
        rank_zero_warn(_faults.ours_warning(where, why, consequence, text, saved, own))

    def _act(
        self, trainer: Any, step: int, report: GradCheckReport, cause: Exception | None = None
    ) -> None:
        # Progress bars (Lightning's, on stdout) are cleared around the line and drawn again
        # below it: on a terminal the line would otherwise continue the bar's line.
        with tqdm.external_write_mode(file=sys.stderr):
            rank_zero_info(_logs.console_text(step, report, self._name))
        failed = report.verdict is Verdict.FAIL
        # Every rank stops if any rank's check failed: one rank raising alone would hang.
        if self._on_fail == "raise" and trainer.strategy.reduce_boolean_decision(failed, all=False):
            for logger in trainer.loggers:  # on disk before any process goes down
                logger.save()
            trainer.strategy.barrier("GradientCheck")
            raise GradientCheckError(step, report, self._name) from cause
        if self._on_fail != "ignore" and (
            report.verdict is Verdict.NOT_JUDGED or (failed and self._on_fail == "warn")
        ):
            what = "failed" if failed else "could not judge the gradients"
            with tqdm.external_write_mode(file=sys.stderr):
                rank_zero_warn(
                    f"{self._label} at step {step}: the gradient check {what}. {report.message}"
                )


def _logged_step(trainer: Any) -> int:
    """The step at which Lightning logs the ``self.log`` values of the batch now starting: the
    batches that stepped the optimizers so far. It is ``global_step`` with one optimizer;
    ``global_step`` counts every optimizer's steps, so manual optimization with two optimizers
    advances it by 2 per batch while the training curves advance by 1. Lightning keeps it in a
    private counter; without one (another trainer), ``global_step``."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))
