"""GradientCheck under DDP (two CPU processes, gloo): every rank checks its own batch, only rank
zero logs, and ``on_fail="raise"`` stops every rank instead of leaving one waiting."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from gradwatch.callbacks import GradientCheck
from tests.callback_models import QUIET_LIGHTNING, example

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(*QUIET_LIGHTNING, "ignore:.*batching rule:UserWarning"),
]


def _ddp(root: Path, check: GradientCheck, max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=max_steps,
        logger=CSVLogger(root, name="csv"),
        callbacks=[check],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def test_ddp_checks_on_every_rank_logs_once_and_raise_stops_every_rank(tmp_path: Path) -> None:
    module = example("wrong_backward").DigitsWithHandWrittenLayer()
    check = GradientCheck(after_steps=(), on_fail="raise", components=100)
    trainer = _ddp(tmp_path, check, max_steps=3)
    with pytest.raises(Exception, match="GradientCheckError"):  # re-raised from the workers
        trainer.fit(module, example("digits").DigitsData(batch_size=64))
    with (tmp_path / "csv" / "version_0" / "metrics.csv").open() as file:
        rows = [r for r in csv.DictReader(file) if r.get("gradcheck/difference")]
    assert [(int(r["step"]), float(r["gradcheck/verdict"])) for r in rows] == [(0, 2.0)]
