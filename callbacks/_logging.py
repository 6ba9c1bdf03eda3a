"""What a check writes: the scalars every logger gets, TensorBoard's card, text, histogram and
Custom Scalars layout, and the files next to the logs (each report as JSON, a traceback for a bug
report). What the card and the text say is :mod:`gradwatch._callback_card`'s and
:mod:`gradwatch._callback_text`'s; here it is written.

Tags, for a callback named ``gradcheck`` (``name``, its default), fall in TensorBoard groups by
what they are for (TensorBoard groups tags by the part before the first ``/``):

- ``gradcheck/…``: the answer over time: ``difference``, ``log10_difference``, ``verdict``, and
  the text ``report``;
- ``gradcheck_parameters/<parameter>``: each parameter's own difference;
- ``gradcheck_details/…``: noise floor, kinks, counts of each reading, band lines, the error
  histogram.

A callback named ``gradcheck/encoder`` writes ``gradcheck/encoder/…``,
``gradcheck_parameters/encoder/…`` and ``gradcheck_details/encoder/…``. A TensorBoard logger is
told by what its writer can do, not by its class: ``pytorch_lightning``'s and ``lightning``'s
``TensorBoardLogger`` (and any logger whose ``experiment`` is such a writer) get everything.
"""

from __future__ import annotations

import math
import os
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pytorch_lightning.utilities import rank_zero_warn
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData
from torch.utils.tensorboard import SummaryWriter

from gradwatch import GradCheckReport, Thresholds, save_report
from gradwatch import _callback_card as card
from gradwatch import _callback_text as text

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
# What a writer must offer to get the whole picture (its class must define them: a stand-in
# that answers any call, as Lightning's on ranks other than zero, is no writer).
WRITER_METHODS = ("add_scalar", "add_text", "add_histogram", "add_image", "add_custom_scalars")
# The writers that hold the Custom Scalars layout. TensorBoard shows one layout per run, so a
# writer gets one, with a category per GradientCheck of the Trainer.
_WITH_LAYOUT: weakref.WeakSet[Any] = weakref.WeakSet()


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


def writer_of(logger: Any) -> Any | None:
    """The TensorBoard writer behind ``logger``, or None when it has none."""
    experiment = getattr(logger, "experiment", None)
    if experiment is None:
        return None
    kind = type(experiment)
    return experiment if all(callable(getattr(kind, m, None)) for m in WRITER_METHODS) else None


def scalars_only(logger: Any, label: str) -> str | None:
    """What to tell about a logger that says it is TensorBoard's (by its class's name) but whose
    writer lacks some of :data:`WRITER_METHODS`: it gets the scalars only. None otherwise."""
    if "tensorboard" not in type(logger).__name__.lower() or writer_of(logger) is not None:
        return None
    kind = type(getattr(logger, "experiment", None))
    missing = ", ".join(m for m in WRITER_METHODS if not callable(getattr(kind, m, None)))
    return (
        f"{label}: {type(logger).__name__}'s writer ({kind.__name__}) has no {missing}, so it gets "
        "the scalars only, without the card, the report text, the histogram and the chart "
        "layout; use a TensorBoardLogger from pytorch_lightning or lightning"
    )


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


def add_layout(writer: Any, checks: Sequence[tuple[str, Thresholds]]) -> None:
    """Writes TensorBoard's Custom Scalars page, a category per ``(name, thresholds)`` of every
    GradientCheck of the Trainer, once per writer."""
    if writer not in _WITH_LAYOUT:
        writer.add_custom_scalars({name: category(bands, name) for name, bands in checks})
        _WITH_LAYOUT.add(writer)


def add_markdown(writer: Any, tag: str, markdown: str, step: int) -> None:
    """Text under exactly ``tag`` (``SummaryWriter.add_text`` would append ``/text_summary``)."""
    if not isinstance(writer, SummaryWriter):  # another writer: its own way, its own tag
        writer.add_text(tag, markdown, step)
        return
    plugin = SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()
    )
    # A scalar string: TensorBoard shows it as markdown (a vector would be put in a table).
    tensor = TensorProto(
        dtype="DT_STRING", string_val=[markdown.encode("utf-8")], tensor_shape=TensorShapeProto()
    )
    value = Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin), tensor=tensor)
    # The writer's own event file (`_get_file_writer` makes it again after a close).
    files = getattr(writer, "file_writer", None) or writer._get_file_writer()
    files.add_summary(Summary(value=[value]), step)


def run_name(logger: Any) -> str:
    """The run as TensorBoard names it when pointed at the logger's ``save_dir``: the log folder
    below it, e.g. ``wrong_backward/version_0`` ("" where the logger says neither).

    Example:
        >>> from types import SimpleNamespace
        >>> run_name(SimpleNamespace(save_dir="runs", log_dir="runs/digits/version_3"))
        'digits/version_3'
    """
    save_dir, log_dir = getattr(logger, "save_dir", None), getattr(logger, "log_dir", None)
    if not log_dir:
        return ""
    if not save_dir:
        return os.path.basename(os.path.normpath(log_dir))
    return Path(os.path.relpath(log_dir, save_dir)).as_posix()


