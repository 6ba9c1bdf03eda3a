"""The callback's reading of a report, as text and numbers, without Lightning: each parameter's
row worst first, the difference and floor of a check that may not have finished, the console
line, the report as TensorBoard's markdown, and the advice for a pass with tensors not judged.

``gradwatch.callbacks`` logs what these return, :mod:`gradwatch.integration.scalars` makes its
numbers of them and :mod:`gradwatch.integration.card` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradwatch.report import GradCheckReport
from gradwatch.reporting.text import coverage
from gradwatch.verdict import Verdict

__all__ = [
    "DEFAULT_NAME",
    "LOG10_FLOOR_VALUE",
    "NOT_JUDGED",
    "ParameterRow",
    "console_text",
    "coverage",
    "difference_of",
    "floor_of",
    "headline",
    "label",
    "level_of",
    "log10",
    "parameter_rows",
    "partial_pass",
    "report_markdown",
    "unfinished",
    "verdict_of",
    "visible_notes",
]

DEFAULT_NAME = "gradcheck"  # the callback's `name` unless told: the prefix of its tags
NOT_JUDGED = Verdict.NOT_JUDGED.value
# Differences below float64's machine epsilon are all "zero"; a floor keeps log10 finite and
# the chart's axis readable.
LOG10_FLOOR_VALUE = 1e-16


def label(name: str) -> str:
    """How the console and messages call the callback: ``GradientCheck``, or with its name.

    Example:
        >>> label("gradcheck"), label("gradcheck/encoder")
        ('GradientCheck', 'GradientCheck[gradcheck/encoder]')
    """
    return "GradientCheck" if name == DEFAULT_NAME else f"GradientCheck[{name}]"


@dataclass(frozen=True)
class ParameterRow:
    """One parameter's reading: its own difference (NaN when not judged), the verdict's value
    (``"pass"``, ``"warn"``, ``"fail"``, ``"not judged"`` or whatever a newer report says) and
    why, when the report says."""

    name: str
    difference: float
    verdict: str
    reason: str = ""


def unfinished(report: GradCheckReport) -> bool:
    """A check that raised compared no component: its difference is unknown, not 0."""
    return report.components_checked == 0 and report.failure is not None


def verdict_of(report: GradCheckReport) -> str:
    """The verdict's value: ``"pass"``, ``"warn"``, ``"fail"`` or ``"not judged"``."""
    return report.verdict.value


def level_of(verdict: str) -> float:
    """The verdict scalar: −1 not judged, 0 pass, 1 warn, 2 fail (``Verdict.level``)."""
    return float(Verdict(verdict).level)


def difference_of(report: GradCheckReport) -> float:
    """The difference the verdict reads (NaN when the check compared nothing)."""
    return math.nan if unfinished(report) else float(report.difference)


def floor_of(report: GradCheckReport) -> float:
    """The difference J's measured noise alone produces (NaN when the check compared nothing)."""
    return math.nan if unfinished(report) else float(report.noise_floor)


def parameter_rows(report: GradCheckReport) -> list[ParameterRow]:
    """Every checked parameter, worst first: by verdict (fail, warn, pass, not judged), then by
    difference. A parameter the report could not judge reads ``"not judged"`` with a NaN
    difference, never 0 or pass."""
    rows = [
        ParameterRow(
            name,
            r.difference if r.verdict is not Verdict.NOT_JUDGED else math.nan,
            r.verdict.value,
            r.reason,
        )
        for name, r in report.parameters.items()
    ]
    if unfinished(report):  # a check that raised: nothing of it was compared
        rows = [ParameterRow(row.name, math.nan, NOT_JUDGED, "the check raised") for row in rows]
    return sorted(rows, key=_worst_first)


def _worst_first(row: ParameterRow) -> tuple[float, float]:
    return -level_of(row.verdict), -row.difference if math.isfinite(row.difference) else math.inf


def visible_notes(report: GradCheckReport) -> list[str]:
    """The notes a reader acts on; how the engine evaluated J (vectorized or not) stays in the
    report file, as it says nothing about the gradients."""
    return [n for n in report.notes if not n.startswith("evaluation:")]


def headline(report: GradCheckReport) -> str:
    """The report's one line, or the reason a check that raised could not finish."""
    return f"fail: {report.failure}" if unfinished(report) else report.headline()


def log10(value: float) -> float:
    """log10 of a difference, floored at machine precision; NaN for a non-finite one.

    Example:
        >>> log10(1e-9), log10(0.0)
        (-9.0, -16.0)
    """
    return math.log10(max(value, LOG10_FLOOR_VALUE)) if math.isfinite(value) else math.nan


def console_text(
    step: int, report: GradCheckReport, name: str = DEFAULT_NAME, whole: bool = True
) -> str:
    """One line per check; the whole report (notes, worst components, per parameter) unless it
    passed or ``whole`` is False (a warning or an error says it)."""
    line = f"{label(name)} at step {step}: {headline(report)}"
    if not whole or verdict_of(report) == "pass" or unfinished(report):
        return line
    return f"{line}\n{report}"


def partial_pass(report: GradCheckReport) -> str:
    """For a pass with tensors not judged: what it rests on and what to do ("" otherwise)."""
    if report.verdict is not Verdict.PASS or not report.parameters_with(Verdict.NOT_JUDGED):
        return ""
    return (
        f"the gradient check passed on what it could judge: {coverage(report)}. Their "
        "gradients could not be told from J's noise at the step tried, or are zero by "
        "design (a zero-initialized scale or head): check them again after some training, "
        "or with epsilon='auto'; warn_not_judged=False silences this."
    )


def report_markdown(step: int, report: GradCheckReport, k: int) -> str:
    """The text TensorBoard shows: the verdict and what to do, each parameter's reading, the
    ``k`` worst components, the notes.

    Example:
        >>> import numpy as np, gradwatch
        >>> report = gradwatch.check_function(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))
        >>> report_markdown(3, report, 0).splitlines()[0].endswith("(pass <= 1e-07, fail > 1e-03)")
        True
    """
    verdict = verdict_of(report).upper()
    if unfinished(report):
        why = str(report.failure)
        return f"### {verdict} at step {step}\n\n{why[:1].upper()}{why[1:]}"
    t = report.thresholds
    parts = [
        f"### {verdict} at step {step}: difference {difference_of(report):.1e} "
        f"(pass <= {t.pass_max:.0e}, fail > {t.warn_max:.0e})",
        report.message,
        _parameter_table(parameter_rows(report)),
    ]
    if k > 0:
        parts += [f"**The {k} worst components**", report.worst_markdown(k)]
    notes = visible_notes(report)
    if notes:
        parts.append("**Notes**\n\n" + "\n".join(f"- {note}" for note in notes))
    return "\n\n".join(parts)


def _parameter_table(rows: Sequence[ParameterRow]) -> str:
    lines = ["| parameter | difference | verdict |", "|---|---|---|"]
    for row in rows:
        value = f"{row.difference:.2e}" if math.isfinite(row.difference) else "-"
        why = f" ({row.reason})" if row.reason else ""
        lines.append(f"| {row.name} | {value} | **{row.verdict}**{why} |")
    return "\n".join(lines)
