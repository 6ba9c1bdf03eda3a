"""Issue 6's benchmark: one GradientCheck in 1 process against the same check shared by 2 (and
more) DDP processes, on the CPU (gloo).

    .venv/bin/python benchmarks/bench_ddp.py [--processes 1 2] [--repeats 3] [--threads 1]

The model is a 64-128-128-10 tanh MLP (26,122 parameters) on a batch of 256, every component
checked in float64 at ε = 1e-7: about 52,000 evaluations of J, ~10 s in one process. Each
configuration runs in a fresh interpreter: ``Trainer(strategy="ddp", devices=p, max_steps=1)``
with ``GradientCheck(after_steps=())`` (the check at step 0) and ``torch`` limited to
``--threads`` threads per process, so p processes use p cores. Reported per configuration (best
of ``--repeats`` runs): the check's seconds (``report.seconds``, the slowest process's), the
callback's wall time around it (batch broadcast and gathers included), the evaluations per
process, and whether the difference equals the one-process difference exactly. Not part of the
test suite; needs as many free cores as processes for a fair reading.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from gradwatch.callbacks import GradientCheck

WIDTHS = (64, 128, 128, 10)
BATCH = 256


class Mlp(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(WIDTHS):
            layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
        self.net = nn.Sequential(*layers[:-1])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TimedCheck(GradientCheck):
    """Also measures the wall time of the hook that runs the check."""

    wall: float = 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        start = time.perf_counter()
        super().on_train_batch_start(trainer, module, batch, batch_idx)
        self.wall = max(self.wall, time.perf_counter() - start)


def run(processes: int, threads: int) -> None:
    """One fit with one check; rank 0 prints a JSON line."""
    torch.set_num_threads(threads)
    pl.seed_everything(0, verbose=False)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(BATCH, WIDTHS[0], generator=generator),
        torch.randint(0, WIDTHS[-1], (BATCH,), generator=generator),
    )
    check = TimedCheck(after_steps=())
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=processes,
        strategy="ddp" if processes > 1 else "auto",
        max_steps=1,
        logger=False,
        callbacks=[check],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,  # every process sees the one batch: the same check
    )
    trainer.fit(Mlp(), DataLoader(data, batch_size=BATCH))
    if trainer.global_rank == 0:
        report = check.reports[0]
        note = [n for n in report.notes if n.startswith("split over")]
        per = note[0].split(": ")[-1] if note else str(report.evaluations)
        print(
            "RESULT "
            + json.dumps(
                {
                    "processes": processes,
                    "seconds": report.seconds,
                    "wall": check.wall,
                    "evaluations": per,
                    "difference": report.difference,
                    "components": report.components_checked,
                }
            ),
            flush=True,
        )


def measure(processes: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, __file__, "--run", str(processes), "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        run(args.run, args.threads)
        return
    parameters = sum(a * b + b for a, b in itertools.pairwise(WIDTHS))
    print(
        f"MLP {'-'.join(map(str, WIDTHS))} ({parameters} parameters), batch {BATCH}, every "
        f"component, float64, {args.threads} torch thread(s) per process, best of {args.repeats}"
    )
    print(f"{'processes':>9}  {'check s':>8}  {'hook s':>7}  {'speed-up':>8}  evaluations/process")
    base, reference = None, None
    for processes in args.processes:
        best = min(
            (measure(processes, args.threads) for _ in range(args.repeats)),
            key=lambda r: r["seconds"],
        )
        base = base or best["seconds"]
        reference = reference if reference is not None else best["difference"]
        same = "same difference" if best["difference"] == reference else "DIFFERENT difference"
        print(
            f"{processes:>9}  {best['seconds']:>8.2f}  {best['wall']:>7.2f}  "
            f"{base / best['seconds']:>7.2f}x  {best['evaluations']}  ({same})"
        )


if __name__ == "__main__":
    main()
