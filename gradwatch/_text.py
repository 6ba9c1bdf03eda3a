"""How a report reads: what the verdict means and what to do next, the console line, the tables,
and the JSON-safe dict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwatch.evidence import NOT_JUDGED, REASONS
from gradwatch.verdict import Verdict

if TYPE_CHECKING:
    from gradwatch.report import Component, GradCheckReport
    from gradwatch.verdict import ParameterResult

# What a user does about each reason a parameter was not judged.
_REMEDY = {
    "within noise": (
        "gradient zero to within J's measured noise: zero by construction (a bias that a "
        "following normalization cancels, a branch that a zero-initialized scale cuts off) or "
        "too small for this step. A zero by construction is judged by a check after some "
        "training; a small gradient by a check with epsilon='auto'"
    ),
    "too close to J's noise": (
        "gradient about as large as J's measured noise at this step, so the check can neither "
        "clear nor convict it; check with epsilon='auto' (or in float64)"
    ),
    "on a kink": (
        "steps on kinks (ReLU at 0, max-pool ties) that re-checks at nearby points could not "
        "leave; check on another batch"
    ),
    "step lost": (
        "θ_i ± epsilon rounds back to θ_i in the check's precision; use epsilon='auto', which "
        "scales the step with |θ_i|"
    ),
}


# Machine epsilon of the precisions a check runs in.
_UNIT = {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-7, "float16": 2.0**-10}


def listing(names: Sequence[str], most: int = 4) -> str:
    """``'a, b, c and 2 more'``: the first ``most`` names and how many others.

    Example:
        >>> listing(["a", "b", "c", "d", "e", "f"])
        'a, b, c, d and 2 more'
    """
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


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
            where = listing([report.layout.label(int(report.indices[p])) for p in bad], 3)
            parts.append(f"the {what} is NaN/Inf at {bad.size} components ({where})")
    if not parts:
        return None
    return (
        f"non-finite values: {'; '.join(parts)}. The loss or its gradient overflows or divides "
        "by zero there: fix that before comparing gradients."
    )


def _worst_of(report: GradCheckReport, names: Sequence[str]) -> str:
    found = report.worst(1, parameters=names)
    if not found:
        return ""
    worst = found[0]
    where = " (at a nearby θ off a kink)" if worst.recheck == "off kink" else ""
    return (
        f" Worst {worst.label}{where}: analytic {worst.analytic:.6g}, numeric {worst.numeric:.6g}."
    )


def _not_judged(report: GradCheckReport) -> str:
    """Which parameters could not be judged, why, and what to do about it."""
    skipped = [r for r in report.parameters.values() if r.verdict is Verdict.NOT_JUDGED]
    if not skipped:
        return ""
    by_reason: dict[str, list[str]] = {}
    for r in skipped:
        by_reason.setdefault(r.reason, []).append(r.name)
    parts = [f"{listing(names)}: {_REMEDY.get(why, why)}" for why, names in by_reason.items()]
    return f" Not judged ({len(skipped)} of {len(report.parameters)}): " + "; ".join(parts) + "."


def precision_hint(report: GradCheckReport) -> str:
    """A sentence when J's measured noise is far above its own precision's rounding (J computed
    partly in a lower precision, or a J that is a small difference of large terms)."""
    noise = report.j_noise
    if noise is None or not math.isfinite(noise.cost) or noise.cost == 0:
        return ""
    unit = _UNIT.get(report.dtype, 0.0)
    ulps = noise.effective / (unit * abs(noise.cost)) if unit else 0.0
    if ulps < 1e3:
        return ""
    single = noise.effective / (_UNIT["float32"] * abs(noise.cost))
    why = (
        ", about float32's rounding of J: part of J is computed in float32 (see the notes)"
        if single > 0.05
        else ": J is a small difference of large terms, or part of it runs in a lower precision"
    )
    measured = f" J's measured noise is {noise.effective:.1e}, {ulps:.0e} ulps of J"
    return f"{measured} in {report.dtype}{why}."


def _pass(report: GradCheckReport) -> str:
    t = report.thresholds
    text = (
        f"difference {report.difference:.1e}: every judged component agrees with the numeric "
        "estimate to within J's measured noise; backprop is very likely correct."
    )
    if report.difference > t.pass_max:
        sharper = (
            "epsilon='auto' gives a cleaner reading"
            if report.epsilon != "auto"
            else "that is this precision's own rounding at the best step"
        )
        text += (
            f" The difference is above the material's {t.pass_max:.0e} because of J's noise "
            f"(noise floor {report.noise_floor:.0e}); {sharper}."
        )
    return text


def nondeterminism(report: GradCheckReport) -> str:
    """A sentence when evaluations of J at the same θ differ by more than rounding explains."""
    noise = report.j_noise
    if noise is None or noise.deterministic:
        return ""
    times = noise.spread / max(noise.sigma, noise.floor, 1e-300)
    return (
        f" J is not deterministic: evaluations at the same θ differ by {noise.spread:.1e}, "
        f"{times:.0e} times its rounding noise, and every component was read against that "
        "spread. Make J a function of θ alone: seed the random numbers it draws (check_module "
        "re-seeds torch, numpy and random before every evaluation), hold dropout masks fixed, "
        "and remove state it keeps between calls."
    )


def advice(report: GradCheckReport) -> str:
    """What the verdict means and what to do next."""
    if report.failure:
        return report.failure
    t, verdict = report.thresholds, report.verdict
    if verdict is Verdict.NOT_JUDGED:
        return (
            "nothing could be judged: no component carried a gradient above J's measured noise "
            "(or every step sat on a kink)."
            + (nondeterminism(report) or precision_hint(report))
            + _not_judged(report)
        )
    if verdict is Verdict.PASS:
        return _pass(report) + nondeterminism(report) + _not_judged(report)
    failing = report.parameters_with(verdict)
    first: ParameterResult = report.parameters[failing[0]]
    also = f" (also {listing(failing[1:])})" if len(failing) > 1 else ""
    if verdict is Verdict.FAIL:
        text = (
            f"{first.name}'s difference {first.difference:.1e} > {t.warn_max:.0e}, with "
            f"{first.disagrees} of {first.judged} judged components disagreeing beyond J's "
            "measured noise: very likely a bug in backprop."
        )
        located = report.location is not None and report.location.located
        text += f" {report.location.text}" if located else f" Look at {first.name}{also}."  # type: ignore[union-attr]
        text += _findings(report)
    else:
        count = report.reading_counts["disagrees"]
        text = (
            f"{count} component{'s' if count > 1 else ''} disagree{'s' if count == 1 else ''} "
            f"with the numeric estimate beyond J's measured noise, in {first.name}{also}, though "
            f"no parameter's difference exceeds {t.warn_max:.0e}: take a careful look at them."
        ) + _findings(report)
    return text + _worst_of(report, failing) + nondeterminism(report) + _not_judged(report)


def _findings(report: GradCheckReport) -> str:
    """The kind of each wrong tensor's bug, one sentence each."""
    sentences = [f.text if f.text.endswith(("?", ".")) else f.text + "." for f in report.findings]
    return "".join(f" {s[0].upper()}{s[1:]}" if s[0].islower() else f" {s}" for s in sentences)


