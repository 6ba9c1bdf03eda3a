"""A report as a JSON file, so CI jobs and notebooks read results without parsing event files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradwatch.report import GradCheckReport

__all__ = ["load_report", "save_report"]

# The key that says which gradwatch wrote a file (its fields may grow between versions).
VERSION_KEY = "gradwatch_version"


def report_data(report: GradCheckReport, **context: Any) -> dict[str, Any]:
    """``report.to_dict()`` with the gradwatch version and ``context`` (e.g. the step) added."""
    from gradwatch import __version__

    clash = sorted(set(context) & set(report.to_dict()))
    if clash:
        raise ValueError(
            f"`context` must not repeat the report's own keys; got {clash}, which to_dict() has"
        )
    return {VERSION_KEY: __version__, **context, **report.to_dict()}


def save_report(report: GradCheckReport, path: str | os.PathLike[str], **context: Any) -> Path:
    """Writes ``report`` to ``path`` as JSON (strict: NaN and infinities are the strings
    ``"nan"``, ``"inf"``, as in ``to_dict()``), creating the folder; returns the path.

    Args:
        report: the result of :func:`gradwatch.check_module` or :func:`gradwatch.gradient_check`.
        path: the file to write, e.g. ``"checks/step_0.json"``.
        **context: JSON-safe values stored next to the report's own, e.g. ``step=100``.

    Example:
        >>> import json, tempfile, numpy as np, gradwatch
        >>> report = gradwatch.gradient_check(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))
        >>> path = gradwatch.save_report(report, f"{tempfile.mkdtemp()}/check.json", step=0)
        >>> data = gradwatch.load_report(path)
        >>> data["verdict"], data["step"]
        ('pass', 0)
    """
    target = Path(path)
    data = report_data(report, **context)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text + "\n", encoding="utf-8")
    partial.replace(target)  # a reader never sees half a file
    return target


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The dict :func:`save_report` wrote (``to_dict()``'s keys, the version, the context).

    Example:
        >>> import tempfile, numpy as np, gradwatch
        >>> report = gradwatch.gradient_check(lambda t: float(t @ t), np.ones(2), np.ones(2))
        >>> gradwatch.load_report(gradwatch.save_report(report, f"{tempfile.mkdtemp()}/r.json"))[
        ...     "verdict"]
        'fail'
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or VERSION_KEY not in data:
        raise ValueError(
            f"`path` must be a report file written by gradwatch.save_report; got {str(path)!r}, "
            f"which has no {VERSION_KEY!r} entry"
        )
    return data
