"""What a failing check says beyond its numbers: the kind of bug, and where it enters.

* :func:`find_patterns`: when the wrong components of a tensor share a pattern, name it: a
  constant ratio numeric/analytic (the batch size or its inverse: a mean/sum mix-up), a sign
  flip, a zero gradient where J moves, a transposed gradient, another tensor's gradient. The
  rule, for every pattern: it must predict the numeric value within ``FIT_NOISE`` measured noises
  (plus ``FIT_RELATIVE`` of the value) on at least ``FIT_SHARE`` of the tensor's wrong components,
  and at least ``MIN_WRONG`` of them (see :mod:`gradwatch.findings.patterns`).
* :func:`locate`: gradients flow backward, so a wrong backward corrupts every parameter its
  gradient reaches and no other: from each parameter's verdict and the autograd graph of J
  (:func:`trace_backward`), the modules where the first wrong gradient enters (see
  :mod:`gradwatch.findings.location`).

Everything here is pure (numpy and torch); the report calls it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwatch.evidence.readings import DISAGREES, RECHECKS
from gradwatch.findings.backward_graph import (
    BackwardGraph,
    backward_graph,
    module_spans,
    trace_backward,
)
from gradwatch.findings.location import Location, locate
from gradwatch.findings.patterns import (
    FIT_NOISE,
    FIT_RELATIVE,
    FIT_SHARE,
    MIN_WRONG,
    Finding,
    Fit,
    describe,
    fits,
    neighbour_fit,
    ratio_fit,
    tolerance,
    transpose_fit,
    zero_fit,
)
from gradwatch.layout import Layout

if TYPE_CHECKING:
    from gradwatch.report import GradCheckReport

__all__ = [
    "FIT_NOISE",
    "FIT_RELATIVE",
    "FIT_SHARE",
    "MIN_WRONG",
    "BackwardGraph",
    "Finding",
    "Location",
    "Observations",
    "backward_graph",
    "batch_size_of",
    "diagnose",
    "find_patterns",
    "locate",
    "module_spans",
    "observations",
    "parameter_verdicts",
    "trace_backward",
]


@dataclass(frozen=True)
class Observations:
    """What a check measured, per checked component, as the pattern search reads it.

    Attributes:
        layout: names and shapes of θ's tensors.
        indices: the checked components' flat positions in θ.
        analytic: backprop's value per checked component.
        numeric: the two-sided estimate per checked component.
        noise: the measured rounding noise of each numeric value.
        wrong: which checked components disagree (the report's reading "disagrees").
        gradients: the full analytic gradient of some tensors (name → array of its shape);
            a transposed gradient or another tensor's is found where the partner component is
            known, from here or from the checked components.
        batch_size: the number of examples in J, to name a ratio that equals it.
    """

    layout: Layout
    indices: np.ndarray
    analytic: np.ndarray
    numeric: np.ndarray
    noise: np.ndarray
    wrong: np.ndarray
    gradients: Mapping[str, np.ndarray] = field(default_factory=dict)
    batch_size: int | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "indices", np.asarray(self.indices, dtype=np.int64).reshape(-1))
        for name in ("analytic", "numeric", "noise"):
            put(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        put(self, "wrong", np.asarray(self.wrong, dtype=bool).reshape(-1))
        n = self.indices.size
        for name in ("analytic", "numeric", "noise", "wrong"):
            if getattr(self, name).size != n:
                raise ValueError(
                    f"`{name}` must have one value per checked component ({n}, as `indices`); "
                    f"got {getattr(self, name).size}"
                )
        size = self.batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"`batch_size` must be None or a positive int; got {size!r}")
        shapes = dict(zip(self.layout.names, self.layout.shapes, strict=True))
        for name, g in self.gradients.items():
            if name not in shapes or tuple(np.shape(g)) != shapes[name]:
                raise ValueError(
                    f"`gradients[{name!r}]` must be the full gradient of a tensor of θ, of shape "
                    f"{shapes.get(name)}; got shape {tuple(np.shape(g))}"
                )


def _known(observed: Observations, t: int, values: np.ndarray) -> np.ndarray:
    """Tensor ``t``'s full array of ``values`` (per checked component), NaN where unchecked."""
    lo = int(observed.layout.offsets[t])
    full = np.full(observed.layout.sizes()[t], np.nan)
    inside = observed.layout.tensor_of(observed.indices) == t
    full[observed.indices[inside] - lo] = values[inside]
    return full


def _gradient(observed: Observations, t: int) -> np.ndarray:
    name, shape = observed.layout.names[t], observed.layout.shapes[t]
    given = observed.gradients.get(name)
    if given is not None:
        return np.asarray(given, dtype=np.float64)
    return _known(observed, t, observed.analytic).reshape(shape)


def _references(observed: Observations, t: int, local: np.ndarray) -> dict[str, np.ndarray]:
    """Every other tensor of ``t``'s shape: its true gradient at ``local`` (numeric where
    checked, else its analytic where none of its checked components is wrong)."""
    out = {}
    tensors = observed.layout.tensor_of(observed.indices)
    for s, name in enumerate(observed.layout.names):
        if s == t or observed.layout.shapes[s] != observed.layout.shapes[t]:
            continue
        reference = _known(observed, s, observed.numeric)[local]
        clean = not observed.wrong[tensors == s].any()
        if clean and name in observed.gradients:
            trusted = np.asarray(observed.gradients[name], dtype=np.float64).reshape(-1)[local]
            reference = np.where(np.isfinite(reference), reference, trusted)
        out[name] = reference
    return out


def _tensor_fit(observed: Observations, t: int) -> Fit | None:
    at = np.flatnonzero(observed.layout.tensor_of(observed.indices) == t)
    a, n = observed.analytic[at], observed.numeric[at]
    tol = tolerance(n, observed.noise[at])
    # Only components that disagree beyond noise say anything about a pattern.
    telling = observed.wrong[at] & np.isfinite(a) & np.isfinite(n) & ~fits(n, a, tol)
    if int(telling.sum()) < MIN_WRONG:
        return None
    a, n, tol = a[telling], n[telling], tol[telling]
    local = observed.indices[at[telling]] - int(observed.layout.offsets[t])
    return (
        zero_fit(a, tol)
        or ratio_fit(a, n, tol, observed.batch_size)
        or transpose_fit(local, n, tol, _gradient(observed, t))
        or neighbour_fit(a, n, tol, _references(observed, t, local))
    )


def find_patterns(observed: Observations) -> list[Finding]:
    """One :class:`Finding` per tensor whose wrong components share a pattern, in θ's order.

    Example:
        >>> layout = Layout.from_mapping({"w": (4, 4)})
        >>> g = np.arange(16.0) + 1
        >>> ev = Observations(layout, np.arange(16), analytic=2 * g, numeric=g,
        ...               noise=np.full(16, 1e-9), wrong=np.ones(16, bool))
        >>> (finding,) = find_patterns(ev)
        >>> finding.kind, finding.ratio
        ('scale', 0.5)
        >>> print(finding.text[:80])
        w: numeric/analytic = 1/2 on 16 of 16 wrong components: backprop's gradient is 2
    """
    findings = []
    for t, name in enumerate(observed.layout.names):
        fit = _tensor_fit(observed, t)
        if fit is not None:
            text = describe(name, fit, observed.batch_size)
            findings.append(
                Finding(
                    name, fit.kind, text, fit.fitted, fit.tested, fit.ratio, fit.axes, fit.other
                )
            )
    return findings


# -- adapters for today's GradCheckReport (the report's observed model will give these directly) --


def parameter_verdicts(report: GradCheckReport) -> dict[str, str]:
    """Each checked parameter's verdict as :func:`locate` reads it: "pass", "warn", "fail" or
    "not judged" (a gradient zero to within J's noise, a J that is not deterministic)."""
    if report.failure is not None:
        return {name: "not judged" for name in report.parameters}
    return {name: r.verdict.value for name, r in report.parameters.items()}


def observations(
    report: GradCheckReport,
    batch_size: int | None = None,
    gradients: Mapping[str, np.ndarray] | None = None,
) -> Observations:
    """The :class:`Observations` of a report: the wrong components are those that disagree; the
    full gradient of every tensor checked in full is assembled from the report."""
    wrong = np.asarray(report.readings) == DISAGREES
    known = dict(gradients or {})
    tensors = report.layout.tensor_of(report.indices)
    for t, (name, shape) in enumerate(zip(report.layout.names, report.layout.shapes, strict=True)):
        inside = tensors == t
        if name not in known and int(inside.sum()) == report.layout.sizes()[t]:
            full = np.empty(report.layout.sizes()[t])
            full[report.indices[inside] - int(report.layout.offsets[t])] = report.analytic[inside]
            known[name] = full.reshape(shape)
    return Observations(
        report.layout,
        report.indices,
        report.analytic,
        report.numeric,
        np.asarray(report.numeric_noise),
        wrong,
        known,
        batch_size,
    )


def diagnose(
    report: GradCheckReport,
    gradients: Mapping[str, np.ndarray] | None = None,
    batch_size: int | None = None,
    graph: BackwardGraph | None = None,
) -> GradCheckReport:
    """The report with its ``findings`` (the kind of each wrong tensor's bug) and ``location``
    (where the first wrong gradient enters, from the backward ``graph`` of J) filled in; the
    same report when no component disagrees."""
    if report.reading_counts["disagrees"] == 0 or report.failure is not None:
        return report
    findings = find_patterns(observations(report, batch_size, gradients))
    location = None if graph is None else locate(graph, _at_one_point(report))
    return dataclasses.replace(report, findings=tuple(findings), location=location)


def _at_one_point(report: GradCheckReport) -> dict[str, str]:
    """The verdicts the location compares. Where tensors were judged at the generic point
    (:mod:`gradwatch.check.generic_point`), a tensor that passed at θ says nothing of a bug behind
    the zero that cut those tensors off at θ: it constrains nothing, as one not judged."""
    verdicts = parameter_verdicts(report)
    there = np.asarray(report.rechecks) == RECHECKS.index("generic point")
    if not there.any():
        return verdicts
    names = report.layout.names
    moved = {names[t] for t in np.unique(report.layout.tensor_of(report.indices[there]))}
    return {n: "not judged" if v == "pass" and n not in moved else v for n, v in verdicts.items()}


def batch_size_of(batch: Any) -> int | None:
    """The leading dimension of the first tensor (or array) in ``batch``, searched through
    tuples, lists and dicts; None when there is none.

    Example:
        >>> batch_size_of((np.zeros((32, 4)), np.zeros(32)))
        32
        >>> batch_size_of({"text": "no tensors"}) is None
        True
    """
    if hasattr(batch, "shape") and len(batch.shape) >= 1:
        return int(batch.shape[0])
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(items, list | tuple) or isinstance(batch, Mapping):
        for item in items:
            found = batch_size_of(item)
            if found is not None:
                return found
    return None
