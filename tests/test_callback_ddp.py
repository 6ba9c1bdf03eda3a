"""GradientCheck under DDP (two CPU processes, gloo): the processes share one check of process
0's batch (each evaluates its share of the components), every process ends with the same report,
only rank zero logs, and a failure in one process reaches every process instead of leaving one
waiting."""

from __future__ import annotations

import csv
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from gradwatch import Verdict
from gradwatch.callbacks import GradientCheck
from tests.callback_models import (
    QUIET_LIGHTNING,
    FaultyModule,
    TinyModule,
    example,
    loader,
    raised_at,
    trainer,
)
from tests.process_group import DestroyAtExit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(*QUIET_LIGHTNING, "ignore:.*batching rule:UserWarning"),
]


class _Record(pl.Callback):
    """Writes, per process, what the test reads back in the main process (ddp_spawn's workers
    hold copies of the callbacks): the check's reports, the first batch, the last step."""

    def __init__(self, root: Path, check: GradientCheck) -> None:
        self.root, self.check = root, check

    def _write(self, trainer: pl.Trainer, name: str, value: Any) -> None:
        path = self.root / f"{name}-{trainer.global_rank}.pkl"
        path.write_bytes(pickle.dumps(value))

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: Any, batch: Any, *args: Any
    ) -> None:
        if trainer.global_step == 0:
            self._write(trainer, "batch", batch)

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        self._write(trainer, "reports", self.check.reports)
        self._write(trainer, "steps", trainer.global_step)


class _StoppingCheck(GradientCheck):
    """GradientCheck that also writes the error it stops its process with (ddp_spawn's workers
    run no ``on_exception`` hook; the launcher re-raises one worker's error)."""

    def __init__(self, root: Path, **options: Any) -> None:
        super().__init__(**options)
        self.root = root

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        try:
            super().on_train_batch_start(trainer, module, batch, batch_idx)
        except BaseException as err:  # KeyboardInterrupt too
            said = f"{type(err).__name__}: {err}"
            (self.root / f"error-{trainer.global_rank}.pkl").write_bytes(pickle.dumps(said))
            # The first process to exit has the launcher terminate the others: wait until every
            # process has written (one that did not stop fails this barrier).
            dist.monitored_barrier(timeout=timedelta(seconds=20))
            raise


def _read(root: Path, name: str) -> list[Any]:
    return [pickle.loads((root / f"{name}-{rank}.pkl").read_bytes()) for rank in range(2)]


