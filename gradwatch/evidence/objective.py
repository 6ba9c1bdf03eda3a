"""What the evidence model asks of J near θ (:class:`Objective`), and J at a jittered θ
(:class:`Moved`): the one interface between the evaluations and the readings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Moved", "Objective"]


class Objective(Protocol):
    """J near θ, as the evidence model needs it; ``positions`` index the checked components."""

    def pairs(self, positions: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """J(θ + h·e_i) and J(θ − h·e_i) for each position i and its step h."""
        ...

    def half_gaps(self, positions: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """((θ_i + h) − (θ_i − h)) / 2 as the check's precision stores it (0: the step is lost)."""
        ...

    def jittered(self, attempt: int) -> Moved | None:
        """The same J at a nearby θ (seeded by ``attempt``), with backprop there; None when the
        check has no backprop to run again (a fixed gradient array)."""
        ...

    def values(self, positions: np.ndarray) -> np.ndarray:
        """θ_i at each position, in float64."""
        ...

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """J at θ moved by each row of ``rows`` on the positions ``support`` (the noise probes)."""
        ...


@dataclass(frozen=True)
class Moved:
    """J at a jittered θ: its objective, backprop's value at every checked position, and J there."""

    objective: Objective
    analytic: np.ndarray
    center: float
