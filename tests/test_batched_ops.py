"""Inside batched calls, cross-entropy and the negative log-likelihood of class labels are computed
from gather: the same values as PyTorch's, without its decomposition (and its imports)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from torch.func import vmap
from torch.nn import functional as F

from gradwatch.evaluation.batched_ops import BatchedOps, nll


def _logits(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


TARGET = torch.tensor([0, 4, -100, 2, 2, 1])
OPTIONS: dict[str, dict[str, Any]] = {
    "mean": {},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "weight": {"weight": torch.linspace(0.5, 2.0, 5, dtype=torch.float64)},
    "weight_sum": {"weight": torch.linspace(0.5, 2.0, 5, dtype=torch.float64), "reduction": "sum"},
    "ignore_index": {"ignore_index": 2},
    "label_smoothing": {"label_smoothing": 0.1},  # not covered: PyTorch's own
}


LOSSES = [(F.cross_entropy, o) for o in OPTIONS] + [
    (F.nll_loss, o)
    for o in OPTIONS
    if o != "label_smoothing"  # nll_loss has none
]


@pytest.mark.parametrize(("loss", "option"), LOSSES, ids=[f"{f.__name__}-{o}" for f, o in LOSSES])
def test_batched_losses_match_pytorch(loss: Any, option: str) -> None:
    target = TARGET if option != "ignore_index" else TARGET.clamp(min=0)
    copies = _logits(3, 6, 5)
    if loss is F.nll_loss:
        copies = copies.log_softmax(-1)
    with BatchedOps():
        found = vmap(lambda x: loss(x, target, **OPTIONS[option]))(copies)
    expected = torch.stack([loss(x, target, **OPTIONS[option]) for x in copies])
    torch.testing.assert_close(found, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    ("shape", "target"),
    [((5,), torch.tensor(3)), ((2, 5, 3, 3), torch.randint(0, 5, (2, 3, 3)))],
    ids=["one_example", "per_pixel"],
)
def test_other_shapes_match_pytorch(shape: tuple[int, ...], target: torch.Tensor) -> None:
    copies = _logits(3, *shape)
    with BatchedOps():
        found = vmap(lambda x: F.cross_entropy(x, target))(copies)
    expected = torch.stack([F.cross_entropy(x, target) for x in copies])
    torch.testing.assert_close(found, expected, rtol=1e-14, atol=0)


def test_class_probabilities_are_left_to_pytorch() -> None:
    probabilities = _logits(6, 5).softmax(-1)
    with BatchedOps():
        found = vmap(lambda x: F.cross_entropy(x, probabilities))(_logits(3, 6, 5))
    expected = torch.stack([F.cross_entropy(x, probabilities) for x in _logits(3, 6, 5)])
    torch.testing.assert_close(found, expected, rtol=1e-14, atol=0)


def test_nll_of_an_ignored_batch_is_nan_like_pytorch() -> None:
    log_p = _logits(2, 3).log_softmax(-1)
    target = torch.tensor([-100, -100])
    assert nll(log_p, target).isnan() and F.nll_loss(log_p, target).isnan()


_FRESH = """
import sys, torch
from torch import nn
from torch.nn import functional as F
model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                      nn.Linear(8, 3))
x, y = torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,))
F.cross_entropy(model(x), y).backward()
import gradwatch
gradwatch.check_module(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), (x, y))
print(sorted(m for m in ("torch._dynamo", "torch.fx.experimental.symbolic_shapes", "sympy")
             if m in sys.modules))
"""


def test_a_first_check_imports_neither_dynamo_nor_sympy() -> None:
    """The first check's import tax (1.2 s for torch._dynamo, 0.4 s for sympy's shapes module,
    against a whole check of ~1 s): gone, in a fresh process."""
    found = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip().splitlines()[-1] == "[]"
