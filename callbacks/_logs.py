"""What a check writes: scalars for every logger, TensorBoard's text, histogram and chart layout,
and the console summary."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from gradwatch import GradCheckReport, Verdict

DIFFERENCE = "gradcheck/difference"
VERDICT = "gradcheck/verdict"
WORST = "gradcheck/worst_components"
ABS_ERROR = "gradcheck/abs_error"
LOG10_DIFFERENCE = "gradcheck/log10_difference"
LOG10_FLOOR = "gradcheck/log10_rounding_floor"
WITHOUT_KINKS = "gradcheck/difference_without_kinks"
ROUNDING_FLOOR = "gradcheck/rounding_floor"
KINKS = "gradcheck/kinks"
SUSPICIOUS = "gradcheck/suspicious_components"
LOG10_PASS_MAX = "gradcheck/bands/log10_pass_max"
LOG10_WARN_MAX = "gradcheck/bands/log10_warn_max"
# Differences below float64's machine epsilon are all "zero"; a floor keeps log10 finite and
# the chart's axis readable.
_LOG10_FLOOR = 1e-16


def _unfinished(report: GradCheckReport) -> bool:
    # A check that raised compared no component: its difference is unknown, not 0.
    return report.components_checked == 0 and report.failure is not None


def scalars(report: GradCheckReport) -> dict[str, float]:
    """The scalars every logger gets: the difference (the material's formula, and without kinks,
    which the verdict reads), one per parameter, the verdict level, the rounding floor, and the
    counts of kinks and suspicious components."""
    values = {
        DIFFERENCE: report.difference,
        WITHOUT_KINKS: report.difference_without_kinks,
        ROUNDING_FLOOR: report.noise_floor,
        KINKS: float(report.kink_count),
        SUSPICIOUS: float(report.flagged_count),
        VERDICT: float(report.verdict.level),
    }
    values.update({f"{DIFFERENCE}/{name}": d for name, d in report.per_parameter.items()})
    if _unfinished(report):
        values.update({DIFFERENCE: math.nan, WITHOUT_KINKS: math.nan, ROUNDING_FLOOR: math.nan})
    return values


def _log10(value: float) -> float:
    return math.log10(max(value, _LOG10_FLOOR)) if math.isfinite(value) else math.nan


def band_scalars(report: GradCheckReport, pass_max: float, warn_max: float) -> dict[str, float]:
    """The difference the verdict reads, the rounding floor and the verdict bands in decades, for
    the TensorBoard chart layout."""
    unknown = _unfinished(report)
    return {
        LOG10_DIFFERENCE: math.nan if unknown else _log10(report.difference_without_kinks),
        LOG10_FLOOR: math.nan if unknown else _log10(report.noise_floor),
        LOG10_PASS_MAX: math.log10(pass_max),
        LOG10_WARN_MAX: math.log10(warn_max),
    }


def layout(pass_max: float, warn_max: float) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's Custom Scalars page: the difference against the material's bands.

    Differences span decades (1e-10 passes, 1e-2 fails), so the band chart is in log10: the
    difference is one line, the pass and warn limits two flat lines (−7 and −3 by default).
    """
    bands = f"(pass below {pass_max:.0e}, fail above {warn_max:.0e})"
    return {
        "gradcheck": {
            f"log10 difference vs bands {bands}": [
                "Multiline",
                [f"^{LOG10_DIFFERENCE}$", f"^{LOG10_FLOOR}$", "^gradcheck/bands/"],
            ],
            f"log10 difference, shaded warn band {bands}": [
                "Margin",
                [LOG10_DIFFERENCE, LOG10_PASS_MAX, LOG10_WARN_MAX],
            ],
            "difference per parameter": ["Multiline", [f"^{DIFFERENCE}/"]],
            "verdict (0 pass, 1 warn, 2 fail)": ["Multiline", [f"^{VERDICT}$"]],
        }
    }


def _headline(report: GradCheckReport) -> str:
    return f"fail: {report.failure}" if _unfinished(report) else report.headline()


def worst_text(step: int, report: GradCheckReport, k: int) -> str:
    """The markdown of the text tag: the headline, what to do, notes, the worst components."""
    if _unfinished(report):
        return f"**step {step}**: {_headline(report)}"
    parts = [f"**step {step}**: {report.headline()}", report.message]
    parts += [f"note: {note}" for note in report.notes]
    parts.append(report.worst_markdown(k))
    return "\n\n".join(parts)


def console_text(step: int, report: GradCheckReport) -> str:
    """One line per check; the whole report (notes, worst components, per parameter) unless it
    passed."""
    line = f"GradientCheck at step {step}: {_headline(report)}"
    if report.verdict is Verdict.PASS or _unfinished(report):
        return line
    return f"{line}\n{report}"


def write_tensorboard(
    writer: SummaryWriter, step: int, report: GradCheckReport, log_worst: int
) -> None:
    """The text table and the error histogram (scalars go through ``log_metrics``)."""
    if log_worst > 0:
        writer.add_text(WORST, worst_text(step, report, log_worst), step)
    errors = report.abs_errors[np.isfinite(report.abs_errors)]
    if errors.size:
        writer.add_histogram(ABS_ERROR, errors, step)


# A check shorter than this shows no progress bar at all (tqdm's `delay`).
PROGRESS_DELAY_S = 3.0


def _nothing() -> None:
    return None


@contextmanager
def progress(show: bool) -> Iterator[Callable[[], None]]:
    """A running count of calls of J, drawn only once a check has taken a few seconds; yields the
    function to call per call. (A count, not a bar: the engine evaluates many θ per call where it
    can, and how many is its own business.)"""
    if not show:
        yield _nothing
        return
    bar = tqdm(
        desc="GradientCheck: evaluating J",
        unit=" calls",
        delay=PROGRESS_DELAY_S,
        leave=False,
        dynamic_ncols=True,
    )

    def tick() -> None:
        bar.update(1)

    try:
        yield tick
    finally:
        bar.close()
