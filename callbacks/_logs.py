"""What a check writes: scalars for every logger, TensorBoard's text, histogram and chart layout,
and the console summary."""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from gradwatch import GradCheckReport, Verdict

# Tag names, each after the callback's name ("gradcheck" unless told): gradcheck/difference, ...
DIFFERENCE = "difference"
VERDICT = "verdict"
WORST = "worst_components"
ABS_ERROR = "abs_error"
LOG10_DIFFERENCE = "log10_difference"
LOG10_FLOOR = "log10_rounding_floor"
WITHOUT_KINKS = "difference_without_kinks"
ROUNDING_FLOOR = "rounding_floor"
KINKS = "kinks"
SHARED_KINKS = "shared_kinks"
SUSPICIOUS = "suspicious_components"
BANDS = "bands"
LOG10_PASS_MAX = "bands/log10_pass_max"
LOG10_WARN_MAX = "bands/log10_warn_max"
DEFAULT_NAME = "gradcheck"
# Differences below float64's machine epsilon are all "zero"; a floor keeps log10 finite and
# the chart's axis readable.
_LOG10_FLOOR = 1e-16
# The TensorBoard writers that hold the Custom Scalars layout. TensorBoard shows one layout per
# run, so a writer gets one, with a category per GradientCheck of the Trainer.
_WITH_LAYOUT: weakref.WeakSet[SummaryWriter] = weakref.WeakSet()


def label(name: str) -> str:
    """How the console and messages call the callback: ``GradientCheck``, or with its name.

    Example:
        >>> label("gradcheck"), label("gradcheck/encoder")
        ('GradientCheck', 'GradientCheck[gradcheck/encoder]')
    """
    return "GradientCheck" if name == DEFAULT_NAME else f"GradientCheck[{name}]"


def _unfinished(report: GradCheckReport) -> bool:
    # A check that raised compared no component: its difference is unknown, not 0.
    return report.components_checked == 0 and report.failure is not None


def scalars(report: GradCheckReport, name: str = DEFAULT_NAME) -> dict[str, float]:
    """The scalars every logger gets, under ``name/``: the difference (the material's formula,
    and without kinks, which the verdict reads), one per parameter, the verdict level, the
    rounding floor, and the counts of kinks, shared kinks (components the check cannot judge)
    and suspicious components."""
    counts = report.reading_counts
    values = {
        DIFFERENCE: report.difference,
        WITHOUT_KINKS: report.difference,
        ROUNDING_FLOOR: report.noise_floor,
        KINKS: float(report.kink_count),
        SHARED_KINKS: float(counts["not judged"]),
        SUSPICIOUS: float(counts["disagrees"]),
        VERDICT: float(report.verdict.level),
    }
    values.update({f"{DIFFERENCE}/{p}": d for p, d in report.per_parameter.items()})
    if _unfinished(report):
        values.update({DIFFERENCE: math.nan, WITHOUT_KINKS: math.nan, ROUNDING_FLOOR: math.nan})
    return {f"{name}/{tag}": value for tag, value in values.items()}


def _log10(value: float) -> float:
    return math.log10(max(value, _LOG10_FLOOR)) if math.isfinite(value) else math.nan


def band_scalars(
    report: GradCheckReport, pass_max: float, warn_max: float, name: str = DEFAULT_NAME
) -> dict[str, float]:
    """The difference the verdict reads, the rounding floor and the verdict bands in decades, for
    the TensorBoard chart layout."""
    unknown = _unfinished(report)
    values = {
        LOG10_DIFFERENCE: math.nan if unknown else _log10(report.difference),
        LOG10_FLOOR: math.nan if unknown else _log10(report.noise_floor),
        LOG10_PASS_MAX: math.log10(pass_max),
        LOG10_WARN_MAX: math.log10(warn_max),
    }
    return {f"{name}/{tag}": value for tag, value in values.items()}


def category(pass_max: float, warn_max: float, name: str = DEFAULT_NAME) -> dict[str, list[Any]]:
    """One callback's charts on TensorBoard's Custom Scalars page: its difference against the
    material's bands.

    Differences span decades (1e-10 passes, 1e-2 fails), so the band chart is in log10: the
    difference is one line, the pass and warn limits two flat lines (−7 and −3 by default).
    """
    bands = f"(pass below {pass_max:.0e}, fail above {warn_max:.0e})"
    prefix = f"{name}/"
    exact = re.escape(prefix)  # the charts' tags are regular expressions
    return {
        f"log10 difference vs bands {bands}": [
            "Multiline",
            [f"^{exact}{LOG10_DIFFERENCE}$", f"^{exact}{LOG10_FLOOR}$", f"^{exact}{BANDS}/"],
        ],
        f"log10 difference, shaded warn band {bands}": [
            "Margin",
            [prefix + LOG10_DIFFERENCE, prefix + LOG10_PASS_MAX, prefix + LOG10_WARN_MAX],
        ],
        "difference per parameter": ["Multiline", [f"^{exact}{DIFFERENCE}/"]],
        "verdict (0 pass, 1 warn, 2 fail)": ["Multiline", [f"^{exact}{VERDICT}$"]],
    }


def layout(checks: Sequence[tuple[str, float, float]]) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's Custom Scalars page: a category per ``(name, pass_max, warn_max)``."""
    return {name: category(pass_max, warn_max, name) for name, pass_max, warn_max in checks}


def add_layout(writer: SummaryWriter, checks: Sequence[tuple[str, float, float]]) -> None:
    """Writes the layout of ``checks`` (every GradientCheck of the Trainer), once per writer."""
    if writer not in _WITH_LAYOUT:
        writer.add_custom_scalars(layout(checks))
        _WITH_LAYOUT.add(writer)


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


def console_text(step: int, report: GradCheckReport, name: str = DEFAULT_NAME) -> str:
    """One line per check; the whole report (notes, worst components, per parameter) unless it
    passed."""
    line = f"{label(name)} at step {step}: {_headline(report)}"
    if report.verdict is Verdict.PASS or _unfinished(report):
        return line
    return f"{line}\n{report}"


def write_tensorboard(
    writer: SummaryWriter,
    step: int,
    report: GradCheckReport,
    log_worst: int,
    name: str = DEFAULT_NAME,
    logged_step: int | None = None,
) -> None:
    """The text table and the error histogram (scalars go through ``log_metrics``), at
    ``logged_step`` (``step``, the check's global step, unless told)."""
    at = step if logged_step is None else logged_step
    if log_worst > 0:
        writer.add_text(f"{name}/{WORST}", worst_text(step, report, log_worst), at)
    errors = report.abs_errors[np.isfinite(report.abs_errors)]
    if errors.size:
        writer.add_histogram(f"{name}/{ABS_ERROR}", errors, at)
