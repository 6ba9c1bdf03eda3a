"""How a report reads: advice in the material's spirit, the console line, tables, JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwatch.verdict import Verdict

if TYPE_CHECKING:
    from gradwatch.report import Component, GradCheckReport


def _num(x: float) -> float | str:
    # JSON has no NaN or Infinity: keep them readable rather than silently dropping them.
    return float(x) if math.isfinite(x) else str(float(x))


def _eps(report: GradCheckReport) -> str:
    e = report.epsilon
    return f"{e:g}" if isinstance(e, float) else str(e)


def non_finite(report: GradCheckReport) -> str | None:
    """Where the NaN/Inf values are, as a failure reason; None when all is finite."""
    parts = []
    for what, values in (
        ("numeric estimate", report.numeric),
        ("analytic gradient", report.analytic),
    ):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            where = ", ".join(report.layout.label(int(report.indices[p])) for p in bad[:3])
            more = f" and {bad.size - 3} more" if bad.size > 3 else ""
            parts.append(f"the {what} is NaN/Inf at {bad.size} components ({where}{more})")
    if not parts:
        return None
    return (
        f"non-finite values: {'; '.join(parts)}. The loss or its gradient overflows or divides "
        "by zero there: fix that before comparing gradients."
    )


def _look_at(report: GradCheckReport) -> str:
    # The material: "look at the individual components to see where dθ_approx[i] differs".
    worst = report.worst(1)[0]
    bad = report.suspects() or [worst.name]
    masks = report._tensor_masks()
    spread = float(np.max(report.abs_errors[masks[bad[0]]]))
    text = f"Look at {bad[0]}: its components differ by up to {spread:.1e}"
    if len(bad) > 1:
        text += f" (also {', '.join(bad[1:4])}{' …' if len(bad) > 4 else ''})"
    return (
        f"{text}; worst {worst.label}: analytic {worst.analytic:.6g}, numeric {worst.numeric:.6g}."
    )


def _kink_clause(report: GradCheckReport) -> str:
    if not report.kink_count:
        return ""
    return (
        f" {report.kink_count} components crossed a kink (ReLU at 0, max-pool tie) where "
        f"backprop gave a valid subgradient; they are left out (difference with them "
        f"{report.difference:.1e})."
    )


def _sharper(report: GradCheckReport) -> str:
    """How to get a cleaner reading than this one."""
    if report.epsilon != "auto":
        return "check with epsilon='auto' for a cleaner reading"
    if report.dtype != "float64":
        return "check in float64 (the default) for a cleaner reading"
    return "this is float64's own rounding at the best step: nothing to gain from another step"


def _overall(report: GradCheckReport) -> str:
    """``difference 2.0e-07`` or, where one tensor sets the verdict, that tensor's difference."""
    d = report.difference_without_kinks
    if report.driver is None:
        return f"difference {d:.1e}"
    own = report.per_parameter[report.driver]
    return f"{report.driver}'s own difference {own:.1e} (overall {d:.1e})"


