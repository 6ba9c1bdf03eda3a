"""What a check's verdict comes to: the console line, and the warning or the stop that
``on_fail`` asks for; an error inside gradwatch told as ours. A mixin of
:class:`._hooks.GradientCheckBase`, whose options it reads."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from tqdm.auto import tqdm

from gradwatch import GradCheckReport, Verdict
from gradwatch.integration import faults as faults
from gradwatch.integration import text as text

from ._logging import write_error


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

    def __init__(self, step: int, report: GradCheckReport, name: str = text.DEFAULT_NAME) -> None:
        where = "" if report.verdict is Verdict.FAIL else " in another process (this one's follows)"
        super().__init__(
            f"{text.label(name)} at step {step}: the gradient check failed{where} "
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
    """The acting half of the callback (options ``name``, ``on_fail``, ``warn_not_judged``;
    ``_label``)."""

    name: str
    on_fail: str
    warn_not_judged: bool
    _label: str

    def _report_ours(
        self, trainer: Any, step: int, err: Exception, why: str, consequence: str
    ) -> None:
        """An error inside gradwatch: a warning that says so and what to attach to a bug report
        (the traceback, saved next to the logs where there are logs). Training goes on."""
        own = faults.is_ours(err)  # this process raised it (the others heard of it)
        trace = faults.error_text(err, step, self.name)
        saved = write_error(trainer, self.name, step, trace) if own else None
        where = f"{self._label} at step {step}"
        rank_zero_warn(faults.ours_warning(where, why, consequence, trace, saved, own))

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
            rank_zero_info(text.console_text(step, report, self.name, whole=not told))
        # Every rank stops if any rank's check failed: one rank raising alone would hang.
        if self.on_fail == "raise" and trainer.strategy.reduce_boolean_decision(failed, all=False):
            for logger in trainer.loggers:  # on disk before any process goes down
                logger.save()
            trainer.strategy.barrier("GradientCheck")
            raise GradientCheckError(step, report, self.name) from cause
        if warns:
            what = "failed" if failed else "could not judge the gradients"
            head = f"{self._label} at step {step}: the gradient check {what}"
            whole = f"\n{report}" if not text.unfinished(report) else f" {report.message}"
            told_all = f"{head}.{whole}"
            with tqdm.external_write_mode(file=sys.stderr):
                _warn(told_all)
        elif self.on_fail != "ignore" and self.warn_not_judged and text.partial_pass(report):
            with tqdm.external_write_mode(file=sys.stderr):
                _warn(f"{self._label} at step {step}: {text.partial_pass(report)}")


@rank_zero_only
def _warn(message: str) -> None:
    """A :class:`GradientCheckWarning` on rank zero, attributed to ``gradwatch.callbacks`` rather
    than to a line of ours: Python would print that line's source (``_warn(message)``) under the
    report."""
    warnings.warn_explicit(
        message,
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
