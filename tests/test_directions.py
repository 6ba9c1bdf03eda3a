"""The directional mode finds the tensor whose backward is wrong and localizes the wrong
components inside it without visiting all of them; correct models pass."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import check_module
from gradwatch.check.directions import directional_step
from tests.nets import GatedNet, classification_batch, cross_entropy


class RowBugLinear(torch.autograd.Function):
    """y = x Wᵀ + b, written by hand; with ``row`` set, that row of dW gets the wrong sign.

    It can run under vmap (``generate_vmap_rule``), so the check stays vectorized.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, row: int) -> Any:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, _, row = inputs
        ctx.save_for_backward(x, weight)
        ctx.row = row

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        grad_weight = grad.T @ x
        if ctx.row >= 0:
            grad_weight[ctx.row] = -grad_weight[ctx.row]
        return grad @ weight, grad_weight, grad.sum(0), None


class Net(nn.Module):
    """inp (Linear) → tanh → mid (hand-written Linear, 4096 weights) → tanh → head (Linear)."""

    def __init__(self, row: int = -1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.row = row
        self.inp = nn.Linear(16, 64)
        self.mid = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(RowBugLinear.apply(h, self.mid.weight, self.mid.bias, self.row))
        return self.head(h)


def _check(model: nn.Module, shape: tuple[int, ...], classes: int) -> Any:
    batch = classification_batch(shape, classes=classes, examples=12)
    return check_module(model, cross_entropy, batch, mode="directions")


def test_a_wrong_row_is_found_and_localized_without_visiting_the_tensor() -> None:
    report = _check(Net(row=5), (16,), 4)
    assert report.mode == "directions"
    assert report.verdict.value == "fail"
    worst = report.worst(3)
    assert {c.name for c in worst} == {"mid.weight"}
    assert all(c.index[0] == 5 for c in worst)
    assert "mid.weight" in report.message
    assert report.components_checked < 64  # of 5,444: the bisection did not visit them all
    assert any("localized mid.weight" in note for note in report.notes)


def test_a_wrong_custom_function_is_named() -> None:
    report = _check(GatedNet(bug="weight_sign").double(), (3,), 2)
    assert report.verdict.value == "fail"
    assert report.worst(1)[0].name == "gate.weight"
    assert max(report.parameters, key=lambda n: report.parameters[n].difference) == "gate.weight"


@pytest.mark.parametrize("model", [Net(), GatedNet()], ids=["vectorized", "old_style_function"])
def test_correct_models_pass(model: nn.Module) -> None:
    shape, classes = ((16,), 4) if isinstance(model, Net) else ((3,), 2)
    report = _check(model.double(), shape, classes)
    assert report.verdict.value == "pass", str(report)
    assert any(note.startswith("mode directions") for note in report.notes)


def test_components_adds_a_spot_sample() -> None:
    batch = classification_batch((16,), classes=4, examples=12)
    report = check_module(Net(), cross_entropy, batch, mode="directions", sample=40)
    assert 40 <= report.components_checked <= 40 + 6 + 16  # + largest-gradient ones, localized
    assert set(report.parameters) == {n for n, _ in Net().named_parameters()}


def test_unknown_mode_is_rejected_early() -> None:
    with pytest.raises(ValueError, match=r"`mode` must be one of 'components', 'directions'"):
        check_module(Net(), cross_entropy, classification_batch((16,)), mode="direction")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("epsilon", "dtype", "step"),
    [
        (1e-7, torch.float64, 1e-7),
        ("auto", torch.float64, 2.0**-52 / 3),
        ("auto", torch.float32, 2.0**-23 / 3),
    ],
)
def test_directional_step(epsilon: Any, dtype: torch.dtype, step: float) -> None:
    expected = step if epsilon != "auto" else (3 * step) ** (1 / 3)
    assert directional_step(epsilon, dtype) == pytest.approx(expected, rel=1e-12)


class Steep(nn.Module):
    """J = exp(100·Σw) at w = 0: correct, and so curved along a ±1 direction over its 10,000
    entries that the direction's estimate at ε = 1e-7 is off by h²/6·(100·uᵀ1)² ≈ 2e-7,
    relatively: the truncation error, far beyond J's noise."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10_000, dtype=torch.float64))

    def forward(self, scale: float) -> torch.Tensor:
        return torch.exp(scale * self.w.sum())


def test_a_direction_off_by_its_truncation_error_alone_is_cleared_at_half_the_step() -> None:
    report = check_module(Steep(), lambda m, b: m(b), 100.0, mode="directions")
    assert report.verdict.value == "pass", str(report)
    (note,) = [n for n in report.notes if n.startswith("mode directions")]
    assert "w only after a re-check at half the step" in note
    assert "localized" not in note  # no bisection: the tensor is correct
    assert report.components_checked == 1  # its largest-gradient component alone
