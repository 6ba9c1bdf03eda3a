"""What a check writes: how the report is read (the few functions below are the only ones that
touch it), the tags, the scalars every logger gets, and the console summary.

Tags, for a callback named ``gradcheck`` (``name``, its default), fall in TensorBoard groups by
what they are for (TensorBoard groups tags by the part before the first ``/``):

- ``gradcheck/…``: the answer over time: ``difference``, ``log10_difference``, ``verdict``, and
  the text ``report``;
- ``gradcheck_parameters/<parameter>``: each parameter's own difference;
- ``gradcheck_details/…``: noise floor, kinks, counts of each reading, band lines, the error
  histogram.

A callback named ``gradcheck/encoder`` writes ``gradcheck/encoder/…``,
``gradcheck_parameters/encoder/…`` and ``gradcheck_details/encoder/…``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradwatch import GradCheckReport, Verdict

# Tags after the callback's name ("gradcheck" unless told): the answer.
DIFFERENCE = "difference"
LOG10_DIFFERENCE = "log10_difference"
VERDICT = "verdict"
REPORT = "report"  # the text
# Tags of the details group.
NOISE_FLOOR = "noise_floor"
LOG10_FLOOR = "log10_noise_floor"
KINKS = "kinks"
READING_TAGS = {  # the count of components with each reading
    "agrees": "agreeing_components",
    "disagrees": "disagreeing_components",
    "not judged": "not_judged_components",
}
BANDS = "bands"
LOG10_PASS_MAX = "bands/log10_pass_max"
LOG10_WARN_MAX = "bands/log10_warn_max"
LOG10_ABS_ERROR = "log10_abs_error"  # the histogram
DEFAULT_NAME = "gradcheck"
# The group of the at-a-glance images, one per callback: TensorBoard lists groups in character
# order, capitals first, so this one comes before Lightning's `epoch` and lowercase user tags.
CARD_GROUP = "GradientCheck"
NOT_JUDGED = Verdict.NOT_JUDGED.value
# Differences below float64's machine epsilon are all "zero"; a floor keeps log10 finite and
# the chart's axis readable.
LOG10_FLOOR_VALUE = 1e-16


@dataclass(frozen=True)
class Tags:
    """The tag names of one callback, from its ``name``.

    Example:
        >>> Tags("gradcheck/encoder").parameter("net.0.weight")
        'gradcheck_parameters/encoder/net.0.weight'
        >>> Tags("gradcheck").detail("kinks"), Tags("gradcheck").card
        ('gradcheck_details/kinks', 'GradientCheck/gradcheck')
    """

    name: str

    def _group(self, kind: str) -> str:
        root, _, rest = self.name.partition("/")
        return f"{root}_{kind}" + (f"/{rest}" if rest else "")

    def main(self, tag: str) -> str:
        return f"{self.name}/{tag}"

    def parameter(self, parameter: str) -> str:
        return f"{self._group('parameters')}/{parameter}"

    def detail(self, tag: str) -> str:
        return f"{self._group('details')}/{tag}"

    @property
    def parameters_prefix(self) -> str:
        return self._group("parameters") + "/"

    @property
    def card(self) -> str:
        return f"{CARD_GROUP}/{self.name}"


def label(name: str) -> str:
    """How the console and messages call the callback: ``GradientCheck``, or with its name.

    Example:
        >>> label("gradcheck"), label("gradcheck/encoder")
        ('GradientCheck', 'GradientCheck[gradcheck/encoder]')
    """
    return "GradientCheck" if name == DEFAULT_NAME else f"GradientCheck[{name}]"


# -- reading the report (the only functions here that touch it) ---------------------------------


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


# -- what every logger gets ---------------------------------------------------------------------


def scalars(report: GradCheckReport, name: str = DEFAULT_NAME) -> dict[str, float]:
    """The scalars every logger gets: the difference and the verdict level under ``name/``, each
    parameter's difference in the parameters group (NaN where not judged), and the noise floor
    and counts in the details group."""
    tags = Tags(name)
    values = {
        tags.main(DIFFERENCE): difference_of(report),
        tags.main(VERDICT): level_of(verdict_of(report)),
        tags.detail(NOISE_FLOOR): floor_of(report),
        tags.detail(KINKS): float(report.kink_count),
    }
    for reading, count in report.reading_counts.items():
        values[tags.detail(READING_TAGS[reading])] = float(count)
    for row in parameter_rows(report):
        values[tags.parameter(row.name)] = row.difference
    return values


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
