"""The small pieces of the vectorized evaluation: memory per call, graph uses, stock Linears."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch._vectorize as vectorize


def test_produced_bytes_counts_every_result() -> None:
    x = torch.ones(3, 4, dtype=torch.float64)
    assert vectorize.produced_bytes(lambda: torch.tanh(x @ x.T)) == 2 * 9 * 8


@pytest.mark.parametrize(
    ("per_copy", "budget", "copies"), [(1, 10, 10), (3, 10, 3), (100, 10, 1), (0, 10, 10)]
)
def test_copies_per_call(per_copy: int, budget: int, copies: int) -> None:
    assert vectorize.copies_per_call(per_copy, budget) == copies


def test_graph_uses_counts_tied_and_single_uses() -> None:
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    c = torch.ones(2, requires_grad=True)
    root = (a * b).sum() + F.linear(a, b.reshape(1, 2)).sum()
    assert vectorize.graph_uses(root, [a, b, c]) == [2, 2, 0]


@pytest.mark.parametrize(
    ("name", "owner"),
    [("0.weight", "weight"), ("0.bias", "bias"), ("1.weight", None), ("2.weight", None)],
)
def test_linear_owner_accepts_only_stock_linear_layers(name: str, owner: str | None) -> None:
    class Custom(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), Custom(2, 2))
    found = vectorize.linear_owner(model, name)
    assert (found[1] if found else None) == owner
