"""A gradient hook on a parameter (``Parameter.register_hook``) is part of the gradient that trains,
not of J's backprop: the default check does not see it, ``training_path=True`` does, and where
it changes the gradient the failure names the hook, not a kernel (gradwatch/training/hooks.py)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
from torch import nn

from gradwatch import Verdict, check_module
from gradwatch.training.hooks import gradient_hooks
from tests.custom_ops import OpNet, batch, cross_entropy, softsign


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def _loss(model: Any, data: Any) -> torch.Tensor:
    return nn.functional.cross_entropy(model(data[0]), data[1])


def _scale_by_1_01(grad: torch.Tensor) -> torch.Tensor:
    return grad * 1.01


def test_a_hook_scaling_a_gradient_by_1_01_fails_the_training_path_naming_the_hook() -> None:
    model = _mlp()
    model[2].weight.register_hook(_scale_by_1_01)
    assert check_module(model, _loss, _batch()).verdict is Verdict.PASS  # not J's backprop
    report = check_module(model, _loss, _batch(), training_path=True)
    found = report.training_path
    assert found is not None and found.failed == ["2.weight"]
    assert report.verdict is Verdict.FAIL
    assert found.message == (
        "2.weight: a hook registered on 2.weight (_scale_by_1_01) scales its gradient by 1.01: "
        "the gradient that trains passes through the hook, J's backprop (checked in float64) "
        "does not; if the hook is meant (clipping, scaling), this is its effect, else remove it"
    )
    assert "kernel" not in found.message
    hooks = {n: p["hook"] for n, p in found.to_dict()["parameters"].items()}
    assert hooks == {"0.weight": "", "0.bias": "", "2.weight": found.parameters["2.weight"].hook,
                     "2.bias": ""}  # fmt: skip


def test_a_hook_that_is_not_a_factor_is_said_to_change_the_gradient() -> None:
    model = _mlp()
    model[0].bias.register_hook(lambda grad: grad + 1e-3)
    found = check_module(model, _loss, _batch(), training_path=True).training_path
    assert found is not None and found.failed == ["0.bias"]
    assert found.message.startswith(
        "0.bias: a hook registered on 0.bias (test_a_hook_that_is_not_a_factor_is_said_to_change"
        "_the_gradient.<locals>.<lambda>) changes its gradient: the gradient that trains"
    )


def test_a_hook_that_leaves_the_gradient_as_it_is_passes() -> None:
    model, seen = _mlp(), []
    model[2].weight.register_hook(lambda grad: seen.append(grad.shape))  # logs, returns None
    assert gradient_hooks(model[2].weight) == [
        "test_a_hook_that_leaves_the_gradient_as_it_is_passes.<locals>.<lambda>"
    ]
    report = check_module(model, _loss, _batch(), training_path=True)
    assert seen == [torch.Size([3, 8])]  # it ran, on the training path only
    assert report.training_path is not None and report.training_path.verdict is Verdict.PASS
    assert report.verdict is Verdict.PASS
    assert all(p.hook == "" for p in report.training_path.parameters.values())


@pytest.mark.slow  # torch.compile: a minute on a loaded 2-core machine
def test_a_kernel_difference_beside_a_hook_still_says_kernel() -> None:
    # OpNet(softsign) compiled: its registered backward is wrong in the compiled graph only, in
    # `first`; the hook scales `last.weight`'s gradient. Each failure names its own cause.
    torch.manual_seed(0)
    eager = OpNet(softsign)
    eager.last.weight.register_hook(_scale_by_1_01)
    model = cast(nn.Module, torch.compile(eager))
    found = check_module(model, cross_entropy, batch(), training_path=True).training_path
    assert found is not None
    assert sorted(found.failed) == ["first.bias", "first.weight", "last.weight"]
    for name in ("first.weight", "first.bias"):
        assert f"{name}: compiled gradient " in found.message
        assert found.parameters[name].hook == ""
    assert "x further from float64 than eager float32; a compiler or kernel bug" in found.message
    assert "last.weight: a hook registered on last.weight (_scale_by_1_01)" in found.message
    assert found.parameters["last.weight"].hook == (
        "a hook registered on last.weight (_scale_by_1_01) scales its gradient by 1.01"
    )
    assert found.parameters["last.bias"].passed
