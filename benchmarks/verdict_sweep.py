"""Verdicts over seeds: planted bugs must fail, correct models must not.

    .venv/bin/python benchmarks/verdict_sweep.py [--seeds 5]

Each model is checked on 32 digits (sklearn's ``load_digits``) for every seed, at ε = 1e-7 and
at ``epsilon="auto"``. One letter per check: ``p`` pass, ``w`` warn, ``f`` fail, ``n`` not
judged; then ``i`` when the message says inconclusive, ``s`` when some component disagrees,
``k`` when the step of some crossed a kink. For each ``bug:`` row, the
recall of ``mode="directions"`` follows: the share of the tensors the bug corrupts (their
autograd gradient differs from the correct model's) that it finds failing.

tests/test_verdict_sweep.py asserts it: every ``bug:`` check fails, and so does every tensor
it corrupts; no ``correct:`` check fails; directions find at least 9 in 10 corrupted tensors.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

import gradwatch


class _Backward(torch.autograd.Function):
    """Identity-shaped layers whose backward is planted with a bug (``rule``)."""

    generate_vmap_rule = True  # the check evaluates many perturbed copies at once

    @staticmethod
    def forward(x: torch.Tensor, rule: str) -> torch.Tensor:
        if rule == "leaky":
            return F.leaky_relu(x, 0.1)
        if rule == "relu":
            return x.clamp(min=0)
        return x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.rule = inputs[1]

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


def _deep(*top: nn.Module) -> nn.Module:
    """Six Linear-BatchNorm-Tanh layers: a bug at the top corrupts 18 tensors below it."""
    layers: list[nn.Module] = [nn.Linear(64, 24), nn.BatchNorm1d(24), nn.Tanh()]
    for _ in range(5):
        layers += [nn.Linear(24, 24), nn.BatchNorm1d(24), nn.Tanh()]
    return nn.Sequential(*layers, *top, nn.Linear(24, 10))


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
    "bug: 1.05x atop 6 BN layers": lambda: _deep(Planted("1.05")),
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
    "correct: 6 BN layers": _deep,
}


# Keywords for check_module per model: the transformer (2.4k parameters, each evaluation a full
# attention over 32 sequences) is checked on a sample spread over every tensor.
OPTIONS: dict[str, dict[str, Any]] = {"correct: transformer": {"sample": 600}}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 32 digits, pixels in [0, 1], and their labels."""
    digits = load_digits()
    x = torch.tensor(digits.data[:32], dtype=torch.float32) / 16
    return x, torch.tensor(digits.target[:32])


def loss(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(b[0]), b[1])


def corrupted_by(planted: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> set[str]:
    """The tensors whose autograd gradient a planted bug changes: the planted model's gradient
    against the same model with every ``Planted`` layer replaced by its correct forward."""
    correct = copy.deepcopy(planted)
    for name, module in list(correct.named_modules()):
        if isinstance(module, Planted):
            parent, _, child = name.rpartition(".")
            fixed = {"leaky": nn.LeakyReLU(0.1), "relu": nn.ReLU()}.get(module.rule, nn.Identity())
            setattr(correct.get_submodule(parent), child, fixed)
    grads = [_gradient(m, b) for m in (correct, planted)]
    # A gradient that is zero by construction (a bias before BatchNorm) is rounding noise, which
    # the bug rescales: it differs only far below the gradient's scale, and is not corrupted.
    scale = float(torch.cat([g.reshape(-1) for g in grads[0].values()]).norm())
    return {
        n for n, g in grads[0].items()
        if float((grads[1][n] - g).norm()) > max(1e-6 * float(g.norm() + grads[1][n].norm()),
                                                 1e-10 * scale)
    }  # fmt: skip


def _gradient(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    copied = copy.deepcopy(model).double()
    for m in copied.modules():  # as the check: dropout layers off, the rest in its mode
        if isinstance(m, nn.Dropout):
            m.eval()
    named = dict(copied.named_parameters())
    cost = loss(copied, (b[0].double(), b[1]))
    return dict(zip(named, torch.autograd.grad(cost, list(named.values())), strict=True))


def found_failing(report: gradwatch.GradCheckReport) -> set[str]:
    """The tensors whose own verdict is fail."""
    return {n for n, r in report.parameters.items() if r.verdict.value == "fail"}


def _letters(report: gradwatch.GradCheckReport) -> str:
    return (
        {"not judged": "n"}.get(report.verdict.value, report.verdict.value[0])
        + ("i" if "inconclusive" in report.message else "")
        + ("s" if report.reading_counts["disagrees"] else "")
        + ("k" if report.kink_count else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    seeds = parser.parse_args().seeds
    data = batch()
    print(f"{'model':28s} per seed: epsilon 1e-7, then 'auto'; directions recall")
    for name, build in MODELS.items():
        row, hit, total = [], 0, 0
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = build()
            for epsilon in (1e-7, "auto"):
                options = OPTIONS.get(name, {})
                report = gradwatch.check_module(model, loss, data, epsilon=epsilon, **options)
                row.append(_letters(report))
            reach = corrupted_by(model, data) if name.startswith("bug:") else set()
            for epsilon in (1e-7, "auto") if reach else ():
                found = gradwatch.check_module(
                    model, loss, data, epsilon=epsilon, mode="directions"
                )
                hit, total = hit + len(reach & found_failing(found)), total + len(reach)
        recall = f"  {hit}/{total}" if total else ""
        print(f"{name:28s} {' '.join(row)}{recall}", flush=True)


if __name__ == "__main__":
    main()
