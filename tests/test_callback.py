"""GradientCheck through ``Trainer.fit``: when it checks, what J is, that training is untouched,
what a failed check does, and resuming from a checkpoint."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast

import pytest
import pytorch_lightning as pl
import torch
import torchmetrics
from lightning_utilities.core import rank_zero
from torch import nn
from torch.nn import functional as F

from gradwatch import Verdict
from gradwatch.callbacks import (
    GradientCheck,
    GradientCheckError,
    GradientCheckWarning,
    _hooks,
)
from gradwatch.integration import text as _text
from tests.callback_models import (
    QUIET_LIGHTNING,
    CollectingModule,
    ConfiguredModule,
    CustomLossModule,
    ManualModule,
    ManualModuleWithLoss,
    RecordingLogger,
    SkippingModule,
    TinyModule,
    TwoOptimizerModule,
    example,
    loader,
    same,
    trainer,
)

pytestmark = pytest.mark.filterwarnings(*QUIET_LIGHTNING)


def _fit(
    root: Path,
    module: pl.LightningModule,
    callbacks: list[Any],
    shuffle: bool = True,
    **options: Any,
) -> Any:
    pl.seed_everything(0, verbose=False)
    run = trainer(root, callbacks=callbacks, **options)
    run.fit(module, loader(shuffle=shuffle))
    return run


@pytest.mark.parametrize(
    ("schedule", "max_steps", "expected"),
    [
        ({"after_steps": (3,)}, 8, [0, 3]),
        ({"at_init": False, "after_steps": (2, 5)}, 8, [2, 5]),
        ({"after_steps": (), "every_n_steps": 3}, 10, [0, 3, 6, 9]),
        ({"at_init": False, "after_steps": (5,), "every_n_steps": 4}, 13, [4, 5, 8, 12]),
        ({"after_steps": (8, 20)}, 8, [0]),  # no batch starts at step 8 when max_steps=8
    ],
    ids=["init+after", "after-only", "every-n", "after+every-n", "beyond-max-steps"],
)
def test_checks_run_once_at_each_scheduled_step(
    tmp_path: Path, schedule: dict[str, Any], max_steps: int, expected: list[int]
) -> None:
    check = GradientCheck(**schedule)
    _fit(tmp_path, TinyModule(), [check], max_steps=max_steps)
    assert list(check.reports) == expected
    assert check.checked_steps == tuple(expected)
    assert all(r.verdict is Verdict.PASS for r in check.reports.values())


def test_with_gradient_accumulation_checks_the_first_micro_batch_of_an_optimizer_step(
    tmp_path: Path,
) -> None:
    # 8 batches of 8 per epoch, 3 per optimizer step: steps start at batches 0, 3, 6 (samples 0,
    # 24, 48; the epoch's last step has 2 batches).
    module = CustomLossModule()
    check = GradientCheck(after_steps=(2,))
    _fit(tmp_path, module, [check], shuffle=False, max_steps=3, accumulate_grad_batches=3)
    assert list(check.reports) == [0, 2]
    assert sorted(set(module.checked_samples)) == [tuple(range(0, 8)), tuple(range(48, 56))]


@pytest.fixture(scope="module")
def paired_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same deterministic fit (Dropout, BatchNorm, Adam, a torchmetrics accuracy), without and
    with checks at steps 0, 3, 4 and 8."""
    runs: dict[str, Any] = {}
    checked = [GradientCheck(every_n_steps=4, after_steps=(3,))]
    for name, callbacks in (("plain", []), ("checked", checked)):
        pl.seed_everything(0, verbose=False)  # the same initial weights
        module, logger = TinyModule(), RecordingLogger()
        root = tmp_path_factory.mktemp(name)
        run = _fit(root, module, callbacks, max_steps=10, logger=logger)
        runs[name] = {"module": module, "trainer": run, "logger": logger, "callbacks": callbacks}
    return runs


