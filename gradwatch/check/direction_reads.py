"""Directions read as components are (:mod:`gradwatch.evidence.model`), by the same rule and the
same code: a direction u gives (J(θ + h·u) − J(θ − h·u)) / 2h against uᵀ·grad, with the noise σ_J /
(√2·h); a first disagreement is read again at 2h and 4h (:func:`gradwatch.evidence.recheck.reread`)
and cleared only where J is smooth there and the fit explains the first reading, by Richardson's
estimate, whose noise (0.67 of the first reading's) is narrower than the first tolerance; where J
bends over 2h and 4h (a direction moves every component of a tensor, and ReLUs within 4h of their
kink bend it), Richardson's estimate from h/2 and h/4 is read with the first tolerance; a direction
within noise, or too close to it for the material's bands, is read again at the step fitted to J's
noise (:func:`gradwatch.evidence.recheck.fitted_steps`). A re-check thus never clears a direction by
a wider tolerance than its first reading had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradwatch.evaluation.cost import ModuleCost
from gradwatch.evidence.readings import DISAGREES, NOT_JUDGED, read
from gradwatch.evidence.recheck import (
    Pair,
    at_steps,
    explained,
    extrapolate,
    fitted_steps,
    reread,
    sub,
)

__all__ = ["DirectionReadings", "along", "read_directions"]


def along(
    cost: ModuleCost,
    directions: dict[int, torch.Tensor],
    grad: list[torch.Tensor],
    steps: np.ndarray,
    moved: dict[int, torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(J(θ + h_k·u_k), J(θ − h_k·u_k), the analytic uᵀgrad) for each direction k and its step.

    ``directions[t]`` holds the k directions' entries on tensor t, zeroed where ``moved[t]`` is
    0. The analytic side uses the step θ ± h·u actually represents in the check's dtype, so
    rounding of θ + h·u is not an error.
    """
    count = len(next(iter(directions.values())))
    values, analytic = {}, torch.zeros(count, dtype=torch.float64)
    for t, u in directions.items():
        if moved and t in moved:
            u = u * moved[t]
        theta = cost.theta[t]
        h = torch.as_tensor(steps, dtype=theta.dtype, device=theta.device)
        h = h.view(count, *([1] * theta.dim()))
        plus, minus = theta + h * u, theta - h * u
        values[t] = torch.cat((plus, minus))
        half = ((plus - minus) / 2).to(torch.float64).reshape(count, -1)
        analytic += (half @ grad[t].reshape(-1)).cpu() / torch.as_tensor(steps)
    found = cost.at(values)
    return found[:count], found[count:], analytic.numpy()


