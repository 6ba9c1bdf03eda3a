"""What TensorBoard gets beyond the scalars: the at-a-glance card (an image), the report as
text, the histogram of log10 |error|, the chart layout, and the band lines it draws.

A TensorBoard logger is told by what its writer can do, not by its class: ``pytorch_lightning``'s
and ``lightning``'s ``TensorBoardLogger`` (and any logger whose ``experiment`` is such a writer)
get everything, whichever package the callback comes from.
"""

from __future__ import annotations

import math
import os
import re
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData
from torch.utils.tensorboard import SummaryWriter

from gradwatch import GradCheckReport

from . import _card, _logs
from ._logs import Tags

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


def band_scalars(
    report: GradCheckReport, pass_max: float, warn_max: float, name: str = _logs.DEFAULT_NAME
) -> dict[str, float]:
    """The difference the verdict reads in decades (NaN when nothing was compared), and the
    rounding floor and the verdict bands in decades, for the band chart."""
    tags = Tags(name)
    return {
        tags.main(_logs.LOG10_DIFFERENCE): _logs.log10(_logs.difference_of(report)),
        tags.detail(_logs.LOG10_FLOOR): _logs.log10(_logs.floor_of(report)),
        tags.detail(_logs.LOG10_PASS_MAX): math.log10(pass_max),
        tags.detail(_logs.LOG10_WARN_MAX): math.log10(warn_max),
    }


def category(pass_max: float, warn_max: float, name: str = _logs.DEFAULT_NAME) -> dict[str, Any]:
    """One callback's charts on TensorBoard's Custom Scalars page.

    Differences span decades (1e-10 passes, 1e-2 fails), so the band chart is in log10: the
    difference is one line, the pass and warn limits two flat lines (−7 and −3 by default).
    """
    tags = Tags(name)
    bands = f"(pass below {pass_max:.0e}, fail above {warn_max:.0e})"
    difference = tags.main(_logs.LOG10_DIFFERENCE)
    details = tags.detail("")
    return {
        f"log10 difference vs bands {bands}": [
            "Multiline",
            [
                f"^{re.escape(difference)}$",
                f"^{re.escape(details + _logs.LOG10_FLOOR)}$",
                f"^{re.escape(details + _logs.BANDS)}/",
            ],
        ],
        f"log10 difference, shaded warn band {bands}": [
            "Margin",
            [difference, details + _logs.LOG10_PASS_MAX, details + _logs.LOG10_WARN_MAX],
        ],
        "difference per parameter (NaN: not judged)": [
            "Multiline",
            [f"^{re.escape(tags.parameters_prefix)}"],
        ],
        "verdict (-1 not judged, 0 pass, 1 warn, 2 fail)": [
            "Multiline",
            [f"^{re.escape(tags.main(_logs.VERDICT))}$"],
        ],
    }


def layout(checks: Sequence[tuple[str, float, float]]) -> dict[str, dict[str, Any]]:
    """TensorBoard's Custom Scalars page: a category per ``(name, pass_max, warn_max)``."""
    return {name: category(pass_max, warn_max, name) for name, pass_max, warn_max in checks}


def add_layout(writer: Any, checks: Sequence[tuple[str, float, float]]) -> None:
    """Writes the layout of ``checks`` (every GradientCheck of the Trainer), once per writer."""
    if writer not in _WITH_LAYOUT:
        writer.add_custom_scalars(layout(checks))
        _WITH_LAYOUT.add(writer)


def report_markdown(step: int, report: GradCheckReport, k: int) -> str:
    """The text: the verdict and what to do, each parameter's reading, the ``k`` worst
    components, the notes."""
    verdict = _logs.verdict_of(report).upper()
    if _logs.unfinished(report):
        why = str(report.failure)
        return f"### {verdict} at step {step}\n\n{why[:1].upper()}{why[1:]}"
    t = report.thresholds
    parts = [
        f"### {verdict} at step {step}: difference {_logs.difference_of(report):.1e} "
        f"(pass <= {t.pass_max:.0e}, fail > {t.warn_max:.0e})",
        report.message,
        _parameter_table(_logs.parameter_rows(report)),
    ]
    if k > 0:
        parts += [f"**The {k} worst components**", report.worst_markdown(k)]
    notes = _logs.visible_notes(report)
    if notes:
        parts.append("**Notes**\n\n" + "\n".join(f"- {note}" for note in notes))
    return "\n\n".join(parts)


def _parameter_table(rows: Sequence[_logs.ParameterRow]) -> str:
    lines = ["| parameter | difference | verdict |", "|---|---|---|"]
    for row in rows:
        value = f"{row.difference:.2e}" if math.isfinite(row.difference) else "-"
        why = f" ({row.reason})" if row.reason else ""
        lines.append(f"| {row.name} | {value} | **{row.verdict}**{why} |")
    return "\n".join(lines)


def add_markdown(writer: Any, tag: str, text: str, step: int) -> None:
    """Text under exactly ``tag`` (``SummaryWriter.add_text`` would append ``/text_summary``)."""
    if not isinstance(writer, SummaryWriter):  # another writer: its own way, its own tag
        writer.add_text(tag, text, step)
        return
    plugin = SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()
    )
    # A scalar string: TensorBoard shows it as markdown (a vector would be put in a table).
    tensor = TensorProto(
        dtype="DT_STRING", string_val=[text.encode("utf-8")], tensor_shape=TensorShapeProto()
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
    history: Sequence[_card.Point],
    log_worst: int,
    name: str = _logs.DEFAULT_NAME,
    logged_step: int | None = None,
    run: str = "",
) -> None:
    """The card (naming ``run``), the text and the histogram of log10 |error| at
    ``logged_step`` (``step``, the check's global step, unless told); scalars go through
    ``log_metrics``."""
    tags, at = Tags(name), step if logged_step is None else logged_step
    card = _card.render(_card.card_content(step, report, history, run))
    writer.add_image(tags.card, card, at, dataformats="HWC")
    add_markdown(writer, tags.main(_logs.REPORT), report_markdown(step, report, log_worst), at)
    errors = report.abs_errors[np.isfinite(report.abs_errors)]
    if errors.size:
        decades = np.log10(np.maximum(errors, _logs.LOG10_FLOOR_VALUE))
        writer.add_histogram(tags.detail(_logs.LOG10_ABS_ERROR), decades, at)
