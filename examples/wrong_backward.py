"""A layer with a hand-written backward that has a bug: the gradient check fails and its worst
components point at that layer.

``HandWrittenLinear`` computes y = x Wᵀ + b with its own ``torch.autograd.Function``. Its backward
has a classic bug: the bias gradient *averages* the upstream gradient over the batch instead of
summing it. Training still runs (the bias just learns 64x slower), which is exactly why such bugs
survive; the check catches it at step 0.

The checks (at steps 0 and 10) are logged to TensorBoard under ``runs/wrong_backward``, so
``make tensorboard`` shows a failing check next to the digits demo's passing ones.

Run (``make wrong-backward`` does the first)::

    .venv/bin/python examples/wrong_backward.py          # fails and warns; training goes on
    .venv/bin/python examples/wrong_backward.py --raise  # on_fail="raise": fit stops, exits 1
    .venv/bin/python examples/wrong_backward.py --fixed  # the correct backward passes
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from digits import DigitsData, view_command
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F

from gradwatch.callbacks import GradientCheck, GradientCheckError


class LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b, with backprop written by hand (and, unless ``fixed``, wrong for b).

    Written in the ``setup_context`` style with ``generate_vmap_rule`` so that torch.func (and
    with it gradwatch's vectorized evaluation) can run it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, fixed: bool) -> Any:
        return x @ weight.T + bias

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, _, fixed = inputs
        ctx.save_for_backward(x, weight)
        ctx.fixed = fixed

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_out @ weight
        grad_weight = grad_out.T @ x
        # BUG: dJ/db sums over the batch; mean() divides it by the batch size.
        grad_bias = grad_out.sum(0) if ctx.fixed else grad_out.mean(0)
        return grad_x, grad_weight, grad_bias, None


class HandWrittenLinear(nn.Module):
    """``nn.Linear`` with the hand-written backward above."""

    def __init__(self, inputs: int, outputs: int, fixed: bool = False) -> None:
        super().__init__()
        self.fixed = fixed
        bound = 1 / math.sqrt(inputs)
        self.weight = nn.Parameter(torch.empty(outputs, inputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(outputs).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LinearFunction.apply(x, self.weight, self.bias, self.fixed)


class DigitsWithHandWrittenLayer(pl.LightningModule):
    """64 → 32 (hand-written backward) → 10 on the digits."""

    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.hidden = HandWrittenLinear(64, 32, fixed=fixed)
        self.out = nn.Linear(32, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(images)))

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val/accuracy", (self(images).argmax(1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def run(
    fixed: bool = False,
    on_fail: Literal["warn", "raise"] = "warn",
    max_steps: int = 20,
    log_dir: Path | None = Path("runs"),
) -> GradientCheck:
    """Trains with checks at steps 0 and 10, logged to TensorBoard under ``log_dir`` (None: no
    logs), and returns the callback (its reports)."""
    pl.seed_everything(0, verbose=False)
    check = GradientCheck(at_init=True, after_steps=[10], on_fail=on_fail)
    name = "fixed_backward" if fixed else "wrong_backward"
    trainer = pl.Trainer(
        max_steps=max_steps,
        logger=TensorBoardLogger(save_dir=log_dir, name=name) if log_dir is not None else False,
        callbacks=[check],
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(DigitsWithHandWrittenLayer(fixed=fixed), DigitsData(batch_size=64))
    return check


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the example; the exit status is 1 when ``--raise`` stopped fit, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raise", dest="raise_", action="store_true", help="on_fail='raise'")
    parser.add_argument("--fixed", action="store_true", help="use the correct backward")
    parser.add_argument("--log-dir", type=Path, default=Path("runs"), help="TensorBoard root")
    args = parser.parse_args(argv)
    try:
        check = run(args.fixed, "raise" if args.raise_ else "warn", log_dir=args.log_dir)
    except GradientCheckError as error:
        print(f"\nfit stopped at step {error.step}: GradientCheckError")
        differences = {n: r.difference for n, r in error.report.parameters.items()}
        print("per-parameter differences:", differences)
        return 1
    report = check.reports[0]
    print(f"\nverdict at step 0: {report.verdict.value}")
    print("worst components:", ", ".join(c.label for c in report.worst(3)))
    print(f"View the checks:  {view_command(args.log_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
