"""What a check writes: the scalars to every logger; TensorBoard's card, text, histogram and
Custom Scalars layout; and the files next to the logs (each report as JSON, a traceback for a bug
report). What is written is :mod:`gradwatch.integration.scalars`'s (the numbers and their tags),
:mod:`gradwatch.integration.text`'s and :mod:`gradwatch.integration.card`'s; here it is written.

A TensorBoard logger is told by what its writer can do, not by its class: ``pytorch_lightning``'s
and ``lightning``'s ``TensorBoardLogger`` (and any logger whose ``experiment`` is such a writer)
get everything, whichever package the callback comes from.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
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
from gradwatch.integration import card as card
from gradwatch.integration import scalars as numbers
from gradwatch.integration import text as text
from gradwatch.integration.scalars import Tags

# What a writer must offer to get the whole picture (its class must define them: a stand-in
# that answers any call, as Lightning's on ranks other than zero, is no writer).
WRITER_METHODS = ("add_scalar", "add_text", "add_histogram", "add_image", "add_custom_scalars")
# The writers that hold the Custom Scalars layout. TensorBoard shows one layout per run, so a
# writer gets one, with a category per GradientCheck of the Trainer.
_WITH_LAYOUT: weakref.WeakSet[Any] = weakref.WeakSet()


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


def add_layout(writer: Any, checks: Sequence[tuple[str, Thresholds]]) -> None:
    """Writes TensorBoard's Custom Scalars page, a category per ``(name, thresholds)`` of every
    GradientCheck of the Trainer, once per writer."""
    if writer not in _WITH_LAYOUT:
        layout = {name: numbers.category(bands, name) for name, bands in checks}
        writer.add_custom_scalars(layout)
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
    add_markdown(writer, tags.main(numbers.REPORT), markdown, at)
    errors = report.abs_errors[np.isfinite(report.abs_errors)]
    if errors.size:
        decades = np.log10(np.maximum(errors, text.LOG10_FLOOR_VALUE))
        writer.add_histogram(tags.detail(numbers.LOG10_ABS_ERROR), decades, at)


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
        metrics = numbers.scalars(report, name)
        for logger in trainer.loggers:
            writer = writer_of(logger) if trainer.is_global_zero else None
            if writer is None:
                self._tell_scalars_only(trainer, logger)
                logger.log_metrics(metrics, step=logged_step)
                continue
            bands = numbers.band_scalars(report, self.thresholds, name)
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
