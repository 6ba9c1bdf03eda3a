"""The same callback for the unified ``lightning`` package's Trainer (skipped without it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.callback_models import QUIET_LIGHTNING, data

L = pytest.importorskip("lightning.pytorch")
pytestmark = pytest.mark.filterwarnings(*QUIET_LIGHTNING)


def test_lightning_trainer_runs_the_schedule_and_logs_to_tensorboard(tmp_path: Path) -> None:
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader

    from gradwatch import Verdict
    from gradwatch.callbacks import GradientCheck as PytorchLightningCheck
    from gradwatch.callbacks.lightning import GradientCheck

    class Module(L.LightningModule):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

        def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
            x, y, _ = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    check = GradientCheck(after_steps=(3,))
    assert isinstance(check, L.Callback) and not isinstance(check, PytorchLightningCheck)
    logger = L.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(
        max_steps=5,
        callbacks=[check],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(Module(), DataLoader(data(), batch_size=8))
    assert list(check.reports) == [0, 3]
    assert all(r.verdict is Verdict.PASS for r in check.reports.values())
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0}).Reload()
    assert [e.step for e in events.Scalars("gradcheck/difference")] == [0, 3]
    assert "gradcheck/worst_components/text_summary" in events.Tags()["tensors"]
