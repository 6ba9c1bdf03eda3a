"""GradientCheck when things go wrong: a check that hits NaN, runs out of memory or whose loss
raises is a failed check and training goes on untouched (unless ``on_fail="raise"``); Ctrl+C in
the middle of a check leaves the run as it was before the check, and a checkpoint saved then
resumes with the interrupted check still due; a module the check cannot use is told how to fix it.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import OnExceptionCheckpoint
from torch import nn

from gradwatch import PartitionError, Verdict
from gradwatch.callbacks import GradientCheck, GradientCheckError
from gradwatch.callbacks._faults import same_batch
from gradwatch.integration.faults import UnsharedBatch
from tests.callback_models import (
    QUIET_LIGHTNING,
    FaultyModule,
    RecordingLogger,
    TinyModule,
    loader,
    raised_at,
    same,
    trainer,
)

pytestmark = pytest.mark.filterwarnings(
    *QUIET_LIGHTNING, "ignore:.*your dataloader is not resumable:UserWarning"
)

OnFail = Literal["warn", "raise", "ignore"]
STEPS = 6
BATCH = "list of 3: Tensor[8, 4] float32, Tensor[8] int64, Tensor[8] int64"


REASONS = {
    "raise": "the check could not finish: ValueError: the loss cannot use this batch "
    f"(J on this step's batch: {BATCH})"
    + raised_at(FaultyModule.gradcheck_loss, "raise ValueError"),
    "oom": f"the check could not finish: RuntimeError: {FaultyModule.OOM} (J on this step's "
    f"batch: {BATCH})" + raised_at(FaultyModule.gradcheck_loss, "raise RuntimeError"),
    "nan": "the loss J(θ) is nan: fix the forward pass before checking gradients",
    "inf": "the loss J(θ) is inf: fix the forward pass before checking gradients",
}


def _fit(
    root: Path,
    module: pl.LightningModule,
    callbacks: list[Any],
    ckpt_path: str | None = None,
    **options: Any,
) -> Any:
    pl.seed_everything(0, verbose=False)
    run = trainer(root, callbacks=callbacks, **options)
    run.fit(module, loader(), **({"ckpt_path": ckpt_path} if ckpt_path else {}))
    return run


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The run without the callback: final weights and optimizer state."""
    pl.seed_everything(0, verbose=False)
    module = TinyModule()
    run = _fit(tmp_path_factory.mktemp("plain"), module, [], max_steps=STEPS)
    return {"weights": module.state_dict(), "optimizer": run.optimizers[0].state_dict()}


def _faulty(fault: str, **options: Any) -> FaultyModule:
    pl.seed_everything(0, verbose=False)  # TinyModule's initial weights
    return FaultyModule(fault, step=2, **options)


@pytest.mark.parametrize("on_fail", ["warn", "ignore"])
@pytest.mark.parametrize(
    ("fault", "from_call"),
    [("raise", 1), ("oom", 3), ("nan", 1), ("inf", 1)],
    ids=["loss-raises", "out-of-memory-mid-check", "nan", "inf"],
)
def test_a_fault_is_a_failed_check_and_training_goes_on_untouched(
    tmp_path: Path, plain: dict[str, Any], fault: str, from_call: int, on_fail: OnFail
) -> None:
    module, logger = _faulty(fault, from_call=from_call), RecordingLogger()
    check = GradientCheck(after_steps=(2, 4), on_fail=on_fail)
    with pytest.warns() if on_fail == "warn" else nullcontext() as warned:
        run = _fit(tmp_path, module, [check], max_steps=STEPS, logger=logger)
    assert {s: r.verdict for s, r in check.reports.items()} == {
        0: Verdict.PASS,
        2: Verdict.FAIL,
        4: Verdict.PASS,
    }
    assert check.reports[2].failure == REASONS[fault]
    assert same(module.state_dict(), plain["weights"])  # bit for bit
    assert same(run.optimizers[0].state_dict(), plain["optimizer"])
    (logged,) = [m for s, m in logger.checks() if s == 2]
    assert logged["gradcheck/verdict"] == 2.0
    if fault in ("raise", "oom"):  # nothing was compared: the difference is unknown, not 0
        assert math.isnan(logged["gradcheck/difference"])
    if warned is not None:
        head = "GradientCheck at step 2: the gradient check failed."
        (message,) = [str(w.message) for w in warned if str(w.message).startswith(head)]
        assert REASONS[fault] in message