def _tally(report: GradCheckReport, every: bool = True) -> str:
    """``'51 agree, 80 disagree, 0 not judged'`` (``every=False``: the non-zero counts alone)."""
    verbs = {"agrees": "agree", "disagrees": "disagree", "not judged": "not judged"}
    counts = report.reading_counts.items()
    return ", ".join(f"{n} {verbs[r]}" for r, n in counts if n or every)


def headline(report: GradCheckReport) -> str:
    """The console line."""
    tally = _tally(report, every=False)
    judged = f"difference {report.difference:.1e} (noise floor {report.noise_floor:.0e})"
    if not any(r.judged for r in report.parameters.values()):
        judged = "nothing judged"
    parts = [f"{report.verdict.value}: {judged}"]
    parts.append(
        f"{report.components_checked} of {report.components_total} components"
        + (f": {tally}" if tally else "")
    )
    kinds = {f.parameter: f.kind for f in report.findings}
    for verdict in (Verdict.FAIL, Verdict.WARN):
        names = report.parameters_with(verdict)
        if names:
            named = [f"{n} ({kinds[n]})" if n in kinds else n for n in names]
            parts.append(f"{verdict.value}: {listing(named, 3)}")
    if report.location is not None and report.location.located:
        parts.append(f"enters in {listing(list(report.location.modules), 2)}")
    skipped = report.parameters_with(Verdict.NOT_JUDGED)
    if skipped:
        parts.append(f"not judged: {listing(skipped, 3)}")
    if report.kink_count:
        parts.append(f"{report.kink_count} kinks re-checked")
    parts.append(f"{report.evaluations} evaluations, {report.seconds:.2f} s")
    return "; ".join(parts)