def advice(report: GradCheckReport) -> str:
    """What the verdict means and what to do next."""
    d, t = report.difference_without_kinks, report.thresholds
    if report.failure:
        return report.failure
    overall = t.classify(d)
    if report.verdict is Verdict.PASS:
        text = f"difference {d:.1e} <= {t.pass_max:.0e}: backprop is very likely correct."
        return text + _kink_clause(report)
    if report.verdict is Verdict.FAIL:
        return (
            f"{_overall(report)} > {t.warn_max:.0e}: very likely a bug in backprop. "
            + _look_at(report)
            + _kink_clause(report)
        )
    # WARN from here on.
    if overall is Verdict.FAIL and report.explained_by_rounding:
        return (
            f"difference {d:.1e}, rounding floor ≈ {report.noise_floor:.0e}: rounding noise in J "
            f"at epsilon {_eps(report)} in {report.dtype} is as large as the difference, so this "
            f"check can tell neither a bug nor its absence; {_sharper(report)}."
        ) + _kink_clause(report)
    if report.flagged_count and overall is Verdict.PASS and not report.suspects():
        worst = report.worst(1)[0]
        return (
            f"pass overall (difference {d:.1e} <= {t.pass_max:.0e}), but "
            f"{report.flagged_count} suspicious components: their errors are far above what "
            f"rounding and curvature explain. Worst {worst.label}: analytic "
            f"{worst.analytic:.6g}, numeric {worst.numeric:.6g}. Look at those."
        ) + _kink_clause(report)
    if report.off_slope_count and not report.suspects() and not report.flagged_count:
        first = next(c for c in report.worst(report.components_checked) if c.off_slope)
        return (
            f"{report.off_slope_count} components sit on a kink that many examples share (e.g. "
            f"{first.label}: a ReLU unit whose pre-activation is exactly 0 for the whole batch, "
            "as after pruning or a zero initialization). There backprop's value lies outside the "
            "one-sided slopes of J and need not be a slope of J at all, so the check cannot judge "
            f"them; the other components' difference is {d:.1e}. Check again on another batch, "
            "or with those units moved off the kink."
        ) + _kink_clause(report)
    unresolved = report.unresolved()
    if unresolved and not report.suspects() and not report.flagged_count:
        name = unresolved[0]
        others = f" (also {', '.join(unresolved[1:4])})" if len(unresolved) > 1 else ""
        return (
            f"inconclusive for {name}{others}: its own difference is "
            f"{report.per_parameter[name]:.1e}, from errors above rounding noise yet too close "
            f"to it to call a bug at epsilon {_eps(report)}; {_sharper(report)}. Overall "
            f"difference {d:.1e}."
        ) + _kink_clause(report)
    if report.explained_by_rounding:
        return (
            f"difference {d:.1e}, rounding floor ≈ {report.noise_floor:.0e}: consistent with "
            f"correct gradients. Rounding noise in J at epsilon {_eps(report)} is what holds the "
            f"difference above the pass band; {_sharper(report)}."
        ) + _kink_clause(report)
    return (
        f"{_overall(report)} is above {t.pass_max:.0e} but at most {t.warn_max:.0e}: take "
        f"a careful look. {_look_at(report)} Make sure none of its components is far off."
    ) + _kink_clause(report)


def headline(report: GradCheckReport) -> str:
    """The console line."""
    extra = ""
    if report.kink_count:
        extra += f", {report.kink_count} kinks"
    if report.off_slope_count:
        extra += f", {report.off_slope_count} on shared kinks"
    if report.flagged_count:
        extra += f", {report.flagged_count} suspicious"
    floor = f", rounding floor ≈ {report.noise_floor:.0e}"
    if report.verdict is Verdict.WARN and report.explained_by_rounding:
        if report.thresholds.classify(report.difference_without_kinks) is Verdict.FAIL:
            floor += ": inconclusive, rounding dominates"
        else:
            floor += ": consistent with correct gradients"
    driver = report.driver
    if driver is not None:
        extra = f", set by {driver} ({report.per_parameter[driver]:.1e})" + extra
    return (
        f"difference {report.difference_without_kinks:.1e} ({report.verdict.value}){floor}"
        f"{extra}, {report.components_checked} of {report.components_total} components, "
        f"{report.evaluations} evaluations, {report.seconds:.2f} s"
    )


def worst_markdown(components: Sequence[Component]) -> str:
    """A markdown table of components."""
    rows = [
        "| parameter | index | analytic | numeric | abs error | rel error |",
        "|---|---|---|---|---|---|",
    ]
    for c in components:
        tag = " (suspicious)" if c.flagged else " (kink)" if c.kink else ""
        rows.append(
            f"| {c.name} | {list(c.index)}{tag} | {c.analytic:.6e} | {c.numeric:.6e} "
            f"| {c.abs_error:.2e} | {c.rel_error:.2e} |"
        )
    return "\n".join(rows)