def test_paired_runs_did_check(paired_runs: dict[str, Any]) -> None:
    check = paired_runs["checked"]["callbacks"][0]
    assert list(check.reports) == [0, 3, 4, 8]
    # J was the module's training_step, run in float64 (the check's copies), never in training.
    assert paired_runs["checked"]["module"].calls_in_float64 > 0
    assert paired_runs["plain"]["module"].calls_in_float64 == 0


def test_training_is_bit_for_bit_identical_with_and_without_checks(
    paired_runs: dict[str, Any],
) -> None:
    plain, checked = paired_runs["plain"], paired_runs["checked"]
    assert same(plain["module"].state_dict(), checked["module"].state_dict())
    assert same(
        plain["trainer"].optimizers[0].state_dict(), checked["trainer"].optimizers[0].state_dict()
    )
    assert plain["trainer"].global_step == checked["trainer"].global_step == 10


def test_logged_training_metrics_are_identical(paired_runs: dict[str, Any]) -> None:
    plain = paired_runs["plain"]["logger"].training()
    checked = paired_runs["checked"]["logger"].training()
    assert plain == checked
    assert any("train/accuracy" in metrics for _, metrics in plain)  # the epoch metric is there


def test_no_training_metric_is_logged_from_inside_a_check(paired_runs: dict[str, Any]) -> None:
    checked = paired_runs["checked"]
    leaks = {"train/leak", "train/leak_dict"}
    assert not [m for _, m in checked["logger"].records if leaks & m.keys()]
    assert not leaks & checked["trainer"].progress_bar_metrics.keys()
    assert not leaks & checked["trainer"].callback_metrics.keys()
    # The check's own calls hold only its keys, at the checked steps.
    checks = checked["logger"].checks()
    assert [step for step, _ in checks] == [0, 3, 4, 8]
    assert all(key.startswith("gradcheck") for _, metrics in checks for key in metrics)


class CpuMetricModule(TinyModule):
    """TinyModule whose accuracy moves its states to the CPU after each step (compute_on_cpu)."""

    def __init__(self) -> None:
        super().__init__()
        self.accuracy = torchmetrics.classification.MulticlassAccuracy(
            num_classes=3, compute_on_cpu=True
        )


