"""What a check leaves behind: the report written next to the logs, scalars to every logger,
TensorBoard's card, text, histogram and layout, the console line, and the warning or the stop
that ``on_fail`` asks for. A mixin of :class:`._core.GradientCheckBase`, whose options it reads."""

from __future__ import annotations

import math
import sys
import warnings
from typing import TYPE_CHECKING, Any

from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from tqdm.auto import tqdm

from gradwatch import GradCheckReport, Thresholds, Verdict
from gradwatch.module import coverage

from . import _card, _faults, _files, _logs, _tensorboard, _training_path

if TYPE_CHECKING:
    pass


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


class GradientCheckWarning(UserWarning):
    """The warning of ``GradientCheck(on_fail="warn")`` when a check fails or judges nothing:
    its message is the whole report (the console shows the check's one line only).

    Catch it or filter it by its category, e.g.
    ``warnings.filterwarnings("error", category=GradientCheckWarning)`` to stop at the first.

    Example:
        >>> issubclass(GradientCheckWarning, UserWarning)
        True
    """


class Outcome:
    """The logging and acting half of the callback (options: ``name``, ``thresholds``,
    ``log_worst``, ``on_fail``; state: ``_checks``, ``_told``, ``_label``)."""

    name: str
    thresholds: Thresholds
    log_worst: int
    on_fail: str
    warn_not_judged: bool
    _label: str
    _checks: list[dict[str, Any]]
    _told: set[int]

    def _history(self) -> list[_card.Point]:
        """The checks of this run so far (restored ones too), for the card's chart."""
        return [
            _card.Point(int(c["step"]), float(c.get("difference", math.nan)), str(c["verdict"]))
            for c in self._checks
        ]

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
        name, t = self.name, self.thresholds
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
            run = _tensorboard.run_name(logger)
            _tensorboard.write(
                writer, step, report, history, self.log_worst, name, logged_step, run
            )

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
        checks = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, Outcome)]
        if self not in checks:
            checks.append(self)
        return [(c.name, c.thresholds.pass_max, c.thresholds.warn_max) for c in checks]

    def _report_ours(
        self, trainer: Any, step: int, err: Exception, why: str, consequence: str
    ) -> None:
        """An error inside gradwatch: a warning that says so and what to attach to a bug report
        (the traceback, saved next to the logs where there are logs). Training goes on."""
        own = _faults.is_ours(err)  # this process raised it (the others heard of it)
        text = _faults.error_text(err, step, self.name)
        saved = _files.write_error(trainer, self.name, step, text) if own else None
        where = f"{self._label} at step {step}"
        rank_zero_warn(_faults.ours_warning(where, why, consequence, text, saved, own))

    def _act(
        self, trainer: Any, step: int, report: GradCheckReport, cause: Exception | None = None
    ) -> None:
        failed = report.verdict is Verdict.FAIL
        warns = self.on_fail != "ignore" and (
            report.verdict is Verdict.NOT_JUDGED or (failed and self.on_fail == "warn")
        )
        # The report is said once: in the warning, in the error, or else on the console.
        told = warns or (failed and self.on_fail == "raise")
        # Progress bars (Lightning's, on stdout) are cleared around the line and drawn again
        # below it: on a terminal the line would otherwise continue the bar's line.
        with tqdm.external_write_mode(file=sys.stderr):
            rank_zero_info(_logs.console_text(step, report, self.name, whole=not told))
        # Every rank stops if any rank's check failed: one rank raising alone would hang.
        if self.on_fail == "raise" and trainer.strategy.reduce_boolean_decision(failed, all=False):
            for logger in trainer.loggers:  # on disk before any process goes down
                logger.save()
            trainer.strategy.barrier("GradientCheck")
            raise GradientCheckError(step, report, self.name) from cause
        if warns:
            what = "failed" if failed else "could not judge the gradients"
            head = f"{self._label} at step {step}: the gradient check {what}"
            text = f"{head}. {report.message}" if _logs.unfinished(report) else f"{head}.\n{report}"
            with tqdm.external_write_mode(file=sys.stderr):
                _warn(text)
        elif self.on_fail != "ignore" and self.warn_not_judged and _partial_pass(report):
            with tqdm.external_write_mode(file=sys.stderr):
                _warn(f"{self._label} at step {step}: {_partial_pass(report)}")


def _partial_pass(report: GradCheckReport) -> str:
    """For a pass with tensors not judged: what it rests on and what to do ("" otherwise)."""
    if report.verdict is not Verdict.PASS or not report.parameters_with(Verdict.NOT_JUDGED):
        return ""
    return (
        f"the gradient check passed on what it could judge: {coverage(report)}. Their "
        "gradients could not be told from J's noise at the step tried, or are zero by "
        "design (a zero-initialized scale or head): check them again after some training, "
        "or with epsilon='auto'; warn_not_judged=False silences this."
    )


@rank_zero_only
def _warn(text: str) -> None:
    """A :class:`GradientCheckWarning` on rank zero, attributed to ``gradwatch.callbacks`` rather
    than to a line of ours: Python would print that line's source (``_warn(text)``) under the
    report."""
    warnings.warn_explicit(
        text,
        GradientCheckWarning,
        filename="gradwatch.callbacks",
        lineno=0,
        module="gradwatch.callbacks",
    )


def logged_step(trainer: Any) -> int:
    """The step at which Lightning logs the ``self.log`` values of the batch now starting: the
    batches that stepped the optimizers so far. It is ``global_step`` with one optimizer;
    ``global_step`` counts every optimizer's steps, so manual optimization with two optimizers
    advances it by 2 per batch while the training curves advance by 1. Lightning keeps it in a
    private counter; without one (another trainer), ``global_step``."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))
