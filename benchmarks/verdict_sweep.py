"""Verdicts over seeds: planted bugs must fail, correct models must not.

    .venv/bin/python benchmarks/verdict_sweep.py [--seeds 5]

Each model is checked on 32 digits (sklearn's ``load_digits``) for every seed, at ε = 1e-7 and
at ``epsilon="auto"``. One letter per check: ``p`` pass, ``w`` warn, ``f`` fail; then ``i``
when the message says inconclusive, ``s`` when some component is suspicious, ``k`` when some
sit on a kink many examples share. Expected: every ``bug:`` row all ``f``; no ``f`` in a
``correct:`` row (a ``w`` at 1e-7 reads "consistent with correct gradients"). Not part of the
test suite: about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

import gradwatch


class _Backward(torch.autograd.Function):
    """Identity-shaped layers whose backward is planted with a bug (``ctx.rule``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.rule = rule
        if rule == "leaky":
            return F.leaky_relu(x, 0.1)
        if rule == "relu":
            return x.clamp(min=0)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        if ctx.rule == "leaky":  # slope 0.2 where the forward uses 0.1
            return grad * torch.where(x > 0, 1.0, 0.2).to(grad), None
        if ctx.rule == "relu":  # -0.05 where x < 0, where the true slope is 0
            return grad * torch.where(x > 0, 1.0, -0.05).to(grad), None
        return grad * float(ctx.rule), None  # a scale, e.g. "1.01"


class Planted(nn.Module):
    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Backward.apply(x, self.rule)


class Tokens(nn.Module):
    """Digits as 8 tokens of 8 features through one transformer encoder layer."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 10)
        self.block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.inp(x.view(-1, 8, 8))).mean(1))


class Rows(nn.Module):
    """Digits as 8 rows through an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.out = nn.LSTM(8, 12, batch_first=True), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x.view(-1, 8, 8))[0][:, -1])


def _cnn(*middle: nn.Module) -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), *middle, nn.BatchNorm2d(4),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


MODELS: dict[str, Callable[[], nn.Module]] = {
    "bug: leaky-ReLU slope": lambda: nn.Sequential(
        nn.Linear(64, 32), Planted("leaky"), nn.Linear(32, 10)
    ),
    "bug: ReLU where x < 0": lambda: nn.Sequential(
        nn.Linear(64, 32), Planted("relu"), nn.Linear(32, 10)
    ),
    "bug: 1.01x on a layer": lambda: nn.Sequential(
        nn.Linear(64, 32), Planted("1.01"), nn.Tanh(), nn.Linear(32, 10)
    ),
    "bug: 1.1x on a conv": lambda: _cnn(Planted("1.1")),
    "correct: CNN, BN, max-pool": _cnn,
    "correct: MLP, BN, dropout": lambda: nn.Sequential(
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
    ),
    "correct: LayerNorm, GELU": lambda: nn.Sequential(
        nn.Linear(64, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 10)
    ),
    "correct: LeakyReLU": lambda: nn.Sequential(
        nn.Linear(64, 32), nn.LeakyReLU(0.1), nn.Linear(32, 10)
    ),
    "correct: transformer": Tokens,
    "correct: LSTM": Rows,
}


def _letters(report: gradwatch.GradCheckReport) -> str:
    return (
        report.verdict.value[0]
        + ("i" if "inconclusive" in report.message else "")
        + ("s" if report.flagged_count else "")
        + ("k" if report.off_slope_count else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    seeds = parser.parse_args().seeds
    digits = load_digits()
    batch = (
        torch.tensor(digits.data[:32], dtype=torch.float32) / 16,
        torch.tensor(digits.target[:32]),
    )

    def loss(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(b[0]), b[1])

    print(f"{'model':28s} per seed: epsilon 1e-7, then 'auto'")
    for name, build in MODELS.items():
        row = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = build()
            for epsilon in (1e-7, "auto"):
                report = gradwatch.check_module(model, loss, batch, epsilon=epsilon)
                row.append(_letters(report))
        print(f"{name:28s} {' '.join(row)}", flush=True)


if __name__ == "__main__":
    main()
