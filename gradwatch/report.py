"""What a gradient check found: the readings of the checked components, each parameter's verdict
(see :mod:`gradwatch.verdict` for how it follows from the readings), and the components that
point at a bug."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradwatch.common.numeric import component_errors, relative_difference
from gradwatch.common.words import WORDS
from gradwatch.evidence.noise import JNoise
from gradwatch.evidence.readings import (
    AGREES,
    DISAGREES,
    NOT_JUDGED,
    READINGS,
    REASONS,
    RECHECKS,
    read,
)
from gradwatch.findings.location import Location
from gradwatch.findings.patterns import Finding
from gradwatch.layout import Layout, format_label
from gradwatch.training_path import TrainingPathResult
from gradwatch.verdict import (
    ParameterResult,
    Thresholds,
    Verdict,
    judged_figures,
    parameter_verdict,
    worst_verdict,
)

__all__ = ["Component", "GradCheckReport", "PrecisionDrift"]


@dataclass(frozen=True)
class Component:
    """One component of θ: backprop's value and the numeric estimate its reading compared.

    ``reading`` is ``"agrees"``, ``"disagrees"`` or ``"not judged"`` (``reason`` says why);
    ``recheck`` is ``""`` (the material's two-sided estimate at θ), ``"longer steps"`` (Richardson's
    estimate from the steps ε and ε/2) or ``"off kink"`` (both values at a jittered θ near a kink);
    ``numeric_noise`` is the measured noise of ``numeric`` (σ_i; J's own is the report's
    ``j_noise``); ``kink``: the step at θ crossed a kink;
    ``rel_error`` is the material's formula for this one component, |a − n| / (|a| + |n|).
    """

    name: str
    index: tuple[int, ...]
    flat_index: int
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    reading: str = "agrees"
    reason: str = ""
    recheck: str = ""
    numeric_noise: float = 0.0
    kink: bool = False

    @property
    def label(self) -> str:
        """``'layer.weight[3, 1]'``."""
        return format_label(self.name, self.index)


@dataclass(frozen=True)
class PrecisionDrift:
    """How the check moves when repeated in a training precision (float32, bfloat16).

    ``gradient_drift`` is the formula between that precision's analytic gradient and the float64
    one: how much of backprop rounding alone changes. ``difference`` is the check's own
    difference in that precision, at the step that suits it (ε_mach^(1/3)·max(1, |θ_i|)).
    ``failure`` says why that repeat cannot be trusted (a non-finite J in that precision), else
    None.
    """

    dtype: str
    gradient_drift: float
    difference: float
    failure: str | None = None


def _codes(value: np.ndarray | None, size: int, dtype: Any = np.int8) -> np.ndarray:
    return np.zeros(size, dtype) if value is None else np.asarray(value, dtype)


@dataclass(frozen=True, eq=False)
class GradCheckReport:
    """The result of a gradient check.

    Build one with :func:`gradwatch.check_function` or :func:`gradwatch.check_module`; read
    ``verdict`` and ``message`` first, then ``parameters`` and ``worst()`` to find the bug.
    ``difference`` is the material's formula over the judged components (the values each reading
    compared); ``plain_difference`` is the same formula over every checked component with the
    first two-sided estimates at θ, what the material's loop alone prints.

    Example:
        >>> import numpy as np, gradwatch
        >>> report = gradwatch.check_function(
        ...     lambda t: float(np.sum(t**2)), np.array([1.0, 2.0]), np.array([2.0, 4.0]))
        >>> report.verdict
        <Verdict.PASS: 'pass'>
        >>> report.parameters["theta"].agrees
        2
    """

    layout: Layout
    indices: np.ndarray
    analytic: np.ndarray
    numeric: np.ndarray
    epsilon: float | str
    dtype: str
    evaluations: int
    seconds: float
    thresholds: Thresholds = field(default_factory=Thresholds)
    notes: tuple[str, ...] = ()
    failure: str | None = None
    mode: str = "components"
    numeric_noise: np.ndarray | None = field(default=None, repr=False)
    readings: np.ndarray | None = field(default=None, repr=False)
    reasons: np.ndarray | None = field(default=None, repr=False)
    rechecks: np.ndarray | None = field(default=None, repr=False)
    kinks: np.ndarray | None = field(default=None, repr=False)
    plain_analytic: np.ndarray | None = field(default=None, repr=False)
    plain_numeric: np.ndarray | None = field(default=None, repr=False)
    j_noise: JNoise | None = None
    drift: PrecisionDrift | None = None
    findings: tuple[Finding, ...] = ()
    location: Location | None = None
    training_path: TrainingPathResult | None = None
    difference: float = field(init=False)
    plain_difference: float = field(init=False)
    noise_floor: float = field(init=False)
    parameters: dict[str, ParameterResult] = field(init=False)
    verdict: Verdict = field(init=False)
    message: str = field(init=False)
    abs_errors: np.ndarray = field(init=False, repr=False)
    rel_errors: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _normalize(self)
        _derive(self)

    # Typed views of the per-component arrays (always set by __post_init__).
    @property
    def _noise(self) -> np.ndarray:
        return np.asarray(self.numeric_noise)

    @property
    def _reading(self) -> np.ndarray:
        return np.asarray(self.readings)

    @property
    def reading_counts(self) -> dict[str, int]:
        """How many checked components had each reading: agrees, disagrees, not judged."""
        counts = np.bincount(self._reading, minlength=len(READINGS))
        return {name: int(c) for name, c in zip(READINGS, counts, strict=True)}

    def parameters_with(self, verdict: Verdict | str) -> list[str]:
        """Names of the parameters with that verdict, worst difference first."""
        wanted = Verdict(verdict)
        found = [r for r in self.parameters.values() if r.verdict is wanted]
        found.sort(key=lambda r: -np.nan_to_num(r.difference, nan=np.inf))
        return [r.name for r in found]

    @property
    def judged_share(self) -> float:
        """The share of checked components that were judged (agree or disagree); NaN when none
        was checked. What a verdict rests on, with ``parameters_with("not judged")``."""
        checked = self.components_checked
        return math.nan if checked == 0 else 1.0 - self.reading_counts["not judged"] / checked

    @property
    def kink_count(self) -> int:
        """Components whose step crossed a kink at θ (each was re-checked off the kink)."""
        return int(np.asarray(self.kinks, bool).sum())

    @property
    def components_checked(self) -> int:
        """How many components of θ were compared."""
        return int(self.indices.size)

    @property
    def components_total(self) -> int:
        """How many components θ has."""
        return self.layout.size

    def component(self, position: int) -> Component:
        """The ``position``-th checked component (in the order they were checked)."""
        flat = int(self.indices[position])
        name, index = self.layout.locate(flat)
        return Component(
            name=name,
            index=index,
            flat_index=flat,
            analytic=float(self.analytic[position]),
            numeric=float(self.numeric[position]),
            abs_error=float(self.abs_errors[position]),
            rel_error=float(self.rel_errors[position]),
            reading=READINGS[int(self._reading[position])],
            reason=REASONS[int(np.asarray(self.reasons)[position])],
            recheck=RECHECKS[int(np.asarray(self.rechecks)[position])],
            numeric_noise=float(self._noise[position]),
            kink=bool(np.asarray(self.kinks)[position]),
        )

    def worst(self, k: int = 10, parameters: Sequence[str] | None = None) -> list[Component]:
        """The ``k`` components with the largest |analytic − numeric| (of the ``parameters``
        named, or of all): those that disagree first (non-finite ones before all), then those
        that agree, then those not judged."""
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"`k` must be a non-negative int; got {k!r}")
        if k < 0:
            raise ValueError(f"`k` must be a non-negative int; got {k!r}")
        error = np.where(np.isnan(self.abs_errors), np.inf, self.abs_errors)
        rank = np.select([self._reading == DISAGREES, self._reading == AGREES], [0, 1], 2)
        order = np.lexsort((-error, rank))  # lexsort: the last key is the primary one
        if parameters is not None:
            wanted = [self.layout.names.index(n) for n in parameters if n in self.layout.names]
            order = order[np.isin(self.layout.tensor_of(self.indices[order]), wanted)]
        return [self.component(int(p)) for p in order[:k]]

    def headline(self) -> str:
        """One line: ``pass: difference 3.1e-09 (noise floor 4e-10), 120 of 120 components …``."""
        return str(WORDS["headline"](self))

    def worst_markdown(self, k: int = 10) -> str:
        """The ``k`` worst components as a markdown table."""
        return str(WORDS["worst_markdown"](self.worst(k)))

    def __str__(self) -> str:
        return str(WORDS["summary"](self))

    def to_dict(self) -> dict[str, Any]:
        """A summary of plain Python values: str, int, bool, None, lists, dicts and floats (NaN
        where not judged, ±inf where measured so). :func:`gradwatch.save_report` writes it as
        standard JSON; :func:`gradwatch.load_report` gives it back."""
        return dict(WORDS["as_dict"](self))


def _normalize(report: GradCheckReport) -> None:
    """Every per-component array as a numpy array of its type; readings from the values and
    their noise where none were given."""
    put, n = object.__setattr__, report.indices.size
    put(report, "analytic", np.asarray(report.analytic, np.float64))
    put(report, "numeric", np.asarray(report.numeric, np.float64))
    put(report, "numeric_noise", _codes(report.numeric_noise, n, np.float64))
    if report.readings is None:  # values alone: read them against the noise given (or none)
        reading, reason = read(
            report.analytic,
            report.numeric,
            np.asarray(report.numeric_noise),
            report.thresholds.pass_max,
        )
        put(report, "readings", reading)
        put(report, "reasons", reason)
    put(report, "readings", _codes(report.readings, n))
    put(report, "reasons", _codes(report.reasons, n))
    put(report, "rechecks", _codes(report.rechecks, n))
    put(report, "kinks", _codes(report.kinks, n, bool))
    for plain, used in (("plain_analytic", report.analytic), ("plain_numeric", report.numeric)):
        given = getattr(report, plain)
        put(report, plain, used if given is None else np.asarray(given, np.float64))


def _derive(report: GradCheckReport) -> None:
    """The figures, the parameters' results, the verdict and the message."""
    put = object.__setattr__
    abs_errors, rel_errors = component_errors(report.analytic, report.numeric)
    put(report, "abs_errors", abs_errors)
    put(report, "rel_errors", rel_errors)
    noise, reading = np.asarray(report.numeric_noise), np.asarray(report.readings)
    difference, floor = judged_figures(
        report.analytic, report.numeric, noise, reading != NOT_JUDGED
    )
    put(report, "difference", difference)
    put(report, "noise_floor", floor)
    plain = (np.asarray(report.plain_numeric), np.asarray(report.plain_analytic))
    put(report, "plain_difference", relative_difference(*plain))
    put(report, "parameters", _parameters(report))
    if report.failure is None:
        put(report, "failure", WORDS["non_finite"](report))
    verdicts = [r.verdict for r in report.parameters.values()]
    put(report, "verdict", Verdict.FAIL if report.failure else worst_verdict(verdicts))
    put(report, "message", WORDS["advice"](report))
    path = report.training_path  # the gradient that trains: it can only make the verdict worse
    if path is not None and path.verdict is Verdict.FAIL:
        put(report, "verdict", path.verdict)
        put(report, "message", f"{path.message}. The {report.dtype} check: {report.message}")
    elif path is not None and path.verdict is Verdict.NOT_JUDGED:
        said = f"{path.message[0].lower()}{path.message[1:]}"
        put(report, "message", f"{report.message} The {said}.")


def _parameters(report: GradCheckReport) -> dict[str, ParameterResult]:
    """Each checked parameter's result, from its components (see :mod:`gradwatch.verdict`)."""
    tensors = report.layout.tensor_of(report.indices)
    arrays = (report.analytic, report.numeric, np.asarray(report.numeric_noise))
    codes = (np.asarray(report.readings), np.asarray(report.reasons))
    out = {}
    for t, name in enumerate(report.layout.names):
        m = tensors == t
        if m.any():
            a, n, noise, reading, reason = (x[m] for x in (*arrays, *codes))
            bands = report.thresholds
            out[name] = parameter_verdict(
                name, a, n, noise, reading, reason, bands.warn_max, bands.pass_max
            )
    return out
