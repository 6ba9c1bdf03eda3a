"""Small nets with graded planted bugs for the power tests and ``benchmarks/power.py``: a 64-8-10
tanh MLP on 8 digits, with a scalar ``s`` whose gradient is small (it scales a 3e-3 term), and a
backward that can be wrong by 1% or 0.1% of one tensor, in one row, or by a sign flip of ``s``.
J at three scales: the mean cross-entropy, 1e5 times it, and 3e5 plus it (a large constant part).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

DIGITS = load_digits()

# bug → the parameter it corrupts (``none``: the correct twin).
BUGS = {
    "none": "head.weight",
    "1%": "head.weight",
    "0.1%": "head.weight",
    "row": "inp.weight",
    "flip": "s",
}
SCALES = ("1", "1e5", "3e5+")

Batch = tuple[torch.Tensor, torch.Tensor]


class _Wrong(torch.autograd.Function):
    """The identity whose backward is wrong as ``kind`` says."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, kind: str) -> torch.Tensor:
        ctx.kind = kind
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.kind == "1%":
            return grad * 1.01, None
        if ctx.kind == "0.1%":
            return grad * 1.001, None
        if ctx.kind == "row":  # the first row's gradient 5% too large
            grad = grad.clone()
            grad[0] = grad[0] * 1.05
            return grad, None
        return -grad, None  # "flip"


class PowerNet(nn.Module):
    """inp (64→8) → tanh → head (8→10), plus 3e-3·s·x[:, :10] on the logits."""

    def __init__(self, bug: str = "none") -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(64, 8), nn.Linear(8, 10)
        self.s = nn.Parameter(torch.zeros(()))
        self.bug = bug

    def _p(self, name: str, t: torch.Tensor) -> torch.Tensor:
        return _Wrong.apply(t, self.bug) if self.bug != "none" and BUGS[self.bug] == name else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(
            nn.functional.linear(x, self._p("inp.weight", self.inp.weight), self.inp.bias)
        )
        z = nn.functional.linear(h, self._p("head.weight", self.head.weight), self.head.bias)
        return z + 3e-3 * self._p("s", self.s) * x[:, :10]


def batch(seed: int) -> Batch:
    """8 digits drawn by ``seed``."""
    pick = np.random.default_rng(seed).choice(len(DIGITS.target), 8, replace=False)
    x = torch.tensor(DIGITS.images[pick].reshape(8, -1) / 16.0, dtype=torch.float32)
    return x, torch.tensor(DIGITS.target[pick])


def loss_at(scale: str) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """J at one of ``SCALES``."""

    def loss(model: nn.Module, b: Batch) -> torch.Tensor:
        ce = nn.functional.cross_entropy(model(b[0]), b[1])
        return {"1": ce, "1e5": 1e5 * ce, "3e5+": 3e5 + ce}[scale]

    return loss


def build(seed: int, trained: bool, bug: str = "none") -> PowerNet:
    """The net at random init (``seed``), or after 20 SGD steps on other digits."""
    torch.manual_seed(seed)
    model = PowerNet()
    if trained:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(20):
            opt.zero_grad()
            loss_at("1")(model, batch(100 + step)).backward()
            opt.step()
    model.bug = bug
    return model
