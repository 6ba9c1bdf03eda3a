"""J's with a known answer for the escalation tests (``tests/test_gate.py``,
``tests/test_escalation.py``): J = 3e5 + …, whose rounding (σ_J ≈ 1.7e-11) hides gradients under
~1e-3 at ε = 1e-7, while the step fitted to that noise is H₀ = (σ_J/J)^(1/3) ≈ 4e-6; and J = Σθ³
along single components, for the ladder called directly."""

from __future__ import annotations

import numpy as np

import gradwatch

LAYOUT = {"w": (7,), "b": (1,)}  # seven components: a ±1 direction never sums to zero over them
BIG = 3e5  # J's constant part: its rounding is J's noise


def origin() -> np.ndarray:
    """θ: w = 0, b = 0.5."""
    return np.concatenate([np.zeros(7), [0.5]])


def one_gradient(c: float, kink: float = np.inf, along: int = 4):  # type: ignore[no-untyped-def]
    # J = 3e5 + c·w₀ + Σw² + relu(w_along − kink) + b²: one component of w carries a gradient, so
    # every ±1 direction over w reads it at full size, |Σ u_i·H·g_i| = H·c, whatever its signs.
    def cost(t: np.ndarray) -> float:
        w = t[:7]
        return BIG + c * w[0] + float(w @ w) + max(w[along] - kink, 0.0) + t[7] ** 2

    return cost


def readings(report: gradwatch.GradCheckReport, n: int) -> list[tuple[str, str, str]]:
    return [(c.reading, c.reason, c.recheck) for c in map(report.component, range(n))]


class Cubes:
    """J = Σθ³ along single components: n(h) = 3θ² + h², the h² truncation that Richardson's
    estimate removes."""

    def __init__(self, theta: np.ndarray) -> None:
        self.theta = theta
        self.center = float(np.sum(theta**3))

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.theta[at]
        return self.center + (t + h) ** 3 - t**3, self.center + (t - h) ** 3 - t**3

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def values(self, at: np.ndarray) -> np.ndarray:
        return self.theta[np.asarray(at)]
