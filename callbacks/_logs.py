"""What a check writes: how the report is read (the few functions below are the only ones that
touch it), the tags, the scalars every logger gets, and the console summary.

Tags, for a callback named ``gradcheck`` (``name``, its default), fall in TensorBoard groups by
what they are for (TensorBoard groups tags by the part before the first ``/``):

- ``gradcheck/…``: the answer over time: ``difference``, ``log10_difference``, ``verdict``, and
  the text ``report``;
- ``gradcheck_parameters/<parameter>``: each parameter's own difference;
- ``gradcheck_details/…``: rounding floor, kinks, counts, band lines, the error histogram.

A callback named ``gradcheck/encoder`` writes ``gradcheck/encoder/…``,
``gradcheck_parameters/encoder/…`` and ``gradcheck_details/encoder/…``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from gradwatch import GradCheckReport

# Tags after the callback's name ("gradcheck" unless told): the answer.
DIFFERENCE = "difference"
LOG10_DIFFERENCE = "log10_difference"
VERDICT = "verdict"
REPORT = "report"  # the text
# Tags of the details group.
WITHOUT_KINKS = "difference_without_kinks"
ROUNDING_FLOOR = "rounding_floor"
LOG10_FLOOR = "log10_rounding_floor"
KINKS = "kinks"
SHARED_KINKS = "shared_kinks"
SUSPICIOUS = "suspicious_components"
BANDS = "bands"
LOG10_PASS_MAX = "bands/log10_pass_max"
LOG10_WARN_MAX = "bands/log10_warn_max"
LOG10_ABS_ERROR = "log10_abs_error"  # the histogram
DEFAULT_NAME = "gradcheck"
# The group of the at-a-glance images, one per callback: TensorBoard lists groups in character
# order, capitals first, so this one comes before Lightning's `epoch` and lowercase user tags.
CARD_GROUP = "GradientCheck"
# The verdict scalar of each reading (the report's `Verdict.level`); one it does not know is NaN.
LEVELS = {"not judged": -1.0, "pass": 0.0, "warn": 1.0, "fail": 2.0}
NOT_JUDGED = "not judged"
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
    """The verdict's value: ``"pass"``, ``"warn"``, ``"fail"``, ``"not judged"``, …"""
    return str(getattr(report.verdict, "value", report.verdict))


def level_of(verdict: str) -> float:
    """The verdict scalar: −1 not judged, 0 pass, 1 warn, 2 fail; NaN for one not known here."""
    return LEVELS.get(verdict, math.nan)


def difference_of(report: GradCheckReport) -> float:
    """The difference the verdict reads (NaN when the check compared nothing)."""
    if unfinished(report):
        return math.nan
    return float(getattr(report, WITHOUT_KINKS, report.difference))


def floor_of(report: GradCheckReport) -> float:
    """The difference rounding alone produces (NaN when the check compared nothing)."""
    return math.nan if unfinished(report) else float(report.noise_floor)


def parameter_rows(report: GradCheckReport) -> list[ParameterRow]:
    """Every checked parameter, worst first: by verdict (fail, warn, pass, not judged), then by
    difference. A parameter the report could not judge reads ``"not judged"`` with a NaN
    difference, never 0 or pass."""
    results = getattr(report, "parameters", None)
    if isinstance(results, Mapping):  # the report's own reading of each parameter
        rows = [
            ParameterRow(
                name,
                _finite_or_nan(getattr(r, "difference", math.nan)),
                str(getattr(getattr(r, "verdict", None), "value", getattr(r, "verdict", ""))),
                str(getattr(r, "reason", "") or ""),
            )
            for name, r in results.items()
        ]
    else:
        rows = [_row_from_difference(report, n, d) for n, d in report.per_parameter.items()]
    return sorted(rows, key=_worst_first)


def _worst_first(row: ParameterRow) -> tuple[float, float]:
    # A verdict this code does not know sorts between warn and pass: shown, not buried.
    level = level_of(row.verdict)
    rank = -level if math.isfinite(level) else -0.5
    return rank, -row.difference if math.isfinite(row.difference) else math.inf


def _finite_or_nan(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _row_from_difference(report: GradCheckReport, name: str, difference: float) -> ParameterRow:
    # Reports without a reading per parameter: the bands, except where the report says the
    # parameter's errors are no larger than rounding explains (it cannot judge them).
    if unfinished(report) or not math.isfinite(difference):
        return ParameterRow(name, math.nan, NOT_JUDGED, "no component of it was compared")
    unresolved: list[str] = getattr(report, "unresolved", list)()
    if name in unresolved:
        return ParameterRow(name, difference, "warn", "inconclusive: errors close to rounding")
    verdict = report.thresholds.classify(difference).value
    significant = getattr(report, "significant_parameters", None)
    if verdict != "pass" and significant is not None and name not in significant():
        return ParameterRow(name, math.nan, NOT_JUDGED, "its errors are within rounding")
    return ParameterRow(name, difference, verdict)


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
    parameter's difference in the parameters group (NaN where not judged), and the rounding
    floor and counts in the details group."""
    tags = Tags(name)
    values = {
        tags.main(DIFFERENCE): math.nan if unfinished(report) else float(report.difference),
        tags.main(VERDICT): level_of(verdict_of(report)),
        tags.detail(WITHOUT_KINKS): difference_of(report),
        tags.detail(ROUNDING_FLOOR): floor_of(report),
        tags.detail(KINKS): float(report.kink_count),
        tags.detail(SHARED_KINKS): float(report.off_slope_count),
        tags.detail(SUSPICIOUS): float(report.flagged_count),
    }
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


def console_text(step: int, report: GradCheckReport, name: str = DEFAULT_NAME) -> str:
    """One line per check; the whole report (notes, worst components, per parameter) unless it
    passed."""
    line = f"{label(name)} at step {step}: {headline(report)}"
    if verdict_of(report) == "pass" or unfinished(report):
        return line
    return f"{line}\n{report}"


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
