"""The gradient that trains against the checked one: FlashAttention's rule, its figures, a
planted compiled-only fault, and the state the comparison leaves."""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import torch
from torch import nn

from gradwatch import Verdict, check_module
from gradwatch.training_path import (
    ParameterPath,
    TrainingPath,
    TrainingPathResult,
    allowance,
    rounding_floor,
)
from tests.custom_ops import OpNet, batch, cross_entropy, softsign

# --- the rule and its figures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([0.5, -1.0], torch.float32, 2 * 2.0**-23),  # 1.3 -> ulp of [1, 2) in float32
        ([0.5, -1.0], torch.bfloat16, 2 * 2.0**-7),
        ([3e-3], torch.float32, 2 * 2.0**-9 * 2.0**-23),  # 3.9e-3 in [2^-9, 2^-8)
        ([0.0, 0.0], torch.float32, 0.0),  # a zero gradient: only zero is within rounding
    ],
)
def test_rounding_floor_is_twice_the_ulp_of_the_shifted_largest_entry(
    values: list[float], dtype: torch.dtype, expected: float
) -> None:
    reference = torch.tensor(values, dtype=torch.float64)
    assert rounding_floor(reference, dtype) == expected


def test_rounding_floor_of_a_non_finite_reference_is_nan() -> None:
    assert math.isnan(rounding_floor(torch.tensor([1.0, math.inf]), torch.float32))


def test_allowance_is_twice_the_eager_error_plus_the_floor() -> None:
    assert allowance(3e-8, 1e-8) == pytest.approx(7e-8)


@pytest.mark.parametrize(
    ("error", "eager", "floor", "ratio", "passed"),
    [
        (2e-8, 1e-8, 0.0, 2.0, True),  # exactly at K times
        (2.1e-8, 1e-8, 0.0, 2.1, False),
        (2.5e-8, 1e-8, 1e-8, 2.5, True),  # the floor covers the rest
        (0.0, 0.0, 0.0, 1.0, True),  # both exact
        (1e-12, 0.0, 0.0, math.inf, False),  # eager exact, the training path not
        (math.inf, 1e-8, 1e-8, math.inf, False),  # not finite
    ],
)
def test_a_parameter_passes_within_k_times_the_eager_error_plus_the_floor(
    error: float, eager: float, floor: float, ratio: float, passed: bool
) -> None:
    p = ParameterPath(error=error, eager_error=eager, floor=floor, precision="float32")
    assert p.ratio == pytest.approx(ratio)
    assert p.passed is passed


def _result(**parameters: ParameterPath) -> TrainingPathResult:
    return TrainingPathResult("compiled module, float32", True, "float64", dict(parameters))


def test_a_failed_parameter_is_named_with_how_much_further_it_is() -> None:
    result = _result(
        w2=ParameterPath(error=4e-7, eager_error=1e-8, floor=1e-9, precision="float32"),
        w1=ParameterPath(error=1e-8, eager_error=1e-8, floor=1e-9, precision="float32"),
    )
    assert result.verdict is Verdict.FAIL
    assert result.failed == ["w2"]
    assert result.message == (
        "w2: compiled gradient 40x further from float64 than eager float32; a compiler or "
        "kernel bug"
    )
    assert result.to_dict()["parameters"]["w2"]["ratio"] == pytest.approx(40.0)


def test_a_ratio_of_a_thousand_or_more_is_written_in_powers_of_ten() -> None:
    result = _result(
        w=ParameterPath(error=1.4e-2, eager_error=1e-8, floor=0.0, precision="float32")
    )
    assert result.message.startswith("w: compiled gradient 1.4e+06x further from float64 than")


def test_a_parameter_the_eager_gradient_cannot_give_is_not_judged() -> None:
    result = _result(
        w=ParameterPath(
            error=1.0, eager_error=math.nan, floor=1e-9, precision="float16", judged=False
        )
    )
    assert result.failed == []
    assert result.verdict is Verdict.NOT_JUDGED


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (
            "yes",
            TypeError,
            r"`training_path` must be False, True or a gradwatch.TrainingPath.*'yes'",
        ),
        (1, TypeError, r"`training_path` must be False, True or .*got 1"),
    ],
)
def test_bad_training_path_is_refused_before_any_work(
    value: Any, error: type[Exception], match: str
) -> None:
    calls: list[int] = []

    def loss(model: nn.Module, data: Any) -> torch.Tensor:
        calls.append(1)
        return cross_entropy(model, data)

    with pytest.raises(error, match=match):
        check_module(nn.Linear(8, 3), loss, batch(), training_path=value)
    assert calls == []


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"context": "autocast"}, TypeError, r"`context` must be None or a callable .*'autocast'"),
        ({"loss_scale": 0.0}, ValueError, r"`loss_scale` must be a positive finite float; got 0.0"),
        ({"loss_scale": math.nan}, ValueError, r"`loss_scale` must be .*got nan"),
        ({"loss_scale": True}, TypeError, r"`loss_scale` must be .*got True"),
    ],
)
def test_training_path_options_are_checked(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        TrainingPath(**options)


# --- eager models: cheap end-to-end runs ------------------------------------------------------


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3)
    )


