"""A 2-process CPU run under ``strategy="ddp"`` (Lightning's subprocess launcher, which starts
the second process by running this same command again), for tests/test_callback_ddp_script.py.

Run as ``python -m tests.ddp_run OUT``: each process writes ``OUT/rank-<r>.pkl`` with its
reports and final weights; rank zero's TensorBoard events go under ``OUT/tb``.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from gradwatch.callbacks import GradientCheck
from tests.callback_models import TinyModule, loader
from tests.process_group import destroy_at_exit


def main(out: Path) -> None:
    destroy_at_exit()  # else a gloo thread can abort this process at exit (tests/process_group.py)
    pl.seed_everything(0, verbose=False)
    check = GradientCheck(after_steps=(2,))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=3,
        logger=TensorBoardLogger(out, name="tb", version=0),
        callbacks=[check],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    module = TinyModule()
    trainer.fit(module, loader())
    found = {
        "reports": {step: report.to_dict() for step, report in check.reports.items()},
        "weights": {k: v.detach().clone() for k, v in module.named_parameters()},
        "steps": trainer.global_step,
    }
    (out / f"rank-{trainer.global_rank}.pkl").write_bytes(pickle.dumps(found))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