def write(
    writer: Any,
    step: int,
    report: GradCheckReport,
    history: Sequence[card.Point],
    log_worst: int,
    name: str = text.DEFAULT_NAME,
    logged_step: int | None = None,
    run: str = "",
) -> None:
    """The card (naming ``run``), the text and the histogram of log10 |error| at
    ``logged_step`` (``step``, the check's global step, unless told); scalars go through
    ``log_metrics``."""
    tags, at = Tags(name), step if logged_step is None else logged_step
    image = card.render(card.card_content(step, report, history, run))
    writer.add_image(tags.card, image, at, dataformats="HWC")
    markdown = text.report_markdown(step, report, log_worst)
    add_markdown(writer, tags.main(REPORT), markdown, at)
    errors = report.abs_errors[np.isfinite(report.abs_errors)]
    if errors.size:
        decades = np.log10(np.maximum(errors, text.LOG10_FLOOR_VALUE))
        writer.add_histogram(tags.detail(LOG10_ABS_ERROR), decades, at)


# -- files next to the logs --------------------------------------------------------------------


def _folders(trainer: Any) -> list[Path]:
    found: list[Path] = []
    for logger in getattr(trainer, "loggers", []):
        folder = getattr(logger, "log_dir", None)
        if isinstance(folder, str | Path) and str(folder) and Path(folder) not in found:
            found.append(Path(folder))
    return found


def report_path(log_dir: Path, name: str, step: int) -> Path:
    """Where the report of the check at ``step`` goes.

    Example:
        >>> report_path(Path("runs/digits/version_0"), "gradcheck", 100).as_posix()
        'runs/digits/version_0/gradcheck/step_100.json'
    """
    return log_dir / name / f"step_{step}.json"


def write_report(
    trainer: Any, name: str, step: int, logged_step: int, report: GradCheckReport
) -> list[Path]:
    """The report as JSON in every logger's folder (read back with
    :func:`gradwatch.load_report`), on rank zero only; returns the files written."""
    context = {"check": name, "step": step, "logged_step": logged_step}
    folders = _folders(trainer) if getattr(trainer, "is_global_zero", True) else []
    return [save_report(report, report_path(f, name, step), **context) for f in folders]


def write_error(trainer: Any, name: str, step: int, trace: str) -> Path | None:
    """``trace`` (a traceback for a bug report) in the first logger's folder, if there is one.
    Every process that hit the error writes its own, when it has a folder."""
    folders = _folders(trainer)
    if not folders:
        return None
    rank = int(getattr(trainer, "global_rank", 0))
    suffix = f"_rank_{rank}" if int(getattr(trainer, "world_size", 1)) > 1 else ""
    path = folders[0] / name / f"step_{step}_error{suffix}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(trace, encoding="utf-8")
    return path


# -- the callback's logging, a mixin of callbacks._hooks.GradientCheckBase ----------------------


class Logging:
    """The logging half of the callback (options ``name``, ``thresholds``, ``log_worst``; state
    ``_checks``, ``_told``, ``_label``)."""

    name: str
    thresholds: Thresholds
    log_worst: int
    _label: str
    _checks: list[dict[str, Any]]
    _told: set[int]

    def _history(self) -> list[card.Point]:
        """The checks of this run so far (restored ones too), for the card's chart."""
        return [
            card.Point(int(c["step"]), float(c.get("difference", math.nan)), str(c["verdict"]))
            for c in self._checks
        ]

    def _log(
        self, trainer: Any, step: int, logged_step: int, report: GradCheckReport, history: Any
    ) -> None:
        """The report as JSON next to the logs; scalars to every logger; TensorBoard's writers
        (rank zero) also get the card, the text, the histogram and the chart layout."""
        name = self.name
        write_report(trainer, name, step, logged_step, report)
        metrics = scalars(report, name)
        for logger in trainer.loggers:
            writer = writer_of(logger) if trainer.is_global_zero else None
            if writer is None:
                self._tell_scalars_only(trainer, logger)
                logger.log_metrics(metrics, step=logged_step)
                continue
            bands = band_scalars(report, self.thresholds, name)
            logger.log_metrics({**metrics, **bands}, step=logged_step)
            add_layout(writer, self._layouts(trainer))
            run = run_name(logger)
            write(writer, step, report, history, self.log_worst, name, logged_step, run)

    def _tell_scalars_only(self, trainer: Any, logger: Any) -> None:
        """A TensorBoard logger whose writer cannot take the card, text, histogram and layout is
        told so, once, rather than silently given the scalars alone."""
        notice = scalars_only(logger, self._label)
        if notice and trainer.is_global_zero and id(logger) not in self._told:
            self._told.add(id(logger))
            rank_zero_warn(notice)

    def _layouts(self, trainer: Any) -> list[tuple[str, Thresholds]]:
        """Every GradientCheck of the trainer as ``(name, thresholds)``: TensorBoard shows one
        Custom Scalars layout per run, so the first to log writes all of them."""
        checks = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, Logging)]
        if self not in checks:
            checks.append(self)
        return [(c.name, c.thresholds) for c in checks]