@pytest.mark.parametrize("fault", ["raise", "oom", "nan", "inf"])
def test_on_fail_raise_stops_the_run_with_the_reason(tmp_path: Path, fault: str) -> None:
    module, check = _faulty(fault), GradientCheck(after_steps=(2,), on_fail="raise")
    with pytest.raises(GradientCheckError) as raised:
        _fit(tmp_path, module, [check], max_steps=STEPS)
    assert str(raised.value).startswith(
        "GradientCheck at step 2: the gradient check failed (on_fail='raise').\n"
    )
    assert REASONS[fault] in str(raised.value)
    if fault in ("raise", "oom"):  # the loss's own error, kept as the cause
        assert type(raised.value.__cause__).__name__ in {"ValueError", "RuntimeError"}
    assert raised.value.step == 2


# -- Ctrl+C in the middle of a check ----------------------------------------------------------


@pytest.fixture
def sigint_restored() -> Iterator[None]:
    """Lightning ignores SIGINT after a KeyboardInterrupt (a second Ctrl+C must not cut its
    shutdown short); give pytest its handler back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


class _Snapshots(pl.Callback):
    """Everything a check must not change: taken at the start of ``step`` (before the check,
    which runs after this callback) and when the run is interrupted."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None

    @staticmethod
    def _state(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "weights": module.state_dict(),
                "grads": [p.grad for p in module.parameters()],
                "training": [m.training for m in module.modules()],
                "optimizer": trainer.optimizers[0].state_dict(),
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state()[1],
                "python": random.getstate(),
                "metric": module.accuracy.metric_state,  # type: ignore[union-attr]
            }
        )

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        if trainer.global_step == self.step and self.before is None:
            self.before = self._state(trainer, module)

    def on_exception(self, trainer: pl.Trainer, module: Any, exception: BaseException) -> None:
        self.after = self._state(trainer, module)


# Lightning's advice on picking a checkpoint to resume from, for a first fit with checkpointing.
@pytest.mark.filterwarnings(
    "ignore:.*was called without a model:UserWarning",
    "ignore:.*there is no last checkpoint available:UserWarning",
)
@pytest.mark.parametrize("from_call", [1, 4])  # the gradient's evaluation; amid the pairs
def test_keyboard_interrupt_mid_check_leaves_the_run_as_before_and_resumes_the_check(
    tmp_path: Path, sigint_restored: None, from_call: int
) -> None:
    snapshots, saved = _Snapshots(step=2), OnExceptionCheckpoint(tmp_path, "interrupted")
    module = _faulty("interrupt", from_call=from_call)
    first = GradientCheck(after_steps=(2, 4))
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl+C
        _fit(
            tmp_path, module, [snapshots, first, saved], max_steps=STEPS, enable_checkpointing=True
        )
    assert module.faulty_calls == from_call  # stopped inside the check
    assert snapshots.before is not None and snapshots.after is not None
    assert same(snapshots.before, snapshots.after)
    assert first.checked_steps == (0,)  # the interrupted check is not recorded as done
    resumed = GradientCheck(after_steps=(2, 4))
    _fit(tmp_path, TinyModule(), [resumed], max_steps=STEPS, ckpt_path=saved.ckpt_path)
    assert list(resumed.reports) == [2, 4]  # run again after the resume, not skipped
    assert resumed.checked_steps == (0, 2, 4)


# -- a module the check cannot use: the run stops at once, whatever on_fail says ---------------

OPTIONS = (
    "return the loss from `training_step` (a tensor, or a dict with a 'loss' entry), or define "
    "`gradcheck_loss(self, batch)` on `TinyModule` returning the scalar cost J"
)


