"""Tiny LightningModules, data and a recording logger for the callback tests (a check of one of
these modules takes ~0.1 s: θ has 83 components)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.loggers import Logger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Lightning's advice for real data loaders and long runs, not for these 8-batch toys.
QUIET_LIGHTNING = [
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*smaller than the logging interval:UserWarning",
    "ignore:.*isinstance.treespec, LeafSpec.*",
]


def example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (the examples import each other by file name)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def data(n: int = 64, seed: int = 0) -> TensorDataset:
    """``n`` samples (x: 4 features, y: 3 classes, i: the sample's index)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return TensorDataset(x, y, torch.arange(n))


def loader(n: int = 64, batch_size: int = 8, shuffle: bool = True) -> DataLoader:
    return DataLoader(data(n), batch_size=batch_size, shuffle=shuffle)


class Probe:
    """What a test module saw during checks, kept where the check does not reach: after each
    evaluation of J the check puts back the module's own attributes (lists, dicts, counters,
    tensors), not the fields of another object (like a logger's, or a file)."""

    def __init__(self) -> None:
        self.calls_in_float64 = 0
        self.checked_samples: list[tuple[int, ...]] = []
        self.faulty_calls = 0


class TinyModule(pl.LightningModule):
    """Linear → BatchNorm → Tanh → Dropout → Linear, Adam; logs its loss, an epoch accuracy
    (torchmetrics) and, only when training_step runs in float64 (inside a check), a leak metric."""

    def __init__(self, output: str = "tensor") -> None:
        super().__init__()
        self.output = output
        self.net = nn.Sequential(
            nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.25), nn.Linear(8, 3)
        )
        self.accuracy = torchmetrics.classification.MulticlassAccuracy(num_classes=3)
        self.probe = Probe()

    @property
    def calls_in_float64(self) -> int:
        """Calls of training_step in float64: inside a check (J on the check's copies)."""
        return self.probe.calls_in_float64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y, _ = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y) + 1e-3 * cast(nn.Linear, self.net[0]).weight.pow(2).sum()
        in_check = loss.dtype == torch.float64  # the check evaluates J on float64 copies
        self.probe.calls_in_float64 += int(in_check)
        self.log("train/loss", loss, prog_bar=True)
        if in_check:  # must reach nothing
            self.log("train/leak", 1.0, prog_bar=True)
            self.log_dict({"train/leak_dict": 1.0}, prog_bar=True)
        self.accuracy(logits, y)
        self.log("train/accuracy", self.accuracy, on_step=False, on_epoch=True)
        if self.output == "dict":
            return {"loss": loss, "logits": logits.detach()}
        if self.output == "none":
            return None
        if self.output == "dict-without-loss":
            return {"total": loss}
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class CustomLossModule(TinyModule):
    """Gives J through ``gradcheck_loss`` and records which samples each evaluation saw."""

    @property
    def checked_samples(self) -> list[tuple[int, ...]]:
        """The sample indices of the batch of each evaluation of J."""
        return self.probe.checked_samples

    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        x, y, index = batch
        self.probe.checked_samples.append(tuple(index.tolist()))
        return F.cross_entropy(self(x), y)


class ManualModule(TinyModule):
    """Manual optimization: training_step returns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        x, y, _ = batch
        loss = F.cross_entropy(self(x), y)
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]


class ManualModuleWithLoss(ManualModule):
    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        x, y, _ = batch
        return F.cross_entropy(self(x), y)


class CollectingModule(TinyModule):
    """Lightning 2's pattern for epoch-end reductions: training_step appends its loss to a list
    that ``on_train_epoch_end`` stacks, averages and clears; and a plain Python counter."""

    def __init__(self) -> None:
        super().__init__()
        self.training_step_outputs: list[torch.Tensor] = []
        self.epoch_means: list[torch.Tensor] = []
        self.epoch_lengths: list[int] = []
        self.step_calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        self.training_step_outputs.append(loss.detach())
        self.step_calls += 1
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_lengths.append(len(self.training_step_outputs))
        self.epoch_means.append(torch.stack(self.training_step_outputs).mean())
        self.training_step_outputs.clear()


class ConfiguredModule(TinyModule):
    """Builds its layers in ``configure_model`` (Lightning 2.1+), after the callbacks' setup."""

    def __init__(self) -> None:
        super().__init__()
        del self.net

    def configure_model(self) -> None:
        if not hasattr(self, "net"):
            self.net = nn.Sequential(
                nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.25), nn.Linear(8, 3)
            )


