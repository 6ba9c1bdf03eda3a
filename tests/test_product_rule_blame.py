"""The product-rule finding names the activation whose hook values explain the errors, and
nothing where a simpler explanation fits (gradwatch.check.product_rule): a ×1.01 parameter gradient
under a correct GELU, a ×1.5 GELU derivative, and a dropped term in one of two GELUs (named
there, whatever the planted module's class is called). From the external run's reproducers
repro_convnext_param_named_product_rule.py, repro_mobilebert_factor_named_product_rule.py and
repro_product_rule_misattributed.py, on tiny models."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.check.product_rule import KIND
from tests.planting import Kind, planted_copy

SEEDS = [0, 1, 2]


class _Gelu(torch.autograd.Function):
    """GELU whose backward is ``how``: "right", "x1.5" (the derivative ×1.5) or "term" (Φ(x)
    alone, the x·φ(x) term missing)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, how: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.how = how
        return nn.functional.gelu(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        pdf = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        slope = {"right": cdf + x * pdf, "x1.5": 1.5 * (cdf + x * pdf), "term": cdf}[ctx.how]
        return grad * slope, None


class Act(nn.Module):
    """A hand-written GELU; its class name says nothing of what it computes."""

    def __init__(self, how: str = "right") -> None:
        super().__init__()
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Gelu.apply(x, self.how)


class _Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        return w.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 1.01  # the planted bug: a parameter's gradient 1% too large


class Block(nn.Module):
    """ConvNeXt-like on vectors: x + γ·W₂ GELU(W₁ LayerNorm(W₀ x)), γ = 1e-6 (layer scale)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.mix, self.norm = nn.Linear(c, c), nn.LayerNorm(c)
        self.up, self.act, self.down = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.down(self.act(self.up(self.norm(self.mix(x)))))


class Stem(nn.Linear):
    """A linear layer whose weight gradient is ×1.01 where ``scaled``."""

    def __init__(self, scaled: bool) -> None:
        super().__init__(6, 8)
        self.scaled = scaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _Scaled.apply(self.weight) if self.scaled else self.weight
        return nn.functional.linear(x, w, self.bias)


def _check(model: nn.Module, seed: int) -> gradwatch.GradCheckReport:
    g = torch.Generator().manual_seed(seed)
    batch = (
        torch.randn(8, model[0].in_features, generator=g),
        torch.randint(0, 3, (8,), generator=g),
    )
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    return gradwatch.check_module(model, loss, batch, progress=False)


def _kinds(report: gradwatch.GradCheckReport) -> set[str]:
    return {f.kind for f in report.findings}


def _convnext(seed: int, scaled: bool) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(Stem(scaled), Block(8), Block(8), nn.Linear(8, 3))


def _mlp(seed: int, first: str, second: str) -> nn.Module:
    """Two GELUs: hand-written ones where planted, torch's own where "right"."""
    torch.manual_seed(seed)
    act = [nn.GELU() if how == "right" else Act(how) for how in (first, second)]
    return nn.Sequential(nn.Linear(2, 16), act[0], nn.Linear(16, 32), act[1], nn.Linear(32, 3))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_parameter_gradient_one_percent_off_is_a_scale_not_a_product_rule(seed: int) -> None:
    report = _check(_convnext(seed, scaled=True), seed)
    assert report.verdict is gradwatch.Verdict.FAIL
    assert set(report.parameters_with("fail")) == {"0.weight"}
    assert [(f.parameter, f.kind) for f in report.findings] == [("0.weight", "scale")]
    assert report.findings[0].ratio == pytest.approx(1 / 1.01, rel=1e-6)
    assert report.location is not None and "act" not in report.location.text
    twin = _check(_convnext(seed, scaled=False), seed)  # the same model, correct: passes
    assert twin.verdict is gradwatch.Verdict.PASS and twin.findings == ()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("where", [1, 3])
def test_a_gelu_derivative_too_large_is_not_named_a_product_rule(seed: int, where: int) -> None:
    report = _check(_mlp(seed, *(("x1.5", "right") if where == 1 else ("right", "x1.5"))), seed)
    assert report.verdict is gradwatch.Verdict.FAIL
    assert KIND not in _kinds(report)
    assert _check(_mlp(seed, "right", "right"), seed).verdict is gradwatch.Verdict.PASS


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("where", [1, 3])
def test_the_dropped_term_is_named_at_the_gelu_that_dropped_it(seed: int, where: int) -> None:
    hows = ("term", "right") if where == 1 else ("right", "term")
    report = _check(_mlp(seed, *hows), seed)
    assert report.verdict is gradwatch.Verdict.FAIL
    named = [f for f in report.findings if f.kind == KIND]
    wrong = {n for n, r in report.parameters.items() if r.disagrees}
    assert (
        {f.parameter for f in named}
        == wrong
        == {f"{i}.{p}" for i in range(where) if i % 2 == 0 for p in ("weight", "bias")}
    )
    assert all(f"term of {where} (Act)" in f.text for f in named)
    assert report.location is not None and str(where) in report.location.modules


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("act", [nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish])
@pytest.mark.parametrize("kind", ["missing_term", "factor"])
def test_each_x_times_gate_activation_is_named_only_for_its_dropped_term(
    seed: int, act: type[nn.Module], kind: Kind
) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), act(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    assert _check(model, seed).verdict is gradwatch.Verdict.PASS
    report = _check(planted_copy(model, "1", kind), seed)
    assert report.verdict is gradwatch.Verdict.FAIL
    named = {f.parameter for f in report.findings if f.kind == KIND}
    assert named == ({"0.weight", "0.bias"} if kind == "missing_term" else set())
