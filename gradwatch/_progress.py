"""Progress of a long check on stderr: a bar over the evaluations of J it will make, with the
time left, shown only once the check has run a couple of seconds.

The work is known up front: two evaluations per checked component (this process's share under
a partition), plus a few per tensor for choosing how to evaluate it. The engine reports each
chunk of evaluations as it finishes (``ModuleCost(progress=...)``), so the rate, and the time
left, are measured on the check itself. Evaluations the check decides on later (components
estimated again at half the step) extend the total when they come.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

# A check shorter than this shows no bar at all (tqdm's `delay`): most checks of small models
# end well within it, and their report says how long they took.
DELAY_S = 2.0
# How often the bar is redrawn in a terminal.
REFRESH_S = 0.5
# ... and in a log file (stderr not a terminal: CI), where every redraw stays in the log.
LOG_REFRESH_S = 30.0


def expected_evaluations(pairs: int, tensors: int) -> int:
    """The evaluations of J a check of ``pairs`` components over ``tensors`` tensors makes: two
    per component, the first pair of each tensor once more (plainly, to validate the batched
    way), J(θ) twice, the gradient's and one that measures its memory.

    Example:
        >>> expected_evaluations(100, 4)
        212
    """
    return 2 * pairs + 2 * tensors + 4


class Progress:
    """Counts evaluations of J on a bar (or nowhere): call it with the number each finished
    chunk made; :meth:`plan` sets how many the check will make in all."""

    def __init__(self, bar: tqdm | None = None) -> None:
        self._bar = bar

    def __call__(self, count: int) -> None:
        bar = self._bar
        if bar is None:
            return
        if bar.total is not None and bar.n + count > bar.total:
            bar.total = bar.n + count  # more than planned: the half-step estimates
        bar.update(count)

    def plan(self, total: int) -> None:
        """The check will make ``total`` evaluations in all (those made so far included)."""
        if self._bar is not None:  # drawn at the next chunk (not before the bar's delay)
            self._bar.total = max(total, self._bar.n)


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


@contextmanager
def progress_bar(show: bool, label: str = "gradient check") -> Iterator[Progress]:
    """A :class:`Progress` drawn on stderr once the body has run ``DELAY_S`` (a running count
    until :meth:`Progress.plan` gives the total, then a bar with the time left); one that draws
    nothing when ``show`` is False. The bar is cleared when the body ends."""
    if not show:
        yield Progress()
        return
    bar = tqdm(
        total=None,
        desc=label,
        unit=" evaluations",
        delay=DELAY_S,
        leave=False,
        dynamic_ncols=True,
        mininterval=REFRESH_S if _is_terminal(sys.stderr) else LOG_REFRESH_S,
        file=sys.stderr,
    )
    try:
        yield Progress(bar)
    finally:
        bar.close()
