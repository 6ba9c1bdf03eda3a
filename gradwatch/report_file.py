"""A report as a JSON file, so CI jobs and notebooks read results without parsing event files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, cast

from gradwatch.common.version import __version__
from gradwatch.common.words import renders
from gradwatch.report import Component, GradCheckReport
from gradwatch.verdict import ParameterResult

__all__ = ["as_dict", "load_report", "save_report"]

# The key that says which gradwatch wrote a file (its fields may grow between versions).
VERSION_KEY = "gradwatch_version"
# The key of a file's non-finite numbers: JSON has no NaN or Infinity, so each is written as
# null and listed here under its JSON Pointer (RFC 6901), e.g. {"/parameters/4.bias/difference":
# "nan"}.
NON_FINITE_KEY = "non_finite"
# How a non-finite number is named in NON_FINITE_KEY (and, in files of gradwatch 0.2 and
# earlier, in place of the number itself).
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# The keys of gradwatch 0.2's files that 0.3 renamed (one name per fact: "readings" and "kinks"
# are the report's per-component arrays, the file holds their counts), and those it dropped
# ("per_parameter" repeated each "parameters" entry's "difference"); "coverage"'s "not_judged",
# a list of names, beside each parameter's "not_judged", a count, is "parameters_not_judged".
_RENAMED_0_2 = {"readings": "reading_counts", "kinks": "kink_count"}
_RENAMED_0_2_COMPONENT = {"noise": "numeric_noise"}
_DROPPED_0_2 = ("per_parameter",)


def report_data(report: GradCheckReport, **context: Any) -> dict[str, Any]:
    """``report.to_dict()`` with the gradwatch version and ``context`` (e.g. the step) added."""
    clash = sorted(set(context) & {*report.to_dict(), NON_FINITE_KEY})
    if clash:
        raise ValueError(
            f"`context` must not repeat the report's own keys; got {clash}, which to_dict() "
            f"has (or the file uses: {NON_FINITE_KEY!r})"
        )
    return {VERSION_KEY: __version__, **context, **report.to_dict()}


def save_report(report: GradCheckReport, path: str | os.PathLike[str], **context: Any) -> Path:
    """Writes ``report`` to ``path`` as standard JSON, creating the folder; returns the path.

    Every number is a JSON number, but JSON has none for NaN (a difference not judged) and
    ±infinity: such a value is written as ``null`` and listed, under its JSON Pointer, in the
    file's ``"non_finite"`` entry (``{"/parameters/4.bias/difference": "nan"}``), which
    :func:`load_report` reads to give the float back. Any JSON reader takes the file
    (``json.loads`` without ``parse_constant``, ``jq``, JavaScript's ``JSON.parse``).

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
    data, non_finite = _standard(report_data(report, **context))
    data[NON_FINITE_KEY] = non_finite
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text + "\n", encoding="utf-8")
    partial.replace(target)  # a reader never sees half a file
    return target


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The dict :func:`save_report` wrote: ``to_dict()``'s keys, the version, the context.

    Numbers come back as floats, those written as ``null`` included: a difference that was not
    judged is ``float("nan")`` (so ``d["parameters"]["b"]["difference"] < 1e-3`` is ``False``,
    never a ``TypeError``) and an infinite one ``float("inf")``, as in ``report.to_dict()``;
    ``null`` that stands for no value (``"location": null``) stays ``None``. Files of gradwatch
    0.2 and earlier load alike: their strings ``"nan"``, ``"inf"`` as floats, their keys under
    0.3's names (``"readings"`` → ``"reading_counts"``, ``"kinks"`` → ``"kink_count"``, a
    component's ``"noise"`` → ``"numeric_noise"``, ``"coverage"``'s ``"not_judged"`` →
    ``"parameters_not_judged"``; ``"per_parameter"`` dropped: each
    ``"parameters"`` entry has its ``"difference"``).

    Example:
        >>> import math, tempfile, numpy as np, gradwatch
        >>> report = gradwatch.check_function(lambda t: float(t @ t), np.ones(2), np.ones(2))
        >>> data = gradwatch.load_report(
        ...     gradwatch.save_report(report, f"{tempfile.mkdtemp()}/r.json"))
        >>> data["verdict"], data["difference"] < 1e-3
        ('fail', False)
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or VERSION_KEY not in data:
        raise ValueError(
            f"`path` must be a report file written by gradwatch.save_report; got {str(path)!r}, "
            f"which has no {VERSION_KEY!r} entry"
        )
    if _older_than_0_3(data[VERSION_KEY]):
        _rename_0_2(data)
    if NON_FINITE_KEY not in data:  # a file of gradwatch 0.2 or earlier: "nan" in place
        return cast(dict[str, Any], _old_non_finite(data))
    for pointer, name in data.pop(NON_FINITE_KEY).items():
        *parents, last = [_unescape(key) for key in pointer.split("/")[1:]]
        container = data
        for key in parents:
            container = container[int(key) if isinstance(container, list) else key]
        container[int(last) if isinstance(container, list) else last] = _NON_FINITE[name]
    return data