class _Line:
    """The directions as the objective of :mod:`gradwatch.evidence.recheck`: position k is
    direction k. Each step's pair is shifted by that step's own analytic value minus the first
    step's, so that every estimate is read against the analytic value its own θ ± h·u represents."""

    def __init__(self, cost: ModuleCost, directions: dict[int, torch.Tensor], first: Any) -> None:
        self.cost, self.directions, (self.grad, self.moved, self.analytic) = cost, directions, first

    def pairs(self, positions: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen = {t: u[torch.as_tensor(positions)] for t, u in self.directions.items()}
        plus, minus, analytic = along(self.cost, chosen, self.grad, steps, self.moved)
        shift = steps * (analytic - self.analytic[positions])
        return plus - shift, minus + shift

    def half_gaps(self, positions: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return np.asarray(steps, np.float64)

    def values(self, positions: np.ndarray) -> np.ndarray:
        # A ±1 direction moves each entry by the step itself: the scale of 1 of the step rules.
        return np.zeros(len(positions))


def _shorter(
    line: _Line, center: float, at: np.ndarray, steps: np.ndarray, sigma: float, first: Pair
) -> tuple[np.ndarray, np.ndarray]:
    """Where J is not smooth over 2h and 4h along a direction (it moves every component of a
    tensor: ReLUs within 4h of their kink bend it), Richardson's estimate from h/2 and h/4, where
    J is smooth there and the fit explains the first reading. It carries 2.7× the first noise and
    is read with the first reading's tolerance, never a wider one: a gap beyond it is not
    cleared."""
    half, quarter = at_steps(line, at, steps, (0.5, 0.25))
    sigmas = np.full(at.size, sigma)
    smooth, estimate, _ = extrapolate(center, half, quarter, sigmas)
    smooth &= explained(first, half, quarter, sigmas) & np.isfinite(estimate)
    return smooth, estimate


@dataclass(frozen=True)
class DirectionReadings:
    """Per direction: the estimate read, its analytic value, its noise and its reading;
    ``rechecked``: whether a disagreement was read again at longer steps; ``step``: the longest
    step a reading rests on (the bisection inside the tensor probes at it)."""

    numeric: np.ndarray
    analytic: np.ndarray
    noise: np.ndarray
    reading: np.ndarray
    rechecked: bool
    step: float


def read_directions(
    cost: ModuleCost,
    directions: dict[int, torch.Tensor],
    grad: list[torch.Tensor],
    step: float,
    moved: dict[int, torch.Tensor],
    sigma: float,
    bands: tuple[float, float],
) -> DirectionReadings:
    """The readings of ``directions`` at ``step`` and, where they ask for it, at the re-check's
    longer steps or the step fitted to J's noise (``bands``: the material's pass and warn
    bands)."""
    pass_max, warn_max = bands
    count = len(next(iter(directions.values())))
    steps = np.full(count, float(step))
    plus, minus, analytic = along(cost, directions, grad, steps, moved)
    with np.errstate(invalid="ignore", divide="ignore"):
        numeric = (plus - minus) / (2 * steps)
    noise = np.full(count, sigma / (np.sqrt(2) * step))
    reading, _ = read(analytic, numeric, noise, pass_max)
    finite = np.isfinite(numeric) & np.isfinite(analytic)
    suspects = np.flatnonzero((reading == DISAGREES) & finite)
    with np.errstate(invalid="ignore", divide="ignore"):
        close = noise > warn_max * (np.abs(analytic) + np.abs(numeric))
    quiet = np.flatnonzero(((reading == NOT_JUDGED) | close) & (reading != DISAGREES) & finite)
    if suspects.size == 0 and quiet.size == 0:
        return DirectionReadings(numeric, analytic, noise, reading, False, step)
    center = cost.value()
    line = _Line(cost, directions, (grad, moved, analytic))
    longest = float(step)
    if suspects.size:
        first = sub((plus, minus, steps), suspects)
        smooth, estimate, spread = reread(
            line, center, suspects, steps[suspects], np.full(suspects.size, sigma), first
        )
        numeric[suspects[smooth]], noise[suspects[smooth]] = estimate[smooth], spread[smooth]
        kinked = suspects[~smooth]
        if kinked.size:
            found, estimate = _shorter(
                line, center, kinked, steps[kinked], sigma, sub(first, ~smooth)
            )
            numeric[kinked[found]] = estimate[found]  # read with the first noise: not wider
    fitted = fitted_steps(np.zeros(quiet.size), steps[quiet], sigma, center)
    quiet, fitted = quiet[fitted > steps[quiet]], fitted[fitted > steps[quiet]]
    if quiet.size:
        near, far = at_steps(line, quiet, fitted, (1.0, 2.0))
        smooth, estimate, spread = extrapolate(center, far, near, sigma)
        smooth &= np.isfinite(estimate)
        numeric[quiet[smooth]], noise[quiet[smooth]] = estimate[smooth], spread[smooth]
        longest = max(longest, float(np.max(fitted[smooth], initial=step)))
    reading, _ = read(analytic, numeric, noise, pass_max)
    return DirectionReadings(numeric, analytic, noise, reading, bool(suspects.size), longest)