def _copied(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return [_copied(v) for v in value] if isinstance(value, list) else value


class _MetricAttributes(pl.Callback):
    """Every attribute of the module's accuracy (but its module dicts) at each batch start."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        dicts = ("_modules", "_parameters", "_buffers")
        attributes = vars(module.accuracy).items()
        self.seen.append({k: _copied(v) for k, v in attributes if k not in dicts})


def test_a_check_leaves_every_attribute_of_a_metric_as_it_was(tmp_path: Path) -> None:
    # The metric's forward sets compute_on_cpu, _to_sync, ... for its batch and puts them back
    # only when `update` returns; under vmap (the check's first try) `update` raises.
    before, after = _MetricAttributes(), _MetricAttributes()
    check = GradientCheck(at_init=False, after_steps=(2,))
    _fit(tmp_path, CpuMetricModule(), [before, check, after], max_steps=3)
    assert list(check.reports) == [2]
    old, new = before.seen[2], after.seen[2]  # around the check at step 2
    assert old["compute_on_cpu"] is True and old["_update_count"] == 2
    for name in ("compute_on_cpu", "_to_sync", "_should_unsync", "_enable_grad"):
        assert (name, new[name]) == (name, old[name])
    assert new.keys() == old.keys()
    assert [name for name in old if not same(old[name], new[name])] == []  # states bit for bit


def test_state_training_step_keeps_on_the_module_is_as_without_checks(tmp_path: Path) -> None:
    # Lightning 2's training_step_outputs pattern and a plain counter: the check evaluates
    # training_step some hundred times (some under vmap) and must leave neither behind.
    modules = {}
    for name, callbacks in (("plain", []), ("checked", [GradientCheck(after_steps=(3, 9))])):
        pl.seed_everything(0, verbose=False)  # the same initial weights
        modules[name] = CollectingModule()
        _fit(tmp_path / name, modules[name], callbacks, max_epochs=2)
    plain, checked = modules["plain"], modules["checked"]
    assert checked.calls_in_float64 > 0 and plain.calls_in_float64 == 0
    assert checked.epoch_lengths == plain.epoch_lengths == [8, 8]
    assert same(checked.epoch_means, plain.epoch_means)
    assert checked.step_calls == plain.step_calls == 16


class _Stateful(TinyModule):
    """Changes every kind of attribute in training_step, on itself and on a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = ["first"]
        self.by_batch: dict[str, Any] = {"kept": 1}
        self.tags: set[str] = {"kept"}
        self.total = torch.zeros(3)
        self.latest: Any = None
        self.net[4].calls = 0
        self.aliases = [self.seen]  # another reference to the list

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        self.seen.append(loss.detach())
        self.by_batch[f"batch {batch_idx}"] = loss.detach()
        self.by_batch.pop("kept", None)
        self.tags.add(str(loss.dtype))
        self.total += 1.0  # in place
        self.latest = loss.detach()
        self.seen = [*self.seen, "rebound"]
        self.added_in_step = True
        self.net[4].calls += 1
        return loss


def _single_process_trainer(**fields: Any) -> SimpleNamespace:
    """What a check reads of the Trainer, for calling the callback's hooks directly."""
    return SimpleNamespace(
        loggers=[],
        is_global_zero=True,
        global_rank=0,
        world_size=1,
        progress_bar_callback=None,
        **fields,
    )


def test_a_check_puts_back_every_attribute_of_every_module_in_place() -> None:
    module, check = _Stateful(), GradientCheck(at_init=False, after_steps=())
    run = _single_process_trainer(global_step=0)
    seen, by_batch, tags, total = module.seen, module.by_batch, module.tags, module.total
    report = _hooks._run(check, run, module, next(iter(loader())), 0)
    assert report.verdict is Verdict.PASS and module.calls_in_float64 > 0
    assert module.seen is seen and seen == ["first"] and module.aliases[0] is seen
    assert module.by_batch is by_batch and by_batch == {"kept": 1}
    assert module.tags is tags and tags == {"kept"}
    assert module.total is total and torch.equal(total, torch.zeros(3))
    assert module.latest is None and not hasattr(module, "added_in_step")
    assert module.net[4].calls == 0


class RenormModule(TinyModule):
    """J through ``torch.renorm``, which vmap runs without a batching rule (and warns so), and a
    warning of the module's own at every evaluation."""

    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        x, y, _ = batch
        warnings.warn("the module's own warning", UserWarning, stacklevel=1)
        head = torch.renorm(cast(nn.Linear, self.net[4]).weight, p=2, dim=0, maxnorm=1.0)
        return F.cross_entropy(self(x), y) + 1e-3 * head.pow(2).sum()


def test_warnings_of_the_batched_try_are_silenced_and_the_modules_own_are_not(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    check = GradientCheck(after_steps=())
    _fit(tmp_path, RenormModule(), [check], max_steps=1)
    assert check.reports[0].verdict is Verdict.PASS
    said = [str(w.message) for w in recwarn]
    assert not [m for m in said if "batching rule" in m]
    assert "the module's own warning" in said  # from the plain evaluations


@pytest.mark.parametrize("output", ["tensor", "dict"])
def test_j_is_the_loss_training_step_returns(tmp_path: Path, output: str) -> None:
    module, check = TinyModule(output=output), GradientCheck(after_steps=())
    _fit(tmp_path, module, [check], max_steps=1)
    assert check.reports[0].verdict is Verdict.PASS
    assert module.calls_in_float64 > 0


def test_gradcheck_loss_takes_precedence_over_training_step(tmp_path: Path) -> None:
    module, check = CustomLossModule(), GradientCheck(after_steps=())
    _fit(tmp_path, module, [check], max_steps=1)
    assert module.calls_in_float64 == 0
    assert module.checked_samples


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("none", r"`TinyModule.training_step` returned NoneType, not the loss J"),
        (
            "dict-without-loss",
            r"returned a dict without a tensor 'loss' entry \(keys \['total'\]\)",
        ),
    ],
)
def test_a_training_step_without_a_loss_names_both_options(
    tmp_path: Path, output: str, message: str
) -> None:
    with pytest.raises(TypeError, match=message) as raised:
        _fit(tmp_path, TinyModule(output=output), [GradientCheck()], max_steps=1)
    assert "define `gradcheck_loss(self, batch)` on `TinyModule`" in str(raised.value)
    assert "dict with a 'loss' entry" in str(raised.value)


