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
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from gradwatch.evidence.noise import FIRST_PAIRS

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
    way), J(θ) twice and the gradient's (which also measures its memory), and four along each
    direction of the first pairs that measure J's noise (their first two once more, like a
    tensor's first pair). Re-checks (at half the step, off kinks) and the rest of the noise's
    pairs come on top, where a component asks for them.

    Example:
        >>> expected_evaluations(100, 4)
        341
    """
    return 2 * pairs + 2 * tensors + 3 + 4 * 2 * FIRST_PAIRS + 2


# The time left is shown from the first chunk of more than this many evaluations (the batched
# way is running), or once this many plain evaluations followed the plan (the plain loop runs):
# before that, J's gradient, the memory measurement and each tensor's first pair (plain, once
# per way tried) make a few slow evaluations whose rate says nothing about the rest.
STEADY_COUNT = 8


def _bar(total: int | None, initial: int, delay: float) -> tqdm:
    """A bar of ``initial`` evaluations out of ``total`` (a running count where None); its rate
    is the average since it started (smoothing 0): a recent rate swings with the load of a
    shared machine and with the tensor at hand, the average settles."""
    return tqdm(
        total=total,
        initial=initial,
        smoothing=0.0,
        desc="gradient check",
        unit=" evaluations",
        delay=delay,
        leave=False,
        dynamic_ncols=True,
        mininterval=REFRESH_S if _is_terminal(sys.stderr) else LOG_REFRESH_S,
        file=sys.stderr,
    )


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


class Progress:
    """Counts evaluations of J (call it with the number each finished chunk made) on stderr,
    once the check has run ``DELAY_S``: a running count, then, once :meth:`plan` said how many
    the check makes in all and the evaluations run at their steady rate (``STEADY_COUNT``), a
    bar with the time left, measured from then on. ``show=False``: nothing at all."""

    def __init__(self, show: bool) -> None:
        self._bar = _bar(None, 0, DELAY_S) if show else None
        self._planned: int | None = None
        self._since_plan = 0

    def __call__(self, count: int) -> None:
        if self._bar is None:
            return
        if self._planned is not None:
            self._since_plan += count
            if count > STEADY_COUNT or self._since_plan > STEADY_COUNT:
                self._steady(self._planned, self._bar.n + count)
                return
        bar = self._bar
        if bar.total is not None and bar.n + count > bar.total:
            bar.total = bar.n + count  # more than planned: the half-step estimates
        bar.update(count)

    def _steady(self, total: int, count: int) -> None:
        """Replaces the running count by a bar at ``count`` of ``total``, whose rate (and
        elapsed time) count from now; it shows no sooner than ``DELAY_S`` into the check."""
        assert self._bar is not None
        # tqdm's clock is time.time; a bar disabled (TQDM_DISABLE) has no start
        waited = time.time() - getattr(self._bar, "start_t", time.time())
        self._bar.close()
        self._bar = _bar(max(total, count), count, max(0.0, DELAY_S - waited))
        self._planned = None

    def plan(self, total: int) -> None:
        """The check will make ``total`` evaluations in all (those made so far included)."""
        if self._bar is not None:
            self._planned, self._since_plan = total, 0

    def close(self) -> None:
        """Clears the bar."""
        if self._bar is not None:
            self._bar.close()


@contextmanager
def progress_bar(show: bool) -> Iterator[Progress]:
    """A :class:`Progress` for the body, cleared when it ends (also when it raises)."""
    progress = Progress(show)
    try:
        yield progress
    finally:
        progress.close()
