"""The material's gradient check on a plain function of a numpy vector θ."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

from gradwatch.arguments import check_epsilon, check_seed, check_thresholds
from gradwatch.check.input_errors import restated
from gradwatch.common.numeric import auto_steps, represented_steps, two_sided_costs
from gradwatch.diagnosis import diagnose
from gradwatch.evidence.model import JITTER_STEPS
from gradwatch.evidence.noise import NoiseProbes
from gradwatch.evidence.objective import Moved
from gradwatch.evidence.probing import gather_with_probes
from gradwatch.layout import Layout
from gradwatch.report import GradCheckReport, Thresholds

__all__ = ["check_function"]

Cost = Callable[[np.ndarray], float]
Grad = np.ndarray | Callable[[np.ndarray], np.ndarray]


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


class _Count:
    """How many times J was evaluated, over every objective of one check."""

    def __init__(self) -> None:
        self.evaluations = 0


class _FunctionObjective:
    """The evidence model's view of a plain ``cost(θ)``: pairs, stored step widths, probes, and
    θ jittered off a kink when backprop is a function it can run again."""

    def __init__(
        self, cost: Cost, theta: np.ndarray, grad: Grad, steps: np.ndarray, count: _Count
    ) -> None:
        self._cost, self._theta, self._grad, self._steps = cost, theta, grad, steps
        self._count = count

    def value(self) -> float:
        self._count.evaluations += 1
        return _cost_value(self._cost, self._theta.copy())

    def pairs(self, positions: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._count.evaluations += 2 * len(positions)
        return two_sided_costs(self._cost, self._theta, np.asarray(positions), steps)

    def half_gaps(self, positions: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return represented_steps(self._theta[np.asarray(positions, dtype=np.int64)], steps)

    def values(self, positions: np.ndarray) -> np.ndarray:
        return self._theta[np.asarray(positions, dtype=np.int64)]

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        self._count.evaluations += len(rows)
        out = np.empty(len(rows))
        for r, row in enumerate(rows):
            moved = self._theta.copy()
            moved[support] += row
            out[r] = float(self._cost(moved))
        return out

    def jittered(self, attempt: int) -> Moved | None:
        if not callable(self._grad):
            return None
        rng = np.random.default_rng([attempt, 11])
        theta = self._theta + JITTER_STEPS * self._steps * rng.standard_normal(self._theta.size)
        other = _FunctionObjective(self._cost, theta, self._grad, self._steps, self._count)
        analytic = _as_vector("grad(theta)", self._grad(theta.copy()))
        return Moved(other, analytic, other.value())


def check_function(
    cost: Cost,
    theta: np.ndarray,
    grad: Grad,
    *,
    epsilon: float | Literal["auto"] = 1e-7,
    layout: Mapping[str, object] | Layout | None = None,
    thresholds: Thresholds | None = None,
    seed: int = 0,
) -> GradCheckReport:
    """Checks an analytic gradient against the two-sided difference, exactly as in the material.

    For every component i: dθ_approx[i] = (J(θ + ε·e_i) − J(θ − ε·e_i)) / 2ε, then the
    difference ‖dθ_approx − dθ‖₂ / (‖dθ_approx‖₂ + ‖dθ‖₂), in float64. Each component is then
    read against J's measured noise (see :mod:`gradwatch.evidence.model`): it agrees, disagrees, or
    could not be judged, and the verdict follows from those readings.

    Args:
        cost: J, mapping a 1-D float64 array θ to a float. It receives a scratch copy of θ.
        theta: the point θ, all parameters reshaped and concatenated.
        grad: the analytic gradient dθ (your backprop) at ``theta``, in the same order and shape
            as θ; or a function θ → dθ, which lets the check re-check a component whose step
            crosses a kink (ReLU at 0) at a nearby θ where J is smooth.
        epsilon: the step ε (default 1e-7, the material's), or ``"auto"``: a step per
            component that fits float64, ε_mach^(1/3)·max(1, |θ_i|) (the step that balances
            the truncation error of the difference against the rounding of J).
        layout: optional ordered mapping name → shape whose sizes add up to ``len(theta)``, so
            components are reported as ``W2[1, 3]`` instead of ``theta[36]``.
        thresholds: verdict bands; default pass ≤ 1e-7 < warn ≤ 1e-3 < fail.
        seed: seeds the directions that measure J's noise and the jitter off kinks.

    Returns:
        A :class:`GradCheckReport`.

    Example:
        >>> import numpy as np
        >>> theta = np.array([1.0, -2.0, 0.5])
        >>> report = check_function(lambda t: float(np.sum(t**3)), theta, 3 * theta**2,
        ...                         layout={"W": (1, 2), "b": (1,)})
        >>> report.verdict.value
        'pass'
        >>> wrong = check_function(lambda t: float(np.sum(t**3)), theta, 3 * theta**2 * [1, 1, 2],
        ...                        layout={"W": (1, 2), "b": (1,)})
        >>> wrong.verdict.value, wrong.worst(1)[0].label
        ('fail', 'b[0]')
    """
    try:
        return _check(cost, theta, grad, epsilon, layout, thresholds, seed)
    except (TypeError, ValueError) as err:  # an argument error found deep inside, told here
        public = restated(err)
        if public is None:
            raise
        raise public from None


def _check(
    cost: Cost,
    theta: np.ndarray,
    grad: Grad,
    epsilon: float | Literal["auto"],
    layout: Mapping[str, object] | Layout | None,
    thresholds: Thresholds | None,
    seed: int,
) -> GradCheckReport:
    """:func:`check_function`'s work, its arguments as given."""
    if not callable(cost):
        raise TypeError(f"`cost` must be a callable θ -> float; got {type(cost).__name__}")
    step = check_epsilon(epsilon)
    bands = check_thresholds(thresholds)
    seed = check_seed(seed)
    theta = _as_vector("theta", theta)
    if theta.size == 0:
        raise ValueError("`theta` must have at least one component; got an empty array")
    analytic = _as_vector(
        "grad(theta)" if callable(grad) else "grad", grad(theta.copy()) if callable(grad) else grad
    )
    if analytic.shape != theta.shape:
        raise ValueError(
            f"`grad` must have the shape of `theta` {theta.shape}; got {analytic.shape}"
        )
    names = _layout(layout, theta.size)

    start = time.perf_counter()
    unit = float(np.finfo(np.float64).eps)
    steps = np.full(theta.size, step) if step != "auto" else auto_steps(theta, unit)
    count = _Count()
    j = _FunctionObjective(cost, theta, grad, steps, count)
    center = j.value()
    every = np.arange(theta.size)
    plus, minus = j.pairs(every, steps)
    again = j.value()
    moving = np.flatnonzero((plus != center) | (minus != center))
    probed = moving if moving.size else every  # J's noise where J moves, if anywhere
    probes = NoiseProbes(j.line, center, (again,), probed, steps[probed], seed)
    found, noise = gather_with_probes(
        j, analytic, (plus, minus), center, steps, probes, bands.pass_max,
        names.tensor_of(every), seed, bands.warn_max,
    )  # fmt: skip
    report = GradCheckReport(
        layout=names,
        indices=every.astype(np.int64),
        analytic=found.analytic,
        numeric=found.numeric,
        epsilon=step,
        dtype="float64",
        evaluations=count.evaluations,
        seconds=time.perf_counter() - start,
        thresholds=bands,
        numeric_noise=found.noise,
        readings=found.reading,
        reasons=found.reason,
        rechecks=found.recheck,
        kinks=found.kink,
        plain_analytic=analytic,
        plain_numeric=found.first_numeric,
        j_noise=noise,
    )
    pieces = np.split(analytic, np.asarray(names.offsets[1:-1], dtype=np.int64))
    full = {
        n: g.reshape(shape) for n, g, shape in zip(names.names, pieces, names.shapes, strict=True)
    }
    return diagnose(report, full)