def test_manual_optimization_needs_gradcheck_loss(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"`ManualModule` uses manual optimization.*gradcheck_loss"
    ):
        _fit(tmp_path, ManualModule(), [GradientCheck()], max_steps=1)
    check = GradientCheck(after_steps=(2,))
    _fit(tmp_path, ManualModuleWithLoss(), [check], max_steps=3)
    assert [r.verdict for r in check.reports.values()] == [Verdict.PASS, Verdict.PASS]


def test_include_that_matches_no_parameter_fails_at_setup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`include` \['decoder\.\*'\] matches no trainable"):
        _fit(tmp_path, TinyModule(), [GradientCheck(include="decoder.*")], max_steps=1)


def test_include_narrows_theta(tmp_path: Path) -> None:
    check = GradientCheck(after_steps=(), include=["net.4.*"])
    _fit(tmp_path, TinyModule(), [check], max_steps=1)
    assert set(check.reports[0].parameters) == {"net.4.weight", "net.4.bias"}


def _broken(on_fail: Literal["warn", "raise", "ignore"]) -> tuple[Any, GradientCheck]:
    module = example("wrong_backward").DigitsWithHandWrittenLayer()
    return module, GradientCheck(after_steps=(), on_fail=on_fail, sample=200)


def _digit_batches() -> Any:
    return example("digits").DigitsData(batch_size=64)


def test_a_wrong_backward_fails_and_warns(tmp_path: Path) -> None:
    module, check = _broken("warn")
    with pytest.warns(UserWarning, match=r"GradientCheck at step 0: the gradient check failed"):
        trainer(tmp_path, callbacks=[check], max_steps=2).fit(module, _digit_batches())
    report = check.reports[0]
    assert report.verdict is Verdict.FAIL
    assert report.worst(1)[0].name == "hidden.bias"
    assert report.parameters["hidden.bias"].difference > 1e-3
    others = [r.difference for name, r in report.parameters.items() if name != "hidden.bias"]
    assert all(d <= 1e-7 for d in others)


@pytest.mark.parametrize("on_fail", ["warn", "ignore"])
def test_a_failing_check_says_its_report_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, on_fail: Literal["warn", "ignore"]
) -> None:
    # "warn": the console has the check's line, the warning is the report; "ignore": the
    # console has the report, and no warning.
    module, check = _broken(on_fail)
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        trainer(tmp_path, callbacks=[check], max_steps=1).fit(module, _digit_batches())
    report = check.reports[0]
    head = "GradientCheck at step 0: "
    console = [r.getMessage() for r in caplog.records if r.getMessage().startswith(head)]
    ours = [w for w in warned if issubclass(w.category, GradientCheckWarning)]
    shown = console + [
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in ours
    ]
    assert sum(text.count(report.message) for text in shown) == 1
    assert sum(text.count("worst components:") for text in shown) == 1
    if on_fail == "ignore":
        assert ours == [] and console == [f"{head}{_text.headline(report)}\n{report}"]
        return
    assert console == [f"{head}{_text.headline(report)}"]
    (warning,) = ours
    assert str(warning.message) == f"{head}the gradient check failed.\n{report}"
    assert shown[1].startswith("gradwatch.callbacks:0: GradientCheckWarning: " + head)
    assert "_warn(" not in shown[1]  # no source line of ours under the report