def summary(report: GradCheckReport) -> str:
    """The multi-line ``str(report)``."""
    t = report.thresholds
    worst = report.worst(10)
    lines = [
        f"gradient check: {report.verdict.value.upper()}, difference "
        f"{report.difference_without_kinks:.3e} (pass <= {t.pass_max:.0e} < warn <= "
        f"{t.warn_max:.0e} < fail), rounding floor ≈ {report.noise_floor:.1e}",
        f"  {report.message}",
        f"  epsilon {_eps(report)}, {report.dtype}, mode {report.mode}, "
        f"{report.components_checked} of {report.components_total} components, "
        f"{report.kink_count} kinks, {report.flagged_count} suspicious, "
        f"{report.evaluations} loss evaluations, {report.seconds:.2f} s",
    ]
    if report.drift is not None:
        lines.append(
            f"  in {report.drift.dtype}: gradient drift {report.drift.gradient_drift:.1e} from "
            f"float64, difference {report.drift.difference:.1e}"
            + (f" ({report.drift.failure})" if report.drift.failure else "")
        )
    if report.training_path is not None:
        lines += [f"  {line}" for line in report.training_path.lines()]
    lines += [f"  note: {n}" for n in report.notes]
    width = max([9] + [len(c.label) for c in worst] + [len(n) for n in report.per_parameter])
    lines.append("worst components:")
    lines.append(
        f"  {'component':<{width}}  {'analytic':>13}  {'numeric':>13}  {'abs error':>9}  "
        f"{'rel error':>9}"
    )
    for c in worst:
        tag = "  suspicious" if c.flagged else "  kink" if c.kink else ""
        tag = "  shared kink" if c.off_slope else tag
        lines.append(
            f"  {c.label:<{width}}  {c.analytic:>13.6e}  {c.numeric:>13.6e}  "
            f"{c.abs_error:>9.2e}  {c.rel_error:>9.2e}{tag}"
        )
    lines.append("per-parameter differences:")
    significant = set(report.significant_parameters())
    unresolved = set(report.unresolved())
    for name, value in report.per_parameter.items():
        status = t.classify(value).value
        if name in unresolved:
            status = "inconclusive (errors above rounding, too close to it to call a bug)"
        elif name not in significant and status != "pass":
            status = "within rounding (its errors are no larger than rounding explains)"
        lines.append(f"  {name:<{width}}  {value:>9.2e}  {status}")
    return "\n".join(lines)


def _component_dict(c: Component) -> dict[str, Any]:
    return {
        "name": c.name,
        "index": list(c.index),
        "flat_index": c.flat_index,
        "analytic": _num(c.analytic),
        "numeric": _num(c.numeric),
        "abs_error": _num(c.abs_error),
        "rel_error": _num(c.rel_error),
        "kink": c.kink,
        "flagged": c.flagged,
    }


def as_dict(report: GradCheckReport) -> dict[str, Any]:
    """``report.to_dict()``."""
    drift = report.drift
    return {
        "difference": _num(report.difference),
        "difference_without_kinks": _num(report.difference_without_kinks),
        "noise_floor": _num(report.noise_floor),
        "verdict": report.verdict.value,
        "message": report.message,
        "mode": report.mode,
        "epsilon": report.epsilon if isinstance(report.epsilon, str) else _num(report.epsilon),
        "dtype": report.dtype,
        "components_checked": report.components_checked,
        "components_total": report.components_total,
        "kinks": report.kink_count,
        "off_slope": report.off_slope_count,
        "suspicious": report.flagged_count,
        "evaluations": report.evaluations,
        "seconds": round(report.seconds, 6),
        "thresholds": {
            "pass_max": report.thresholds.pass_max,
            "warn_max": report.thresholds.warn_max,
        },
        "notes": list(report.notes),
        "per_parameter": {k: _num(v) for k, v in report.per_parameter.items()},
        "worst": [_component_dict(c) for c in report.worst(10)],
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
