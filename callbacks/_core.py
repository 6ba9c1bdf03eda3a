"""The callback's logic, shared by the ``pytorch_lightning`` and the ``lightning`` flavours.

Hooks decide *when* (an integer comparison on every batch), :func:`gradwatch.check_module` does
the check, the helpers of :mod:`._logs` say what was found. Nothing here reads private trainer
state: only ``global_step``, ``accumulate_grad_batches``, ``loggers``, ``strategy``,
``is_global_zero``, ``global_rank``, ``world_size`` and ``progress_bar_callback``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from gradwatch import GradCheckReport, PartitionError, Thresholds, Verdict, check_module
from gradwatch._evaluate import LossFn
from gradwatch._validate import (
    CHECK_MODES,
    DROPOUT_MODES,
    check_choice,
    check_components,
    check_epsilon,
    check_non_negative,
    check_optional_count,
    check_seed,
)
from gradwatch.module import CheckMode, DropoutMode, checked_parameters

from . import _distributed, _faults, _logs
from . import _validate as v
from ._objective import ObjectiveError, logging_muted, objective, require_objective
from ._schedule import Schedule


class GradientCheckError(RuntimeError):
    """Raised by ``GradientCheck(on_fail="raise")`` when a scheduled check fails; stops ``fit``.

    Attributes:
        step: the ``trainer.global_step`` of the check.
        report: the :class:`gradwatch.GradCheckReport`; its summary is the message.

    Example:
        >>> issubclass(GradientCheckError, RuntimeError)
        True
    """

    def __init__(self, step: int, report: GradCheckReport) -> None:
        where = "" if report.verdict is Verdict.FAIL else " in another process (this one's follows)"
        super().__init__(
            f"GradientCheck at step {step}: the gradient check failed{where} (on_fail='raise')."
            f"\n{report}"
        )
        self.step = step
        self.report = report

    def __reduce__(self) -> tuple[type[GradientCheckError], tuple[int, GradCheckReport]]:
        # Spawned workers send exceptions back pickled; rebuild from (step, report).
        return type(self), (self.step, self.report)


def _counted(loss_fn: LossFn, tick: Callable[[], None]) -> LossFn:
    def counted(model: nn.Module, batch: Any) -> Any:
        tick()
        return loss_fn(model, batch)

    return counted


class GradientCheckBase:
    """Everything of ``GradientCheck`` but the Lightning base class (see ``gradient_check.py``)."""

    # The TensorBoardLogger class(es) of the flavour: those loggers also get the text table,
    # the histogram and the chart layout.
    _tensorboard_loggers: tuple[type, ...] = ()

    def __init__(
        self,
        *,
        at_init: bool = True,
        after_steps: int | Sequence[int] = (100,),
        every_n_steps: int | None = None,
        epsilon: float | Literal["auto"] = 1e-7,
        components: int | None = None,
        include: str | Sequence[str] | None = None,
        dropout: DropoutMode = "off",
        mode: CheckMode = "components",
        pass_max: float = 1e-7,
        warn_max: float = 1e-3,
        seed: int = 0,
        log_worst: int = 10,
        on_fail: v.OnFail = "warn",
    ) -> None:
        super().__init__()
        # The arguments check_module takes are checked by its own rules, told as the callback's.
        with v.prefixed():
            every = "None or a positive int, e.g. 1000"
            self.schedule = Schedule(
                at_init=v.check_flag("at_init", at_init),
                after_steps=v.check_steps(after_steps),
                every_n_steps=check_optional_count("every_n_steps", every_n_steps, every),
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
        self.reports: dict[int, GradCheckReport] = {}
        self._checks: list[dict[str, Any]] = []
        self._next_due: float = math.inf
        # Lightning reads `state_key` at every hook call: build it once.
        s = self.schedule
        schedule = {"at_init": s.at_init, "after_steps": s.after_steps, "every_n": s.every_n_steps}
        self._state_key = f"{type(self).__qualname__}{schedule!r}"
        self._layouts: set[int] = set()

    @property
    def state_key(self) -> str:
        """One key per schedule, so several ``GradientCheck`` callbacks keep separate states."""
        return self._state_key

    @property
    def checked_steps(self) -> tuple[int, ...]:
        """The steps checked so far, including those restored from a checkpoint."""
        return tuple(int(c["step"]) for c in self._checks)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            require_objective(pl_module)
            self._require_theta(pl_module)
            _distributed.require_no_collectives(trainer, pl_module)
            self._layouts.clear()

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
        missed = self.schedule.unreached(trainer.global_step)
        if missed:
            rank_zero_info(
                f"GradientCheck: training stopped at step {trainer.global_step}, before the "
                f"check(s) scheduled at step(s) {list(missed)}; lower `after_steps` or train longer"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"checks": [dict(c) for c in self._checks]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checks = [dict(c) for c in state_dict.get("checks", [])]

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
        except Exception as err:  # a failed check; KeyboardInterrupt goes through
            if isinstance(err, PartitionError) and err.interrupted:
                raise  # another process was stopped (Ctrl+C): stop this one too
            report, cause = self._fault(trainer, pl_module, batch, err), err
        self.reports[step] = report
        difference = report.difference if report.components_checked else math.nan
        self._checks.append(
            {"step": step, "difference": difference, "verdict": report.verdict.value}
        )
        self._next_due = self.schedule.first_due(step + 1)
        self._log(trainer, step, report)
        self._act(trainer, step, report, cause)

    def _run(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> GradCheckReport:
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        with logging_muted(pl_module), _logs.progress(show) as tick:
            return check_module(
                pl_module,
                _counted(objective(pl_module, batch_idx), tick),
                batch,
                partition=_distributed.partition(trainer),
                epsilon=self._epsilon,
                include=self._include,
                components=self._components,
                dropout=self._dropout,
                mode=self._mode,
                seed=self._seed,
                thresholds=self._thresholds,
            )

    def _log(self, trainer: Any, step: int, report: GradCheckReport) -> None:
        metrics = _logs.scalars(report)
        t = self._thresholds
        for logger in trainer.loggers:
            tensorboard = isinstance(logger, self._tensorboard_loggers)
            bands = _logs.band_scalars(report, t.pass_max, t.warn_max) if tensorboard else {}
            logger.log_metrics({**metrics, **bands}, step=step)
            writer = logger.experiment if tensorboard else None
            if isinstance(writer, SummaryWriter):  # rank zero; elsewhere a stand-in
                if id(writer) not in self._layouts:
                    writer.add_custom_scalars(_logs.layout(t.pass_max, t.warn_max))
                    self._layouts.add(id(writer))
                _logs.write_tensorboard(writer, step, report, self._log_worst)

    def _fault(self, trainer: Any, pl_module: Any, batch: Any, err: Exception) -> GradCheckReport:
        """The failed report of a check that raised, the same in every process. An error no check
        can get past (J cannot be had from the module as written) is raised again instead."""
        fatal = isinstance(err, ObjectiveError)
        where = ""
        if _distributed.shared(trainer):
            where = f" in process {trainer.global_rank} of {trainer.world_size}"
        why = str(err) if fatal else _faults.reason(err, batch, where)
        why, fatal = _distributed.agreed_fault(trainer, err, why, fatal)
        if fatal and isinstance(err, ObjectiveError):
            raise err
        if fatal:
            raise ObjectiveError(why) from err
        return _faults.failed_report(pl_module, self._include, why, self._epsilon, self._thresholds)

    def _act(
        self, trainer: Any, step: int, report: GradCheckReport, cause: Exception | None = None
    ) -> None:
        rank_zero_info(_logs.console_text(step, report))
        failed = report.verdict is Verdict.FAIL
        if self._on_fail == "raise":
            # Every rank stops if any rank's check failed: one rank raising alone would hang.
            if trainer.strategy.reduce_boolean_decision(failed, all=False):
                for logger in trainer.loggers:  # on disk before any process goes down
                    logger.save()
                trainer.strategy.barrier("GradientCheck")
                raise GradientCheckError(step, report) from cause
        elif failed and self._on_fail == "warn":
            rank_zero_warn(
                f"GradientCheck at step {step}: the gradient check failed. {report.message}"
            )
