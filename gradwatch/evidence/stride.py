"""J's noise at the stride of a re-read: J's rounding is not the same at every stride (see
:func:`gradwatch.evidence.escalation.tensor_noise`), so a reading at a longer step is judged, its
smoothness test and its tolerance alike, against J's noise measured at that step's stride."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

# The probes along a tensor's components that tensor_noise takes, and the ladder's rule.
from gradwatch.evidence.escalation import _noise_along
from gradwatch.evidence.gate import RUNG, RUNGS, _noisy, read_fitted
from gradwatch.evidence.noise import rounding_floor
from gradwatch.evidence.readings import DISAGREES, FITTED_STEP, Record
from gradwatch.evidence.recheck import longest_steps

if TYPE_CHECKING:
    from gradwatch.evidence.objective import Objective

__all__ = ["farther", "noise_at"]


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


def farther(
    objective: Objective,
    record: Record,
    groups: np.ndarray,
    center: float,
    steps: np.ndarray,
    seed: int,
    bands: tuple[float, float],
) -> None:
    """Reads a tensor that J's noise at its fitted readings' stride (``tensor_noise``, after the
    ladder) left too close to J's noise, with no disagreement, at ``RUNG`` times longer steps up
    to float32's step, each rung against J's noise at its own stride, while it stays so: the
    ladder of escalation stopped where it did by the noise it had then. (A float32 Funnel's
    planted ×1.01 tensor at the generic point: 1.67e-3 off for a tolerance of 1.33e-3 at 3.4e-3,
    where the ladder stopped; J's noise at that stride read 1.3× higher, and the tensor stood
    "too close to J's noise", its bug passing. At float32's step it is read with 0.7× the
    noise.)"""
    pass_max, warn_max = bands
    fitted = (record.recheck == FITTED_STEP) & (record.step > steps)
    noisy = _noisy(record, groups, warn_max, fitted)
    for g in np.unique(groups[noisy]):
        at = noisy[groups[noisy] == g]
        rung = record.step[at]
        for _ in range(RUNGS):
            longest = longest_steps(objective.values(at))
            at, rung, longest = at[rung < longest], rung[rung < longest], longest[rung < longest]
            if at.size == 0:
                break
            rung, held = np.minimum(rung * RUNG, longest), record.sigma[at].copy()
            found = noise_at(objective, center, at, rung, seed)
            record.sigma[at] = np.maximum(held, found)
            read_fitted(objective, record, at, rung, center, pass_max)
            unread = record.step[at] != rung  # not smooth there: its reading stays, and its noise
            record.sigma[at[unread]] = held[unread]
            mine = groups == g
            if (record.reading[mine] == DISAGREES).any():
                break
            if _noisy(record, np.where(mine, 0, -1), warn_max, mine).size == 0:
                break
