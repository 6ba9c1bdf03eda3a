"""The schedule's arithmetic: the first due step at or after a step, and the unreached ones."""

from __future__ import annotations

import math

import pytest

from gradwatch.callbacks._options import Schedule


@pytest.mark.parametrize(
    ("schedule", "lowest", "expected"),
    [
        (Schedule(True, (100,), None), 0, 0),
        (Schedule(True, (100,), None), 1, 100),
        (Schedule(True, (100,), None), 100, 100),
        (Schedule(True, (100,), None), 101, math.inf),
        (Schedule(False, (), None), 0, math.inf),
        (Schedule(False, (), 10), 0, 10),  # every_n_steps does not check at 0: at_init does
        (Schedule(False, (), 10), 10, 10),
        (Schedule(False, (), 10), 11, 20),
        (Schedule(False, (15,), 10), 11, 15),
        (Schedule(False, (15,), 10), 16, 20),
        (Schedule(True, (0, 5), 3), 1, 3),
        (Schedule(True, (0, 5), 3), 4, 5),
    ],
)
def test_first_due(schedule: Schedule, lowest: int, expected: float) -> None:
    assert schedule.first_due(lowest) == expected


def test_unreached_steps_are_those_at_or_after_the_final_step() -> None:
    schedule = Schedule(True, (10, 20, 30), 7)
    assert schedule.unreached(20) == (20, 30)
    assert schedule.unreached(31) == ()
