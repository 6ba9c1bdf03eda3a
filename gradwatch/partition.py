"""One check split over the processes of a data-parallel run: each process evaluates its share
of the components, a gather puts the results together, and every process builds the same report.

The caller supplies one collective, ``gather(x)``: every process passes a 1-D float64 array of the
same length and gets back all of them stacked, shape ``(size, len(x))``, row r from process r
(``torch.distributed.all_gather``, Lightning's ``strategy.all_gather``). The engine stays free of
any launcher or framework.

Every exchange starts with a header of three numbers: whether this process is well, which
exchange it is at, and how long its data are. A process whose part of the check raises sends a
header saying so before its error propagates, so a process waiting in a gather learns of it there
and raises :class:`PartitionError` instead of waiting forever: a partitioned check returns in
every process, or raises in every process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from gradwatch.common.numeric import same_cost

__all__ = ["Gather", "Partition", "PartitionError"]

Gather = Callable[[np.ndarray], np.ndarray]
Pairs = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

# The header's second number: which exchange a process is at. Processes at different exchanges
# are checking different things and stop rather than mix their numbers.
_START, _PAIRS, _DONE = 1.0, 2.0, 3.0
# The header's first number: this process is well, its part raised, or it was interrupted
# (KeyboardInterrupt, SystemExit: the run is going down, not merely this check).
_WELL, _FAILED, _INTERRUPTED = 1.0, 0.0, -1.0


class PartitionError(RuntimeError):
    """Raised in every process of a partitioned check that another process's part of it failed
    (its own error propagates there), or that the processes were not checking the same thing.

    Attributes:
        failed: the processes whose part raised (empty when they disagreed instead).
        interrupted: whether one of them was interrupted (KeyboardInterrupt, SystemExit) rather
            than failed: that process is going down, so the run should too.

    Example:
        >>> str(PartitionError("process 1 of 2 failed", failed=(1,)))
        'process 1 of 2 failed'
    """

    def __init__(
        self, message: str, failed: tuple[int, ...] = (), interrupted: bool = False
    ) -> None:
        super().__init__(message)
        self.failed = failed
        self.interrupted = interrupted

    def __reduce__(self) -> tuple[type[PartitionError], tuple[str, tuple[int, ...], bool]]:
        # Spawned workers send exceptions back pickled.
        return type(self), (str(self), self.failed, self.interrupted)


@dataclass(frozen=True)
class Partition:
    """This process's place in a check split over ``size`` processes.

    Pass it as ``check_module(..., partition=...)`` in every process, with the same model, batch
    and options everywhere. Process ``rank`` evaluates every ``size``-th checked component from
    the ``rank``-th on (strided: a contiguous cut would give one process the first layers, whose
    perturbations cost the most to carry through the network), and after ``gather`` every
    process holds all the numbers and returns the same report (``evaluations`` counts every
    process's, ``seconds`` is the slowest one's). Backprop's gradient and J(θ) are computed
    everywhere (one backward, cheap) and process 0's are used, after checking that every
    process's J(θ) agrees.

    Args:
        rank: this process, ``0 <= rank < size``.
        size: how many processes share the check.
        gather: ``gather(x)`` → every process's ``x`` stacked, shape ``(size, len(x))``; ``x`` is
            a 1-D float64 array of the same length in every process.

    Example (under ``torch.distributed``)::

        def gather(x: np.ndarray) -> np.ndarray:
            rows = [torch.empty(len(x), dtype=torch.float64) for _ in range(size)]
            dist.all_gather(rows, torch.from_numpy(x))
            return torch.stack(rows).numpy()

        partition = Partition(dist.get_rank(), dist.get_world_size(), gather)
        report = check_module(model, loss_fn, batch, partition=partition)

    >>> Partition(rank=1, size=2, gather=lambda x: np.stack([x, x])).share(5)
    array([1, 3])
    """

    rank: int
    size: int
    gather: Gather = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("rank", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"`partition.{name}` must be an int; got {value!r}")
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(
                "`partition` must have size >= 1 and 0 <= rank < size; "
                f"got rank={self.rank!r}, size={self.size!r}"
            )
        if not callable(self.gather):
            raise TypeError(f"`partition.gather` must be a callable; got {self.gather!r}")

    def share(self, count: int, rank: int | None = None) -> np.ndarray:
        """The positions among ``count`` that process ``rank`` (default: this one) evaluates;
        shares differ in length by at most one."""
        return np.arange(self.rank if rank is None else rank, count, self.size)


class Exchange:
    """The collectives of one check; without a partition every method is the local identity."""

    def __init__(self, partition: Partition | None) -> None:
        self.partition = partition
        self._closed = partition is None  # no more collectives: never begun, failed or finished

    def agree(
        self, scalars: tuple[float, ...], vector: np.ndarray
    ) -> tuple[tuple[float, ...], np.ndarray]:
        """Process 0's ``scalars`` and ``vector`` (J(θ) first, then the gradient and such), in every
        process; raises everywhere when some process's J(θ) differs from process 0's."""
        p = self.partition
        if p is None:
            return scalars, vector
        rows = self._exchange(p, _START, np.concatenate([scalars, vector]))
        first = float(rows[0, 0])
        for rank, value in enumerate(rows[:, 0].tolist()):
            if not same_cost(first, value):
                self._closed = True
                raise PartitionError(
                    f"J(θ) differs between processes ({first!r} in process 0, {value!r} in "
                    f"process {rank}): every process must check the same model on the same batch"
                )
        count = len(scalars)
        return tuple(float(v) for v in rows[0, :count]), rows[0, count:].copy()

    def pairs(
        self, evaluate: Pairs, tensor: np.ndarray, local: np.ndarray, steps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``evaluate(tensor, local, steps)`` (J(θ ± h·e_i) per component), each process
        evaluating its share."""
        p = self.partition
        if p is None:
            return evaluate(tensor, local, steps)
        count = len(local)
        share = p.share(count)
        rows = _with_first_of_each_tensor(tensor, share)
        plus, minus = evaluate(tensor[rows], local[rows], steps[rows])
        mine = np.isin(rows, share)  # the others only make this process evaluate as one would
        width, n = -(-count // p.size), share.size
        sent = np.full(2 * width, np.nan)
        sent[:n], sent[width : width + n] = plus[mine], minus[mine]
        found = self._exchange(p, _PAIRS, sent)
        plus, minus = np.empty(count), np.empty(count)
        for rank in range(p.size):
            n = p.share(count, rank).size
            plus[rank :: p.size], minus[rank :: p.size] = found[rank, :n], found[rank, width:][:n]
        return plus, minus

    def finish(
        self, evaluations: int, seconds: float, described: str
    ) -> tuple[int, float, tuple[str, ...]]:
        """Every process's evaluations added up, the slowest one's seconds, and the notes: how
        the check was split, and ``described`` (how J was evaluated) from every process."""
        p = self.partition
        if p is None:
            return evaluations, seconds, (described,)
        text = np.frombuffer(described.encode(), dtype=np.uint8)
        rows = self._exchange(p, _DONE, np.array([evaluations, seconds, text.size], float))
        sent = np.zeros(max(int(rows[:, 2].max()), 1))  # never an empty gather
        sent[: text.size] = text
        texts = self._exchange(p, _DONE, sent)
        self._closed = True
        counts = [int(c) for c in rows[:, 0]]
        split = (
            f"split over {p.size} processes (component i evaluated by process i mod {p.size}); "
            f"evaluations per process: {', '.join(map(str, counts))}"
        )
        sizes = rows[:, 2].astype(np.int64)
        found = [bytes(t[:n].astype(np.uint8)).decode() for t, n in zip(texts, sizes, strict=True)]
        if len(set(found)) > 1:
            found = [f"process {r}: {t}" for r, t in enumerate(found)]
        notes = (split, *dict.fromkeys(found)) if p.size > 1 else tuple(found)
        return sum(counts), float(rows[:, 1].max()), notes

    def abort(self, interrupted: bool = False) -> None:
        """Tells the other processes that this one's check failed or was interrupted (at their
        next exchange)."""
        if self._closed or self.partition is None:
            return
        self._closed = True
        state = _INTERRUPTED if interrupted else _FAILED
        # The error that brought us here is the one to see; a broken gather adds nothing to it.
        try:  # noqa: SIM105 (contextlib.suppress would hide what is being suppressed and why)
            self._gather(self.partition, np.array([state, 0.0, 0.0]))
        except Exception:
            pass

    def _exchange(self, p: Partition, tag: float, values: np.ndarray) -> np.ndarray:
        """Every process's ``values`` after a header that says all are well and in step."""
        header = self._gather(p, np.array([_WELL, tag, float(values.size)]))
        failed = tuple(int(r) for r in np.flatnonzero(header[:, 0] != _WELL))
        if failed:
            self._closed = True
            interrupted = bool(np.any(header[:, 0] == _INTERRUPTED))
            what = "was interrupted" if interrupted else "failed"
            raise PartitionError(
                f"the gradient check {what} in process(es) {list(failed)} of {p.size}; see the "
                "error raised there",
                failed,
                interrupted,
            )
        if not np.array_equal(header[:, 1:], np.broadcast_to(header[0, 1:], header[:, 1:].shape)):
            self._closed = True
            raise PartitionError(
                "the processes' gradient checks went different ways (exchange, length per "
                f"process: {header[:, 1:].tolist()}): every process must check the same model on "
                "the same batch with the same options"
            )
        return self._gather(p, values)

    def _gather(self, p: Partition, values: np.ndarray) -> np.ndarray:
        sent = np.ascontiguousarray(values, dtype=np.float64)
        try:
            found = np.asarray(p.gather(sent), dtype=np.float64)
        except BaseException:
            self._closed = True  # the collective itself broke: nothing more can be said
            raise
        if found.shape != (p.size, sent.size):
            self._closed = True
            raise ValueError(
                f"`partition.gather` must return shape (size, len(x)) = {(p.size, sent.size)}; "
                f"got {found.shape}"
            )
        return found


@contextmanager
def exchanging(partition: Partition | None) -> Iterator[Exchange]:
    """The exchange of one check; an error in the body is announced to the other processes."""
    if partition is not None and not isinstance(partition, Partition):
        raise TypeError(f"`partition` must be None or a gradwatch.Partition; got {partition!r}")
    exchange = Exchange(partition)
    try:
        yield exchange
    except BaseException as err:
        exchange.abort(interrupted=not isinstance(err, Exception))
        raise


def _with_first_of_each_tensor(tensor: np.ndarray, share: np.ndarray) -> np.ndarray:
    """``share``'s positions and, before them, the first position of each tensor they touch
    where that is not in ``share`` (``tensor[i]``: the tensor of position i).

    ``ModuleCost`` picks how to evaluate a tensor (vectorized or by the plain loop) from the
    first component of it that it sees, and evaluates that one by the loop. Seeing the tensor's
    first checked component first, as a single process would, makes every process pick the same
    way, and so compute the numbers one process would (up to how a batched kernel rounds a
    different number of copies per call: a few ulps of J at most; equal in the tests).
    """
    kinds, first = np.unique(tensor, return_index=True)
    extra = first[np.isin(kinds, tensor[share]) & ~np.isin(first, share)]
    return np.union1d(extra, share).astype(np.int64)
