"""Bad input to the engine (issue 6): each case is told at once, in a message naming the argument,
the accepted values and the value received, or (NaN/Inf) reported as a fail; either way the
user's model, its gradients and flags and the global RNGs are left bit-for-bit as they were."""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch
from gradwatch import Verdict, check_module
from tests.nets import classification_batch, cross_entropy
from tests.test_module import changes, snapshot, used_model

Batch = tuple[torch.Tensor, torch.Tensor]


def exactly(message: str) -> str:
    """A ``match`` pattern for the whole message, not a part of it."""
    return f"^{re.escape(message)}$"


class CountingLoss:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        self.calls += 1
        return cross_entropy(model, batch)


def rejected(error: type[Exception], message: str, **kwargs: Any) -> None:
    """``check_module`` with ``kwargs`` (by default on a used model) raises ``message`` before
    any work and leaves the model and the RNGs as they were."""
    model, batch = used_model()
    model = kwargs.pop("model", model)
    loss = CountingLoss()
    before = snapshot(model)
    with pytest.raises(error, match=exactly(message)):
        check_module(model, loss, batch, **kwargs)
    assert loss.calls == 0
    assert changes(before, model) == []


# --- the loss must be a scalar tensor -----------------------------------------------------------

NOT_SCALAR = "`loss_fn` must return a scalar (one element) tensor, e.g. a mean over the batch; got "
NOT_TENSOR = (
    "`loss_fn` must return the cost J as a scalar torch.Tensor computed from the model; got "
)


@pytest.mark.parametrize(
    ("wrap", "error", "message"),
    [
        pytest.param(lambda z, y: F.cross_entropy(z, y, reduction="none"), ValueError,
                     NOT_SCALAR + "shape (8,)", id="per-example"),
        pytest.param(lambda z, y: z, ValueError, NOT_SCALAR + "shape (8, 3)", id="logits"),
        pytest.param(lambda z, y: z[:0, 0], ValueError, NOT_SCALAR + "shape (0,)", id="empty"),
        pytest.param(lambda z, y: float(F.cross_entropy(z, y).detach()), TypeError,
                     NOT_TENSOR + "float", id="float"),
        pytest.param(lambda z, y: None, TypeError, NOT_TENSOR + "NoneType", id="none"),
    ],
)  # fmt: skip
def test_loss_that_is_no_scalar_tensor(
    wrap: Callable[[torch.Tensor, torch.Tensor], Any], error: type[Exception], message: str
) -> None:
    model, batch = used_model()
    before = snapshot(model)
    with pytest.raises(error, match=exactly(message)):
        check_module(model, lambda m, b: wrap(m(b[0]), b[1]), batch)
    assert changes(before, model) == []


def test_one_element_loss_of_any_shape_is_a_scalar() -> None:
    model, batch = used_model()
    report = check_module(model, lambda m, b: cross_entropy(m, b).reshape(1, 1), batch)
    assert report.verdict is Verdict.PASS


# --- epsilon: "auto" or a finite float in (0, 1) ------------------------------------------------

BAD_EPSILON_VALUE = [0.0, -0.0, -1e-7, math.nan, math.inf, -math.inf, 1.0, 1, 0, 2.0, 1e6, 1e300]
BAD_EPSILON_TYPE = ["1e-7", "AUTO", None, True, [1e-7], torch.tensor(1e-7)]


@pytest.mark.parametrize("epsilon", BAD_EPSILON_VALUE, ids=repr)
def test_epsilon_outside_zero_one(epsilon: float) -> None:
    message = f"`epsilon` must be 'auto' or a finite float in (0, 1), e.g. 1e-7; got {epsilon!r}"
    rejected(ValueError, message, epsilon=epsilon)
    with pytest.raises(ValueError, match=exactly(message)):
        gradwatch.check_function(np.sum, np.ones(2), np.ones(2), epsilon=epsilon)


@pytest.mark.parametrize("epsilon", BAD_EPSILON_TYPE, ids=repr)
def test_epsilon_of_the_wrong_type(epsilon: object) -> None:
    message = f"`epsilon` must be 'auto' or a float in (0, 1), e.g. 1e-7; got {epsilon!r}"
    rejected(TypeError, message, epsilon=epsilon)


