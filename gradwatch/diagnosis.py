"""What a failing check says beyond its numbers: the kind of bug, and where it enters.

* :func:`find_patterns`: when the wrong components of a tensor share a pattern, name it: a
  constant ratio numeric/analytic (the batch size or its inverse: a mean/sum mix-up), a sign
  flip, a zero gradient where J moves, a transposed gradient, another tensor's gradient. The
  rule, for every pattern: it must predict the numeric value within ``FIT_NOISE`` measured noises
  (plus ``FIT_RELATIVE`` of the value) on at least ``FIT_SHARE`` of the tensor's wrong components,
  and at least ``MIN_WRONG`` of them (see :mod:`gradwatch._patterns`).
* :func:`locate`: gradients flow backward, so a wrong backward corrupts every parameter its
  gradient reaches and no other: from each parameter's verdict and the autograd graph of J
  (:func:`trace_backward`), the modules where the first wrong gradient enters (see
  :mod:`gradwatch._location`).

Everything here is pure (numpy and torch); the report calls it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwatch._backward import BackwardGraph, backward_graph, module_spans, trace_backward
from gradwatch._location import Location, locate
from gradwatch._patterns import (
    FIT_NOISE,
    FIT_RELATIVE,
    FIT_SHARE,
    MIN_WRONG,
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
    "Evidence",
    "Finding",
    "Location",
    "backward_graph",
    "batch_size_of",
    "evidence_from_report",
    "find_patterns",
    "locate",
    "module_spans",
    "parameter_verdicts",
    "trace_backward",
]


@dataclass(frozen=True)
class Evidence:
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


@dataclass(frozen=True)
class Finding:
    """A pattern shared by the wrong components of one tensor: the kind of bug.

    ``kind`` is one of ``"zero"`` (backprop gives 0 where J moves), ``"extra"`` (J does not move
    where backprop gives a gradient), ``"sign"``, ``"mean/sum"`` (numeric/analytic is the batch
    size or its inverse), ``"scale"`` (another constant ratio), ``"transpose"`` and
    ``"neighbour"`` (another tensor's gradient). ``fitted`` of ``tested`` wrong components fit;
    ``ratio`` is numeric/analytic, ``axes`` the transposed axes, ``other`` the other tensor.
    """

    parameter: str
    kind: str
    text: str
    fitted: int
    tested: int
    ratio: float | None = None
    axes: tuple[int, int] | None = None
    other: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        out = dataclasses.asdict(self)
        out["axes"] = None if self.axes is None else list(self.axes)
        return out


def _known(evidence: Evidence, t: int, values: np.ndarray) -> np.ndarray:
    """Tensor ``t``'s full array of ``values`` (per checked component), NaN where unchecked."""
    lo = int(evidence.layout.offsets[t])
    full = np.full(evidence.layout.sizes()[t], np.nan)
    inside = evidence.layout.tensor_of(evidence.indices) == t
    full[evidence.indices[inside] - lo] = values[inside]
    return full


def _gradient(evidence: Evidence, t: int) -> np.ndarray:
    name, shape = evidence.layout.names[t], evidence.layout.shapes[t]
    given = evidence.gradients.get(name)
    if given is not None:
        return np.asarray(given, dtype=np.float64)
    return _known(evidence, t, evidence.analytic).reshape(shape)


def _references(evidence: Evidence, t: int, local: np.ndarray) -> dict[str, np.ndarray]:
    """Every other tensor of ``t``'s shape: its true gradient at ``local`` (numeric where
    checked, else its analytic where none of its checked components is wrong)."""
    out = {}
    tensors = evidence.layout.tensor_of(evidence.indices)
    for s, name in enumerate(evidence.layout.names):
        if s == t or evidence.layout.shapes[s] != evidence.layout.shapes[t]:
            continue
        reference = _known(evidence, s, evidence.numeric)[local]
        clean = not evidence.wrong[tensors == s].any()
        if clean and name in evidence.gradients:
            trusted = np.asarray(evidence.gradients[name], dtype=np.float64).reshape(-1)[local]
            reference = np.where(np.isfinite(reference), reference, trusted)
        out[name] = reference
    return out


def _tensor_fit(evidence: Evidence, t: int) -> Fit | None:
    at = np.flatnonzero(evidence.layout.tensor_of(evidence.indices) == t)
    a, n = evidence.analytic[at], evidence.numeric[at]
    tol = tolerance(n, evidence.noise[at])
    # Only components that disagree beyond noise say anything about a pattern.
    telling = evidence.wrong[at] & np.isfinite(a) & np.isfinite(n) & ~fits(n, a, tol)
    if int(telling.sum()) < MIN_WRONG:
        return None
    a, n, tol = a[telling], n[telling], tol[telling]
    local = evidence.indices[at[telling]] - int(evidence.layout.offsets[t])
    return (
        zero_fit(a, tol)
        or ratio_fit(a, n, tol, evidence.batch_size)
        or transpose_fit(local, n, tol, _gradient(evidence, t))
        or neighbour_fit(a, n, tol, _references(evidence, t, local))
    )


def find_patterns(evidence: Evidence) -> list[Finding]:
    """One :class:`Finding` per tensor whose wrong components share a pattern, in θ's order.

    Example:
        >>> layout = Layout.from_mapping({"w": (4, 4)})
        >>> g = np.arange(16.0) + 1
        >>> ev = Evidence(layout, np.arange(16), analytic=2 * g, numeric=g,
        ...               noise=np.full(16, 1e-9), wrong=np.ones(16, bool))
        >>> (finding,) = find_patterns(ev)
        >>> finding.kind, finding.ratio
        ('scale', 0.5)
        >>> print(finding.text[:80])
        w: numeric/analytic = 1/2 on 16 of 16 wrong components: backprop's gradient is 2
    """
    findings = []
    for t, name in enumerate(evidence.layout.names):
        fit = _tensor_fit(evidence, t)
        if fit is not None:
            text = describe(name, fit, evidence.batch_size)
            findings.append(
                Finding(
                    name, fit.kind, text, fit.fitted, fit.tested, fit.ratio, fit.axes, fit.other
                )
            )
    return findings


# -- adapters for today's GradCheckReport (the report's evidence model will give these directly) --


def parameter_verdicts(report: GradCheckReport) -> dict[str, str]:
    """Each checked parameter's verdict as :func:`locate` reads it: "fail"/"warn" where its
    error stands above rounding, "pass" where it does not and its gradient stands above the
    noise, "not judged" otherwise (a gradient that is 0 to within rounding, an inconclusive
    parameter, a J that is not deterministic)."""
    if report.failure is not None:
        return {name: "not judged" for name in report.per_parameter}
    significant, unresolved = set(report.significant_parameters()), set(report.unresolved())
    tensors = report.layout.tensor_of(report.indices)
    noise = np.asarray(report.noise)
    out = {}
    for t, name in enumerate(report.layout.names):
        inside = tensors == t
        if not inside.any():
            continue
        if name in significant:
            out[name] = report.thresholds.classify(report.per_parameter[name]).value
        elif name in unresolved or not np.isfinite(report.per_parameter[name]):
            out[name] = "not judged"
        else:
            size = np.linalg.norm(report.analytic[inside])
            heard = size > FIT_NOISE * np.linalg.norm(noise[inside])
            out[name] = "pass" if heard else "not judged"
    return out


def evidence_from_report(
    report: GradCheckReport,
    batch_size: int | None = None,
    gradients: Mapping[str, np.ndarray] | None = None,
) -> Evidence:
    """The :class:`Evidence` of today's report: a component is wrong where it is flagged or its
    parameter fails; the full gradient of every tensor checked in full is assembled."""
    verdicts = parameter_verdicts(report)
    names = np.array(report.layout.names)[report.layout.tensor_of(report.indices)]
    failing = np.array([verdicts.get(str(n)) == "fail" for n in names], dtype=bool)
    wrong = np.asarray(report.flagged, dtype=bool) | failing
    known = dict(gradients or {})
    tensors = report.layout.tensor_of(report.indices)
    for t, (name, shape) in enumerate(zip(report.layout.names, report.layout.shapes, strict=True)):
        if name not in known and int((tensors == t).sum()) == report.layout.sizes()[t]:
            full = np.empty(report.layout.sizes()[t])
            full[report.indices[tensors == t] - int(report.layout.offsets[t])] = report.analytic[
                tensors == t
            ]
            known[name] = full.reshape(shape)
    return Evidence(
        report.layout,
        report.indices,
        report.analytic,
        report.numeric,
        np.asarray(report.noise),
        wrong,
        known,
        batch_size,
    )


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