def _ddp(root: Path, callbacks: list[pl.Callback], max_steps: int) -> pl.Trainer:
    # DestroyAtExit first: its setup runs in each worker before a callback's setup can raise.
    # Without it a worker could abort at exit after a good run (see tests/process_group.py).
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=max_steps,
        logger=CSVLogger(root, name="csv"),
        callbacks=[DestroyAtExit(), *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def _logged(root: Path) -> list[tuple[int, float, float]]:
    """(step, difference, verdict) of every row the CSV logger got from a check."""
    with (root / "csv" / "version_0" / "metrics.csv").open() as file:
        rows = [r for r in csv.DictReader(file) if r.get("gradcheck/verdict")]
    return [
        (int(r["step"]), float(r["gradcheck/difference"]), float(r["gradcheck/verdict"]))
        for r in rows
    ]


def test_processes_share_one_check_equal_to_a_single_process_check(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    module = TinyModule()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    check = GradientCheck(after_steps=(1,))
    _ddp(tmp_path, [check, _Record(tmp_path, check)], max_steps=2).fit(module, loader())
    shared = _read(tmp_path, "reports")
    assert list(shared[0]) == [0, 1]
    for step in (0, 1):  # the same report in both processes
        # to_dict() keeps NaN (not judged) as a float: compared as equal where both are NaN.
        np.testing.assert_equal(shared[0][step].to_dict(), shared[1][step].to_dict())
    # Rank zero logged each check once.
    assert [(s, v) for s, _, v in _logged(tmp_path)] == [(0, 0.0), (1, 0.0)]

    # The same check in one process, of process 0's first batch at the same initial weights.
    single = TinyModule()
    single.load_state_dict(initial)
    alone = GradientCheck(after_steps=())
    batch = _read(tmp_path, "batch")[0]
    trainer(tmp_path / "single", callbacks=[alone], max_steps=1).fit(
        single, DataLoader([batch], batch_size=None)
    )
    one, two = alone.reports[0], shared[0][0]
    assert abs(two.difference - one.difference) <= 1e-12
    assert np.array_equal(two.numeric, one.numeric)
    assert two.verdict is one.verdict is Verdict.PASS
    # Each process evaluated its share: about half of the one-process evaluations.
    (note,) = [n for n in two.notes if n.startswith("split over 2 processes")]
    counts = [int(c) for c in note.split("evaluations per process: ")[1].split(", ")]
    assert sum(counts) == two.evaluations
    # What every process runs alike (J's noise probes, 4 per direction, and the readings
    # along random directions that escalation and the noise per tensor take) is counted in
    # both; the rest, the components' pairs, is shared out.
    replicated = sum(counts) - one.evaluations
    probes = two.j_noise.directions * 4
    assert probes <= replicated and replicated - probes < 0.5 * (one.evaluations - probes)
    assert all(count - replicated < 0.6 * (one.evaluations - replicated) for count in counts)


def _faulty_run(
    root: Path, on_fail: Literal["warn", "raise"], fault: str = "oom"
) -> tuple[pl.Trainer, GradientCheck, FaultyModule]:
    pl.seed_everything(0, verbose=False)
    module = FaultyModule(fault, step=1, rank=1, from_call=3)  # process 1 only, mid-check
    check = _StoppingCheck(root, after_steps=(1,), on_fail=on_fail)
    return _ddp(root, [check, _Record(root, check)], max_steps=3), check, module


REASON = (
    f"the check could not finish in process 1 of 2: RuntimeError: {FaultyModule.OOM} (J on this "
    "step's batch: list of 3: Tensor[8, 4] float32, Tensor[8] int64, Tensor[8] int64)"
) + raised_at(FaultyModule.gradcheck_loss, "raise RuntimeError")


def test_a_fault_in_one_process_is_a_failed_check_everywhere_and_training_goes_on(
    tmp_path: Path,
) -> None:
    run, _, module = _faulty_run(tmp_path, on_fail="warn")
    run.fit(module, loader())
    assert _read(tmp_path, "steps") == [3, 3]  # every process trained on
    for reports in _read(tmp_path, "reports"):
        assert [r.verdict for r in reports.values()] == [Verdict.PASS, Verdict.FAIL]
        assert reports[1].failure == REASON
    assert [(s, v) for s, _, v in _logged(tmp_path)] == [(0, 0.0), (1, 2.0)]


def test_a_fault_in_one_process_with_on_fail_raise_stops_every_process(tmp_path: Path) -> None:
    run, _, module = _faulty_run(tmp_path, on_fail="raise")
    with pytest.raises(Exception, match="GradientCheckError"):  # re-raised from a worker
        run.fit(module, loader())
    for error in _read(tmp_path, "error"):
        assert error.startswith("GradientCheckError: GradientCheck at step 1: the gradient check")
        assert REASON in error


def test_ctrl_c_in_one_process_mid_check_stops_every_process(tmp_path: Path) -> None:
    run, _, module = _faulty_run(tmp_path, on_fail="warn", fault="interrupt")
    with pytest.raises(Exception, match="the gradient check was interrupted in process"):
        run.fit(module, loader())
    assert _read(tmp_path, "error") == [
        "PartitionError: the gradient check was interrupted in process(es) [1] of 2; see the "
        "error raised there",
        "KeyboardInterrupt: ",
    ]


def test_a_failing_verdict_with_on_fail_raise_stops_every_process(tmp_path: Path) -> None:
    module = example("wrong_backward").DigitsWithHandWrittenLayer()
    check = _StoppingCheck(tmp_path, after_steps=(), on_fail="raise", sample=100)
    with pytest.raises(Exception, match="GradientCheckError"):  # re-raised from the workers
        _ddp(tmp_path, [check, _Record(tmp_path, check)], max_steps=3).fit(
            module, example("digits").DigitsData(batch_size=64)
        )
    assert [(s, v) for s, _, v in _logged(tmp_path)] == [(0, 2.0)]
    assert all("hidden.bias" in error for error in _read(tmp_path, "error"))


def test_sync_batchnorm_stops_the_run_before_any_check(tmp_path: Path) -> None:
    # Every process raises at setup alike, so none is left waiting in a collective of J. (CPU
    # DDP refuses SyncBatchNorm itself a moment later; with GPUs training would run.)
    module = nn.SyncBatchNorm.convert_sync_batchnorm(TinyModule())
    with pytest.raises(Exception, match=r"`TinyModule` has SyncBatchNorm layers \(net\.1\)"):
        _ddp(tmp_path, [GradientCheck()], max_steps=1).fit(module, loader())
