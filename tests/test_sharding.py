"""A check split over processes (``check_module(..., partition=...)``), without Lightning: the
processes are threads here, each with its own copy of the model, and ``gather`` meets them at a
barrier. The split check must give exactly the one-process report, and a process whose part
raises must stop every process instead of leaving one waiting."""

from __future__ import annotations

import copy
import random
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch import GradCheckReport, Partition, PartitionError, check_module
from gradwatch.partition import _with_first_of_each_tensor
from tests.nets import GatedNet, classification_batch, cnn, cross_entropy, mlp

LossFn = Callable[[nn.Module, Any], torch.Tensor]
# A protocol bug shows as a broken barrier after this long, never as a hung test.
WAIT_S = 30.0


@contextmanager
def _rng_kept() -> Iterator[None]:
    # Each simulated process saves and restores the global RNGs around its check; interleaved
    # in threads, the last restore would win. Keep the test's own state instead.
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def split_check(
    size: int,
    model: nn.Module,
    loss_for: Callable[[int], LossFn],
    batches: list[Any],
    **options: Any,
) -> list[GradCheckReport | BaseException]:
    """``check_module`` in ``size`` threads, one model copy each; each one's report or error."""
    barrier = threading.Barrier(size, timeout=WAIT_S)
    sent: list[np.ndarray] = [np.zeros(0)] * size
    outcome: list[GradCheckReport | BaseException] = [RuntimeError("did not run")] * size

    def gather_of(rank: int) -> Callable[[np.ndarray], np.ndarray]:
        def gather(values: np.ndarray) -> np.ndarray:
            sent[rank] = values.copy()
            barrier.wait()
            rows = np.stack(sent)
            barrier.wait()
            return rows

        return gather

    def run(rank: int) -> None:
        partition = Partition(rank, size, gather_of(rank))
        try:
            outcome[rank] = check_module(
                copy.deepcopy(model), loss_for(rank), batches[rank], partition=partition, **options
            )
        except BaseException as err:  # KeyboardInterrupt included: it is one of the cases
            outcome[rank] = err

    with _rng_kept():
        threads = [threading.Thread(target=run, args=(rank,)) for rank in range(size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return outcome


def _same_loss(loss: LossFn) -> Callable[[int], LossFn]:
    return lambda rank: loss


def _reports(outcome: list[GradCheckReport | BaseException]) -> list[GradCheckReport]:
    for item in outcome:
        if isinstance(item, BaseException):
            raise item
    return outcome  # type: ignore[return-value]


# -- the share of each process -----------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("count", [0, 1, 4, 7, 83])
def test_shares_cover_everything_once_and_differ_by_at_most_one(count: int, size: int) -> None:
    partition = Partition(0, size, lambda x: np.stack([x] * size))
    shares = [partition.share(count, rank) for rank in range(size)]
    assert np.array_equal(np.sort(np.concatenate(shares)), np.arange(count))
    lengths = [share.size for share in shares]
    assert max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize(
    ("share", "expected"),
    [([0, 2, 4, 6], [0, 2, 3, 4, 5, 6]), ([1, 3, 5, 7], [0, 1, 3, 5, 7]), ([4, 5], [3, 4, 5])],
)
def test_a_share_also_evaluates_the_first_component_of_each_tensor_it_touches(
    share: list[int], expected: list[int]
) -> None:
    # Components of tensors 0, 0, 0, 1, 1, 2, 2, 2: the tensors start at 0, 3 and 5.
    tensor = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    assert _with_first_of_each_tensor(tensor, np.array(share)).tolist() == expected


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"rank": 2, "size": 2}, ValueError, "got rank=2, size=2"),
        ({"rank": 0, "size": 0}, ValueError, "got rank=0, size=0"),
        ({"rank": -1, "size": 2}, ValueError, "got rank=-1, size=2"),
        ({"rank": "0", "size": 2}, TypeError, "`partition.rank` must be an int; got '0'"),
        ({"rank": 0, "size": 2.0}, TypeError, "`partition.size` must be an int; got 2.0"),
        ({"rank": 0, "size": 2, "gather": None}, TypeError, "must be a callable; got None"),
    ],
)
def test_bad_partitions_are_refused(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments.setdefault("gather", lambda x: x[None])
    with pytest.raises(error, match=re.escape(message)):
        Partition(**arguments)


def test_partition_must_be_a_partition() -> None:
    model = mlp()
    with pytest.raises(TypeError, match=r"`partition` must be None or a gradwatch.Partition; got"):
        check_module(model, cross_entropy, classification_batch((4,)), partition=(0, 2))  # type: ignore[arg-type]


# -- the split check is the one-process check --------------------------------------------------


def _hinge_at_zero() -> tuple[nn.Module, LossFn]:
    """A hinge penalty on a weight with exact zeros: kinks whose confirmation (by halved steps)
    is shared by the processes too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[0].weight[::2] = 0.0

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return cross_entropy(m, batch) + 0.1 * torch.relu(m[0].weight).sum()

    return model, loss


CASES: dict[str, Callable[[], tuple[nn.Module, LossFn, Any]]] = {
    "mlp-batchnorm": lambda: (mlp(), cross_entropy, classification_batch((4,))),
    "cnn": lambda: (cnn(), cross_entropy, classification_batch((1, 6, 6))),
    "wrong-backward": lambda: (
        GatedNet("missing_term"),
        cross_entropy,
        classification_batch((3,), 2),
    ),
    "kinks": lambda: (*_hinge_at_zero(), classification_batch((4,))),
}


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_a_split_check_gives_exactly_the_one_process_report_in_every_process(
    case: str, size: int
) -> None:
    model, loss, batch = CASES[case]()
    alone = check_module(copy.deepcopy(model), loss, batch)
    reports = _reports(split_check(size, model, _same_loss(loss), [batch] * size))
    for report in reports:
        assert np.array_equal(report.numeric, alone.numeric)  # bit for bit
        assert np.array_equal(report.analytic, alone.analytic)
        assert abs(report.difference - alone.difference) <= 1e-12
        assert np.array_equal(report.kinks, alone.kinks)
        assert np.array_equal(report.readings, alone.readings)
        assert np.array_equal(report.rechecks, alone.rechecks)
        assert report.verdict is alone.verdict
        assert [c.label for c in report.worst(3)] == [c.label for c in alone.worst(3)]
        # The same report everywhere (to_dict() keeps NaN as a float: NaN equal to NaN).
        np.testing.assert_equal(report.to_dict(), reports[0].to_dict())
    if case == "kinks":
        assert alone.kink_count > 0


def test_each_process_evaluates_its_share() -> None:
    model, loss, batch = CASES["cnn"]()
    alone = check_module(copy.deepcopy(model), loss, batch)
    report = _reports(split_check(2, model, _same_loss(loss), [batch] * 2))[0]
    (note,) = [n for n in report.notes if n.startswith("split over 2 processes")]
    counts = [int(c) for c in note.split("evaluations per process: ")[1].split(", ")]
    assert report.evaluations == sum(counts)
    # Half of the pairs each, plus J(θ), the gradient and one component per tensor to decide how
    # to evaluate it (the first of the tensor a share begins inside); the probes (4 per direction)
    # that measure J's noise run in every process.
    probes = report.j_noise.directions * 4
    assert all(count - probes < 0.6 * (alone.evaluations - probes) for count in counts)


def test_directions_mode_split() -> None:
    model, loss, batch = CASES["wrong-backward"]()
    alone = check_module(copy.deepcopy(model), loss, batch, mode="directions")
    for report in _reports(split_check(2, model, _same_loss(loss), [batch] * 2, mode="directions")):
        assert np.array_equal(report.indices, alone.indices)
        assert np.array_equal(report.numeric, alone.numeric)
        assert report.verdict is alone.verdict


def test_a_partition_of_one_process_is_the_plain_check() -> None:
    model, loss, batch = CASES["cnn"]()
    alone = check_module(copy.deepcopy(model), loss, batch)
    (report,) = _reports(split_check(1, model, _same_loss(loss), [batch]))
    assert np.array_equal(report.numeric, alone.numeric)
    assert report.notes == alone.notes


# -- no process waits forever ------------------------------------------------------------------


def _failing_in(process: int, from_call: int, error: BaseException) -> Callable[[int], LossFn]:
    """J that raises ``error`` in ``process`` from its ``from_call``-th call on."""

    def loss_for(rank: int) -> LossFn:
        calls = [0]

        def loss(model: nn.Module, batch: Any) -> torch.Tensor:
            calls[0] += 1
            if rank == process and calls[0] >= from_call:
                raise error
            return cross_entropy(model, batch)

        return loss

    return loss_for


@pytest.mark.parametrize(
    "error",
    [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), KeyboardInterrupt()],
    ids=["oom", "keyboard-interrupt"],
)
@pytest.mark.parametrize("from_call", [1, 2, 4, 9])  # gradient, J(θ), the pairs, later chunks
def test_a_process_that_raises_stops_every_process(from_call: int, error: BaseException) -> None:
    model, _, batch = CASES["mlp-batchnorm"]()
    before = copy.deepcopy(model.state_dict())
    outcome = split_check(2, model, _failing_in(1, from_call, error), [batch] * 2)
    assert outcome[1] is error
    assert isinstance(outcome[0], PartitionError)
    assert outcome[0].failed == (1,)
    interrupted = isinstance(error, KeyboardInterrupt)
    assert outcome[0].interrupted is interrupted
    what = "was interrupted" if interrupted else "failed"
    assert str(outcome[0]) == (
        f"the gradient check {what} in process(es) [1] of 2; see the error raised there"
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_every_process_that_raised_is_named() -> None:
    model, loss, batch = CASES["mlp-batchnorm"]()

    def loss_for(rank: int) -> LossFn:
        return loss if rank == 0 else _failing_in(rank, 2 + rank, ValueError(f"in {rank}"))(rank)

    outcome = split_check(3, model, loss_for, [batch] * 3)
    assert [str(o) for o in outcome[1:]] == ["in 1", "in 2"]
    assert isinstance(outcome[0], PartitionError) and outcome[0].failed == (1, 2)


def test_processes_checking_different_batches_stop_together() -> None:
    model, loss, batch = CASES["mlp-batchnorm"]()
    other = (batch[0] + 1.0, batch[1])
    outcome = split_check(2, model, _same_loss(loss), [batch, other])
    for item in outcome:
        assert isinstance(item, PartitionError)
        assert "J(θ) differs between processes" in str(item)
        assert str(item).endswith("every process must check the same model on the same batch")


def test_a_gather_of_the_wrong_shape_is_named() -> None:
    model, loss, batch = CASES["mlp-batchnorm"]()
    partition = Partition(0, 2, lambda x: x[None])
    with pytest.raises(
        ValueError,
        match=re.escape("`partition.gather` must return shape (size, len(x)) = (2, 3); got (1, 3)"),
    ):
        check_module(model, loss, batch, partition=partition)


def test_more_processes_than_components() -> None:
    model, loss, batch = CASES["mlp-batchnorm"]()
    alone = check_module(copy.deepcopy(model), loss, batch, sample=2)
    for report in _reports(split_check(3, model, _same_loss(loss), [batch] * 3, sample=2)):
        assert np.array_equal(report.numeric, alone.numeric)  # process 2 had nothing to do
