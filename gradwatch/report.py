"""What a gradient check found: the difference, a verdict, and the components that point at
a bug."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradwatch import _text
from gradwatch.layout import Layout, format_label
from gradwatch.numeric import component_errors, relative_difference
from gradwatch.training_path import TrainingPathResult
from gradwatch.verdict import Thresholds, Verdict

__all__ = ["Component", "GradCheckReport", "PrecisionDrift", "Thresholds", "Verdict"]

# A tensor's own difference counts in the verdict only where its error stands clearly above
# what rounding and curvature explain: a bias that BatchNorm cancels has a zero gradient, and
# its difference is pure noise over nothing.
SIGNIFICANCE = 3.0
# A warn whose difference is within this factor of the rounding floor is explained by rounding.
EXPLAINED_BY_FLOOR = 3.0
# A tensor whose errors are this many times its typical rounding noise (in norm) is not explained
# by rounding, even where they are too close to it to call a bug: its check is inconclusive.
UNRESOLVED_NOISE = 4.0


@dataclass(frozen=True)
class Component:
    """One component of θ: the analytic (backprop) and numeric (two-sided) derivative.

    ``rel_error`` is the material's formula for this one component, |a − n| / (|a| + |n|);
    ``kink``: the step crossed a non-differentiable point and the analytic value is a valid
    subgradient; ``flagged``: the error is far above what rounding and curvature explain;
    ``off_slope``: on a kink many examples share, where backprop's value is outside the one-sided
    slopes (the check cannot judge it).
    """

    name: str
    index: tuple[int, ...]
    flat_index: int
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    kink: bool = False
    flagged: bool = False
    off_slope: bool = False

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
    ``failure`` says why that repeat cannot be trusted (a non-finite or non-deterministic J in
    that precision), else None.
    """

    dtype: str
    gradient_drift: float
    difference: float
    failure: str | None = None


def _bool_array(value: np.ndarray | None, size: int) -> np.ndarray:
    return np.zeros(size, dtype=bool) if value is None else np.asarray(value, dtype=bool)