def test_directions_mode_finds_the_wrong_layer(tmp_path: Path) -> None:
    module = example("wrong_backward").DigitsWithHandWrittenLayer()
    check = GradientCheck(after_steps=(), on_fail="ignore", mode="directions")
    trainer(tmp_path, callbacks=[check], max_steps=1).fit(module, _digit_batches())
    report = check.reports[0]
    assert report.mode == "directions" and report.verdict is Verdict.FAIL
    assert report.worst(1)[0].name == "hidden.bias"
    assert report.components_checked < report.components_total


def test_on_fail_raise_stops_fit_with_the_report(tmp_path: Path) -> None:
    module, check = _broken("raise")
    run = trainer(tmp_path, callbacks=[check], max_steps=2)
    with pytest.raises(
        GradientCheckError, match=r"(?s)step 0: the gradient check failed.*hidden\.bias"
    ):
        run.fit(module, _digit_batches())
    assert run.global_step == 0
    assert check.reports[0].parameters["hidden.bias"].difference > 1e-3


def test_on_fail_ignore_only_logs(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    module, check = _broken("ignore")
    trainer(tmp_path, callbacks=[check], max_steps=1).fit(module, _digit_batches())
    assert check.reports[0].verdict is Verdict.FAIL
    assert not [w for w in recwarn if "GradientCheck" in str(w.message)]


@pytest.fixture
def console() -> Iterator[list[str]]:
    """The messages of Lightning's rank-zero info logger."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler, log = Collect(level=logging.INFO), rank_zero.log
    log.addHandler(handler)
    yield lines
    log.removeHandler(handler)


def test_console_has_one_line_per_check_and_the_report_when_it_fails(
    tmp_path: Path, console: list[str]
) -> None:
    _fit(tmp_path, TinyModule(), [GradientCheck(after_steps=(2,))], max_steps=3)
    lines = [m for m in console if m.startswith("GradientCheck at step")]
    assert [m.split(":")[0] for m in lines] == [
        "GradientCheck at step 0",
        "GradientCheck at step 2",
    ]
    assert all(": pass: " in m and "83 of 83 components" in m and "\n" not in m for m in lines)
    console.clear()
    module, check = _broken("ignore")
    trainer(tmp_path, callbacks=[check], max_steps=1).fit(module, _digit_batches())
    (failed,) = [m for m in console if m.startswith("GradientCheck at step 0")]
    assert ": fail: " in failed and "worst components" in failed and "hidden.bias[" in failed


def test_a_run_that_ends_before_a_scheduled_check_says_so(
    tmp_path: Path, console: list[str]
) -> None:
    _fit(tmp_path, TinyModule(), [GradientCheck(after_steps=(2, 50))], max_steps=3)
    assert any("before the check(s) scheduled at step(s) [50]" in m for m in console)


@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable:UserWarning")
@pytest.mark.parametrize(
    ("first_max_steps", "remaining"),
    [(4, [6]), (2, [2, 6])],
    ids=["saved-between-checks", "saved-at-a-due-step"],
)
def test_resume_from_a_checkpoint_runs_only_the_remaining_checks(
    tmp_path: Path, first_max_steps: int, remaining: list[int]
) -> None:
    first = GradientCheck(after_steps=(2, 6))
    run = _fit(tmp_path, TinyModule(), [first], max_steps=first_max_steps)
    checkpoint = tmp_path / "between.ckpt"
    run.save_checkpoint(checkpoint)
    second = GradientCheck(after_steps=(2, 6))
    pl.seed_everything(0, verbose=False)
    trainer(tmp_path, callbacks=[second], max_steps=8).fit(
        TinyModule(), loader(), ckpt_path=checkpoint
    )
    assert list(second.reports) == remaining
    assert second.checked_steps == (0, 2, 6)


class _SaveAt(pl.Callback):
    """Saves a checkpoint in the middle of step ``step``, after the checks that precede it."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step and not self.path.exists():
            trainer.save_checkpoint(self.path)


@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable:UserWarning")
def test_resume_from_a_checkpoint_saved_right_after_a_check_does_not_repeat_it(
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / "mid-step.ckpt"
    first = GradientCheck(after_steps=(2, 6))
    _fit(tmp_path, TinyModule(), [first, _SaveAt(2, checkpoint)], max_steps=4)
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 2
    second = GradientCheck(after_steps=(2, 6))
    pl.seed_everything(0, verbose=False)
    trainer(tmp_path, callbacks=[second], max_steps=8).fit(
        TinyModule(), loader(), ckpt_path=checkpoint
    )
    assert list(second.reports) == [6]
    assert second.checked_steps == (0, 2, 6)


def test_a_step_due_in_the_middle_of_gradient_accumulation_waits_for_the_next_step() -> None:
    # Only reachable by resuming from a checkpoint saved mid-accumulation: no trainer needed.
    check, module = GradientCheck(at_init=False, after_steps=(2,)), TinyModule()
    batch = next(iter(loader(shuffle=False)))
    run = _single_process_trainer(global_step=2, accumulate_grad_batches=3)
    check.on_train_start(run, module)
    check.on_train_batch_start(run, module, batch, batch_idx=7)  # the 2nd of 3 micro-batches
    assert check.reports == {}
    run.global_step = 3
    check.on_train_batch_start(run, module, batch, batch_idx=9)  # the next optimizer step
    assert list(check.reports) == [3]


def test_state_dict_round_trip_and_old_checkpoints() -> None:
    check = GradientCheck()
    check.load_state_dict({"checks": [{"step": 0, "difference": 1e-9, "verdict": "pass"}]})
    assert check.checked_steps == (0,)
    assert GradientCheck().state_dict() == {"checks": []}
    restored = GradientCheck()
    restored.load_state_dict(check.state_dict())
    assert restored.checked_steps == (0,)
    restored.load_state_dict({})  # a checkpoint written before the callback kept state
    assert restored.checked_steps == ()


@pytest.mark.parametrize(
    "arguments",
    [
        {"after_steps": (5,)},
        {"at_init": False},
        {"every_n_steps": 10},
        {"include": "net.0.*"},
        {"mode": "directions"},
        {"sample": 20},
        {"epsilon": "auto"},
        {"dropout": "freeze"},
        {"seed": 1},
        {"thresholds": {"pass_max": 1e-6}},
        {"thresholds": {"warn_max": 1e-2}},
        {"name": "gradcheck/encoder"},
    ],
    ids=str,
)
def test_state_key_tells_checks_apart(arguments: dict[str, Any]) -> None:
    # One state per check: two callbacks that check differently keep separate states.
    assert GradientCheck().state_key != GradientCheck(**arguments).state_key
    assert GradientCheck().state_key.startswith("GradientCheck{")


def test_state_key_ignores_what_only_reports() -> None:
    reported = GradientCheck(on_fail="raise", log_worst=3)
    assert GradientCheck().state_key == reported.state_key


def test_one_callback_reused_for_another_fit_checks_that_fit_too(tmp_path: Path) -> None:
    # e.g. the folds of a cross-validation, each a fresh Trainer and model
    check = GradientCheck(after_steps=(3,))
    _fit(tmp_path / "first", TinyModule(), [check], max_steps=5)
    first = dict(check.reports)
    assert list(first) == [0, 3]
    _fit(tmp_path / "second", TinyModule(), [check], max_steps=5)
    assert list(check.reports) == [0, 3]
    assert all(check.reports[step] is not first[step] for step in (0, 3))  # its own
    assert check.checked_steps == (0, 3)


def test_a_module_that_builds_its_layers_in_configure_model_is_checked(tmp_path: Path) -> None:
    check = GradientCheck(after_steps=(2,), include="net.*")
    _fit(tmp_path, ConfiguredModule(), [check], max_steps=3)
    assert [r.verdict for r in check.reports.values()] == [Verdict.PASS, Verdict.PASS]
    assert check.reports[0].components_total == 83


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_a_check_due_on_a_batch_training_step_skips_runs_on_the_next_batch(
    tmp_path: Path, console: list[str]
) -> None:
    # training_step returns None for batch 2 (Lightning skips it; global_step goes on).
    check = GradientCheck(after_steps=(2,), on_fail="raise")
    run = _fit(tmp_path, SkippingModule(skipped=(2,)), [check], max_steps=5)
    assert run.global_step == 5
    assert list(check.reports) == [0, 3]
    assert [r.verdict for r in check.reports.values()] == [Verdict.PASS, Verdict.PASS]
    note = "postponed from step 2: `training_step` returned None for that step's batch"
    assert note in check.reports[3].notes
    assert any(
        m.startswith("GradientCheck at step 2: postponed to the next batch") for m in console
    )


def test_a_first_check_on_a_skipped_batch_still_stops_the_run(tmp_path: Path) -> None:
    # No check of this run has found J yet: the module may never return it.
    with pytest.raises(TypeError, match=r"`SkippingModule.training_step` returned NoneType"):
        _fit(tmp_path, SkippingModule(skipped=(0,)), [GradientCheck(on_fail="ignore")], max_steps=2)


def test_with_two_optimizers_a_check_logs_at_the_step_of_its_batch(tmp_path: Path) -> None:
    # Manual optimization, two optimizer steps per batch: global_step 0, 2, 4, ... at batches
    # 0, 1, 2, ...; the schedule reads global_step, the logged x is Lightning's own (the batch).
    module, logger = TwoOptimizerModule(), RecordingLogger()
    check = GradientCheck(after_steps=(3, 6))
    _fit(tmp_path, module, [check], shuffle=False, max_steps=12, logger=logger)
    assert list(check.reports) == [0, 4, 6]
    firsts = sorted({samples[0] for samples in module.probe.checked_samples})
    assert firsts == [0, 16, 24]  # batches 0, 2 and 3
    curve = {s: m["train/first_sample"] for s, m in logger.training() if "train/first_sample" in m}
    assert [curve.get(step) for step, _ in logger.checks()] == [0.0, 16.0, 24.0]


class _Flat(TinyModule):
    """J = 1 + 1e-30 × the loss: its gradient is far inside J's rounding, nothing can be judged."""

    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        return 1.0 + 1e-30 * self.training_step(batch, 0)


@pytest.mark.parametrize("on_fail", ["warn", "raise"])
def test_a_check_that_judges_nothing_warns_and_never_stops_fit(
    tmp_path: Path, on_fail: str
) -> None:
    check = GradientCheck(after_steps=(), on_fail=on_fail)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="the gradient check could not judge the gradients"):
        _fit(tmp_path, _Flat(), [check], max_steps=2)
    assert check.reports[0].verdict is Verdict.NOT_JUDGED


class _PartlyFlat(TinyModule):
    """TinyModule plus a tensor whose gradient (1e-30) is far inside J's noise at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.idle = nn.Parameter(torch.ones(3))

    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        return self.training_step(batch, 0) + 1e-30 * self.idle.sum()


@pytest.mark.parametrize(
    ("options", "warned"),
    [({}, True), ({"warn_not_judged": False}, False), ({"on_fail": "ignore"}, False)],
)
def test_a_pass_with_tensors_not_judged_says_what_it_rests_on(
    tmp_path: Path, options: dict[str, Any], warned: bool
) -> None:
    check = GradientCheck(after_steps=(), **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, _PartlyFlat(), [check], max_steps=1)
    report = check.reports[0]
    assert report.verdict is Verdict.PASS
    skipped = report.parameters_with(Verdict.NOT_JUDGED)
    assert "idle" in skipped  # and net.0.bias, cancelled by the BatchNorm after it
    said = [str(w.message) for w in caught if "passed on what it could judge" in str(w.message)]
    assert bool(said) == warned
    if warned:
        share = f"{report.judged_share:.0%}"
        assert f"pass on {share} of components; not judged: {len(skipped)} tensors (" in said[0]
        assert "idle" in said[0] and "epsilon='auto'" in said[0]