class _VectorLoss(TinyModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        return torch.nn.functional.cross_entropy(self(x), y, reduction="none")


class _NumberLoss(TinyModule):
    def gradcheck_loss(self, batch: Any) -> float:
        return 1.0


class _DictBatchLoss(TinyModule):
    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self(batch["x"]), batch["y"])


class _Frozen(TinyModule):
    def __init__(self) -> None:
        super().__init__()
        self.requires_grad_(False)


@pytest.mark.parametrize("on_fail", ["warn", "raise", "ignore"])
@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (
            lambda: TinyModule(output="none"),
            TypeError,
            "GradientCheck: `TinyModule.training_step` returned NoneType, not the loss J; "
            + OPTIONS,
        ),
        (
            _VectorLoss,
            TypeError,
            "GradientCheck: `_VectorLoss.training_step` returned a loss of shape [8]; J must be a "
            "scalar (one element) tensor, e.g. the mean over the batch",
        ),
        (
            _NumberLoss,
            TypeError,
            "GradientCheck: `_NumberLoss.gradcheck_loss` returned float; it must return the scalar "
            "cost J as a tensor computed from the module's parameters",
        ),
        (
            _Frozen,
            ValueError,
            "GradientCheck: `model` has no trainable parameters: it needs at least one with "
            "requires_grad=True; got a _Frozen with 6 parameter tensors, none trainable. There is "
            "no gradient to check; unfreeze the layers you want checked",
        ),
    ],
    ids=["training-step-returns-none", "non-scalar-loss", "gradcheck-loss-no-tensor", "frozen"],
)
def test_a_module_the_check_cannot_use_stops_the_run_with_what_to_do(
    tmp_path: Path, build: Any, error: type[Exception], message: str, on_fail: OnFail
) -> None:
    pl.seed_everything(0, verbose=False)
    module = build()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(error) as raised:
        _fit(tmp_path, module, [GradientCheck(on_fail=on_fail)], max_steps=1)
    assert str(raised.value) == message
    assert same(module.state_dict(), before)  # stopped before any step