@dataclass(frozen=True, eq=False)
class GradCheckReport:
    """The result of a gradient check.

    Build one with :func:`gradwatch.gradient_check` or :func:`gradwatch.check_module`; read
    ``verdict`` and ``message`` first, then ``worst()`` and ``per_parameter`` to find the bug.
    ``difference`` is exactly the material's formula over every checked component;
    ``difference_without_kinks`` leaves out components whose step crossed a kink (ReLU at 0)
    where backprop returned a valid subgradient, and is what the verdict reads.

    Example:
        >>> import numpy as np, gradwatch
        >>> report = gradwatch.gradient_check(
        ...     lambda t: float(np.sum(t**2)), np.array([1.0, 2.0]), np.array([2.0, 4.0]))
        >>> report.verdict
        <Verdict.PASS: 'pass'>
        >>> report.worst(1)[0].label
        'theta[1]'
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
    noise: np.ndarray | None = field(default=None, repr=False)
    bound: np.ndarray | None = field(default=None, repr=False)
    kinks: np.ndarray | None = field(default=None, repr=False)
    flagged: np.ndarray | None = field(default=None, repr=False)
    off_slope: np.ndarray | None = field(default=None, repr=False)
    drift: PrecisionDrift | None = None
    training_path: TrainingPathResult | None = None
    difference: float = field(init=False)
    difference_without_kinks: float = field(init=False)
    noise_floor: float = field(init=False)
    per_parameter: dict[str, float] = field(init=False)
    verdict: Verdict = field(init=False)
    message: str = field(init=False)
    abs_errors: np.ndarray = field(init=False, repr=False)
    rel_errors: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        n = self.indices.size
        put(self, "noise", np.zeros(n) if self.noise is None else np.asarray(self.noise, float))
        put(self, "bound", self.noise if self.bound is None else np.asarray(self.bound, float))
        put(self, "kinks", _bool_array(self.kinks, n))
        put(self, "off_slope", _bool_array(self.off_slope, n))
        abs_errors, rel_errors = component_errors(self.analytic, self.numeric)
        # A component within the user's pass band is not suspicious, however clean the noise.
        within_band = rel_errors <= self.thresholds.pass_max
        put(self, "flagged", _bool_array(self.flagged, n) & ~within_band)
        put(self, "abs_errors", abs_errors)
        put(self, "rel_errors", rel_errors)
        put(self, "difference", relative_difference(self.numeric, self.analytic))
        smooth = self._smooth
        put(
            self,
            "difference_without_kinks",
            relative_difference(self.numeric[smooth], self.analytic[smooth]),
        )
        scale = float(np.linalg.norm(self.numeric) + np.linalg.norm(self.analytic))
        floor = float(np.linalg.norm(self._noise)) / scale if scale > 0 else 0.0
        put(self, "noise_floor", floor if math.isfinite(floor) else float("nan"))
        put(self, "per_parameter", self._per_parameter(smooth))
        if self.failure is None:
            put(self, "failure", _text.non_finite(self))
        put(self, "verdict", self._verdict())
        put(self, "message", _text.advice(self))
        path = self.training_path  # the gradient that trains: it can only make the verdict worse
        if path is not None and path.verdict.level > self.verdict.level:
            put(self, "verdict", path.verdict)
            put(self, "message", f"{path.message}. The {self.dtype} check: {self.message}")

    # Typed views of the per-component arrays (always set by __post_init__).
    @property
    def _noise(self) -> np.ndarray:
        return np.asarray(self.noise)

    @property
    def _kinks(self) -> np.ndarray:
        return np.asarray(self.kinks, dtype=bool)

    @property
    def _smooth(self) -> np.ndarray:
        """Components whose step crossed no kink: the ones differences are taken over."""
        return ~self._kinks & ~np.asarray(self.off_slope, dtype=bool)

    @property
    def _flagged(self) -> np.ndarray:
        return np.asarray(self.flagged, dtype=bool)

    def _tensor_masks(self) -> dict[str, np.ndarray]:
        tensors = self.layout.tensor_of(self.indices)
        return {
            name: tensors == t for t, name in enumerate(self.layout.names) if np.any(tensors == t)
        }

    def _per_parameter(self, smooth: np.ndarray) -> dict[str, float]:
        return {
            name: relative_difference(self.numeric[m & smooth], self.analytic[m & smooth])
            for name, m in self._tensor_masks().items()
        }

    def significant_parameters(self) -> list[str]:
        """Tensors whose error stands clearly above rounding and curvature (kinks left out)."""
        smooth = self._smooth
        bound = np.asarray(self.bound)
        out = []
        for name, m in self._tensor_masks().items():
            err = np.linalg.norm(self.abs_errors[m & smooth])
            if not err <= SIGNIFICANCE * np.linalg.norm(bound[m & smooth]):
                out.append(name)
        return out

    def unresolved(self) -> list[str]:
        """Tensors whose own difference is above the warn band and whose errors, though not
        far enough above rounding to call a bug, are more than rounding explains, on a gradient
        larger than those errors: at this step and precision the check can neither clear nor
        convict them (a 2× wrong gradient that is itself near the rounding noise looks like
        this). Check them with ``epsilon="auto"``.
        """
        significant = set(self.significant_parameters())
        smooth, noise = self._smooth, np.asarray(self.noise)
        out = []
        for name, m in self._tensor_masks().items():
            if name in significant or self.per_parameter[name] <= self.thresholds.warn_max:
                continue
            err = np.linalg.norm(self.abs_errors[m & smooth])
            size = np.linalg.norm(self.analytic[m & smooth])
            # A gradient smaller than the error (a bias BatchNorm cancels: backprop's 0 against
            # a few ulps of J) is zero to within rounding: nothing there to clear or convict.
            if err > UNRESOLVED_NOISE * np.linalg.norm(noise[m & smooth]) and size > err:
                out.append(name)
        return out

    def _verdict(self) -> Verdict:
        if self.failure:
            return Verdict.FAIL
        overall = self.thresholds.classify(self.difference_without_kinks)
        if overall is Verdict.FAIL and self.explained_by_rounding:
            overall = Verdict.WARN  # rounding alone makes this difference: it cannot convict
        levels = [overall.level]
        levels += [self.thresholds.classify(self.per_parameter[n]).level for n in self.suspects()]
        if self.flagged_count or self.off_slope_count or self.unresolved():
            levels.append(Verdict.WARN.level)
        return list(Verdict)[max(levels)]

    @property
    def driver(self) -> str | None:
        """The tensor whose own difference sets the verdict, when the overall difference alone
        would give a milder one; else None."""
        overall = self.thresholds.classify(self.difference_without_kinks)
        if self.failure or overall is self.verdict:
            return None
        return next(
            (
                n
                for n in self.suspects()
                if self.thresholds.classify(self.per_parameter[n]) is self.verdict
            ),
            None,
        )

    def suspects(self) -> list[str]:
        """Tensors whose own difference is above the pass band for a reason other than rounding,
        worst first: where to look for the bug."""
        significant = set(self.significant_parameters())
        ranked = sorted(self.per_parameter.items(), key=lambda kv: -kv[1])
        return [n for n, v in ranked if n in significant and not v <= self.thresholds.pass_max]

    @property
    def explained_by_rounding(self) -> bool:
        """True when the difference is what rounding alone produces: no tensor and no component
        stands above the noise, and the difference is within a few times the floor."""
        return (
            not self.suspects()
            and not self.flagged_count
            and self.difference_without_kinks <= EXPLAINED_BY_FLOOR * self.noise_floor
        )

    @property
    def kink_count(self) -> int:
        """Components whose step crossed a kink where backprop gave a valid subgradient."""
        return int(self._kinks.sum())

    @property
    def off_slope_count(self) -> int:
        """Components on a kink many examples share, where backprop's value is outside the
        one-sided slopes: the check cannot judge them (see ``analysis.ComponentAnalysis``)."""
        return int(np.asarray(self.off_slope, dtype=bool).sum())

    @property
    def flagged_count(self) -> int:
        """Components whose error is far above rounding and curvature: suspicious."""
        return int(self._flagged.sum())

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
            kink=bool(self._kinks[position]),
            flagged=bool(self._flagged[position]),
            off_slope=bool(np.asarray(self.off_slope, dtype=bool)[position]),
        )

    def worst(self, k: int = 10) -> list[Component]:
        """The ``k`` components with the largest |analytic − numeric|: flagged (suspicious) and
        non-finite ones first, accepted kinks last."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"`k` must be a non-negative int; got {k!r}")
        error = np.where(np.isnan(self.abs_errors), np.inf, self.abs_errors)
        # lexsort: last key is primary. Flagged first, kinks last, then by error.
        order = np.lexsort((-error, self._kinks, ~self._flagged))[:k]
        return [self.component(int(p)) for p in order]

    def headline(self) -> str:
        """One line: ``difference 3.1e-09 (pass), 120 of 120 components, …``."""
        return _text.headline(self)

    def worst_markdown(self, k: int = 10) -> str:
        """The ``k`` worst components as a markdown table."""
        return _text.worst_markdown(self.worst(k))

    def __str__(self) -> str:
        return _text.summary(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (NaN and infinities become the strings ``'nan'``, ``'inf'``)."""
        return _text.as_dict(self)
