"""Networks written by hand for the tests: a numpy net with its own backprop, and small torch
modules (a custom ``autograd.Function`` with optional bugs, an MLP and a CNN with BatchNorm and
Dropout). Smooth activations in the torch models keep ReLU kinks (issue 4's business) out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------------------------
# numpy: LINEAR -> RELU -> LINEAR -> RELU -> LINEAR -> SIGMOID, binary cross-entropy (the course's
# gradient-checking network), parameters reshaped and concatenated into θ in LAYOUT order.

LAYOUT: dict[str, tuple[int, ...]] = {
    "W1": (5, 4),
    "b1": (5,),
    "W2": (3, 5),
    "b2": (3,),
    "W3": (1, 3),
    "b3": (1,),
}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class NumpyNet:
    """A 3-layer network on a fixed batch; ``cost(theta)`` is J, ``backward(theta)`` is dθ.

    ``bugs`` maps a tensor name to a factor its gradient is multiplied by (a planted bug).
    """

    def __init__(self, seed: int = 0, examples: int = 6) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(4, examples))
        self.y = (rng.random((1, examples)) > 0.5).astype(np.float64)
        self.theta = np.concatenate(
            [rng.normal(scale=0.8, size=shape).ravel() for shape in LAYOUT.values()]
        )

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        params, start = {}, 0
        for name, shape in LAYOUT.items():
            size = int(np.prod(shape))
            params[name] = theta[start : start + size].reshape(shape)
            start += size
        return params

    def forward(self, theta: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        p = self.unpack(theta)
        z1 = p["W1"] @ self.x + p["b1"][:, None]
        a1 = np.maximum(z1, 0.0)
        z2 = p["W2"] @ a1 + p["b2"][:, None]
        a2 = np.maximum(z2, 0.0)
        z3 = p["W3"] @ a2 + p["b3"][:, None]
        a3 = _sigmoid(z3)
        m = self.x.shape[1]
        cost = -float(np.sum(self.y * np.log(a3) + (1 - self.y) * np.log(1 - a3))) / m
        return cost, {"z1": z1, "a1": a1, "z2": z2, "a2": a2, "a3": a3}

    def cost(self, theta: np.ndarray) -> float:
        return self.forward(theta)[0]

    def relu_margin(self) -> float:
        """Smallest |ReLU input| at θ: far above ε means no kink is crossed by the check."""
        cache = self.forward(self.theta)[1]
        return float(min(np.abs(cache["z1"]).min(), np.abs(cache["z2"]).min()))

    def backward(self, theta: np.ndarray, bugs: dict[str, float] | None = None) -> np.ndarray:
        p = self.unpack(theta)
        c = self.forward(theta)[1]
        m = self.x.shape[1]
        dz3 = (c["a3"] - self.y) / m
        grads = {"W3": dz3 @ c["a2"].T, "b3": dz3.sum(axis=1)}
        dz2 = (p["W3"].T @ dz3) * (c["z2"] > 0)
        grads |= {"W2": dz2 @ c["a1"].T, "b2": dz2.sum(axis=1)}
        dz1 = (p["W2"].T @ dz2) * (c["z1"] > 0)
        grads |= {"W1": dz1 @ self.x.T, "b1": dz1.sum(axis=1)}
        for name, factor in (bugs or {}).items():
            grads[name] = grads[name] * factor
        return np.concatenate([grads[name].ravel() for name in LAYOUT])


# ---------------------------------------------------------------------------------------------
# torch: a custom autograd.Function y = z·tanh(z), z = x Wᵀ, whose backward can carry a bug.

Bug = Literal["none", "weight_sign", "input_sign", "missing_term"]


class SelfGate(torch.autograd.Function):
    """y = z·tanh(z) with z = x Wᵀ; dy/dz = tanh(z) + z·(1 − tanh²(z)), by the product rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bug: str) -> torch.Tensor:
        z = x @ weight.T
        ctx.save_for_backward(x, weight, z)
        ctx.bug = bug
        return z * torch.tanh(z)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, weight, z = ctx.saved_tensors
        t = torch.tanh(z)
        dz = grad * (t + z * (1 - t * t))
        grad_x = dz @ weight
        # "missing_term": the weight's gradient forgets the z·(1 − tanh²) term of the product rule.
        grad_weight = (grad * t if ctx.bug == "missing_term" else dz).T @ x
        if ctx.bug == "weight_sign":
            grad_weight = -grad_weight
        if ctx.bug == "input_sign":
            grad_x = -grad_x
        return grad_x, grad_weight, None


class ScaledGradient(torch.autograd.Function):
    """The identity whose backward multiplies the gradient by ``factor``: a planted bug (any
    factor but 1). Use as ``ScaledGradient.apply(tensor, 2.0)``."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.factor * grad, None


class GatedNet(nn.Module):
    """inp (Linear) → tanh → gate (SelfGate) → head (Linear)."""

    def __init__(self, bug: Bug = "none") -> None:
        super().__init__()
        self.bug = bug
        self.inp = nn.Linear(3, 4)
        self.gate = nn.Linear(4, 5, bias=False)  # holds the Function's weight
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        return self.head(SelfGate.apply(h, self.gate.weight, self.bug))


def mlp(dtype: torch.dtype = torch.float64, bias: bool = False) -> nn.Sequential:
    """Linear → BatchNorm1d → tanh → Dropout → Linear, in train mode.

    ``bias=False`` by default, as usual before BatchNorm: the batch mean cancels that bias, so
    its true gradient is exactly zero (see the test that keeps it).
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6, bias=bias), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)
    )
    return model.to(dtype).train()


def cnn(dtype: torch.dtype = torch.float64, bias: bool = False) -> nn.Sequential:
    """Conv2d → BatchNorm2d → tanh → Dropout2d → Linear on 1×6×6 images, in train mode."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, bias=bias),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Dropout2d(0.5),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    )
    return model.to(dtype).train()


MODELS: dict[str, tuple[Callable[..., nn.Sequential], tuple[int, ...]]] = {
    "mlp": (mlp, (4,)),
    "cnn": (cnn, (1, 6, 6)),
}


def classification_batch(
    shape: tuple[int, ...], classes: int = 3, examples: int = 8, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(examples, *shape, generator=generator)
    y = torch.randint(0, classes, (examples,), generator=generator)
    return x, y


def cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)