def test_a_batch_the_loss_cannot_use_is_a_failed_check_naming_the_batch(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    check = GradientCheck(after_steps=())
    with pytest.warns(UserWarning, match="the gradient check failed"):
        run = _fit(tmp_path, _DictBatchLoss(), [check], max_steps=2)
    assert check.reports[0].failure == (
        "the check could not finish: TypeError: list indices must be integers or slices, not str "
        f"(J on this step's batch: {BATCH})"
        + raised_at(_DictBatchLoss.gradcheck_loss, 'batch["x"]')
    )
    assert run.global_step == 2


# -- under DDP, a batch that cannot be sent to the other processes -----------------------------


class _Strategy:
    """Process ``rank`` of two, the other process's side played by ``received`` (what process
    0 broadcasts) and ``others_failed`` (what the other process tells)."""

    def __init__(self, rank: int, received: Any = None, others_failed: bool = False) -> None:
        self.rank, self.received, self.others_failed = rank, received, others_failed

    def broadcast(self, value: Any, src: int = 0) -> Any:
        return value if self.rank == src else self.received

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision or self.others_failed


def _process(rank: int, **strategy: Any) -> SimpleNamespace:
    return SimpleNamespace(world_size=2, global_rank=rank, strategy=_Strategy(rank, **strategy))


def test_a_batch_that_does_not_pickle_fails_in_process_0_and_is_named() -> None:
    batch = {"x": torch.zeros(2), "lock": threading.Lock()}
    with pytest.raises(UnsharedBatch) as raised:
        same_batch(_process(0, others_failed=False), batch)
    assert str(raised.value) == (
        "process 0's batch cannot be shared with the other processes (it does not pickle: "
        "TypeError: cannot pickle '_thread.lock' object); under DDP the check's batch must pickle"
    )


def test_the_other_processes_hear_of_it() -> None:
    told = (b"", "it does not pickle: TypeError: cannot pickle '_thread.lock' object")
    with pytest.raises(PartitionError, match="process 0's batch could not be shared"):
        same_batch(_process(1, received=told, others_failed=True), None)


def test_a_batch_a_process_cannot_unpickle_fails_there() -> None:
    with pytest.raises(UnsharedBatch, match=r"\(process 1 cannot unpickle it: UnpicklingError"):
        same_batch(_process(1, received=(b"not a pickle", "")), None)


def test_process_0s_batch_reaches_every_process() -> None:
    batch = [torch.arange(3), {"y": torch.ones(2)}]
    received = same_batch(_process(1, received=(pickle.dumps(batch), "")), None)
    assert same(received, batch)


# -- under DDP, a loss that runs collectives ----------------------------------------------------

SYNC_BATCHNORM = (
    "GradientCheck: `TinyModule` has SyncBatchNorm layers (net.1) and the run has 2 processes; "
    "the loss a check evaluates must not run collectives (each process evaluates J for its own "
    "share of the components, so SyncBatchNorm would wait forever for the others). Check the "
    "model with plain BatchNorm (Trainer(sync_batchnorm=False), no convert_sync_batchnorm) or "
    "in a single process (devices=1)"
)


def _synced() -> TinyModule:
    pl.seed_everything(0, verbose=False)
    return cast(TinyModule, nn.SyncBatchNorm.convert_sync_batchnorm(TinyModule()))


@pytest.mark.parametrize("hook", ["setup", "on_train_start"])
def test_syncbatchnorm_under_ddp_stops_the_run_before_any_check(hook: str) -> None:
    # setup: converted by the user; on_train_start: by Trainer(sync_batchnorm=True), after setup.
    check, module, process = GradientCheck(), _synced(), _process(1)
    process.global_step = 0
    with pytest.raises(ValueError) as raised:
        if hook == "setup":
            check.setup(process, module, "fit")
        else:
            check.on_train_start(process, module)
    assert str(raised.value) == SYNC_BATCHNORM


def test_syncbatchnorm_in_a_single_process_is_checked(tmp_path: Path) -> None:
    # Without a process group SyncBatchNorm is BatchNorm: nothing to wait for.
    check = GradientCheck(after_steps=(1,))
    _fit(tmp_path, _synced(), [check], max_steps=2)
    assert [r.verdict for r in check.reports.values()] == [Verdict.PASS, Verdict.PASS]


# -- whose error: the user's code fails the check, gradwatch's own error is ours ----------------


class _Bug:
    """Raises ``error`` at its ``at``-th call and passes ``function`` through otherwise: an error
    planted inside gradwatch, at the second check of a run."""

    def __init__(self, function: Any, error: Exception, at: int = 2) -> None:
        self.function, self.error, self.at, self.calls = function, error, at, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return self.function(*args, **kwargs)


@pytest.mark.parametrize("on_fail", ["warn", "raise"])
def test_an_error_inside_gradwatch_is_ours_and_training_goes_on_untouched(
    tmp_path: Path, plain: dict[str, Any], monkeypatch: pytest.MonkeyPatch, on_fail: OnFail
) -> None:
    import gradwatch.evidence.probing

    bug = IndexError("index 83 is out of bounds for axis 0 with size 83")
    monkeypatch.setattr(
        gradwatch.evidence.probing,
        "gather_evidence",
        _Bug(gradwatch.evidence.probing.gather_evidence, bug),
    )
    logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    module, check = _faulty("none"), GradientCheck(after_steps=(2, 4), on_fail=on_fail)
    with pytest.warns(UserWarning) as warned:
        run = _fit(tmp_path, module, [check], max_steps=STEPS, logger=logger)
    saved = Path(logger.log_dir) / "gradcheck" / "step_2_error.txt"
    # (the checks that pass with tensors not judged say so in warnings of their own)
    (told,) = [str(w.message) for w in warned if "inside gradwatch" in str(w.message)]
    assert told.startswith(
        f"GradientCheck at step 2: an error inside gradwatch {gradwatch.__version__}, not in "
        "your model or loss: IndexError: index 83 is out of bounds for axis 0 with size 83 at "
    )
    assert (
        "This is a bug in gradwatch, not a verdict on your gradients: nothing was logged for "
        f"this check, and training goes on. Please report it with the traceback saved in {saved} "
        f"and these versions: gradwatch {gradwatch.__version__}, torch {torch.__version__}"
    ) in told
    assert "Traceback (most recent call last)" in saved.read_text()
    assert list(check.reports) == [0, 4] and check.checked_steps == (0, 4)
    assert sorted(p.name for p in saved.parent.iterdir()) == [
        "step_0.json",
        "step_2_error.txt",
        "step_4.json",
    ]
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header, rows = metrics[0].split(","), [m.split(",") for m in metrics[1:]]
    verdict, step = header.index("gradcheck/verdict"), header.index("step")
    assert [int(r[step]) for r in rows if r[verdict]] == [0, 4]  # no verdict at step 2
    assert same(module.state_dict(), plain["weights"])  # bit for bit
    assert same(run.optimizers[0].state_dict(), plain["optimizer"])


def test_an_error_writing_the_logs_is_ours_and_the_check_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradwatch.integration import card as _card

    monkeypatch.setattr(_card, "render", _Bug(_card.render, AttributeError("'NoneType' object")))
    check = GradientCheck(after_steps=(2,))
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    with pytest.warns(UserWarning, match="an error inside gradwatch .* while writing the logs"):
        run = _fit(tmp_path, _faulty("none"), [check], max_steps=4, logger=logger)
    assert [r.verdict for r in check.reports.values()] == [Verdict.PASS, Verdict.PASS]
    assert run.global_step == 4


class _ForwardFails(TinyModule):
    """A forward that breaks in float64, as inside a check (J on the check's copies)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return self.net(x[:, :3])  # mat1 and mat2 shapes cannot be multiplied
        return self.net(x)


class _WrongShapeBackward(torch.autograd.Function):
    """tanh with a backward that returns a gradient of the wrong shape."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return (grad * (1 - torch.tanh(x) ** 2))[:, :1]  # the bug: one column


class _BackwardFails(TinyModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.net[1](self.net[0](x))
        return self.net[4](_WrongShapeBackward.apply(hidden))

    def gradcheck_loss(self, batch: Any) -> torch.Tensor:
        x, y, _ = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch  # trains without the custom backward
        return torch.nn.functional.cross_entropy(self.net(x), y)


@pytest.mark.parametrize(
    ("build", "error", "where"),
    [
        (
            _ForwardFails,
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x3 and 4x8)",
            raised_at(_ForwardFails.forward, "self.net(x[:, :3])"),
        ),
        (
            _BackwardFails,
            "RuntimeError: Function _WrongShapeBackwardBackward returned an invalid gradient",
            "",
        ),
    ],
    ids=["forward", "custom-backward"],
)
def test_an_error_in_the_users_model_is_a_failed_check_saying_where(
    tmp_path: Path, build: Any, error: str, where: str
) -> None:
    pl.seed_everything(0, verbose=False)
    check = GradientCheck(after_steps=())
    with pytest.warns(UserWarning, match="the gradient check failed"):
        _fit(tmp_path, build(), [check], max_steps=2)
    report = check.reports[0]
    assert report.verdict is Verdict.FAIL
    assert str(report.failure).startswith(f"the check could not finish: {error}")
    assert where in str(report.failure)


def test_a_long_error_message_is_cut_between_words() -> None:
    from gradwatch.integration import faults as _faults

    words = " ".join(f"word{i}" for i in range(100))
    shown = _faults.reason(ValueError(words), torch.zeros(1)).split("ValueError: ")[1]
    shown = shown.split(" (J on")[0]
    kept = shown.removesuffix(" …")
    assert shown.endswith(" …") and words.startswith(kept) and words[len(kept)] == " "