class SkippingModule(TinyModule):
    """Skips the batches ``skipped`` (batch indices): training_step returns None for them."""

    def __init__(self, skipped: tuple[int, ...]) -> None:
        super().__init__()
        self.skipped = skipped

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if batch_idx in self.skipped:
            return None
        return super().training_step(batch, batch_idx)


class TwoOptimizerModule(TinyModule):
    """Manual optimization with two optimizers (GAN-style): two optimizer steps per batch, so
    ``global_step`` advances by 2 per batch. Logs the index of the batch's first sample."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        x, y, index = batch
        self.probe.checked_samples.append(tuple(index.tolist()))
        return F.cross_entropy(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y, index = batch
        for optimizer in self.optimizers():  # type: ignore[union-attr]
            loss = F.cross_entropy(self(x), y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        self.log("train/first_sample", float(index[0]))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:  # type: ignore[override]
        first, second = self.net[:2].parameters(), self.net[2:].parameters()
        return [torch.optim.SGD(first, lr=0.1), torch.optim.SGD(second, lr=0.1)]


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call: ``records`` is a list of ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def training(self) -> list[tuple[int | None, dict[str, float]]]:
        """The records without the callback's keys (each check logs in a call of its own)."""
        return [(s, m) for s, m in self.records if not any(k.startswith("gradcheck") for k in m)]

    def checks(self) -> list[tuple[int | None, dict[str, float]]]:
        return [(s, m) for s, m in self.records if any(k.startswith("gradcheck") for k in m)]


def trainer(root: Path, **options: Any) -> pl.Trainer:
    """A quiet CPU Trainer writing under ``root``."""
    settings: dict[str, Any] = {
        "default_root_dir": root,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "deterministic": True,
    }
    settings.update(options)
    return pl.Trainer(**settings)


class FaultyModule(TinyModule):
    """J through ``gradcheck_loss``, with a fault planted in the check at ``step`` (in process
    ``rank``, or every process when None), from its ``from_call``-th evaluation of J on:
    ``"raise"`` (a ValueError), ``"oom"`` (CUDA's out-of-memory RuntimeError), ``"nan"`` or
    ``"inf"`` (J is not finite) or ``"interrupt"`` (KeyboardInterrupt, as Ctrl+C). Training itself
    is TinyModule's."""

    OOM = "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 15.77 GiB total capacity)"

    def __init__(
        self, fault: str = "none", step: int = 0, rank: int | None = None, from_call: int = 1
    ) -> None:
        super().__init__()
        self.fault, self.fault_step, self.fault_rank = fault, step, rank
        self.from_call = from_call

    @property
    def faulty_calls(self) -> int:
        """Evaluations of J in the faulty check so far."""
        return self.probe.faulty_calls

    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        x, y, _ = batch
        loss = F.cross_entropy(self(x), y)
        if self.trainer.global_step != self.fault_step or self.fault == "none":
            return loss
        if self.fault_rank is not None and self.global_rank != self.fault_rank:
            return loss
        self.probe.faulty_calls += 1
        if self.probe.faulty_calls < self.from_call:
            return loss
        if self.fault in ("nan", "inf"):
            return loss * float(self.fault)
        if self.fault == "oom":
            raise RuntimeError(self.OOM)
        if self.fault == "interrupt":
            raise KeyboardInterrupt
        raise ValueError("the loss cannot use this batch")


def raised_at(function: Any, text: str) -> str:
    """``; raised at <file>:<line> in <function>``: the line of ``function`` holding ``text``,
    as a failed check's reason names where the user's code raised."""
    lines, first = inspect.getsourcelines(function)
    line = first + next(i for i, source in enumerate(lines) if text in source)
    where = os.path.relpath(inspect.getsourcefile(function) or "")
    return f"; raised at {where}:{line} in {function.__name__}"


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of nested states: tensors (dtype too), arrays, dicts, sequences."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return bool(a == b)


# The tags every check logs: the answer, and the details group.
ANSWER = {"gradcheck/difference", "gradcheck/log10_difference", "gradcheck/verdict"}
DETAILS = {
    f"gradcheck_details/{tag}"
    for tag in [
        "noise_floor",
        "log10_noise_floor",
        "kinks",
        "agreeing_components",
        "disagreeing_components",
        "not_judged_components",
        "bands/log10_pass_max",
        "bands/log10_warn_max",
    ]
}
