"""A report as a JSON file, so CI jobs and notebooks read results without parsing event files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradwatch.report import Component, GradCheckReport
    from gradwatch.verdict import ParameterResult

__all__ = ["as_dict", "load_report", "save_report"]

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
        report: the result of :func:`gradwatch.check_module` or :func:`gradwatch.check_function`.
        path: the file to write, e.g. ``"checks/step_0.json"``.
        **context: JSON-safe values stored next to the report's own, e.g. ``step=100``.

    Example:
        >>> import json, tempfile, numpy as np, gradwatch
        >>> report = gradwatch.check_function(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))
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
        >>> report = gradwatch.check_function(lambda t: float(t @ t), np.ones(2), np.ones(2))
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


def _num(x: float) -> float | str:
    # JSON has no NaN or Infinity: keep them readable rather than silently dropping them.
    return float(x) if math.isfinite(x) else str(float(x))


def _component_dict(c: Component) -> dict[str, Any]:
    return {
        "name": c.name,
        "index": list(c.index),
        "flat_index": c.flat_index,
        "analytic": _num(c.analytic),
        "numeric": _num(c.numeric),
        "abs_error": _num(c.abs_error),
        "rel_error": _num(c.rel_error),
        "reading": c.reading,
        "reason": c.reason,
        "recheck": c.recheck,
        "noise": _num(c.noise),
        "kink": c.kink,
    }


def _parameter_dict(r: ParameterResult) -> dict[str, Any]:
    return {
        "verdict": r.verdict.value,
        "difference": _num(r.difference),
        "noise_floor": _num(r.noise_floor),
        "agrees": r.agrees,
        "disagrees": r.disagrees,
        "not_judged": r.not_judged,
        "reason": r.reason,
        "tensor_test": _num(r.tensor_test),
    }


def as_dict(report: GradCheckReport) -> dict[str, Any]:
    """``report.to_dict()``."""
    drift, noise = report.drift, report.j_noise
    return {
        "verdict": report.verdict.value,
        "difference": _num(report.difference),
        "plain_difference": _num(report.plain_difference),
        "noise_floor": _num(report.noise_floor),
        "message": report.message,
        "mode": report.mode,
        "epsilon": report.epsilon if isinstance(report.epsilon, str) else _num(report.epsilon),
        "dtype": report.dtype,
        "components_checked": report.components_checked,
        "components_total": report.components_total,
        "readings": report.reading_counts,
        "coverage": {
            "judged_share": _num(report.judged_share),
            "not_judged": report.parameters_with("not judged"),
        },
        "kinks": report.kink_count,
        "j_noise": None
        if noise is None
        else {
            "sigma": _num(noise.sigma),
            "spread": _num(noise.spread),
            "floor": _num(noise.floor),
            "effective": _num(noise.effective),
            "deterministic": bool(noise.deterministic),
            "directions": noise.directions,
        },
        "evaluations": report.evaluations,
        "seconds": round(report.seconds, 6),
        "thresholds": {
            "pass_max": report.thresholds.pass_max,
            "warn_max": report.thresholds.warn_max,
        },
        "notes": list(report.notes),
        "parameters": {k: _parameter_dict(r) for k, r in report.parameters.items()},
        "per_parameter": {k: _num(v) for k, v in report.per_parameter.items()},
        "worst": [_component_dict(c) for c in report.worst(10)],
        "findings": [f.to_dict() for f in report.findings],
        "location": None if report.location is None else report.location.to_dict(),
        "training_path": None if report.training_path is None else report.training_path.to_dict(),
        "drift": None
        if drift is None
        else {
            "dtype": drift.dtype,
            "gradient_drift": _num(drift.gradient_drift),
            "difference": _num(drift.difference),
            "failure": drift.failure,
        },
    }
