"""benchmarks/verdict_sweep.py, asserted: over seeds and both steps (ε = 1e-7 and "auto"),
every planted bug fails and so does every tensor it corrupts; no correct model fails; and
``mode="directions"`` finds at least 9 in 10 of the corrupted tensors.

Which tensors a bug corrupts is measured: those whose autograd gradient differs from the same
model's with the planted layer replaced by its correct forward (every tensor below the bug in
backward order whose gradient is not zero by construction).
"""

from __future__ import annotations

import pytest
import torch

import gradwatch
from benchmarks.verdict_sweep import (
    MODELS,
    OPTIONS,
    batch,
    corrupted_by,
    found_failing,
    loss,
)

SEEDS = (0, 1, 2)
STEPS = (1e-7, "auto")
BUGS = [name for name in MODELS if name.startswith("bug:")]
CORRECT = [name for name in MODELS if name.startswith("correct:")]


def _model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS[name]()


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", BUGS)
def test_every_planted_bug_fails_and_so_does_every_tensor_it_corrupts(name: str, seed: int) -> None:
    model, data = _model(name, seed), batch()
    reach = corrupted_by(model, data)
    assert reach
    for epsilon in STEPS:
        report = gradwatch.check_module(model, loss, data, epsilon=epsilon)
        assert report.verdict.value == "fail", (epsilon, str(report))
        assert reach <= found_failing(report), (epsilon, reach - found_failing(report))


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", CORRECT)
def test_no_correct_model_fails(name: str, seed: int) -> None:
    model, data = _model(name, seed), batch()
    for epsilon in STEPS:
        report = gradwatch.check_module(model, loss, data, epsilon=epsilon, **OPTIONS.get(name, {}))
        assert report.verdict.value != "fail", (epsilon, str(report))


@pytest.mark.slow
@pytest.mark.parametrize("name", BUGS)
def test_directions_find_nine_in_ten_corrupted_tensors(name: str) -> None:
    found = corrupted = 0
    data = batch()
    for seed in SEEDS:
        model = _model(name, seed)
        reach = corrupted_by(model, data)
        for epsilon in STEPS:
            report = gradwatch.check_module(model, loss, data, epsilon=epsilon, mode="directions")
            assert report.verdict.value == "fail", (epsilon, str(report))
            found += len(reach & found_failing(report))
            corrupted += len(reach)
    assert found >= 0.9 * corrupted, f"{found} of {corrupted}"
