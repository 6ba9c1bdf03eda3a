"""Errors about the user's inputs are raised from the public call (gradwatch/check/input_errors.py):
an argument error found deep inside the check comes out of ``check_module`` / ``check_function``
with no frame of ours below and no chain; a batch the model's layers cannot take is told in the
user's own dtypes. The user's own errors and errors of ours keep their tracebacks."""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
import gradwatch.evidence.probing
from gradwatch import Verdict, check_module
from gradwatch.arguments import removed_keywords
from tests.test_module import changes, snapshot

Batch = tuple[torch.Tensor, torch.Tensor]
MODULE = Path(gradwatch.module.__file__).name  # type: ignore[attr-defined]
GUARD = Path(inspect.getfile(removed_keywords)).name


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def _mse(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _last_frame(err: BaseException) -> traceback.FrameSummary:
    return traceback.extract_tb(err.__traceback__)[-1]


def _called_backward(model: nn.Module, batch: Batch) -> torch.Tensor:
    cost = _mse(model, batch)
    cost.backward()
    return cost


MODULE_CASES = {
    "no-tensor": (lambda m, b: 1.0, TypeError, "`loss_fn` must return the cost J as a scalar"),
    "no-scalar": (lambda m, b: m(b[0]), ValueError, "`loss_fn` must return a scalar (one"),
    "detached": (lambda m, b: _mse(m, b).detach(), ValueError, "`loss_fn` must return J com"),
    "calls-backward": (_called_backward, TypeError, "`loss_fn` must return the cost J without"),
    "no-callable": (None, TypeError, "`loss_fn` must be a callable (model, batch) -> J"),
}


@pytest.mark.parametrize(("loss_fn", "error", "start"), MODULE_CASES.values(), ids=MODULE_CASES)
def test_an_argument_error_found_deep_is_raised_from_check_module(
    loss_fn: Callable[..., Any], error: type[Exception], start: str
) -> None:
    model = _model()
    batch = (torch.randn(8, 3), torch.randn(8, 1))
    before = snapshot(model)
    with pytest.raises(error) as raised:
        check_module(model, loss_fn, batch)
    assert str(raised.value).startswith(start)
    last = _last_frame(raised.value)
    assert (Path(last.filename).name, last.name) == (MODULE, "check_module")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert changes(before, model) == []


def test_an_argument_error_found_deep_is_raised_from_check_function() -> None:
    # J is read inside the check (its first evaluation), where a J of no number is refused.
    with pytest.raises(TypeError, match=r"^`cost` must return a float J\(θ\); got str") as raised:
        gradwatch.check_function(lambda t: "one", np.ones(2), np.ones(2))  # type: ignore[arg-type, return-value]
    last = _last_frame(raised.value)
    assert (Path(last.filename).name, last.name) == ("function.py", "check_function")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_an_integer_batch_for_a_float32_model_names_the_users_dtypes() -> None:
    model = _model()
    batch = (torch.randint(0, 5, (8, 3)), torch.randn(8, 1))
    before = snapshot(model)
    with pytest.raises(TypeError) as raised:
        check_module(model, _mse, batch)
    message = str(raised.value)
    assert message.startswith(
        "`batch` must suit the model: its parameters are float32, and the batch holds "
        "batch[0] int64 of shape (8, 3). J stopped with: mat1 and mat2 must have the same "
        "dtype, but got Long and Double (torch names the check's float64 copy of the model, "
        "not your model). Pass floating-point tensors to the layers that multiply them"
    )
    last = _last_frame(raised.value)
    assert (Path(last.filename).name, last.name) == (MODULE, "check_module")
    # The test's frame, the guard that names removed keywords (0.3.0), check_module: no frame of
    # the check's inner modules.
    frames = [
        (Path(f.filename).name, f.name) for f in traceback.extract_tb(raised.value.__traceback__)
    ]
    assert frames[1:] == [(GUARD, "checked"), (MODULE, "check_module")]
    assert changes(before, model) == []
    # Its twin: the same batch as floats is checked, and passes.
    floats = (batch[0].float(), batch[1])
    assert check_module(model, _mse, floats, sample=5).verdict is Verdict.PASS


def test_integer_labels_are_no_mismatch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    report = check_module(
        model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), (x, labels), sample=5
    )
    assert report.verdict is Verdict.PASS


def test_the_users_own_error_keeps_its_frames() -> None:
    # A message in the form of ours, raised by the user's code: theirs, with its traceback.
    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        raise ValueError("`lr` must be positive; got -1")

    with pytest.raises(ValueError, match=r"^`lr` must be positive") as raised:
        check_module(_model(), loss_fn, (torch.randn(8, 3), torch.randn(8, 1)))
    assert _last_frame(raised.value).name == "loss_fn"


def test_an_error_of_ours_keeps_its_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug inside gradwatch (planted: the evidence step meets a None) is no argument error:
    # it comes out with the frame that raised it, for the bug report.
    def broken(*args: Any, **kwargs: Any) -> Any:
        return None + 1  # type: ignore[operator]

    monkeypatch.setattr(gradwatch.evidence.probing, "gather_evidence", broken)
    with pytest.raises(TypeError, match="unsupported operand") as raised:
        gradwatch.check_function(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))
    assert _last_frame(raised.value).name == "broken"


def test_a_mismatch_of_the_users_own_code_stays_its_own() -> None:
    # The batch is all floats; the loss makes an integer tensor itself: torch's error, as is.
    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        return _mse(model, (batch[0].long(), batch[1]))

    with pytest.raises(RuntimeError, match=r"^mat1 and mat2 must have the same dtype") as raised:
        check_module(_model(), loss_fn, (torch.randn(8, 3), torch.randn(8, 1)))
    frames = [f.name for f in traceback.extract_tb(raised.value.__traceback__)]
    assert "loss_fn" in frames and frames[-1] != "check_module"