def _standard(value: Any, pointer: str = "") -> tuple[Any, dict[str, str]]:
    """``value`` with each non-finite float replaced by None, and those floats by JSON Pointer
    (applied to every float, so a field added to the report needs nothing here)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, {pointer: str(value)}
    found: dict[str, str] = {}
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            out[key], inner = _standard(item, f"{pointer}/{_escape(str(key))}")
            found.update(inner)
        return out, found
    if isinstance(value, list | tuple):
        items = []
        for i, item in enumerate(value):
            converted, inner = _standard(item, f"{pointer}/{i}")
            items.append(converted)
            found.update(inner)
        return items, found
    return value, found


def _older_than_0_3(version: object) -> bool:
    """Whether a file's version is 0.2 or earlier (a version that does not parse is not)."""
    try:
        major, minor = (int(part) for part in str(version).split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (0, 3)


def _rename_0_2(data: dict[str, Any]) -> None:
    """A 0.2 file's keys, in place, under 0.3's names (its JSON Pointers in NON_FINITE_KEY
    too)."""
    for old, new in _RENAMED_0_2.items():
        if old in data:
            data[new] = data.pop(old)
    for old in _DROPPED_0_2:
        data.pop(old, None)
    coverage = data.get("coverage")
    if isinstance(coverage, dict) and "not_judged" in coverage:
        coverage["parameters_not_judged"] = coverage.pop("not_judged")
    for component in data.get("worst") or []:
        for old, new in _RENAMED_0_2_COMPONENT.items():
            if old in component:
                component[new] = component.pop(old)
    pointers = data.get(NON_FINITE_KEY) or {}
    kept = {}
    for pointer, name in pointers.items():
        parts = pointer.split("/")
        if len(parts) > 1 and parts[1] in _DROPPED_0_2:
            continue
        if len(parts) == 4 and parts[1] == "worst" and parts[3] in _RENAMED_0_2_COMPONENT:
            parts[3] = _RENAMED_0_2_COMPONENT[parts[3]]
        kept["/".join(parts)] = name
    if NON_FINITE_KEY in data:
        data[NON_FINITE_KEY] = kept


def _old_non_finite(value: Any) -> Any:
    """The strings ``"nan"``, ``"inf"``, ``"-inf"`` of an old file, as floats."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {key: _old_non_finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_old_non_finite(item) for item in value]
    return value


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")  # RFC 6901, section 3


def _unescape(key: str) -> str:
    return key.replace("~1", "/").replace("~0", "~")


def _num(x: float) -> float:
    # Every float of the report passes here: NaN and ±inf stay floats in to_dict(); the file
    # writes them as JSON null (see save_report).
    return float(x)


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
        "numeric_noise": _num(c.numeric_noise),
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
    """``report.to_dict()``: plain Python values, each number a float (NaN, ±inf included)."""
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
        "reading_counts": report.reading_counts,
        "coverage": {
            "judged_share": _num(report.judged_share),
            "parameters_not_judged": report.parameters_with("not judged"),
        },
        "kink_count": report.kink_count,
        "j_noise": None
        if noise is None
        else {
            "sigma": _num(noise.sigma),
            "spread": _num(noise.spread),
            "floor": _num(noise.floor),
            "effective": _num(noise.effective),
            "deterministic": bool(noise.deterministic),
            "directions": noise.directions,
            "jumps": noise.jumps,
        },
        "evaluations": report.evaluations,
        "seconds": round(report.seconds, 6),
        "thresholds": {
            "pass_max": report.thresholds.pass_max,
            "warn_max": report.thresholds.warn_max,
        },
        "notes": list(report.notes),
        "parameters": {k: _parameter_dict(r) for k, r in report.parameters.items()},
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


# The report is data this module reads; it is handed these functions (gradwatch.common.words).
renders(as_dict=as_dict)
