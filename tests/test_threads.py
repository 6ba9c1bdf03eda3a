"""The plain loop's thread count: measured, chosen, always put back; ± pairs on one count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.common.user_state import cast_batch
from gradwatch.evaluation import threads as _threads
from gradwatch.evaluation.cost import ModuleCost
from gradwatch.evaluation.threads import ThreadChoice, pair_units, torch_threads
from tests.nets import classification_batch, cross_entropy


def _fed(choice: ThreadChoice, seconds: dict[int, list[float]]) -> ThreadChoice:
    for count, times in seconds.items():
        for s in times:
            choice.record(count, s)
    return choice


@pytest.mark.parametrize(
    ("seconds", "chosen"),
    [
        ({1: [1.0, 1.1, 0.9], 2: [0.6, 0.5, 0.7]}, 2),  # threads pay: the user's count
        ({1: [1.0, 1.1, 0.9], 2: [1.2, 1.3, 1.1]}, 1),  # small operations: one thread
        ({1: [1.0, 1.1], 2: [0.6, 0.5]}, None),  # still measuring
        ({1: [1.0], 2: [3.0]}, None),  # one slow sample may be a burst of load
        ({1: [1.0, 1.0], 2: [3.0, 2.5]}, 1),  # two are not
        ({1: [1.0], 2: [30.0]}, 1),  # one sample each suffices when the gap is this wide
    ],
)
def test_the_faster_count_is_chosen(seconds: dict[int, list[float]], chosen: int | None) -> None:
    assert _fed(ThreadChoice(user=2), seconds).chosen == chosen


def test_one_user_thread_leaves_nothing_to_choose() -> None:
    choice = ThreadChoice(user=1)
    assert choice.chosen == 1 and choice.next() == 1 and choice.batched() == 1
    assert choice.describe() is None


def test_batched_calls_move_to_one_thread_only_under_contention() -> None:
    close = _fed(ThreadChoice(user=4), {1: [1.0, 1.0, 1.0], 4: [1.2, 1.2, 1.2]})
    fought = _fed(ThreadChoice(user=4), {1: [1.0, 1.0], 4: [5.0, 5.0]})
    assert (close.chosen, close.batched()) == (1, 4)
    assert (fought.chosen, fought.batched()) == (1, 1)
    assert "plain and batched evaluations on 1 thread" in str(fought.describe())


def test_units_alternate_counts_and_each_runs_on_one() -> None:
    seen: dict[int, int] = {}

    def evaluate(k: int) -> float:
        seen[k] = torch.get_num_threads()
        return float(k)

    before = torch.get_num_threads()
    out = ThreadChoice(user=2).run(pair_units(8), evaluate)
    assert out.tolist() == [float(k) for k in range(8)]
    assert [seen[k] for k in range(4)] == [1, 1, 2, 2]  # one thread first, then the user's
    assert all(seen[k] == seen[k + 1] for k in range(0, 8, 2))  # a pair on one count
    assert torch.get_num_threads() == before


def test_the_users_count_is_back_when_an_evaluation_raises() -> None:
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="broken"), torch_threads(before + 1):
        raise ValueError("broken")
    assert torch.get_num_threads() == before


def test_a_loop_whose_loss_raises_puts_the_thread_count_back() -> None:
    torch.set_num_threads(2)
    try:
        calls = {"n": 0}

        def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] > 3:
                raise RuntimeError("the user's loss broke")
            return cross_entropy(model, batch)

        model = nn.Sequential(nn.Linear(3, 2)).double()
        batch = cast_batch(
            classification_batch((3,), classes=2), torch.float64, torch.device("cpu")
        )
        cost = ModuleCost(model, loss, batch, ["0.weight"], torch.float64, 0, vectorize=False)
        with pytest.raises(RuntimeError, match="loss broke"):
            cost.pairs(np.zeros(3, dtype=np.int64), np.arange(3), np.full(3, 1e-7))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)


@pytest.mark.parametrize(
    ("count", "stride", "units"),
    [(4, 1, [[0, 1], [2, 3]]), (3, 1, [[0, 1], [2]]), (6, 3, [[0, 3], [1, 4], [2, 5]])],
)
def test_pair_units(count: int, stride: int, units: list[list[int]]) -> None:
    assert pair_units(count, stride) == units


def test_samples_constant_bounds_the_measuring() -> None:
    choice = ThreadChoice(user=2)
    for _ in range(_threads.SAMPLES):
        choice.record(1, 1.0)
        choice.record(2, 1.5)
    assert choice.chosen == 1
