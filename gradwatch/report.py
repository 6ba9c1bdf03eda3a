"""What a gradient check found: the difference, a verdict, and the components that point at
a bug."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from gradwatch.layout import Layout, format_label
from gradwatch.numeric import component_errors, relative_difference

__all__ = ["Component", "GradCheckReport", "Thresholds", "Verdict"]


class Verdict(str, Enum):
    """The material's reading of the difference: great, take a careful look, or very likely a bug.

    Example:
        >>> Verdict.PASS == "pass", Verdict.FAIL.level
        (True, 2)
    """

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"

    @property
    def level(self) -> int:
        """0 for pass, 1 for warn, 2 for fail (what the callback logs as a scalar)."""
        return ("pass", "warn", "fail").index(self.value)

    def __str__(self) -> str:
        return self.value


def _check_band(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a positive finite float; got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite float; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Thresholds:
    """The verdict bands: pass ≤ ``pass_max`` < warn ≤ ``warn_max`` < fail.

    The defaults are the course material's: 1e-7 or smaller is great, above 1e-3 is very likely a
    bug, in between deserves a careful look at the components.

    Example:
        >>> Thresholds().classify(2e-5)
        <Verdict.WARN: 'warn'>
        >>> Thresholds(pass_max=1e-5).classify(2e-6)
        <Verdict.PASS: 'pass'>
    """

    pass_max: float = 1e-7
    warn_max: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "pass_max", _check_band("pass_max", self.pass_max))
        object.__setattr__(self, "warn_max", _check_band("warn_max", self.warn_max))
        if self.pass_max > self.warn_max:
            raise ValueError(
                f"`pass_max` must not exceed `warn_max`; got pass_max={self.pass_max!r}, "
                f"warn_max={self.warn_max!r}"
            )

    def classify(self, difference: float) -> Verdict:
        """The verdict of one difference; NaN (non-finite values) is a fail."""
        if not difference <= self.warn_max:  # NaN lands here too
            return Verdict.FAIL
        return Verdict.PASS if difference <= self.pass_max else Verdict.WARN


@dataclass(frozen=True)
class Component:
    """One component of θ: the analytic (backprop) and numeric (two-sided) derivative.

    ``rel_error`` is the material's formula for this one component, |a − n| / (|a| + |n|).
    """

    name: str
    index: tuple[int, ...]
    flat_index: int
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float

    @property
    def label(self) -> str:
        """``'layer.weight[3, 1]'``."""
        return format_label(self.name, self.index)


def _num(x: float) -> float | str:
    # JSON has no NaN or Infinity: keep them readable rather than silently dropping them.
    return float(x) if math.isfinite(x) else str(float(x))


@dataclass(frozen=True, eq=False)
class GradCheckReport:
    """The result of a gradient check.

    Build one with :func:`gradwatch.gradient_check` or :func:`gradwatch.check_module`; read
    ``verdict`` and ``message`` first, then ``worst()`` and ``per_parameter`` to find the bug.

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
    epsilon: float
    dtype: str
    evaluations: int
    seconds: float
    thresholds: Thresholds = field(default_factory=Thresholds)
    notes: tuple[str, ...] = ()
    failure: str | None = None
    difference: float = field(init=False)
    per_parameter: dict[str, float] = field(init=False)
    verdict: Verdict = field(init=False)
    message: str = field(init=False)
    abs_errors: np.ndarray = field(init=False, repr=False)
    rel_errors: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        abs_errors, rel_errors = component_errors(self.analytic, self.numeric)
        put(self, "abs_errors", abs_errors)
        put(self, "rel_errors", rel_errors)
        put(self, "difference", relative_difference(self.numeric, self.analytic))
        tensors = self.layout.tensor_of(self.indices)
        per_parameter = {
            name: relative_difference(self.numeric[tensors == t], self.analytic[tensors == t])
            for t, name in enumerate(self.layout.names)
            if np.any(tensors == t)
        }
        put(self, "per_parameter", per_parameter)
        if self.failure is None:
            put(self, "failure", self._non_finite())
        verdict = Verdict.FAIL if self.failure else self.thresholds.classify(self.difference)
        put(self, "verdict", verdict)
        put(self, "message", self._advice())

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
        )

    def worst(self, k: int = 10) -> list[Component]:
        """The ``k`` components with the largest |analytic − numeric|; non-finite ones first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"`k` must be a non-negative int; got {k!r}")
        key = np.where(np.isnan(self.abs_errors), np.inf, self.abs_errors)
        order = np.argsort(-key, kind="stable")[:k]
        return [self.component(int(p)) for p in order]

    def _non_finite(self) -> str | None:
        # A NaN or Inf is a finding, not an exception: say where, so the user can look there.
        parts = []
        for what, values in (
            ("numeric estimate", self.numeric),
            ("analytic gradient", self.analytic),
        ):
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                where = ", ".join(self.layout.label(int(self.indices[p])) for p in bad[:3])
                more = f" and {bad.size - 3} more" if bad.size > 3 else ""
                parts.append(f"the {what} is NaN/Inf at {bad.size} components ({where}{more})")
        if not parts:
            return None
        return (
            f"non-finite values: {'; '.join(parts)}. The loss or its gradient overflows or divides "
            "by zero there: fix that before comparing gradients."
        )

    def _advice(self) -> str:
        d, t = self.difference, self.thresholds
        if self.failure:
            return self.failure
        if self.verdict is Verdict.PASS:
            return f"difference {d:.1e} <= {t.pass_max:.0e}: backprop is very likely correct."
        suspects = self._suspects()
        if self.verdict is Verdict.WARN:
            return (
                f"difference {d:.1e} is above {t.pass_max:.0e} but at most {t.warn_max:.0e}: "
                f"take a careful look. {suspects} Make sure none of its components is far off."
            )
        return f"difference {d:.1e} > {t.warn_max:.0e}: very likely a bug in backprop. {suspects}"

    def _suspects(self) -> str:
        # Point at the tensors, worst first, and at the single worst component: the material's
        # "look at the individual components to see where dθ_approx[i] differs from dθ[i]".
        worst = self.worst(1)[0]
        ranked = sorted(self.per_parameter.items(), key=lambda kv: -kv[1])
        bad = [n for n, v in ranked if v > self.thresholds.warn_max] or [worst.name]
        tensors = self.layout.tensor_of(self.indices)
        first = bad[0]
        spread = float(np.max(self.abs_errors[tensors == self.layout.names.index(first)]))
        text = f"Look at {first}: its components differ by up to {spread:.1e}"
        if len(bad) > 1:
            text += f" (also {', '.join(bad[1:4])}{' …' if len(bad) > 4 else ''})"
        return (
            f"{text}; worst {worst.label}: analytic {worst.analytic:.6g}, "
            f"numeric {worst.numeric:.6g}."
        )

    def headline(self) -> str:
        """One line: ``difference 3.1e-09 (pass), 120 of 120 components, 240 evaluations …``."""
        return (
            f"difference {self.difference:.1e} ({self.verdict.value}), "
            f"{self.components_checked} of {self.components_total} components, "
            f"{self.evaluations} evaluations, {self.seconds:.2f} s"
        )

    def worst_markdown(self, k: int = 10) -> str:
        """The ``k`` worst components as a markdown table."""
        rows = [
            "| parameter | index | analytic | numeric | abs error | rel error |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.worst(k):
            rows.append(
                f"| {c.name} | {list(c.index)} | {c.analytic:.6e} | {c.numeric:.6e} "
                f"| {c.abs_error:.2e} | {c.rel_error:.2e} |"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        t = self.thresholds
        lines = [
            f"gradient check: {self.verdict.value.upper()}, difference {self.difference:.3e} "
            f"(pass <= {t.pass_max:.0e} < warn <= {t.warn_max:.0e} < fail)",
            f"  {self.message}",
            f"  epsilon {self.epsilon:g}, {self.dtype}, {self.components_checked} of "
            f"{self.components_total} components, {self.evaluations} loss evaluations, "
            f"{self.seconds:.2f} s",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        width = max([len(c.label) for c in self.worst(10)] + [len(n) for n in self.per_parameter])
        width = max(width, 9)
        lines.append("worst components:")
        lines.append(
            f"  {'component':<{width}}  {'analytic':>13}  {'numeric':>13}  "
            f"{'abs error':>9}  {'rel error':>9}"
        )
        for c in self.worst(10):
            lines.append(
                f"  {c.label:<{width}}  {c.analytic:>13.6e}  {c.numeric:>13.6e}  "
                f"{c.abs_error:>9.2e}  {c.rel_error:>9.2e}"
            )
        lines.append("per-parameter differences:")
        for name, value in self.per_parameter.items():
            lines.append(f"  {name:<{width}}  {value:>9.2e}  {t.classify(value).value}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (NaN and infinities become the strings ``'nan'``, ``'inf'``)."""
        return {
            "difference": _num(self.difference),
            "verdict": self.verdict.value,
            "message": self.message,
            "epsilon": _num(self.epsilon),
            "dtype": self.dtype,
            "components_checked": self.components_checked,
            "components_total": self.components_total,
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 6),
            "thresholds": {
                "pass_max": self.thresholds.pass_max,
                "warn_max": self.thresholds.warn_max,
            },
            "notes": list(self.notes),
            "per_parameter": {k: _num(v) for k, v in self.per_parameter.items()},
            "worst": [
                {
                    "name": c.name,
                    "index": list(c.index),
                    "flat_index": c.flat_index,
                    "analytic": _num(c.analytic),
                    "numeric": _num(c.numeric),
                    "abs_error": _num(c.abs_error),
                    "rel_error": _num(c.rel_error),
                }
                for c in self.worst(10)
            ],
        }
