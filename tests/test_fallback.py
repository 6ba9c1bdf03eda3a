"""Kernels without float64: a model with an operation that accepts float32 only is checked in
float32 at the precision's own step; a right backward never fails, a wrong one fails, named."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from gradwatch import Verdict, check_module
from tests.custom_ops import OpNet, batch, cross_entropy, cube32, wrong_cube32

SEEDS = [0, 1, 2]


def _report(op: Any, seed: int, **options: Any) -> Any:
    torch.manual_seed(seed)
    return check_module(OpNet(op), cross_entropy, batch(seed), **options)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_float32_only_kernel_with_a_right_backward_is_checked_in_float32_and_not_failed(
    seed: int,
) -> None:
    report = _report(cube32, seed)
    assert report.dtype == "float32" and report.epsilon == "auto"
    assert report.notes[0].startswith(
        "J cannot be evaluated in float64 (TypeError: cube32 has a float32 kernel only; got "
        "torch.float64), while it can in float32: an operation of the model has no float64 "
        "kernel. Checked in float32"
    )
    assert report.verdict is Verdict.PASS  # judged against float32's measured noise
    assert report.reading_counts["disagrees"] == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_a_float32_only_kernel_with_a_wrong_backward_fails_and_is_named(seed: int) -> None:
    report = _report(wrong_cube32, seed)
    assert report.dtype == "float32"
    assert report.verdict is Verdict.FAIL
    # The op's backward feeds the first layer's gradient only.
    assert sorted(report.parameters_with("fail")) == ["first.bias", "first.weight"]
    assert {report.parameters[n].verdict for n in ("last.weight", "last.bias")} == {Verdict.PASS}


def test_an_explicit_step_is_replaced_by_the_precision_s_own() -> None:
    report = _report(cube32, 0, epsilon=1e-7)
    assert report.epsilon == "auto"


def test_the_training_path_of_such_a_model_compares_with_the_float32_reference() -> None:
    report = _report(cube32, 0, training_path=True)
    found = report.training_path
    assert found is not None and found.reference == "float32"
    assert found.verdict is Verdict.PASS


class AlwaysFails(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken in every precision")


def test_an_error_every_precision_raises_is_raised_as_it_is() -> None:
    with pytest.raises(RuntimeError, match="broken in every precision"):
        check_module(AlwaysFails(), cross_entropy, batch())


def test_an_error_the_engine_raises_about_j_is_not_retried_in_float32() -> None:
    calls: list[torch.dtype] = []

    def vector(model: nn.Module, data: Any) -> torch.Tensor:
        calls.append(data[0].dtype)
        return nn.functional.cross_entropy(model(data[0]), data[1], reduction="none")

    with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
        check_module(nn.Linear(8, 3), vector, batch())
    assert calls == [torch.float64]
