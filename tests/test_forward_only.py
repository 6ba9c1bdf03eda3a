"""What vmap refuses as written (old-style autograd.Functions, Functions without a vmap rule,
in-place writes into a fresh tensor) is batched for J's values only: the same verdicts and
estimates as the plain loop, and backprop still runs the user's own backward."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.function import Function

from gradwatch import GradCheckReport, check_module
from gradwatch.evaluation.cost import ModuleCost
from gradwatch.evaluation.forward_only import _APPLY, functional, old_style, through_forward
from gradwatch.evidence.noise import NOISE_MULTIPLE
from tests.nets import GatedNet, classification_batch, cross_entropy
from tests.refused import FillNet, NoRuleNet, Scaled

Build = Callable[[], tuple[nn.Module, Any]]


def _double(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[0].double(), batch[1]


def _gated(bug: str) -> Build:
    batch = _double(classification_batch((3,), classes=2))
    return lambda: (GatedNet(bug).double(), batch)  # type: ignore[arg-type]


def _two_layers(kind: type[nn.Module], factor: float) -> Build:
    return lambda: (kind(factor).double(), _double(classification_batch((6,))))  # type: ignore[call-arg]


# Correct models and planted twins: a wrong backward in an old-style Function (SelfGate), in a
# Function without a vmap rule, and behind a buffer filled in place; 1% is 5e-3 in the formula,
# above the warn band's 1e-3.
MODELS: dict[str, tuple[Build, str, str]] = {
    "old_style": (_gated("none"), "pass", "SelfGate"),
    "old_style_missing_term": (_gated("missing_term"), "fail", "SelfGate"),
    "no_vmap_rule": (_two_layers(NoRuleNet, 1.0), "pass", "NoRule"),
    "no_vmap_rule_1pct": (_two_layers(NoRuleNet, 1.01), "fail", "NoRule"),
    "inplace": (_two_layers(FillNet, 1.0), "pass", "functionalize"),
    "inplace_1pct": (_two_layers(FillNet, 1.01), "fail", "functionalize"),
}


def _check(build: Build, plain: bool = False) -> tuple[GradCheckReport, nn.Module, Any]:
    torch.manual_seed(0)
    model, batch = build()
    with pytest.MonkeyPatch.context() as patch:
        if plain:  # every batched way fails: the plain loop evaluates every component

            def refuse(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("batched evaluation refused by the test")

            patch.setattr(ModuleCost, "_vmapped", refuse)
        return check_module(model, cross_entropy, batch), model, batch


@pytest.mark.parametrize("case", list(MODELS))
def test_batched_gives_the_plain_loops_verdict_and_estimates(case: str) -> None:
    build, verdict, named = MODELS[case]
    batched, _, _ = _check(build)
    plain, _, _ = _check(build, plain=True)
    note = next(n for n in batched.notes if n.startswith("evaluation:"))
    assert "plain loop" not in note and named in note, note
    assert "plain loop" in next(n for n in plain.notes if n.startswith("evaluation:"))
    assert batched.verdict.value == plain.verdict.value == verdict
    np.testing.assert_array_equal(batched.analytic, plain.analytic)
    # J batched and plain differ by a few ulps (test_evaluate): the estimates, by a few ulps of J
    # over 2h, within the tolerance a reading allows for J's noise.
    assert batched.numeric_noise is not None and plain.numeric_noise is not None
    gap = np.abs(batched.numeric - plain.numeric)
    assert np.all(gap <= NOISE_MULTIPLE * np.minimum(batched.numeric_noise, plain.numeric_noise)), (
        gap.max()
    )


@pytest.mark.parametrize("case", ["old_style_missing_term", "no_vmap_rule_1pct", "inplace_1pct"])
def test_backprop_runs_the_users_own_backward(case: str) -> None:
    report, model, batch = _check(MODELS[case][0])
    grads = torch.autograd.grad(cross_entropy(model, batch), list(model.parameters()))
    users = torch.cat([g.reshape(-1) for g in grads]).numpy()
    np.testing.assert_allclose(report.analytic, users, rtol=1e-12, atol=1e-15)
    assert Function.__dict__["apply"] is _APPLY  # torch's own apply, after the check


class _Gate(torch.autograd.Function):
    """The identity with a backward that counts its calls (old style)."""

    calls = 0

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_non_differentiable()  # a no-op here: the stand-in records nothing
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        _Gate.calls += 1
        return grad


def test_only_vmapped_calls_in_this_thread_take_the_forward() -> None:
    assert old_style(_Gate) and not old_style(Scaled)
    x = torch.ones(3, requires_grad=True)
    seen: set[str] = set()
    other: list[Any] = []
    with through_forward(seen):
        y = _Gate.apply(x)  # outside any transform: torch's apply, with its backward
        worker = threading.Thread(target=lambda: other.append(_Gate.apply(x).grad_fn))
        worker.start()
        worker.join()
        batched = torch.func.vmap(_Gate.apply)(torch.ones(2, 3))
    assert seen == {"_Gate"} and batched.shape == (2, 3)
    assert type(y.grad_fn).__name__ == "_GateBackward" and other[0] is not None
    y.sum().backward()
    assert _Gate.calls == 1


def test_torchs_apply_is_put_back_when_the_evaluation_raises() -> None:
    with pytest.raises(ValueError, match="inside"), through_forward(set()):
        with through_forward(set()):
            assert Function.__dict__["apply"] is not _APPLY
        raise ValueError("inside")
    assert Function.__dict__["apply"] is _APPLY
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.vmap(_Gate.apply)(torch.ones(2, 3))


def _fill(x: torch.Tensor) -> torch.Tensor:
    """Writes of ``x`` (4x3) into fresh tensors, every kind the check meets."""
    out = torch.zeros(4, 3, dtype=x.dtype)
    out += x
    out[1] = x[0] * 2  # a basic index: zero_ then add_ under functionalize
    out[torch.tensor([2, 3])] = x[:2]  # an advanced one: index_put_, as written
    out.masked_fill_(x < -1.0, 0.5)
    out[:, 0].copy_(x[:, 1])
    count = torch.zeros(3, dtype=torch.long)
    count[0] = 2  # an integer tensor: copy_ as written
    return out * count.sum()


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap's fallback for zero_
def test_writes_into_fresh_tensors_are_batched_to_the_bit() -> None:
    xs = torch.randn(5, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError):
        torch.func.vmap(_fill)(xs)
    with through_forward(set(), every=True):
        batched = torch.func.vmap(functional(_fill))(xs)
    assert torch.equal(batched, torch.stack([_fill(x) for x in xs]))
