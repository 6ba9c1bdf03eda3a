"""A perturbed nn.Linear entry is carried as a column through elementwise layers, and anything
else that touches the shared tensor gets the true batched values."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch._C._functorch import is_batchedtensor
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from gradwatch.evaluation.lowrank import LowRankShift


class TanhSpy(TorchFunctionMode):
    """Records, for each torch.tanh call, whether its input was batched under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.batched: list[bool] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func is torch.tanh:
            self.batched.append(bool(is_batchedtensor(args[0])))
        return func(*args, **(kwargs or {}))


class Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.act, self.out = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x))
        return torch.tanh(self.out(h) + h.flip(-1))


def _shifted(model: nn.Module, name: str, index: torch.Tensor, step: float) -> tuple[Any, Any]:
    """J per copy through the low-rank path, and the same with the entries really moved."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64)
    owner, _, kind = name.rpartition(".")
    shift = LowRankShift(kind)
    spy = TanhSpy()
    columns = model.get_parameter(name).shape[-1] if kind == "weight" else 1

    def one(delta: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        shift.step, shift.row, shift.col = delta, row, col
        with spy, shift.active():
            return model(x).square().sum()

    handle = model.get_submodule(owner).register_forward_hook(shift)
    try:
        steps = torch.full(index.shape, step, dtype=torch.float64)
        found = vmap(one)(steps, index // columns, index % columns)
    finally:
        handle.remove()
    expected = []
    for i in index:
        moved = model.get_parameter(name).detach().clone()
        moved.view(-1)[i] += step
        expected.append(functional_call(model, {name: moved}, (x,)).square().sum())
    assert shift.calls == 1
    return found, torch.stack(expected), spy.batched


@pytest.mark.parametrize("name", ["0.weight", "0.bias", "2.weight", "2.bias"])
def test_shift_equals_moving_the_entry(name: str) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh()).double()
    found, expected, _ = _shifted(model, name, torch.tensor([0, 1, 1]), 1e-3)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-15)


def test_the_tanh_after_the_layer_runs_once_for_all_copies() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh()).double()
    *_, batched = _shifted(model, "0.weight", torch.tensor([0, 5, 11]), 1e-3)
    # shared hidden layer, then the perturbed column alone, then the batched output layer
    assert batched == [False, True, True]


def test_other_uses_of_the_shared_tensor_see_the_batched_values() -> None:
    torch.manual_seed(1)
    found, expected, _ = _shifted(Skip().double(), "inp.weight", torch.tensor([0, 4, 7]), 1e-3)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-15)