def worst_markdown(components: Sequence[Component]) -> str:
    """A markdown table of components."""
    rows = [
        "| parameter | index | analytic | numeric | abs error | rel error | reading |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in components:
        rows.append(
            f"| {c.name} | {list(c.index)} | {c.analytic:.6e} | {c.numeric:.6e} "
            f"| {c.abs_error:.2e} | {c.rel_error:.2e} | {_reading(c)} |"
        )
    return "\n".join(rows)


def _reading(c: Component) -> str:
    extra = [x for x in (c.reason, c.recheck) if x]
    return c.reading + (f" ({', '.join(extra)})" if extra else "")


def _parameter_line(r: ParameterResult, width: int) -> str:
    if r.verdict is Verdict.NOT_JUDGED and not r.judged:
        figures = f"{'—':>9}  {'—':>9}"
    else:
        figures = f"{r.difference:>9.2e}  {r.noise_floor:>9.1e}"
    status = r.verdict.value + (f" ({r.reason})" if r.reason else "")
    counts = f"{r.agrees}/{r.disagrees}/{r.not_judged}"
    return f"  {r.name:<{width}}  {figures}  {counts:>14}  {status}"


def summary(report: GradCheckReport) -> str:
    """The multi-line ``str(report)``."""
    t = report.thresholds
    worst = report.worst(10)
    noise = report.j_noise
    measured = (
        f"; J's noise {noise.effective:.1e} ({noise.directions} probes"
        + ("" if noise.deterministic else f", J not deterministic: spread {noise.spread:.1e}")
        + ")"
        if noise is not None
        else ""
    )
    lines = [
        f"gradient check: {report.verdict.value.upper()}, difference {report.difference:.3e} "
        f"(noise floor {report.noise_floor:.1e}); pass <= {t.pass_max:.0e} < warn <= "
        f"{t.warn_max:.0e} < fail",
        f"  {report.message}",
        f"  epsilon {_eps(report)}, {report.dtype}, mode {report.mode}, "
        f"{report.components_checked} of {report.components_total} components "
        f"({_tally(report)}), "
        f"{report.kink_count} kinks{measured}, {report.evaluations} evaluations, "
        f"{report.seconds:.2f} s",
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
    lines += _unjudged_components(report)
    width = max([9] + [len(c.label) for c in worst] + [len(n) for n in report.parameters])
    lines.append("worst components:")
    lines.append(
        f"  {'component':<{width}}  {'analytic':>13}  {'numeric':>13}  {'abs error':>9}  "
        f"{'rel error':>9}  reading"
    )
    for c in worst:
        lines.append(
            f"  {c.label:<{width}}  {c.analytic:>13.6e}  {c.numeric:>13.6e}  "
            f"{c.abs_error:>9.2e}  {c.rel_error:>9.2e}  {_reading(c)}"
        )
    lines.append("parameters:")
    lines.append(
        f"  {'parameter':<{width}}  {'difference':>9}  {'noise':>9}  {'agree/dis/not':>14}  verdict"
    )
    lines += [_parameter_line(r, width) for r in report.parameters.values()]
    return "\n".join(lines)


def _unjudged_components(report: GradCheckReport) -> list[str]:
    """One line per reason components were not judged, with the first few of them."""
    lines = []
    reasons = np.asarray(report.reasons)
    for code in np.unique(reasons[np.asarray(report.readings) == NOT_JUDGED]):
        at = np.flatnonzero((reasons == code) & (np.asarray(report.readings) == NOT_JUDGED))
        first = ", ".join(report.layout.label(int(report.indices[p])) for p in at[:3])
        more = f" and {at.size - 3} more" if at.size > 3 else ""
        plural = "s" if at.size > 1 else ""
        lines.append(f"  not judged ({REASONS[code]}): {at.size} component{plural}, {first}{more}")
    return lines


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
