"""What a verdict means and what to do next: the report's message, from its readings, its
parameters' verdicts, J's measured noise and the diagnosis."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gradwatch.common.words import renders
from gradwatch.report import GradCheckReport
from gradwatch.reporting.text import listing
from gradwatch.verdict import ParameterResult, Verdict

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
    return "".join(f" {s}" for s in sentences)  # each begins with the parameter's own name


# The report is data this module reads; it is handed these functions (gradwatch.common.words).
renders(advice=advice, non_finite=non_finite)
