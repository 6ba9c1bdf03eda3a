"""GradientCheck under ``strategy="ddp"`` itself (not ddp_spawn): Lightning relaunches the
command for process 1, so the run is a script in a fresh interpreter."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_processes_share_the_check_and_rank_zero_logs_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.ddp_run", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [pickle.loads((tmp_path / f"rank-{r}.pkl").read_bytes()) for r in (0, 1)]
    assert [r["steps"] for r in ranks] == [3, 3]
    # One check at step 0 and one at step 2, the same report in both processes, each process
    # having evaluated its share.
    assert list(ranks[0]["reports"]) == list(ranks[1]["reports"]) == [0, 2]
    for step in (0, 2):
        shared = [dict(r["reports"][step], seconds=0) for r in ranks]
        np.testing.assert_equal(shared[0], shared[1])  # NaN (not judged) equal to NaN
        assert shared[0]["verdict"] == "pass"
        assert any(n.startswith("split over 2 processes") for n in shared[0]["notes"])
    # DDP kept the replicas' parameters equal through the checks (BatchNorm statistics are
    # each process's own).
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    # Rank zero alone wrote events, once per check.
    (events_dir,) = {p.parent for p in (tmp_path / "tb").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(events_dir), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("gradcheck/difference")] == [0, 2]
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 1
