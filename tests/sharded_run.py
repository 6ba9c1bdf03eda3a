"""A 2-process CPU run under ``ModelParallelStrategy`` (Lightning's subprocess launcher, which
starts the second process by running this same command again), for
tests/test_callback_sharded.py.

Run as ``python -m tests.sharded_run OUT PLAN CHECK``: PLAN is ``fsdp`` (data_parallel_size=2),
``tp`` (tensor_parallel_size=2) or ``ignored`` (FSDP with a parameter kept out of it, never
all-reduced); CHECK ``1`` adds GradientCheck(at steps 0 and 2, training_path=True). Each
process writes ``OUT/rank-<r>.pkl`` with its reports and the full final weights; rank zero's
logs go under ``OUT/logs``.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader, TensorDataset

from gradwatch.callbacks import GradientCheck
from gradwatch.sharding.replica import full
from tests.process_group import destroy_at_exit
from tests.sharded_models import MLP, Block, block_loss, fsdp, mlp_loss, tensor_parallel


class ShardedModule(pl.LightningModule):
    """MLP under FSDP2 or Block under tensor parallelism, sharded in ``configure_model``."""

    def __init__(self, plan: str) -> None:
        super().__init__()
        self.plan = plan
        self.net = Block() if plan == "tp" else MLP()

    def configure_model(self) -> None:
        mesh = self.device_mesh
        if self.plan == "tp":
            tensor_parallel(self.net, mesh["tensor_parallel"])  # type: ignore[arg-type]
        else:
            fsdp(self.net, mesh["data_parallel"], ignore_scale=self.plan == "ignored")  # type: ignore[arg-type]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = (block_loss if self.plan == "tp" else mlp_loss)(self.net, batch)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _data(plan: str) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    if plan == "tp":
        x, y = torch.randn(32, 4, 4, generator=g), torch.randint(0, 4, (32, 4), generator=g)
    else:
        x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def main(out: Path, plan: str, check: bool) -> None:
    destroy_at_exit()  # else a gloo thread can abort this process at exit (tests/process_group.py)
    pl.seed_everything(0, verbose=False)
    torch.set_num_threads(1)  # two processes on two cores
    callbacks = [GradientCheck(after_steps=(2,), training_path=True)] if check else []
    dp, tp = (1, 2) if plan == "tp" else (2, 1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=dp, tensor_parallel_size=tp),
        max_steps=3,
        logger=CSVLogger(out, name="logs", version=0),
        callbacks=callbacks,  # type: ignore[arg-type]
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    module = ShardedModule(plan)
    trainer.fit(module, _data(plan))
    reports = callbacks[0].reports if callbacks else {}  # type: ignore[attr-defined]
    found = {
        "reports": {step: report.to_dict() for step, report in reports.items()},
        "weights": {k: full(v) for k, v in module.named_parameters()},
        "steps": trainer.global_step,
    }
    (out / f"rank-{trainer.global_rank}.pkl").write_bytes(pickle.dumps(found))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1")
