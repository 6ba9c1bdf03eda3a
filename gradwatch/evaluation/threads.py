"""How many torch threads the plain loop's evaluations run on: the user's count or one, whichever
the first of them measured faster.

One plain evaluation of a small model is a chain of small operations. Each one that torch splits
over threads ends in a barrier, which costs more than the arithmetic when the tensors are small,
and far more when other processes hold the cores: a thread that waits for a descheduled sibling
waits a time slice. Measured on a 2-core machine shared with other jobs: a plain-loop check of a
tiny GPT-2 took 10 s on one thread and 76 s on two; one 4-image forward of ResNet-18 took 25 ms
on one thread and 230 ms on two. On a quiet machine a large model gains from its threads. No
fixed size rule tells these apart (the load changes under a check), so the check measures:
its plain evaluations (the gradient's, J at θ, then the plain loop's) alternate between one
thread and the user's count, timed (the gradient's by its forward), until one is faster by far
or both have a few samples; then it keeps the faster one.

The batched calls carry large tensors, where the user's threads pay as in training; they run on
the user's count unless the plain evaluations found one thread CLEAR-ly faster. A gap that wide
is not the cost of threading small operations on idle cores (a barrier there costs microseconds)
but other processes holding the cores, which slows large operations too: measured per copy of a
532k-parameter transformer in calls of 16 copies, 8 ms on one thread and 22 ms on two.

The thread count changes how some reductions add up (a sum split over two threads rounds
differently), by an ulp or so of J. So the evaluations whose difference is taken, J(θ + h·e_i)
and J(θ − h·e_i), always run on one count: the unit of choice is such a pair.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

# Pairs timed per thread count before the choice: the median of three ignores one pair slowed by
# a burst of load, and six pairs are a small part of any loop worth choosing for.
SAMPLES = 3
# A count this many times slower than the other over two samples each (or CLEAR² over one each)
# is dropped without more: a burst of load seldom slows two evaluations in a row that much,
# while two threads fighting other processes for two cores were 30 times slower (ResNet-18: 55
# ms an evaluation on one thread, 1.6 s on two), and every further sample would cost as much.
CLEAR = 2.0


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs the body on ``count`` torch threads and puts the user's count back after, also when
    the body raises.

    Example:
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    user = torch.get_num_threads()
    if count == user:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(user)


class ThreadChoice:
    """The thread count of plain evaluations, measured: the user's count and one alternate over
    the first ``2 * SAMPLES`` units (pairs of evaluations), then the faster is kept.

    ``chosen`` is None while measuring. ``seconds`` holds the time per evaluation of each unit.

    Example:
        >>> choice = ThreadChoice(user=2)
        >>> out = choice.run([[0, 1], [2, 3]], lambda k: float(k))
        >>> out.tolist(), sorted(choice.seconds)
        ([0.0, 1.0, 2.0, 3.0], [1, 2])
    """

    def __init__(self, user: int | None = None) -> None:
        self.user = torch.get_num_threads() if user is None else user
        self.seconds: dict[int, list[float]] = {self.user: [], 1: []}
        self.chosen: int | None = self.user if self.user == 1 else None

    def next(self) -> int:
        """The count for the next unit: the chosen one, else the one measured least so far
        (one first)."""
        if self.chosen is not None:
            return self.chosen
        return min((1, self.user), key=lambda n: len(self.seconds[n]))

    def record(self, count: int, seconds: float) -> None:
        """One unit's time per evaluation on ``count`` threads (any evaluation of J on that many:
        the check's evaluation at θ counts for the user's); chooses once both counts have
        ``SAMPLES`` of them, or one is clearly slower (see ``CLEAR``)."""
        if self.chosen is not None or count not in self.seconds:
            return
        self.seconds[count].append(seconds)
        fewest = min(len(s) for s in self.seconds.values())
        if fewest == 0:
            return
        fast, slow = sorted((1, self.user), key=lambda n: statistics.median(self.seconds[n]))
        gap = statistics.median(self.seconds[slow]) / statistics.median(self.seconds[fast])
        if gap >= (CLEAR if fewest >= 2 else CLEAR**2) or fewest >= SAMPLES:
            self.chosen = fast

    def run(self, units: Sequence[Sequence[int]], evaluate: Callable[[int], float]) -> np.ndarray:
        """``evaluate(k)`` for every k of ``units``; each unit on one thread count."""
        out = np.empty(sum(len(u) for u in units))
        for unit in units:
            count = self.next()
            start = time.perf_counter()
            with torch_threads(count):
                for k in unit:
                    out[k] = evaluate(k)
            self.record(count, (time.perf_counter() - start) / max(len(unit), 1))
        return out

    @property
    def contended(self) -> bool:
        """Whether one thread was measured ``CLEAR``-ly faster than the user's count."""
        if self.chosen != 1 or self.user == 1:
            return False
        one, user = (statistics.median(self.seconds[n]) for n in (1, self.user))
        return user >= CLEAR * one

    def batched(self) -> int:
        """The thread count of batched calls: one under contention, else the user's."""
        return 1 if self.contended else self.user

    def describe(self) -> str | None:
        """A note on the choice, when there was one to make."""
        if self.chosen is None or self.user == 1:
            return None
        medians = {n: statistics.median(s) for n, s in self.seconds.items() if s}
        measured = ", ".join(f"{1e3 * medians[n]:.1f} ms on {n}" for n in sorted(medians))
        where = "plain and batched evaluations" if self.contended else "plain evaluations"
        return f"{where} on {self.chosen} thread(s) (measured per evaluation: {measured})"


def pair_units(count: int, stride: int = 1) -> list[list[int]]:
    """Positions 0..count-1 grouped into the pairs whose difference is taken: (k, k + 1) for
    interleaved ± evaluations (``stride`` 1), (k, k + count/2) for a block of + then a block of −
    (``stride`` count/2). An odd one out forms its own unit.

    Example:
        >>> pair_units(5), pair_units(4, stride=2)
        ([[0, 1], [2, 3], [4]], [[0, 2], [1, 3]])
    """
    if stride == 1:
        return [list(range(k, min(k + 2, count))) for k in range(0, count, 2)]
    return [[k, k + stride] for k in range(stride)] + [[k] for k in range(2 * stride, count)]
