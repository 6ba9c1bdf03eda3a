"""When the callback checks: the global steps of a schedule, as pure integer arithmetic."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """The optimizer steps (``trainer.global_step`` values) at which a check is due.

    Step 0 is the random initialization (``at_init``); ``after_steps`` are single steps;
    ``every_n_steps`` adds n, 2n, 3n, ... (not 0: that is ``at_init``'s).

    Example:
        >>> schedule = Schedule(at_init=True, after_steps=(100,), every_n_steps=300)
        >>> [schedule.first_due(s) for s in (0, 1, 101, 301)]
        [0, 100, 300, 600]
    """

    at_init: bool
    after_steps: tuple[int, ...]  # sorted, unique, non-negative
    every_n_steps: int | None

    def first_due(self, lowest: int) -> float:
        """The first scheduled step at or after ``lowest``; ``math.inf`` when none is left.

        A float so that the hot path stays one comparison: ``global_step < first_due``.
        """
        candidates: list[int] = []
        if self.at_init and lowest <= 0:
            candidates.append(0)
        position = bisect.bisect_left(self.after_steps, lowest)
        if position < len(self.after_steps):
            candidates.append(self.after_steps[position])
        if self.every_n_steps is not None:
            n = self.every_n_steps
            candidates.append(max(-(-lowest // n), 1) * n)  # ceil(lowest / n), at least 1
        return min(candidates, default=math.inf)

    def unreached(self, final_step: int) -> tuple[int, ...]:
        """The ``after_steps`` a run that stops at ``final_step`` never gets to (no batch starts at
        the final step, so a check scheduled there does not run either)."""
        return tuple(s for s in self.after_steps if s >= final_step)
