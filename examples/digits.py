"""A digits classifier trained with gradient checks at initialization and after N steps.

The README's main demo (``make demo``): scikit-learn's 8x8 handwritten digits (1,797 images,
shipped with scikit-learn, no download), a small MLP with dropout and an L2 term in its loss,
trained a few hundred Adam steps by a ``pytorch_lightning.Trainer`` with
:class:`gradwatch.callbacks.GradientCheck`. It prints each check's summary and the command that
opens the TensorBoard logs.

Run (``make demo`` does the first)::

    .venv/bin/python examples/digits.py          # checks at steps 0, 100 and 250 of 300
    .venv/bin/python examples/digits.py --help
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split

from gradwatch.callbacks import GradientCheck

# Lightning's advice for big data loaders (not for 1,797 tiny images in memory), and a deprecation
# inside Lightning itself: noise in a demo.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")


class DigitsData(pl.LightningDataModule):
    """scikit-learn's digits: 64 pixel intensities scaled to [0, 1], 10 classes, 80/20 split."""

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str) -> None:
        images, labels = load_digits(return_X_y=True)
        data = TensorDataset(torch.tensor(images / 16.0, dtype=torch.float32), torch.tensor(labels))
        split = torch.Generator().manual_seed(self.seed)
        self.train, self.val = random_split(data, [0.8, 0.2], generator=split)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=256)


class DigitsClassifier(pl.LightningModule):
    """64 → hidden → 10 MLP with dropout; J = cross-entropy + ``l2`` · (‖W_hidden‖² + ‖W_out‖²).

    The L2 term is part of J, so the gradient check covers its gradient too.
    """

    def __init__(self, hidden: int = 32, dropout: float = 0.1, l2: float = 1e-4, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.l2, self.lr = l2, lr
        self.hidden = nn.Linear(64, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(F.relu(self.hidden(images))))

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        penalty = self.hidden.weight.pow(2).sum() + self.out.weight.pow(2).sum()
        loss = F.cross_entropy(self(images), labels) + self.l2 * penalty
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val/loss", F.cross_entropy(logits, labels))
        self.log("val/accuracy", (logits.argmax(1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int, default=300, help="optimizer steps (300)")
    parser.add_argument(
        "--after-steps", type=int, nargs="*", default=[100, 250], help="checks after (100 250)"
    )
    parser.add_argument("--log-dir", type=Path, default=Path("runs"), help="TensorBoard root")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units (32)")
    return parser.parse_args(argv)


def view_command(log_dir: Path) -> str:
    """The command that shows ``log_dir`` in TensorBoard, from the project's folder."""
    shown = log_dir if os.path.relpath(log_dir).startswith("..") else Path(os.path.relpath(log_dir))
    return "make tensorboard" if shown == Path("runs") else f"make tensorboard LOGDIR={shown}"


def _summary(check: GradientCheck, trainer: pl.Trainer, logger: TensorBoardLogger) -> str:
    lines = ["", "Gradient checks (step 0: at random initialization):"]
    lines += [f"  step {step:>4}: {report.headline()}" for step, report in check.reports.items()]
    accuracy = trainer.callback_metrics.get("val/accuracy")
    if accuracy is not None:
        lines.append(
            f"Validation accuracy after {trainer.global_step} steps: {float(accuracy):.3f}"
        )
    lines += [
        f"TensorBoard logs: {logger.log_dir}",
        f"Reports (JSON):   {Path(logger.log_dir) / 'gradcheck'}",
        f"View them:        {view_command(Path(logger.save_dir))}",
        "  TIME SERIES, group GradientCheck: a card per run, the verdict, the difference of "
        "each check against the pass and fail bands, the parameters worst first",
        "  TEXT, gradcheck/report: the whole report of each check",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> GradientCheck:
    """Trains with the callback and prints the summaries; returns the callback (its reports)."""
    args = _arguments(argv)
    pl.seed_everything(0, verbose=False)
    check = GradientCheck(at_init=True, after_steps=args.after_steps)
    logger = TensorBoardLogger(save_dir=args.log_dir, name="digits")
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        logger=logger,
        callbacks=[check],
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(DigitsClassifier(hidden=args.hidden), DigitsData())
    print(_summary(check, trainer, logger))
    return check


if __name__ == "__main__":
    main()
