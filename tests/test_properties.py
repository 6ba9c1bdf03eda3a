"""Properties of the check on hypothesis-generated small MLPs (issue 6): a correct model never
fails, one corrupted component is the one ``worst(1)`` names, and a tensor's gradient off by 1%
never passes (and fails wherever the check can resolve it).

The nets are Linear → [BatchNorm1d] → activation → [Dropout], one to three times, then a Linear
head; widths 1–8, activations with kinks (ReLU, LeakyReLU, Hardtanh) and without (tanh, sigmoid,
softplus), a float64 batch of 4–16 random examples, cross-entropy or MSE.

The corruption properties build J(θ) on the flat θ themselves (``functional_call`` in float64,
the analytic gradient from autograd) and plant the bug with :func:`gradwatch.check_function`.
Dropout is off there (a fresh mask per evaluation is not one function of θ). Examples the property
says nothing about are left out with ``assume``:

* (b) a dead network, ‖∇J‖₂ ≤ 1e-6: the planted δ ≥ 1e-4·‖∇J‖₂ may then be below the rounding
  noise of the two-sided estimate, about ε_mach·|J| / 2ε ≈ 1e-9·|J| at ε = 1e-7. (The head's bias
  keeps ‖∇J‖₂ far above that in practice; the filter is a guard.)
* (c) nothing is left out: a tensor scaled by 1.01 has a difference of about 5e-3 > 1e-3, so its
  verdict is never a pass (it fails, or, where its gradient is within J's noise, is not judged:
  a bias BatchNorm cancels has a zero gradient, and 1.01 × 0 is no bug). Where
  some component's 1% error stands RESOLVABLE units above J's measured noise, the check must see
  it: the verdict is fail and the tensor is named failing.

ReLU inputs that land exactly on 0 are legitimate kinks the engine handles; they are not filtered.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import gradwatch
from gradwatch import Verdict, check_module
from gradwatch.evidence.noise import NOISE_MULTIPLE

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "hardtanh": nn.Hardtanh,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
}
# A dead network: ‖∇J‖₂ at most this (module docstring).
DEAD_GRADIENT = 1e-6
# A component's 1% error must stand this many units of J's measured noise above it to be resolved
# for sure: the tolerance NOISE_MULTIPLE (8) times the noise of Richardson's re-check (2.7×).
RESOLVABLE = 3 * NOISE_MULTIPLE
STEP = 1e-7  # check_function's default ε
EPS64 = float(np.finfo(np.float64).eps)
# max_examples below: sized so this file runs in ~15 s on a loaded 2-core machine (< 60 s).


@dataclass(frozen=True)
class Net:
    """What hypothesis draws: enough to build the model, the batch and the loss."""

    inputs: int
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    batchnorm: bool
    dropout: bool
    examples: int
    loss: str  # "cross_entropy" or "mse"
    outputs: int
    seed: int

    def build(self) -> tuple[nn.Sequential, tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(self.seed)
        layers: list[nn.Module] = []
        width = self.inputs
        for hidden, activation in zip(self.widths, self.activations, strict=True):
            layers.append(nn.Linear(width, hidden))
            if self.batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(ACTIVATIONS[activation]())
            if self.dropout:
                layers.append(nn.Dropout(0.3))
            width = hidden
        layers.append(nn.Linear(width, self.outputs))
        model = nn.Sequential(*layers).to(torch.float64).train()
        x = torch.randn(self.examples, self.inputs, dtype=torch.float64)
        if self.loss == "cross_entropy":
            y = torch.randint(0, self.outputs, (self.examples,))
        else:
            y = torch.randn(self.examples, self.outputs, dtype=torch.float64)
        return model, (x, y)

    def loss_fn(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        if self.loss == "cross_entropy":
            return F.cross_entropy(model(x), y)
        return F.mse_loss(model(x), y)


@st.composite
def nets(draw: st.DrawFn) -> Net:
    depth = draw(st.integers(1, 3))
    loss = draw(st.sampled_from(["cross_entropy", "mse"]))
    return Net(
        inputs=draw(st.integers(1, 8)),
        widths=tuple(draw(st.lists(st.integers(1, 8), min_size=depth, max_size=depth))),
        activations=tuple(
            draw(st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=depth, max_size=depth))
        ),
        batchnorm=draw(st.booleans()),
        dropout=draw(st.booleans()),
        examples=draw(st.integers(4, 16)),
        loss=loss,
        outputs=draw(st.integers(2, 4) if loss == "cross_entropy" else st.integers(1, 3)),
        seed=draw(st.integers(0, 2**16)),
    )


@dataclass(frozen=True)
class FlatProblem:
    """J on the flat θ of a net (dropout off), with autograd's gradient at θ."""

    cost: Callable[[np.ndarray], float]
    theta: np.ndarray
    grad: np.ndarray
    layout: dict[str, tuple[int, ...]]


