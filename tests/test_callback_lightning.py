"""Either Lightning package's Trainer and TensorBoardLogger, with either flavour of the callback:
every combination logs everything (scalars, text, histogram, card, chart layout, report file)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

import gradwatch
from gradwatch import Verdict
from tests.callback_models import ANSWER, DETAILS, QUIET_LIGHTNING, data

pytest.importorskip("lightning.pytorch")
pytestmark = pytest.mark.filterwarnings(*QUIET_LIGHTNING)

PARAMETERS = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
SCALARS = {
    *ANSWER,
    *(f"gradcheck_parameters/{name}" for name in PARAMETERS),
    *DETAILS,
}


def _module(package: Any) -> Any:
    class Module(package.LightningModule):  # type: ignore[misc,name-defined]
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

    return Module()


@pytest.mark.parametrize("callback_from", ["gradwatch.callbacks", "gradwatch.callbacks.lightning"])
@pytest.mark.parametrize("trainer_from", ["pytorch_lightning", "lightning.pytorch"])
def test_every_combination_logs_everything(
    tmp_path: Path, trainer_from: str, callback_from: str
) -> None:
    package = importlib.import_module(trainer_from)
    check = importlib.import_module(callback_from).GradientCheck(after_steps=(3,))
    logger = package.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = package.Trainer(
        max_steps=5,
        callbacks=[check],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(_module(package), DataLoader(data(), batch_size=8))
    assert list(check.reports) == [0, 3]
    assert all(r.verdict is Verdict.PASS for r in check.reports.values())
    sizes = {"scalars": 0, "tensors": 0, "histograms": 0, "images": 0}
    events = EventAccumulator(logger.log_dir, size_guidance=sizes).Reload()
    tags = events.Tags()
    assert {t for t in tags["scalars"] if t.startswith("gradcheck")} == SCALARS
    for tag in SCALARS:
        assert [e.step for e in events.Scalars(tag)] == [0, 3], tag
    assert tags["histograms"] == ["gradcheck_details/log10_abs_error"]
    assert tags["images"] == ["GradientCheck/gradcheck"]
    assert [e.step for e in events.Images("GradientCheck/gradcheck")] == [0, 3]
    text = events.Tensors("gradcheck/report")[1].tensor_proto.string_val[0].decode()
    assert text.startswith("### PASS at step 3: difference ")
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == ["gradcheck"]
    saved = gradwatch.load_report(Path(logger.log_dir) / "gradcheck" / "step_3.json")
    assert saved["verdict"] == "pass" and saved["step"] == 3


class _PlainWriter:
    """A writer that takes scalars only."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_a_tensorboard_logger_whose_writer_cannot_take_the_rest_is_told(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from gradwatch.callbacks import GradientCheck

    class ScalarOnlyTensorBoardLogger(pl.loggers.Logger):
        """Says it is TensorBoard's, but its writer takes scalars only."""

        name, version, logged = "tb", 0, []

        @property
        def experiment(self) -> Any:
            return _PlainWriter()

        def log_metrics(self, metrics: Any, step: Any = None) -> None:
            self.logged.append(metrics)

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            return None

    logger = ScalarOnlyTensorBoardLogger()
    check = GradientCheck(after_steps=())
    trainer = pl.Trainer(
        max_steps=1,
        callbacks=[check],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.warns(UserWarning) as warned:
        trainer.fit(_module(pl), DataLoader(data(), batch_size=8))
    (told,) = [str(w.message) for w in warned if "GradientCheck" in str(w.message)]
    assert told == (
        "GradientCheck: ScalarOnlyTensorBoardLogger's writer (_PlainWriter) has no add_text, "
        "add_histogram, add_image, add_custom_scalars, so it gets the scalars only, without the "
        "card, the report text, the histogram and the chart layout; use a TensorBoardLogger "
        "from pytorch_lightning or lightning"
    )
    assert any("gradcheck/difference" in m for m in logger.logged)
