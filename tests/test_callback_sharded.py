"""GradientCheck under ModelParallelStrategy (FSDP2 dp = 2, tensor parallel tp = 2, in two CPU
processes): checked at steps 0 and N, reports written, training bit for bit the run without
the callback, a parameter out of FSDP failing the training path; and under the strategies it
cannot check: refused at setup, naming the strategy and what would work."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pytorch_lightning.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    XLAStrategy,
)

from gradwatch import load_report
from gradwatch.callbacks import GradientCheck, _faults
from gradwatch.callbacks._faults import WHAT_WORKS, require_checkable
from gradwatch.callbacks._options import engine_options
from tests.callback_models import TinyModule

ROOT = Path(__file__).resolve().parents[1]


def _trainer(cls: type) -> SimpleNamespace:
    # Built without __init__: FSDP, DeepSpeed and XLA need hardware or packages not here, and
    # the refusal reads the strategy's class alone.
    return SimpleNamespace(strategy=cls.__new__(cls))


class _OwnDDP(DDPStrategy):
    """A user's DDP variant: still DDP."""


class _Unknown:
    """A strategy gradwatch has never heard of (its class alone is read)."""


@pytest.mark.parametrize("cls", [SingleDeviceStrategy, DDPStrategy, _OwnDDP, ModelParallelStrategy])
def test_checked_strategies_pass_setup(cls: type) -> None:
    require_checkable(_trainer(cls))


@pytest.mark.parametrize(
    ("cls", "why"),
    [
        (FSDPStrategy, "FSDP (version 1) flattens the parameters into FlatParameters"),
        (DeepSpeedStrategy, "DeepSpeed partitions the parameters into flat buffers of its own"),
        (XLAStrategy, "XLA traces the model into graphs the check cannot evaluate in float64"),
        (_Unknown, "gradwatch does not know how it places the model's parameters"),
    ],
)
def test_other_strategies_are_refused_naming_them(cls: type, why: str) -> None:
    with pytest.raises(ValueError) as raised:
        require_checkable(_trainer(cls))
    assert str(raised.value) == (
        f"GradientCheck: cannot check a model trained under the strategy `{cls.__name__}` "
        f"({why}), and refuses rather than train on without checking; {WHAT_WORKS}"
    )


def _fit(root: Path, plan: str, check: bool) -> list[dict[str, Any]]:
    """tests/sharded_run.py in two processes; what each process wrote."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.sharded_run", str(root), plan, str(int(check))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return [pickle.loads((root / f"rank-{r}.pkl").read_bytes()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["fsdp", "tp"])
def test_model_parallel_strategy_is_checked_and_training_unchanged(
    tmp_path: Path, plan: str
) -> None:
    checked = _fit(tmp_path / "checked", plan, check=True)
    plain = _fit(tmp_path / "plain", plan, check=False)
    for rank in (0, 1):  # bit for bit the run without the callback
        weights, alone = checked[rank]["weights"], plain[rank]["weights"]
        assert list(weights) == list(alone)
        assert all(torch.equal(weights[k], alone[k]) for k in weights)
    assert list(checked[0]["reports"]) == list(checked[1]["reports"]) == [0, 2]
    for step in (0, 2):
        shared = [dict(r["reports"][step], seconds=0) for r in checked]
        shared[1]["notes"] = shared[0]["notes"]  # the gathering time is each process's own
        assert shared[0] == shared[1]
        assert shared[0]["verdict"] == "pass"
        assert shared[0]["training_path"]["verdict"] == "pass"
        assert any("gathered into a replica" in n for n in shared[0]["notes"])
        assert all(n.startswith("net.") for n in shared[0]["training_path"]["parameters"])
        written = tmp_path / "checked" / "logs" / "version_0" / "gradcheck" / f"step_{step}.json"
        assert load_report(written)["verdict"] == "pass"


@pytest.mark.slow
def test_a_parameter_out_of_fsdp_fails_the_training_path_named(tmp_path: Path) -> None:
    ranks = _fit(tmp_path, "ignored", check=True)
    for rank in ranks:
        # At step 0 the processes hold the same scale: the training path finds it unreduced.
        path = rank["reports"][0]["training_path"]
        assert path["verdict"] == "fail"
        assert path["message"].startswith("net.scale: sharded gradient")
        assert [n for n, p in path["parameters"].items() if not p["passed"]] == ["net.scale"]
        # By step 2 each process has trained its own scale: the check says so, naming it.
        later = rank["reports"][2]
        assert later["verdict"] == "fail" and later["training_path"] is None
        assert "net.scale (by up to" in later["message"]
        assert "differs between the processes" in later["message"]


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-5, ValueError), ("1GB", TypeError), (True, TypeError)]
)
def test_replica_budget_is_checked_at_construction(value: object, error: type) -> None:
    with pytest.raises(error) as raised:
        GradientCheck(replica_budget=value)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "GradientCheck: `replica_budget` must be None or a positive int of bytes, e.g. 2**30; "
        f"got {value!r}"
    )


def test_the_options_reach_check_sharded(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(*args: Any, **options: Any) -> str:
        seen.update(options)
        return "report"

    monkeypatch.setattr(_faults, "check_sharded", fake)
    check = GradientCheck(replica_budget=2**20, sample=7, epsilon="auto", seed=3)
    options = engine_options(check, SimpleNamespace())
    assert _faults.run(check, options, TinyModule(), None, 0) == "report"
    assert seen == {
        "epsilon": "auto", "include": None, "sample": 7, "dropout": "off",
        "mode": "components", "seed": 3, "thresholds": check.thresholds, "progress": True,
        "training_path": False, "replica_budget": 2**20,
    }  # fmt: skip
