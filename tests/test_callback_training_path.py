"""GradientCheck(training_path=True) inside a Trainer: each precision plugin's own training path,
training left bit for bit as without the callback, the figures logged, a compiled submodule."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import Verdict
from gradwatch.callbacks import GradientCheck
from tests.callback_models import (
    QUIET_LIGHTNING,
    RecordingLogger,
    TinyModule,
    loader,
    same,
    trainer,
)
from tests.custom_ops import softsign

pytestmark = pytest.mark.filterwarnings(*QUIET_LIGHTNING)

# What Lightning runs on the CPU for each flag: "16-mixed" has no float16 autocast there, and
# Lightning (2.x) runs bfloat16 autocast instead, with a warning.
PRECISIONS = {
    "bf16-mixed": (
        "bf16-mixed",
        "eager module (nothing compiled), float32 under autocast(bfloat16)",
    ),
    "16-mixed": ("bf16-mixed", "eager module (nothing compiled), float32 under autocast(bfloat16)"),
    "64-true": ("64-true", "eager module (nothing compiled), float64"),
}


def _fit(root: Path, module: pl.LightningModule, callbacks: list[Any], **options: Any) -> Any:
    pl.seed_everything(0, verbose=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*AMP with fp16 is not supported on CPU")
        run = trainer(root, callbacks=callbacks, **options)
    run.fit(module, loader())
    return run, torch.get_rng_state()


def _paired(root: Path, make: Any, check: GradientCheck, **options: Any) -> dict[str, Any]:
    """The same fit without and with ``check``: modules, trainers, RNG states after."""
    runs: dict[str, Any] = {}
    for name, callbacks in (("plain", []), ("checked", [check])):
        pl.seed_everything(0, verbose=False)  # the same initial weights
        module, logger = make(), RecordingLogger()
        run, rng = _fit(root / name, module, callbacks, logger=logger, **options)
        runs[name] = {"module": module, "trainer": run, "rng": rng, "logger": logger}
    return runs


def _identical(runs: dict[str, Any]) -> None:
    plain, checked = runs["plain"], runs["checked"]
    assert same(plain["module"].state_dict(), checked["module"].state_dict())
    assert same(
        plain["trainer"].optimizers[0].state_dict(), checked["trainer"].optimizers[0].state_dict()
    )
    assert torch.equal(plain["rng"], checked["rng"])
    assert plain["trainer"].global_step == checked["trainer"].global_step


@pytest.fixture(scope="module", params=list(PRECISIONS))
def precision_runs(request: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    check = GradientCheck(at_init=False, after_steps=(2,), training_path=True)
    root = tmp_path_factory.mktemp(request.param)
    runs = _paired(root, TinyModule, check, max_steps=4, precision=request.param)
    return {"flag": request.param, "check": check, **runs}


def test_training_is_bit_for_bit_the_same_with_the_training_path_checked(
    precision_runs: dict[str, Any],
) -> None:
    _identical(precision_runs)
    assert precision_runs["checked"]["trainer"].global_step == 4


def test_the_training_path_is_the_precision_plugin_s(precision_runs: dict[str, Any]) -> None:
    runs, (plugin, path) = precision_runs, PRECISIONS[precision_runs["flag"]]
    assert runs["checked"]["trainer"].precision == plugin
    report = runs["check"].reports[2]
    assert report.dtype == "float64" and report.verdict is Verdict.PASS
    found = report.training_path
    assert found is not None and found.path == path
    assert found.reference == "float64" and found.verdict is Verdict.PASS
    assert list(found.parameters) == list(report.parameters)


def test_the_training_path_figures_are_logged_under_the_callback_s_name(
    precision_runs: dict[str, Any],
) -> None:
    ((_, metrics),) = precision_runs["checked"]["logger"].checks()
    found = precision_runs["check"].reports[2].training_path
    assert metrics["gradcheck/training_path/verdict"] == 0.0
    for name, p in found.parameters.items():
        assert metrics[f"gradcheck/training_path/ratio/{name}"] == pytest.approx(p.ratio)
        assert metrics[f"gradcheck/training_path/error/{name}"] == pytest.approx(p.error)
        assert metrics[f"gradcheck/training_path/eager_error/{name}"] == pytest.approx(
            p.eager_error
        )


def test_without_the_option_nothing_of_the_training_path_runs_or_is_logged(tmp_path: Path) -> None:
    check = GradientCheck(at_init=True, after_steps=())
    logger = RecordingLogger()
    _fit(tmp_path, TinyModule(), [check], max_steps=1, logger=logger)
    assert check.reports[0].training_path is None
    ((_, metrics),) = logger.checks()
    assert not any("training_path" in key for key in metrics)


def test_training_path_must_be_a_flag() -> None:
    with pytest.raises(TypeError, match=r"GradientCheck: `training_path` must be True or False"):
        GradientCheck(training_path="yes")


def test_the_option_is_part_of_the_state_key_only_when_on() -> None:
    assert "training_path" not in GradientCheck().state_key
    assert "'training_path': True" in GradientCheck(training_path=True).state_key


class CompiledModule(pl.LightningModule):
    """A LightningModule holding a compiled network whose activation's registered backward is
    wrong in compiled code only (see tests.custom_ops.softsign)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.compile(SoftsignNet())

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class SoftsignNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 8)
        self.last = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(softsign(self.first(x)))


@pytest.mark.slow
def test_a_compiled_submodule_s_fault_fails_the_training_path_and_training_is_untouched(
    tmp_path: Path,
) -> None:
    check = GradientCheck(at_init=True, after_steps=(), training_path=True, on_fail="ignore")
    runs = _paired(tmp_path, CompiledModule, check, max_steps=3)
    _identical(runs)
    report = check.reports[0]
    assert list(report.parameters) == [
        "net.first.weight",
        "net.first.bias",
        "net.last.weight",
        "net.last.bias",
    ]
    assert report.notes[0].startswith("compiled: net (torch.compile); checked through")
    found = report.training_path
    assert found is not None and found.compiled
    assert sorted(found.failed) == ["net.first.bias", "net.first.weight"]
    assert report.verdict is Verdict.FAIL
    assert "The float64 check: difference" in report.message
    ((_, metrics),) = runs["checked"]["logger"].checks()
    assert metrics["gradcheck/training_path/verdict"] == 2.0


class PlainModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.mark.slow
def test_a_lightning_module_fit_compiled_is_checked_eagerly_and_compared_compiled(
    tmp_path: Path,
) -> None:
    # Trainer.fit(torch.compile(module)): Lightning unwraps it and compiles its methods.
    check = GradientCheck(at_init=True, after_steps=(), training_path=True)
    runs: dict[str, Any] = {}
    for name, callbacks in (("plain", []), ("checked", [check])):
        pl.seed_everything(0, verbose=False)
        module = PlainModule()
        run = trainer(tmp_path / name, callbacks=callbacks, max_steps=3)
        run.fit(torch.compile(module), loader())
        runs[name] = {"module": module, "trainer": run, "rng": torch.get_rng_state()}
    _identical(runs)
    report = check.reports[0]
    assert list(report.parameters) == [
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
    ]
    assert report.notes[0].startswith(
        "compiled: the module's compiled methods (forward, training_step, validation_step, "
    )
    found = report.training_path
    assert found is not None and found.compiled and found.verdict is Verdict.PASS
