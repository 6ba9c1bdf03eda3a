"""The small pieces of the vectorized evaluation: memory per copy and per call, graph uses, stock
Linears, the statistics a batched evaluation leaves out, out-of-memory errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch.evaluation.vectorized as vectorize


def test_saved_bytes_counts_activations_once_and_leaves_out_the_given_tensors() -> None:
    w = torch.ones(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.ones(3, 4, dtype=torch.float64)
    h = torch.tanh(x @ w)  # matmul saves x (w's gradient needs it); tanh saves its output h
    root = (h * h).sum()  # saves h twice: one storage
    assert vectorize.saved_bytes(root, exclude=[w, x]) == 3 * 4 * 8
    assert vectorize.saved_bytes(root) == (3 * 4 + 3 * 4) * 8


def test_saved_bytes_reads_custom_functions() -> None:
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(t)
            return t * t

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            return 2 * ctx.saved_tensors[0] * grad

    w = torch.ones(5, dtype=torch.float64, requires_grad=True)
    h = torch.exp(w)  # saves its output h, which the Function saves too: one storage
    assert vectorize.saved_bytes(Square.apply(h).sum(), exclude=[w]) == 5 * 8


@pytest.mark.parametrize(
    ("per_copy", "budget", "copies"),
    [
        (1 << 10, 1 << 30, vectorize.CHUNK_BYTES >> 10),  # small copies: fill CHUNK_BYTES
        (8 << 20, 1 << 30, vectorize.MIN_COPIES),  # large copies: at least MIN_COPIES
        (8 << 20, 32 << 20, 4),  # ... within the budget
        (100, 10, 1),  # one copy per call, even over budget
        (0, 10, 10),
    ],
)
def test_copies_per_call(per_copy: int, budget: int, copies: int) -> None:
    assert vectorize.copies_per_call(per_copy, budget) == copies


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't "
                      "allocate memory: you tried to allocate 8589934592 bytes."), True),
        (MemoryError(), True),
        (RuntimeError("vmap: It looks like you're calling .item() on a Tensor"), False),
        (ValueError("out of memory"), False),
    ],
)  # fmt: skip
def test_out_of_memory(error: BaseException, expected: bool) -> None:
    assert vectorize.out_of_memory(error) is expected


def test_unread_statistics_are_those_of_batchnorm_in_training() -> None:
    class OwnNorm(nn.BatchNorm1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(
        nn.BatchNorm1d(2), nn.BatchNorm1d(2).eval(), nn.BatchNorm1d(2, track_running_stats=False),
        OwnNorm(2), nn.BatchNorm2d(2),
    )  # fmt: skip
    assert vectorize.unread_statistics(model) == {
        f"{k}.{b}" for k in (0, 4) for b in ("running_mean", "running_var", "num_batches_tracked")
    }


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


def test_attention_output_projection_has_no_owner_that_runs() -> None:
    model = nn.Sequential(nn.MultiheadAttention(4, 2))
    assert vectorize.linear_owner(model, "0.out_proj.weight") is None
    assert vectorize.linear_owner(model, "0.in_proj_weight") is None