@pytest.mark.parametrize(
    "epsilon", ["auto", 1e-7, 0.5, np.float64(1e-6), np.float32(1e-3)], ids=repr
)
def test_accepted_epsilon(epsilon: object) -> None:
    model, batch = used_model()
    report = check_module(model, cross_entropy, batch, epsilon=epsilon)  # type: ignore[arg-type]
    assert report.epsilon == epsilon  # accepted as given (0.5 measures a secant: that is allowed)


# --- sample: None or a positive int; more than θ has is clamped with a note ----------------------


@pytest.mark.parametrize(
    ("sample", "error"),
    [(0, ValueError), (-1, ValueError), (-(10**12), ValueError), (2.5, TypeError),
     (3.0, TypeError), ("3", TypeError), (True, TypeError), (np.float64(4), TypeError)],
    ids=lambda v: v.__name__ if isinstance(v, type) else repr(v),
)  # fmt: skip
def test_bad_sample(sample: object, error: type[Exception]) -> None:
    message = f"`sample` must be None (all) or a positive int, e.g. 2000; got {sample!r}"
    rejected(error, message, sample=sample)


@pytest.mark.parametrize("extra", [1, 1000, 10**12])
def test_a_sample_beyond_theta_is_clamped_with_a_note(extra: int) -> None:
    model, batch = used_model()
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    k = total + extra
    report = check_module(model, cross_entropy, batch, sample=np.int64(k))
    assert report.components_checked == report.components_total == total
    assert f"sample={k} exceeds the {total} components of θ: checked them all" in report.notes


def test_a_sample_of_all_of_theta_needs_no_note() -> None:
    model, batch = used_model()
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report = check_module(model, cross_entropy, batch, sample=total)
    assert report.components_checked == total
    assert not any("exceeds" in note for note in report.notes)


# --- the model: trainable, real floating-point parameters that hold values ----------------------


def frozen(model: nn.Module) -> nn.Module:
    return model.requires_grad_(False)


@pytest.mark.parametrize(
    ("build", "described"),
    [
        (lambda: frozen(used_model()[0]), "Sequential with 8 parameter tensors"),
        (lambda: frozen(nn.Linear(4, 3)), "Linear with 2 parameter tensors"),
        (nn.ReLU, "ReLU with 0 parameter tensors"),
    ],
    ids=["frozen-net", "frozen-linear", "no-parameters"],
)
def test_no_trainable_parameters(build: Callable[[], nn.Module], described: str) -> None:
    message = (
        "`model` has no trainable parameters: it needs at least one with requires_grad=True; "
        f"got a {described}, none trainable. There is no gradient to check; unfreeze the layers "
        "you want checked"
    )
    rejected(ValueError, message, model=build())


def meta_message(name: str) -> str:
    return (
        "`model` must have its parameters on a device that holds values (cpu, cuda, …); "
        f"got parameter {name!r} on the meta device. Materialize the model (e.g. "
        "model.to_empty(device='cpu') and initialize it) before checking"
    )


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: nn.Linear(4, 3, device="meta"), "weight"),
        # A frozen one holds no values either: the forward cannot run, so say so before it tries.
        (
            lambda: nn.Sequential(nn.Linear(4, 3), frozen(nn.Linear(3, 3, device="meta"))),
            "1.weight",
        ),
    ],
    ids=["trainable", "frozen"],
)
def test_parameters_on_the_meta_device(build: Callable[[], nn.Module], name: str) -> None:
    loss = CountingLoss()
    with pytest.raises(ValueError, match=exactly(meta_message(name))):
        check_module(build(), loss, classification_batch((4,)))
    assert loss.calls == 0


