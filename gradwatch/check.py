"""The material's gradient check on a plain function of a numpy vector θ."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

from gradwatch._validate import check_epsilon, check_thresholds
from gradwatch.analysis import ComponentAnalysis, analyse_components, determinism_note
from gradwatch.layout import Layout
from gradwatch.numeric import auto_steps, represented_steps, two_sided_costs
from gradwatch.report import GradCheckReport, Thresholds

__all__ = ["gradient_check"]

_REMEDY = (
    "`cost` must be a function of θ alone: fix the random numbers it draws (seed them inside "
    "`cost`, hold dropout masks fixed) and any state it keeps between calls, then check again"
)


def _as_vector(name: str, value: object) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`{name}` must be a 1-D array of floats; got {type(value).__name__}"
        ) from err
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of floats; got shape {array.shape}")
    return array


def _layout(layout: Mapping[str, object] | Layout | None, size: int) -> Layout:
    if layout is None:
        return Layout.single(size)
    built = layout if isinstance(layout, Layout) else Layout.from_mapping(layout)
    if built.size != size:
        sizes = dict(zip(built.names, built.sizes(), strict=True))
        raise ValueError(
            f"`layout` sizes must add up to len(theta) = {size}; got {built.size} from {sizes}"
        )
    return built


def _cost_value(cost: Callable[[np.ndarray], float], theta: np.ndarray) -> float:
    """J(θ) as a float; a cost returning no scalar is told so by name, before the loop runs."""
    value: Any = cost(theta)
    shape = tuple(getattr(value, "shape", ()))  # numpy scalars and 0-d arrays have shape ()
    if math.prod(shape) != 1:
        raise ValueError(
            f"`cost` must return a scalar J(θ), e.g. a mean over the examples; got shape {shape}"
        )
    try:
        return float(value.item() if shape else value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`cost` must return a float J(θ); got {type(value).__name__}") from err


def _require_representable(theta: np.ndarray, step: float, names: Layout) -> None:
    """θ_i ± ε must differ from θ_i, or the numeric derivative is 0 whatever J is."""
    lost = np.flatnonzero((theta + step == theta) | (theta - step == theta))
    if lost.size:
        first = int(lost[0])
        raise ValueError(
            f"`epsilon` {step!r} is below float64's spacing at θ: θ_i ± epsilon == θ_i for "
            f"{lost.size} of {theta.size} components (e.g. {names.label(first)} = "
            f"{float(theta[first])!r}); use a larger epsilon or epsilon='auto', which scales "
            "the step with |θ_i|"
        )


def gradient_check(
    cost: Callable[[np.ndarray], float],
    theta: np.ndarray,
    grad: np.ndarray,
    *,
    epsilon: float | Literal["auto"] = 1e-7,
    layout: Mapping[str, object] | Layout | None = None,
    thresholds: Thresholds | None = None,
) -> GradCheckReport:
    """Checks an analytic gradient against the two-sided difference, exactly as in the material.

    For every component i: dθ_approx[i] = (J(θ + ε·e_i) − J(θ − ε·e_i)) / 2ε, then the
    difference ‖dθ_approx − dθ‖₂ / (‖dθ_approx‖₂ + ‖dθ‖₂), in float64. One more evaluation,
    J(θ), gives the one-sided slopes that tell kinks (ReLU at 0) from bugs, and the rounding
    floor the difference cannot go below.

    Args:
        cost: J, mapping a 1-D float64 array θ to a float. It receives a scratch copy of θ.
        theta: the point θ, all parameters reshaped and concatenated.
        grad: the analytic gradient dθ (your backprop), in the same order and shape as θ.
        epsilon: the step ε (default 1e-7, the material's), or ``"auto"``: a step per
            component that fits float64, ε_mach^(1/3)·max(1, |θ_i|) (see ``numeric.auto_steps``).
        layout: optional ordered mapping name → shape whose sizes add up to ``len(theta)``, so
            components are reported as ``W2[1, 3]`` instead of ``theta[36]``.
        thresholds: verdict bands; default pass ≤ 1e-7 < warn ≤ 1e-3 < fail.

    Returns:
        A :class:`GradCheckReport`.

    Example:
        >>> import numpy as np
        >>> theta = np.array([1.0, -2.0, 0.5])
        >>> report = gradient_check(lambda t: float(np.sum(t**3)), theta, 3 * theta**2,
        ...                         layout={"W": (1, 2), "b": (1,)})
        >>> report.verdict.value
        'pass'
        >>> wrong = gradient_check(lambda t: float(np.sum(t**3)), theta, 3 * theta**2 * [1, 1, 2],
        ...                        layout={"W": (1, 2), "b": (1,)})
        >>> wrong.verdict.value, wrong.worst(1)[0].label
        ('fail', 'b[0]')
    """
    if not callable(cost):
        raise TypeError(f"`cost` must be a callable θ -> float; got {type(cost).__name__}")
    step = check_epsilon(epsilon)
    bands = check_thresholds(thresholds)
    theta = _as_vector("theta", theta)
    if theta.size == 0:
        raise ValueError("`theta` must have at least one component; got an empty array")
    grad = _as_vector("grad", grad)
    if grad.shape != theta.shape:
        raise ValueError(f"`grad` must have the shape of `theta` {theta.shape}; got {grad.shape}")
    names = _layout(layout, theta.size)
    if step != "auto":
        _require_representable(theta, step, names)

    start = time.perf_counter()
    unit = float(np.finfo(np.float64).eps)
    # The evaluations move θ_i by h; the division uses the half-gap float64 really stored.
    steps = np.full(theta.size, step) if step != "auto" else auto_steps(theta, unit)
    half = represented_steps(theta, steps) if step == "auto" else steps
    center = _cost_value(cost, theta.copy())
    evaluations = [1 + 2 * theta.size]
    plus, minus = two_sided_costs(cost, theta, np.arange(theta.size), steps)

    def halved(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        evaluations.append(2 * positions.size)
        return two_sided_costs(cost, theta, positions, steps[positions] / 2)

    again = _cost_value(cost, theta.copy())
    evaluations.append(1)
    failure = determinism_note(center, again, float(half.min()), _REMEDY)
    if failure is None:
        found = analyse_components(grad, plus, minus, center, half, unit, halved)
    else:  # a J that moves on its own has no kinks or rounding to weigh
        nothing = np.zeros(theta.size)
        found = ComponentAnalysis(nothing, nothing, nothing > 0, nothing > 0)
    return GradCheckReport(
        layout=names,
        indices=np.arange(theta.size, dtype=np.int64),
        analytic=grad,
        numeric=(plus - minus) / (2 * half),
        epsilon=step,
        dtype="float64",
        evaluations=sum(evaluations),
        seconds=time.perf_counter() - start,
        thresholds=bands,
        noise=found.noise,
        bound=found.bound,
        kinks=found.kink,
        flagged=found.flagged,
        off_slope=found.off_slope,
        failure=failure,
    )
