"""Second measurements of a component: what may explain the gap of its first reading, and the
step fitted to J's noise for a component the first step left within noise.

A first reading compares backprop's a with n(h) = (J(θ+h) − J(θ−h)) / 2h, whose noise is
σ_1 = σ_J / (√2·h). For J smooth near θ, n(s) = g + k·s² + noise at every step s (the h²
truncation of the two-sided difference). A first reading beyond its tolerance is explained by
truncation only when the same J, read at 2h and 4h, shows the same k: the gap grows 4× with each
doubling of the step, and

* J'' = (J(θ+s) − 2J(θ) + J(θ−s)) / s² is the same at 2h and 4h to within its noise (a kink at θ
  halves it when the step doubles: it is then not smooth, and re-checked off the kink);
* the first reading n(h) is what the fit g + k·h² predicts, to within the noise of the two;
* Richardson's g = (4·n(2h) − n(4h)) / 3, free of the h² term, is what is read against a. Its
  noise is √(16·(σ_1/2)² + (σ_1/4)²) / 3 ≈ 0.67·σ_1: the re-read's tolerance is narrower than the
  first reading's, never wider, so a re-check clears a gap only by explaining it.

Where 4h would pass float32's step (a float32 check at its ``auto`` step), the same re-check runs
at h/2 and h/4 instead (:func:`multiples`): J's higher terms would show at 4h.

A component that the first step leaves within noise is read again at a step fitted to J's
measured noise (:func:`fitted_steps`), by Richardson's estimate from that step and its double.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradwatch.evidence.noise import NOISE_MULTIPLE

__all__ = [
    "Pair",
    "at_steps",
    "explained",
    "extrapolate",
    "fitted_steps",
    "longest_steps",
    "richardson_noise",
    "slope",
    "sub",
]

# (J(θ + s·e_i), J(θ − s·e_i), s as stored) for each re-checked component.
Pair = tuple[np.ndarray, np.ndarray, np.ndarray]


def slope(pair: Pair) -> np.ndarray:
    """The two-sided estimate of one pair."""
    plus, minus, s = pair
    with np.errstate(invalid="ignore", divide="ignore"):
        return (plus - minus) / (2 * s)


def richardson_noise(
    ratio: np.ndarray | float, longer: np.ndarray | float, shorter: np.ndarray | float
) -> np.ndarray:
    """The noise of Richardson's estimate g = (n(s₂) − r²·n(s₁)) / (1 − r²), r = s₂/s₁ =
    ``ratio``, from the noise of the estimates at the ``longer`` step s₁ and the ``shorter``
    one s₂: √(σ₂² + r⁴·σ₁²) / (1 − r²), the one place this factor is derived.

    Example:
        >>> # halving the step doubles an estimate's noise: √(4 + 1/16) / (3/4) = √65/3
        >>> round(float(richardson_noise(0.5, 1.0, 2.0)), 4), round(65**0.5 / 3, 4)
        (2.6874, 2.6874)
    """
    r = np.asarray(ratio, np.float64)
    return np.sqrt(np.asarray(shorter) ** 2 + r**4 * np.asarray(longer) ** 2) / (1 - r**2)


def extrapolate(
    center: float, longer: Pair, shorter: Pair, sigma: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From the pairs at a step and at a shorter one: whether J is smooth there (J'' the same at
    both to within its noise), Richardson's estimate of the slope and that estimate's noise.

    With n(s) = g + c·s², g = (n(s₂) − r²·n(s₁)) / (1 − r²), r = s₂/s₁.

    Example:
        >>> j = lambda x: x**3  # at θ = 1, steps 0.02 and 0.01: exactly 3 once c·s² is removed
        >>> pair = lambda s: (np.array([j(1 + s)]), np.array([j(1 - s)]), np.array([s]))
        >>> smooth, g, noise = extrapolate(1.0, pair(0.02), pair(0.01), 1e-16)
        >>> bool(smooth[0]), round(float(g[0]), 12)
        (True, 3.0)
    """
    (p1, m1, h1), (p2, m2, h2) = longer, shorter
    sigma = np.asarray(sigma, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        c1, c2 = (p1 - 2 * center + m1) / h1**2, (p2 - 2 * center + m2) / h2**2
        spread = sigma * np.sqrt(2 / h1**4 + 2 / h2**4 + (2 / h2**2 - 2 / h1**2) ** 2)
        smooth = np.abs(c2 - c1) <= NOISE_MULTIPLE * spread
        r = h2 / h1
        estimate = (slope(shorter) - r**2 * slope(longer)) / (1 - r**2)
        s1, s2 = sigma / (np.sqrt(2) * h1), sigma / (np.sqrt(2) * h2)
        noise = richardson_noise(r, s1, s2)
    return smooth & (h2 > 0) & (h1 > h2), estimate, noise


def explained(first: Pair, wide: Pair, wider: Pair, sigma: np.ndarray | float) -> np.ndarray:
    """Whether the first reading n(h) is the value the fit n(s) = g + k·s² through n(2h) and
    n(4h) predicts, to within K times the noise of the residual.

    Example:
        >>> j = lambda x: x**3
        >>> pair = lambda s: (np.array([j(1 + s)]), np.array([j(1 - s)]), np.array([s]))
        >>> bool(explained(pair(0.01), pair(0.02), pair(0.04), 1e-16)[0])
        True
    """
    s1, s2, s4 = first[2], wide[2], wider[2]
    sigma = np.asarray(sigma, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = (s2**2 - s1**2) / (s4**2 - s2**2)  # 1/4 for steps h, 2h, 4h
        predicted = (1 + w) * slope(wide) - w * slope(wider)
        noise = (sigma / np.sqrt(2)) * np.sqrt(1 / s1**2 + (1 + w) ** 2 / s2**2 + w**2 / s4**2)
        return np.abs(slope(first) - predicted) <= NOISE_MULTIPLE * noise


# J's relative noise is taken to lie between float64's rounding and float32's: a check runs in
# float64 or float32, and a J that is (nearly) 0, so that σ_J / |J| says nothing of its scale,
# gets float32's. The longest step is then float32's ``auto`` step, ε₃₂^(1/3)·max(1, |θ_i|) ≈ 5e-3.
_UNITS = (float(np.finfo(np.float64).eps), float(np.finfo(np.float32).eps))


def fitted_steps(
    values: np.ndarray, steps: np.ndarray, sigma: np.ndarray | float, center: float
) -> np.ndarray:
    """The step fitted to J's measured noise: u^(1/3)·max(1, |θ_i|) with u = σ_J / |J|, J's
    relative noise, in place of the machine epsilon of ``numeric.auto_steps`` (the step that
    balances the h² truncation against J's rounding, Numerical Recipes §5.7, eq. 5.7.8), never
    shorter than the step already taken. Richardson's estimate removes the h² truncation that the
    longer step brings in.

    Example:
        >>> fitted_steps(np.array([0.5, -4.0]), np.full(2, 1e-7), 1e-10, 1e5)
        array([1.e-05, 4.e-05])
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.asarray(sigma, np.float64) / abs(center)
    relative = np.clip(np.nan_to_num(relative, nan=_UNITS[1], posinf=_UNITS[1]), *_UNITS)
    return np.maximum(np.asarray(steps, np.float64), np.cbrt(relative) * _scale(values))


def longest_steps(values: np.ndarray) -> np.ndarray:
    """The longest step a re-read takes: float32's ``auto`` step (see ``_UNITS``).

    Example:
        >>> longest_steps(np.array([0.5, -4.0])).round(4)
        array([0.0049, 0.0197])
    """
    return np.cbrt(_UNITS[1]) * _scale(values)


def _scale(values: np.ndarray) -> np.ndarray:
    return np.maximum(1.0, np.abs(np.asarray(values, np.float64)))


def at_steps(
    objective: Any, at: np.ndarray, steps: np.ndarray, multiples: tuple[float, ...]
) -> list[Pair]:
    """(J(θ + m·h), J(θ − m·h), the stored m·h) at positions ``at`` for each multiple m, in one
    call."""
    every = np.concatenate([at] * len(multiples))
    both = np.concatenate([steps * m for m in multiples])
    plus, minus = objective.pairs(every, both)
    gaps = objective.half_gaps(every, both)
    k = at.size
    return [(plus[i * k : (i + 1) * k], minus[i * k : (i + 1) * k], gaps[i * k : (i + 1) * k])
            for i in range(len(multiples))]  # fmt: skip


def sub(pair: Pair, keep: np.ndarray) -> Pair:
    return pair[0][keep], pair[1][keep], pair[2][keep]


def multiples(values: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    """The steps of a re-check, in units of the first: 2h and 4h, or h/2 and h/4 where 4h would
    pass float32's step (a float32 check at its ``auto`` step is at the longest already, and J's
    higher terms would show beyond it), at the cost of a tolerance 3× the first reading's.

    Example:
        >>> multiples(np.zeros(2), np.full(2, 1e-7)), multiples(np.zeros(2), np.full(2, 5e-3))
        ((2.0, 4.0), (0.5, 0.25))
    """
    fits = np.all(4 * np.asarray(steps, np.float64) <= longest_steps(values))
    return (2.0, 4.0) if fits else (0.5, 0.25)


def reread(
    objective: Any,
    center: float,
    at: np.ndarray,
    steps: np.ndarray,
    sigma: np.ndarray,
    first: Pair | None,
    explain: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads ``at`` again at the re-check's two steps (:func:`multiples`): whether J is smooth
    there and, with ``explain``, whether the fit explains the first reading (``first``, or J's
    pair at the first step, evaluated here when None); Richardson's estimate; its noise."""
    m = multiples(objective.values(at), steps)
    if first is None and explain:
        first, a, b = at_steps(objective, at, steps, (1.0, *m))
    else:
        a, b = at_steps(objective, at, steps, m)
    longer, shorter = (b, a) if m[1] > m[0] else (a, b)
    smooth, estimate, spread = extrapolate(center, longer, shorter, sigma)
    if explain and first is not None:
        smooth &= explained(first, a, b, sigma)
    return smooth, estimate, spread
