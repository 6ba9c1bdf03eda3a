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


class Stairs:
    """J = 1 + SLOPES·x + ``kink``·relu(|x₃| − ``at``) plus an error of 1e-7·N(0, 1) constant over
    cells of 1e-5 (J rounded through a coarse intermediate, as a float32 check's; ``key`` seeds
    the cells): at the stride of readings at 3e-4 and beyond, J's noise is that 1e-7."""

    CENTER, NOISE, CELL = 1.0, 1e-7, 1e-5
    SLOPES = np.array([0.2, 0.05, 0.05, 0.05])

    def __init__(self, key: int, kink: float = 0.0, at: float = 0.0) -> None:
        self.key, self.kink, self.at = key, kink, at

    def _error(self, cells: np.ndarray) -> float:
        if not cells.any():
            return 0.0  # θ itself: J(θ) is CENTER
        seed = [int(c) + 2**40 for c in cells] + [self.key]
        return self.NOISE * float(np.random.default_rng(seed).standard_normal())

    def _cost(self, x: np.ndarray) -> float:
        error = self._error(np.floor(x / self.CELL).astype(np.int64))
        kinked = self.kink * max(abs(x[3]) - self.at, 0.0)
        return self.CENTER + float(self.SLOPES @ x) + error + kinked

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        eye = np.eye(self.SLOPES.size)
        plus = [self._cost(s * eye[i]) for i, s in zip(at, h, strict=True)]
        minus = [self._cost(-s * eye[i]) for i, s in zip(at, h, strict=True)]
        return np.array(plus), np.array(minus)

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def values(self, at: np.ndarray) -> np.ndarray:
        return np.zeros(len(at))

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        full = np.zeros((len(rows), self.SLOPES.size))
        full[:, support] = rows
        return np.array([self._cost(x) for x in full])