class _Bound(nn.Module):
    """The model with its parameters replaced by ``tensors`` (``functional_call``)."""

    def __init__(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.tensors = tensors

    def forward(self, x: torch.Tensor) -> Any:
        return functional_call(self.model, self.tensors, (x,))


def flat_problem(net: Net) -> FlatProblem:
    model, batch = net.build()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    params = dict(model.named_parameters())
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    sizes = [p.numel() for p in params.values()]

    def unflatten(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(theta, sizes)
        return {n: t.view(shape) for (n, shape), t in zip(shapes.items(), pieces, strict=True)}

    def loss_at(theta: torch.Tensor) -> torch.Tensor:
        return net.loss_fn(_Bound(model, unflatten(theta)), batch)

    def cost(theta: np.ndarray) -> float:
        with torch.no_grad():
            return float(loss_at(torch.from_numpy(theta)))

    theta = torch.cat([p.detach().reshape(-1) for p in params.values()]).clone()
    leaf = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_at(leaf), leaf)
    return FlatProblem(cost, theta.numpy(), grad.numpy(), shapes)


# --- (a) a correct model never fails at the default settings --------------------------------


@settings(max_examples=60, deadline=None, derandomize=True)
@given(net=nets())
def test_correct_model_never_fails(net: Net) -> None:
    model, batch = net.build()
    report = check_module(model, net.loss_fn, batch)
    assert report.verdict is not Verdict.FAIL, f"{net}\n{report}"


# --- (b) one corrupted component is the one worst(1) names ----------------------------------


@settings(max_examples=100, deadline=None, derandomize=True)
@given(net=nets(), data=st.data())
def test_corrupted_component_is_named_worst(net: Net, data: st.DataObject) -> None:
    problem = flat_problem(net)
    norm = float(np.linalg.norm(problem.grad))
    assume(norm > DEAD_GRADIENT)
    position = data.draw(st.integers(0, problem.theta.size - 1), label="position")
    size = data.draw(st.floats(1e-4, 1.0), label="|delta| / ‖∇J‖₂")
    sign = data.draw(st.sampled_from([-1.0, 1.0]), label="sign")
    grad = problem.grad.copy()
    grad[position] += sign * size * norm
    report = gradwatch.check_function(problem.cost, problem.theta, grad, layout=problem.layout)
    worst = report.worst(1)[0]
    assert worst.flat_index == position, f"{net}\nplanted at {position}, {worst}\n{report}"


# --- (c) a tensor's gradient scaled by 1.01 never passes, and fails where it stands out -------


def resolvable(problem: FlatProblem, span: slice, noise: float) -> bool:
    """Whether some component's 1% error stands RESOLVABLE noise units above J's measured noise
    (σ_J / (√2·ε) per component): the check then sees it and must fail."""
    return bool(
        0.01 * np.max(np.abs(problem.grad[span])) > RESOLVABLE * noise / (np.sqrt(2) * STEP)
    )


@settings(max_examples=100, deadline=None, derandomize=True)
@given(net=nets(), data=st.data())
def test_tensor_scaled_by_one_percent_never_passes(net: Net, data: st.DataObject) -> None:
    problem = flat_problem(net)
    offsets = np.cumsum([0, *(math.prod(shape) for shape in problem.layout.values())])
    spans = [slice(int(a), int(b)) for a, b in itertools.pairwise(offsets) if b > a]
    span = data.draw(st.sampled_from(spans), label="tensor")
    assume(np.linalg.norm(problem.grad[span]) > 0)
    grad = problem.grad.copy()
    grad[span] *= 1.01
    report = gradwatch.check_function(problem.cost, problem.theta, grad, layout=problem.layout)
    name = report.layout.locate(span.start)[0]
    assert report.parameters[name].verdict is not Verdict.PASS, f"{net}\nscaled {name}\n{report}"
    assert report.j_noise is not None
    if resolvable(problem, span, report.j_noise.effective):
        assert report.verdict is Verdict.FAIL, f"{net}\nscaled {name}\n{report}"
        assert report.parameters[name].verdict is Verdict.FAIL
