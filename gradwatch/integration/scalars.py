"""The numbers the callback logs and their names, without Lightning: the tags of a callback
(from its ``name``), the scalars every logger gets, the band lines in decades, and the Custom
Scalars layout TensorBoard draws them in (``gradwatch.callbacks`` writes them).

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
import re
from dataclasses import dataclass
from typing import Any

from gradwatch.integration import text as text
from gradwatch.report import GradCheckReport
from gradwatch.verdict import Thresholds

__all__ = [
    "BANDS",
    "CARD_GROUP",
    "LOG10_ABS_ERROR",
    "READING_TAGS",
    "TRAINING_PATH",
    "Tags",
    "band_scalars",
    "category",
    "scalars",
]

# Tags after the callback's name: the answer, then those of the details group.
DIFFERENCE, LOG10_DIFFERENCE = "difference", "log10_difference"
VERDICT, REPORT = "verdict", "report"  # the verdict level, the text
NOISE_FLOOR, LOG10_FLOOR, KINKS = "noise_floor", "log10_noise_floor", "kinks"
READING_TAGS = {  # the count of components with each reading
    "agrees": "agreeing_components",
    "disagrees": "disagreeing_components",
    "not judged": "not_judged_components",
}
BANDS = "bands"
LOG10_PASS_MAX, LOG10_WARN_MAX = "bands/log10_pass_max", "bands/log10_warn_max"
LOG10_ABS_ERROR = "log10_abs_error"  # the histogram
TRAINING_PATH = "training_path"  # gradcheck/training_path/verdict, …/ratio/<parameter>, ...
# The group of the at-a-glance images, one per callback: TensorBoard lists groups in character
# order, capitals first, so this one comes before Lightning's `epoch` and lowercase user tags.
CARD_GROUP = "GradientCheck"


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


def scalars(report: GradCheckReport, name: str = text.DEFAULT_NAME) -> dict[str, float]:
    """The scalars every logger gets: the difference and the verdict level under ``name/``, each
    parameter's difference in the parameters group (NaN where not judged), the noise floor and
    counts in the details group, and the training path's verdict and per-parameter errors (the
    eager error in the same precision, their ratio) when the check compared it."""
    tags = Tags(name)
    values = {
        tags.main(DIFFERENCE): text.difference_of(report),
        tags.main(VERDICT): text.level_of(text.verdict_of(report)),
        tags.detail(NOISE_FLOOR): text.floor_of(report),
        tags.detail(KINKS): float(report.kink_count),
    }
    for reading, count in report.reading_counts.items():
        values[tags.detail(READING_TAGS[reading])] = float(count)
    for row in text.parameter_rows(report):
        values[tags.parameter(row.name)] = row.difference
    found = report.training_path
    if found is not None:
        values[tags.main(f"{TRAINING_PATH}/verdict")] = float(found.verdict.level)
        for parameter, p in found.parameters.items():
            values[tags.main(f"{TRAINING_PATH}/error/{parameter}")] = p.error
            values[tags.main(f"{TRAINING_PATH}/eager_error/{parameter}")] = p.eager_error
            values[tags.main(f"{TRAINING_PATH}/ratio/{parameter}")] = (
                p.ratio if p.judged else math.nan
            )
    return values


def band_scalars(report: GradCheckReport, bands: Thresholds, name: str) -> dict[str, float]:
    """The difference the verdict reads in decades (NaN when nothing was compared), and the
    rounding floor and the verdict bands in decades, for the band chart."""
    tags = Tags(name)
    return {
        tags.main(LOG10_DIFFERENCE): text.log10(text.difference_of(report)),
        tags.detail(LOG10_FLOOR): text.log10(text.floor_of(report)),
        tags.detail(LOG10_PASS_MAX): math.log10(bands.pass_max),
        tags.detail(LOG10_WARN_MAX): math.log10(bands.warn_max),
    }


def category(bands: Thresholds, name: str = text.DEFAULT_NAME) -> dict[str, Any]:
    """One callback's charts on TensorBoard's Custom Scalars page.

    Differences span decades (1e-10 passes, 1e-2 fails), so the band chart is in log10: the
    difference is one line, the pass and warn limits two flat lines (−7 and −3 by default).
    """
    tags = Tags(name)
    told = f"(pass below {bands.pass_max:.0e}, fail above {bands.warn_max:.0e})"
    difference, details = tags.main(LOG10_DIFFERENCE), tags.detail("")
    floor, limits = re.escape(details + LOG10_FLOOR), re.escape(details + BANDS)
    return {
        f"log10 difference vs bands {told}": [
            "Multiline",
            [f"^{re.escape(difference)}$", f"^{floor}$", f"^{limits}/"],
        ],
        f"log10 difference, shaded warn band {told}": [
            "Margin",
            [difference, details + LOG10_PASS_MAX, details + LOG10_WARN_MAX],
        ],
        "difference per parameter (NaN: not judged)": [
            "Multiline",
            [f"^{re.escape(tags.parameters_prefix)}"],
        ],
        "verdict (-1 not judged, 0 pass, 1 warn, 2 fail)": [
            "Multiline",
            [f"^{re.escape(tags.main(VERDICT))}$"],
        ],
    }
