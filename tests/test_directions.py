"""The directional mode finds the tensor whose backward is wrong and localizes the wrong
components inside it without visiting all of them; correct models pass."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradwatch import Verdict, check_module
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
    relatively: the truncation error, far beyond J's noise; at 2ε and 4ε its h⁴ term shows too
    (J'' changes between them by far more than its noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10_000, dtype=torch.float64))

    def forward(self, scale: float) -> torch.Tensor:
        return torch.exp(scale * self.w.sum())


def test_a_direction_the_quadratic_fit_cannot_explain_is_searched_and_its_components_pass() -> None:
    # The re-check clears a direction only by explaining its gap (h² truncation at 2ε and 4ε,
    # Richardson at 0.67σ); here the fit does not explain it, so the tensor is searched, and
    # the components it points at, read one by one, agree.
    report = check_module(Steep(), lambda m, b: m(b), 100.0, mode="directions")
    assert report.verdict.value == "pass", str(report)
    (note,) = [n for n in report.notes if n.startswith("mode directions")]
    assert "localized w by bisection" in note
    assert report.parameters["w"].disagrees == 0 and report.components_checked > 1


# --- a direction beyond its tolerance is never cleared by a noisier re-read ---------------------

SIGMA = 1e-12  # J's noise, planted: a Gaussian error that is a function of θ, as rounding is
NOISE = SIGMA / (np.sqrt(2) * 1e-7)  # of a two-sided estimate at ε = 1e-7, direction or component


class _Wrong(torch.autograd.Function):
    """The identity whose backward flips the sign of entry 5 (``flip``) or scales by 1.002."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, bug: str) -> torch.Tensor:
        ctx.bug = bug
        return w.view_as(w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.bug == "flip":
            grad = grad.clone()
            grad[5] = -grad[5]
        elif ctx.bug == "0.2%":
            grad = grad * 1.002
        return grad, None


class Noisy(nn.Module):
    """J = slopesᵀw + SIGMA·ζ(w), ζ a standard normal seeded by w's bytes: linear (no
    truncation), with a known noise."""

    def __init__(self, slopes: np.ndarray, bug: str = "none") -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(len(slopes), dtype=torch.float64))
        self.slopes, self.bug = torch.as_tensor(slopes), bug

    def forward(self) -> torch.Tensor:
        raw = self.w.detach().numpy().tobytes()
        seed = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
        zeta = float(np.random.default_rng(seed).standard_normal())
        return self.slopes @ _Wrong.apply(self.w, self.bug) + SIGMA * zeta


def _noisy_check(slopes: np.ndarray, bug: str, seed: int) -> Any:
    return check_module(Noisy(slopes, bug), lambda m, _: m(), None, mode="directions", seed=seed)


# Seeds at which a half-step re-read (Richardson at 2.7× the noise) cleared the planted bug.
@pytest.mark.parametrize("seed", [1, 3, 4])
def test_a_sign_flip_a_direction_sees_at_16_sigma_fails(seed: int) -> None:
    # Entry 5's slope is 8σ: flipped, every direction over w is off by 16σ, and Richardson at 2ε
    # and 4ε reads it at 0.67σ; the largest component (3000σ) is correct, so only the bisection
    # the direction asks for finds entry 5.
    slopes = NOISE * np.concatenate([[3000.0], np.linspace(300.0, 400.0, 63)])
    slopes[5] = 8 * NOISE
    right = _noisy_check(slopes, "none", seed)
    assert right.verdict is Verdict.PASS, str(right)
    wrong = _noisy_check(slopes, "flip", seed)
    assert wrong.verdict is Verdict.FAIL, str(wrong)
    assert wrong.worst(1)[0].label == "w[5]" and wrong.worst(1)[0].reading == "disagrees"
    assert any("localized w by bisection" in note for note in wrong.notes)


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_a_0p2_percent_error_a_direction_sees_beyond_its_tolerance_does_not_pass(
    seed: int,
) -> None:
    # 16 slopes of ±3000σ, each off by 0.2% = 6σ (under every component's 8σ); a direction sums
    # them to 12σ or more. Localized, the 16 fail the tensor test together. D ≈ 1e-3 sits on the
    # material's warn/fail edge: the band says "look", never "pass".
    slopes = 3000 * NOISE * np.linspace(1.0, 1.1, 16) * np.where(np.arange(16) % 2, 1.0, -1.0)
    right = _noisy_check(slopes, "none", seed)
    assert right.verdict is Verdict.PASS, str(right)
    wrong = _noisy_check(slopes, "0.2%", seed)
    assert wrong.verdict in (Verdict.WARN, Verdict.FAIL), str(wrong)
    assert wrong.parameters["w"].tensor_test > 1
    assert wrong.components_checked == 16


class Bent(Noisy):
    """``Noisy`` plus 0.01·Σ relu(w_i − 3ε) over 8 entries: a direction crosses those kinks at 4ε
    only, so J bends over the re-check's 2ε and 4ε and is smooth over ε/2 and ε/4."""

    def forward(self) -> torch.Tensor:
        return super().forward() + 0.01 * torch.relu(self.w[8:16] - 3e-7).sum()


@pytest.mark.parametrize("seed", [1, 4])
def test_a_sign_flip_on_a_bent_direction_is_read_at_shorter_steps_and_fails(seed: int) -> None:
    # Richardson from ε/2 and ε/4 carries 2.7σ and is read with the first reading's 8σ: the 16σ
    # gap stays a disagreement (a half-step re-read with its own tolerance cleared it).
    slopes = NOISE * np.concatenate([[3000.0], np.linspace(300.0, 400.0, 63)])
    slopes[5] = 8 * NOISE
    right = check_module(Bent(slopes), lambda m, _: m(), None, mode="directions", seed=seed)
    assert right.verdict is Verdict.PASS, str(right)
    wrong = check_module(Bent(slopes, "flip"), lambda m, _: m(), None, mode="directions", seed=seed)
    assert wrong.verdict is Verdict.FAIL and wrong.worst(1)[0].label == "w[5]", str(wrong)
