"""Pure numeric pieces of the check: the two-sided difference and the relative difference.

Everything here works on numpy arrays and plain callables, so each formula can be tested alone
against known answers (f(θ) = θ³ and f′(θ) = 3θ², as in the course material).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "auto_steps",
    "component_errors",
    "one_sided_difference",
    "relative_difference",
    "represented_steps",
    "same_cost",
    "shifted_costs",
    "two_sided_costs",
    "two_sided_difference",
]

Cost = Callable[[np.ndarray], float]


def shifted_costs(
    cost: Cost, theta: np.ndarray, positions: np.ndarray, steps: np.ndarray
) -> np.ndarray:
    """J(θ + steps[k, j]·e_i) for each position i = ``positions[k]`` and each of its steps j,
    one component moved at a time, in that order (the material's loop: θ + ε·e_i, θ − ε·e_i,
    then the next i).

    θ is moved on one scratch copy and put back after each evaluation (a fresh copy per
    component would cost O(n²) for a whole check); ``cost`` sees that scratch copy, never
    ``theta`` itself.

    Returns:
        An array shaped like ``steps`` (``len(positions)`` rows).

    Example:
        >>> import numpy as np
        >>> shifted_costs(lambda t: float(t @ t), np.array([1.0, 2.0]), np.array([1]),
        ...               np.array([[0.5, -0.5]]))
        array([[7.25, 3.25]])
    """
    theta = np.asarray(theta, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.float64).reshape(len(positions), -1)
    scratch = theta.copy()
    out = np.empty(steps.shape)
    for k, i in enumerate(positions):
        for j, h in enumerate(steps[k]):
            scratch[i] = theta[i] + h
            try:
                out[k, j] = float(cost(scratch))
            finally:
                scratch[i] = theta[i]
    return out


def two_sided_costs(
    cost: Cost, theta: np.ndarray, positions: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """J(θ + h_k·e_i) and J(θ − h_k·e_i) for each position i = ``positions[k]``."""
    both = shifted_costs(cost, theta, positions, np.stack([steps, -np.asarray(steps)], axis=1))
    return both[:, 0], both[:, 1]


def two_sided_difference(cost: Cost, theta: np.ndarray, epsilon: float = 1e-7) -> np.ndarray:
    """The material's estimate of ∇J: (J(θ + ε·e_i) − J(θ − ε·e_i)) / 2ε for every component i.

    Args:
        cost: J, a function of the 1-D float64 vector θ returning a float.
        theta: the point θ (not modified).
        epsilon: the step ε.

    Returns:
        The numeric gradient, same shape as ``theta``.

    Example:
        >>> import numpy as np
        >>> d = two_sided_difference(lambda t: float(t[0] ** 3), np.array([1.0]), epsilon=0.01)
        >>> round(float(d[0]), 6)
        3.0001
    """
    theta = np.asarray(theta, dtype=np.float64)
    every = np.arange(theta.size)
    plus, minus = two_sided_costs(cost, theta, every, np.full(theta.size, epsilon))
    return (plus - minus) / (2 * epsilon)


def one_sided_difference(cost: Cost, theta: np.ndarray, epsilon: float = 1e-7) -> np.ndarray:
    """The one-sided estimate (J(θ + ε·e_i) − J(θ)) / ε, shown for comparison only.

    Its error shrinks like ε where the two-sided one shrinks like ε² (the material's θ³ example:
    3.0301 against 3.0001 at ε = 0.01), which is why the check uses the two-sided difference.

    Example:
        >>> import numpy as np
        >>> d = one_sided_difference(lambda t: float(t[0] ** 3), np.array([1.0]), epsilon=0.01)
        >>> round(float(d[0]), 6)
        3.0301
    """
    theta = np.asarray(theta, dtype=np.float64)
    center = float(cost(theta.copy()))
    plus = shifted_costs(cost, theta, np.arange(theta.size), np.full(theta.size, epsilon))
    return (plus[:, 0] - center) / epsilon


def relative_difference(numeric: np.ndarray, grad: np.ndarray) -> float:
    """The material's formula ‖numeric − grad‖₂ / (‖numeric‖₂ + ‖grad‖₂).

    The denominator turns the distance into a ratio, so the value means the same for tiny and
    huge gradients. Two zero vectors agree exactly: the difference is 0.0. Any non-finite entry
    makes the difference NaN, never a misleading finite number.

    Example:
        >>> import numpy as np
        >>> relative_difference(np.array([3.0001]), np.array([3.0]))  # doctest: +ELLIPSIS
        1.666...e-05
    """
    numeric = np.asarray(numeric, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    if not (np.all(np.isfinite(numeric)) and np.all(np.isfinite(grad))):
        return float("nan")
    denominator = float(np.linalg.norm(numeric) + np.linalg.norm(grad))
    if denominator == 0.0:
        return 0.0
    return float(np.linalg.norm(numeric - grad)) / denominator


# Two evaluations of J at the same θ may differ by this many ulps and still count as the same
# value (a reduction summed in another order, a kernel picked for another batch size).
SAME_COST_ULPS = 16


def same_cost(a: float, b: float) -> bool:
    """Whether two values of J agree to within ``SAME_COST_ULPS`` float64 ulps (NaN agrees with
    NaN: the same broken forward).

    Example:
        >>> same_cost(1.0, 1.0 + 4e-16), same_cost(1.0, 1.0 + 1e-12)
        (True, False)
    """
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    return abs(a - b) <= SAME_COST_ULPS * float(np.finfo(np.float64).eps) * max(abs(a), abs(b))


def component_errors(analytic: np.ndarray, numeric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-component |analytic − numeric| and the same formula per component,
    |a − n| / (|a| + |n|) (0 where both are 0)."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    abs_error = np.abs(analytic - numeric)
    scale = np.abs(analytic) + np.abs(numeric)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel_error = np.where(scale > 0, abs_error / np.where(scale > 0, scale, 1.0), 0.0)
    rel_error = np.where(np.isfinite(abs_error), rel_error, np.nan)
    return abs_error, rel_error


def auto_steps(theta: np.ndarray, machine_epsilon: float) -> np.ndarray:
    """The step that fits the precision: h_i = ε_mach^(1/3) · max(1, |θ_i|).

    The two-sided difference has a truncation error of about h²·|J‴|/6 and a rounding error of
    about ε_mach·|J|/h; the sum is smallest near h ∝ ε_mach^(1/3) (Numerical Recipes §5.7,
    eq. 5.7.8), scaled with |θ_i| so the step stays representable relative to θ_i. In float64
    that is about 6e-6, in float32 about 5e-3.

    Example:
        >>> auto_steps(np.array([0.5, -4.0]), float(np.finfo(np.float64).eps))
        array([6.05545445e-06, 2.42218178e-05])
    """
    return np.cbrt(machine_epsilon) * np.maximum(1.0, np.abs(np.asarray(theta, dtype=np.float64)))


def represented_steps(theta: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The half-width ((θ+h) − (θ−h)) / 2 that float64 actually stores, so that the division
    uses the step the evaluations really took (Numerical Recipes §5.7, the "temp" trick)."""
    theta = np.asarray(theta, dtype=np.float64)
    return ((theta + steps) - (theta - steps)) / 2