class Complex(nn.Module):
    """A real layer whose output is scaled by complex factors ``z``; |·|² makes J real."""

    def __init__(self, trainable: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        z = torch.tensor([1 + 2j, 0.5 - 1j, -1 + 0.5j], dtype=torch.complex64)
        self.z = nn.Parameter(z, requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.z


def complex_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch[0]).abs().pow(2).mean()


def test_complex_trainable_parameter() -> None:
    message = (
        "`model` must have real floating-point trainable parameters "
        "(float16/bfloat16/float32/float64); got parameter 'z' with dtype torch.complex64"
    )
    model = Complex()
    with pytest.raises(TypeError, match=exactly(message)):
        check_module(model, complex_loss, classification_batch((4,)))


def test_integer_parameter_cannot_be_trainable() -> None:
    # torch itself refuses, so the engine never meets a trainable integer parameter.
    with pytest.raises(RuntimeError, match="Only Tensors of floating point and complex dtype"):
        nn.Parameter(torch.tensor([2, 0, 1]))


class Permuted(nn.Module):
    """A linear layer on permuted input features: the permutation is an integer tensor."""

    def __init__(self, as_parameter: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        order = torch.tensor([2, 0, 3, 1])
        if as_parameter:
            self.order = nn.Parameter(order, requires_grad=False)
        else:
            self.register_buffer("order", order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, self.order])


def test_integer_buffer_is_held_fixed_and_the_float_parameters_checked() -> None:
    model = Permuted(as_parameter=False)
    before = snapshot(model)
    report = check_module(model, cross_entropy, classification_batch((4,)))
    assert report.verdict is Verdict.PASS, str(report)
    assert list(report.parameters) == ["fc.weight", "fc.bias"]
    assert changes(before, model) == []


def test_frozen_integer_parameter_is_held_fixed() -> None:
    report = check_module(Permuted(as_parameter=True), cross_entropy, classification_batch((4,)))
    assert report.verdict is Verdict.PASS, str(report)


def test_frozen_complex_parameter_is_held_fixed() -> None:
    model, batch = Complex(trainable=False), classification_batch((4,))
    report = check_module(model, complex_loss, batch)
    complex_loss(model, batch).backward()
    grad = model.fc.weight.grad
    assert grad is not None
    np.testing.assert_allclose(report.analytic[:12], grad.double().reshape(-1), rtol=1e-5)


# --- tied parameters: checked once, named once, with the gradient of both uses ----------------


def tied() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    model[2].weight = model[0].weight
    return model


def test_tied_parameter_is_checked_and_named_once() -> None:
    model, batch = tied(), classification_batch((3,))
    before = snapshot(model)
    report = check_module(model, cross_entropy, batch)
    assert report.layout.names == ("0.weight", "0.bias", "2.bias")
    assert report.components_checked == report.components_total == 9 + 3 + 3
    assert report.verdict is Verdict.PASS, str(report)
    assert "2.weight" not in str(report)
    assert changes(before, model) == []


def test_tied_parameter_gradient_adds_both_uses() -> None:
    model, batch = tied(), classification_batch((3,))
    report = check_module(model, cross_entropy, batch, include="0.weight")
    untied = copy.deepcopy(model)
    untied[2].weight = nn.Parameter(untied[0].weight.detach().clone())
    cross_entropy(untied, (batch[0].double(), batch[1])).backward()
    first, second = (untied[i].weight.grad.reshape(-1).numpy() for i in (0, 2))
    np.testing.assert_allclose(report.analytic, first + second, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(report.numeric, first + second, rtol=1e-6, atol=1e-9)
    assert not np.allclose(report.analytic, first, rtol=1e-3)


# --- a loss function that raises: the error propagates, the model is untouched ------------------


class LossError(Exception):
    pass


@pytest.mark.parametrize("failing_call", [1, 2, 5])
def test_loss_that_raises_propagates_and_leaves_the_model(failing_call: int) -> None:
    # From call 5 on the loss runs under vmap, whose failures fall back to the plain loop
    # (by design): the fault must persist to reach the user, as a real one does.
    model, batch = used_model()
    before = snapshot(model)
    calls = itertools.count(1)

    def loss(m: nn.Module, b: Batch) -> torch.Tensor:
        if next(calls) >= failing_call:
            raise LossError(f"the loss broke from call {failing_call} on")
        return cross_entropy(m, b)

    with pytest.raises(LossError, match=exactly(f"the loss broke from call {failing_call} on")):
        check_module(model, loss, batch)
    assert changes(before, model) == []


# --- a loss function that runs backward itself: told at once -----------------------------------

CALLS_BACKWARD = (
    "`loss_fn` must return the cost J without calling .backward() on it: the check runs "
    "backprop itself; got a loss_fn that ran backward"
)


@pytest.mark.parametrize(
    ("retain", "zero_grad"),
    [(False, False), (True, False), (False, True)],
    ids=["backward", "retain_graph", "then_zero_grad"],
)
def test_loss_that_calls_backward(retain: bool, zero_grad: bool) -> None:
    model, batch = used_model()
    before = snapshot(model)
    loss = CountingLoss()

    def training_step(m: nn.Module, b: Batch) -> torch.Tensor:
        cost = loss(m, b)
        cost.backward(retain_graph=retain)
        if zero_grad:
            m.zero_grad()
        return cost

    with pytest.raises(TypeError, match=exactly(CALLS_BACKWARD)):
        check_module(model, training_step, batch)
    assert loss.calls == 1
    assert changes(before, model) == []


# --- a batch the loss cannot use: the loss's own error propagates, the model is untouched --------


def unusable_batches() -> list[Any]:
    # float64, as the check casts it: the loss then fails the same way when called by hand.
    x, y = classification_batch((4,))
    x = x.double()
    return [
        pytest.param((torch.randn(8, 7, dtype=torch.float64), y), id="wrong-features"),
        pytest.param((x, torch.full_like(y, 5)), id="label-out-of-range"),
        pytest.param(None, id="none"),
        pytest.param({"x": x, "y": y}, id="dict"),
    ]


@pytest.mark.parametrize("batch", unusable_batches())
def test_batch_the_loss_cannot_use(batch: Any) -> None:
    model, _ = used_model()
    with pytest.raises(Exception) as direct:  # what the loss says when called by hand
        cross_entropy(copy.deepcopy(model).double(), batch)
    before = snapshot(model)
    with pytest.raises(type(direct.value), match=exactly(str(direct.value))):
        check_module(model, cross_entropy, batch)
    assert changes(before, model) == []


# --- NaN/Inf in the loss: a fail that says where, not an exception -------------------------------


# J(θ ± ε·e_i) − J(θ) is inf − inf: numpy warns "invalid value" in analysis.py (reported).
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=repr)
def test_non_finite_loss_fails_and_says_so(bad: float) -> None:
    model, batch = used_model()
    before = snapshot(model)
    report = check_module(model, lambda m, b: cross_entropy(m, b) + bad, batch)
    assert report.verdict is Verdict.FAIL
    assert report.message == (
        f"the loss J(θ) is {bad}: fix the forward pass before checking gradients"
    )
    assert changes(before, model) == []


class Root(nn.Module):
    """J = Σ √w: finite at θ, but w[0] − ε < 0 makes J(θ − ε·e_0) NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1e-8, 1.0, 4.0], dtype=torch.float64))


def test_loss_non_finite_near_theta_fails_and_names_the_component() -> None:
    report = check_module(Root(), lambda m, b: torch.sqrt(m.w).sum(), None)
    assert report.verdict is Verdict.FAIL
    assert report.message == (
        "non-finite values: the numeric estimate is NaN/Inf at 1 components (w[0]). The loss or "
        "its gradient overflows or divides by zero there: fix that before comparing gradients."
    )


def test_an_epsilon_below_the_spacing_of_theta_leaves_those_components_not_judged() -> None:
    # One rule for check_function and check_module: θ_i ± ε == θ_i means the step is lost, and
    # the component is not judged (never a numeric 0 read as evidence), with what to do.
    theta = np.array([1.0, 2.0, 1e-30])
    report = gradwatch.check_function(
        lambda t: float(np.sum(t**2)), theta, 2 * theta, epsilon=1e-17, layout={"w": (3,)}
    )
    assert [report.component(p).reason for p in range(3)] == [
        "step lost",
        "step lost",
        "within noise",
    ]
    assert report.verdict is gradwatch.Verdict.NOT_JUDGED
    assert "w: θ_i ± epsilon rounds back to θ_i in the check's precision; use epsilon='auto'" in (
        report.message
    )


def test_the_old_name_of_sample_is_gone_and_names_the_new_one() -> None:
    model, batch = used_model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        TypeError, match=r"check_module\(\) got `components`, removed in 0\.3\.0; use `sample`"
    ):
        check_module(model, cross_entropy, batch, components=5)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    shown = inspect.signature(check_module).parameters  # what help() and the docs show
    assert "components" not in shown and shown["sample"].default is None
    with pytest.raises(TypeError, match="unexpected keyword argument 'smaple'"):
        check_module(model, cross_entropy, batch, smaple=5)  # type: ignore[call-arg]
