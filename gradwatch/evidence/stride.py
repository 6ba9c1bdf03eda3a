"""J's noise at the stride of a re-read: J's rounding is not the same at every stride (see
:func:`gradwatch.evidence.escalation.tensor_noise`), so a reading at a longer step is judged, its
smoothness test and its tolerance alike, against J's noise measured at that step's stride."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

# The probes along a tensor's components that tensor_noise takes, at a given stride.
from gradwatch.evidence.escalation import _noise_along
from gradwatch.evidence.noise import rounding_floor

if TYPE_CHECKING:
    from gradwatch.evidence.objective import Objective

__all__ = ["noise_at"]


def noise_at(
    objective: Objective, center: float, support: np.ndarray, steps: np.ndarray, seed: int
) -> float:
    """J's noise along the components ``support`` at the stride of readings at ``steps`` (1 to 2
    steps from θ, as far as a reading's points and its Richardson partner's), never below J's
    rounding floor in float64 (J rounded once).

    Example:
        >>> class Line:  # J = 1 + Σθ, rounded to a grid of 1e-9 beyond 1e-6 from θ
        ...     def half_gaps(self, at, h): return np.asarray(h, float)
        ...     def line(self, support, rows):
        ...         s = rows.sum(axis=1)
        ...         return 1 + s + np.where(np.abs(s) > 1e-6, np.sin(1e6 * s) * 1e-9, 0.0)
        >>> first = noise_at(Line(), 1.0, np.arange(4), np.full(4, 1e-9), 0)
        >>> longer = noise_at(Line(), 1.0, np.arange(4), np.full(4, 1e-4), 0)
        >>> bool(first < 1e-15 < 1e-10 < longer)
        True
    """
    gaps = objective.half_gaps(support, steps)
    return max(_noise_along(objective, center, support, gaps, seed), rounding_floor(center))
