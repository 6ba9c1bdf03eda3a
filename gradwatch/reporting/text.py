"""How a report reads as text: the console line, the summary of ``str(report)``, the markdown
table of components, and the small phrases they share (see :mod:`gradwatch.reporting.advice` for the
message)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradwatch.common.words import renders
from gradwatch.evidence.readings import NOT_JUDGED, REASONS
from gradwatch.report import Component, GradCheckReport
from gradwatch.verdict import ParameterResult, Verdict


def listing(names: Sequence[str], most: int = 4) -> str:
    """``'a, b, c and 2 more'``: the first ``most`` names and how many others.

    Example:
        >>> listing(["a", "b", "c", "d", "e", "f"])
        'a, b, c, d and 2 more'
    """
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _eps(report: GradCheckReport) -> str:
    e = report.epsilon
    return f"{e:g}" if isinstance(e, float) else str(e)


def _tally(report: GradCheckReport, every: bool = True) -> str:
    """``'51 agree, 80 disagree, 0 not judged'`` (``every=False``: the non-zero counts alone)."""
    verbs = {"agrees": "agree", "disagrees": "disagree", "not judged": "not judged"}
    counts = report.reading_counts.items()
    return ", ".join(f"{n} {verbs[r]}" for r, n in counts if n or every)


def coverage(report: GradCheckReport) -> str:
    """What a verdict rests on: ``'pass on 97% of components; not judged: 2 tensors (a, b)'``
    (public as ``gradwatch.integration.text.coverage``; the callback's console line and card
    show it).

    Example:
        >>> import numpy as np, gradwatch
        >>> report = gradwatch.check_function(lambda t: float(t[0] ** 2), np.array([1.0, 2.0]),
        ...                                   np.array([2.0, 0.0]), layout={"w": (1,), "b": (1,)})
        >>> coverage(report)
        'pass on 50% of components; not judged: 1 tensor (b)'
    """
    share = report.judged_share
    text = f"{report.verdict.value} on {share:.0%} of components" if share == share else ""
    skipped = report.parameters_with(Verdict.NOT_JUDGED)
    if skipped:
        plural = "s" if len(skipped) > 1 else ""
        text += f"; not judged: {len(skipped)} tensor{plural} ({listing(skipped, 3)})"
    return text


def headline(report: GradCheckReport) -> str:
    """The console line."""
    tally = _tally(report, every=False)
    judged = f"difference {report.difference:.1e} (noise floor {report.noise_floor:.0e})"
    share = ""
    if not any(r.judged for r in report.parameters.values()):
        judged = "nothing judged"
    else:
        share = f" ({report.judged_share:.0%} judged)"
    parts = [f"{report.verdict.value}: {judged}"]
    parts.append(
        f"{report.components_checked} of {report.components_total} components{share}"
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
        plural = "s" if len(skipped) > 1 else ""
        parts.append(f"not judged: {len(skipped)} tensor{plural} ({listing(skipped, 3)})")
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
        + (f", {noise.jumps} crossing a jump in J left out" if noise.jumps else "")
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
        f"  coverage: {coverage(report)}",
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


# The report is data this module reads; it is handed these functions (gradwatch.common.words).
renders(headline=headline, summary=summary, worst_markdown=worst_markdown)