def test_an_eager_model_in_float32_passes_and_says_nothing_was_compiled() -> None:
    report = check_module(_bn_model(), cross_entropy, batch(), training_path=True)
    found = report.training_path
    assert found is not None
    assert found.path == "eager module (nothing compiled), float32"
    assert not found.compiled and found.reference == "float64"
    assert found.verdict is Verdict.PASS and report.verdict is Verdict.PASS
    # The training path is the eager code itself: its error is the first eager run's.
    assert all(p.ratio <= 1.0 for p in found.parameters.values())
    assert list(found.parameters) == list(report.parameters)
    assert all(0 < p.error < 1e-6 for p in found.parameters.values())
    # BatchNorm cancels the gradient of the bias before it: in float32 it is all rounding, and
    # its floor is taken at the scale of the model's gradients.
    zero = [n for n, p in found.parameters.items() if p.zero_to_rounding]
    assert zero == ["0.bias"]
    largest = max(p.floor for n, p in found.parameters.items() if n != "0.bias")
    assert found.parameters["0.bias"].floor >= largest


def test_autocast_and_a_loss_scale_are_the_path_s_precision() -> None:
    path = TrainingPath(
        context=lambda: torch.autocast("cpu", dtype=torch.bfloat16), loss_scale=1024.0
    )
    report = check_module(_bn_model(), cross_entropy, batch(), training_path=path)
    found = report.training_path
    assert found is not None
    assert (
        found.path
        == "eager module (nothing compiled), float32 under autocast(bfloat16), loss scaled by 1024"
    )
    assert {p.precision for p in found.parameters.values()} == {"bfloat16"}
    assert found.verdict is Verdict.PASS
    # bfloat16's rounding, not float32's: errors of about 1e-4 .. 1e-2 of the gradient
    assert all(1e-6 < p.error < 1e-2 for p in found.parameters.values())


def test_the_comparison_leaves_the_model_and_the_rng_as_they_were() -> None:
    model = _bn_model()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_module(model, cross_entropy, batch(), training_path=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())


class RandomJ(nn.Module):
    """Dropout as a function call, not a layer: the check cannot switch it off."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.layer(x), 0.5, training=True)


def test_a_j_that_draws_random_numbers_is_not_judged() -> None:
    torch.manual_seed(0)
    report = check_module(RandomJ(), cross_entropy, batch(), training_path=True)
    found = report.training_path
    assert found is not None
    assert found.verdict is Verdict.NOT_JUDGED and found.failed == []
    assert found.reason is not None
    assert found.reason.startswith("the eager gradient of layer.weight changes with the seed")


def test_a_training_path_that_raises_is_not_judged_and_the_check_stands() -> None:
    # A float64 batch: the float64 check casts it, training's path (a float32 model) cannot run.
    x, y = batch()
    report = check_module(_bn_model(), cross_entropy, (x.double(), y), training_path=True)
    found = report.training_path
    assert found is not None and found.parameters == {}
    assert found.reason is not None and found.reason.startswith("it raised RuntimeError: ")
    assert report.verdict is Verdict.PASS  # the float64 check stands
    assert report.message.startswith("difference ")
    assert "The training path not judged: it raised RuntimeError: " in report.message


# --- compiled models (inductor on the CPU): one correct, one with a compiled-only fault ---------


@pytest.fixture(scope="module")
def faulty_report() -> Any:
    """OpNet(softsign) compiled: its registered backward is wrong in the compiled graph only."""
    torch.manual_seed(0)
    model = cast(nn.Module, torch.compile(OpNet(softsign)))
    return check_module(model, cross_entropy, batch(), training_path=True)


def test_a_compiled_only_fault_fails_the_training_path_and_names_the_parameter(
    faulty_report: Any,
) -> None:
    found = faulty_report.training_path
    assert found.compiled and found.path == "compiled module, float32"
    assert sorted(found.failed) == ["first.bias", "first.weight"]
    assert found.parameters["last.weight"].passed and found.parameters["last.bias"].passed
    assert all(found.parameters[n].ratio > 1000 for n in found.failed)
    assert faulty_report.verdict is Verdict.FAIL
    assert faulty_report.message.startswith(f"{found.failed[0]}: compiled gradient ")
    assert "x further from float64 than eager float32; a compiler or kernel bug" in (
        faulty_report.message
    )


def test_the_float64_check_of_the_same_model_passes_and_says_what_it_checked(
    faulty_report: Any,
) -> None:
    assert faulty_report.thresholds.classify(faulty_report.difference) is Verdict.PASS
    assert "The float64 check: difference" in faulty_report.message
    assert faulty_report.notes[0].startswith("compiled: the module (torch.compile); checked")
    assert faulty_report.notes[0].endswith(
        "; training_path compares the gradient the compiled code computes"
    )
    text = str(faulty_report)
    assert "  training path: FAIL, first." in text
    assert "    checked: compiled module, float32 against the float64 eager gradient" in text
    assert faulty_report.to_dict()["training_path"]["verdict"] == "fail"


def test_a_correct_compiled_model_passes_the_training_path() -> None:
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
    model = cast(nn.Module, torch.compile(eager))
    report = check_module(model, cross_entropy, batch(), training_path=True)
    found = report.training_path
    assert found is not None and found.compiled
    assert found.verdict is Verdict.PASS and report.verdict is Verdict.PASS
    assert found.message.startswith("training path (compiled module, float32) within")
