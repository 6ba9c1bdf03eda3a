"""J as a function of θ for a torch module, evaluated on private float64 copies of its tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gradwatch._state import reseed

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap in our tensors."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Any:
        return self.loss_fn(self.model, batch)


def _scalar(value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            "`loss_fn` must return the cost J as a scalar torch.Tensor computed from the model; "
            f"got {type(value).__name__}"
        )
    if value.numel() != 1:
        raise ValueError(
            "`loss_fn` must return a scalar (one element) tensor, e.g. a mean over the batch; "
            f"got shape {tuple(value.shape)}"
        )
    return value.reshape(())


class ModuleCost:
    """J(θ) for ``loss_fn(model, batch)``: θ is ``names``'s tensors, everything else held fixed.

    The model's own parameters and buffers are never written: every evaluation runs through
    ``torch.func.functional_call`` on copies in ``dtype`` (BatchNorm updates the copies' running
    statistics, not the model's). Before each evaluation every global RNG is re-seeded with
    ``seed``, so random draws in the forward are the same at every θ.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: Any,
        names: Sequence[str],
        dtype: torch.dtype,
        seed: int,
    ) -> None:
        self._module = _LossModule(model, loss_fn)
        self._batch = batch
        self._seed = seed
        self.evaluations = 0
        wanted = set(names)
        params = dict(model.named_parameters())
        # θ: one leaf per checked tensor, on the parameter's own device, in dtype.
        self.theta = [params[n].detach().to(dtype=dtype).clone() for n in names]
        self._flat = [t.view(-1) for t in self.theta]
        self._names = [f"model.{n}" for n in names]
        fixed: dict[str, torch.Tensor] = {
            f"model.{n}": p.detach().to(dtype=dtype).clone()
            for n, p in params.items()
            if n not in wanted
        }
        for n, b in model.named_buffers():
            cast = b.to(dtype=dtype) if b.is_floating_point() else b
            fixed[f"model.{n}"] = cast.detach().clone()
        self._fixed = fixed

    def _call(self, theta: Sequence[torch.Tensor]) -> torch.Tensor:
        reseed(self._seed)
        self.evaluations += 1
        tensors = dict(self._fixed)
        tensors.update(zip(self._names, theta, strict=True))
        return _scalar(functional_call(self._module, tensors, (self._batch,)))

    def value(self) -> float:
        """J at θ, without autograd."""
        with torch.no_grad():
            return float(self._call(self.theta))

    def gradient(self) -> tuple[float, list[torch.Tensor]]:
        """J at θ and autograd's gradient (zeros where J does not depend on a tensor)."""
        leaves = [t.clone().requires_grad_(True) for t in self.theta]
        with torch.enable_grad():
            cost = self._call(leaves)
            if not cost.requires_grad:  # J detached from θ: backprop gives nothing, say zeros
                return float(cost), [torch.zeros_like(t) for t in self.theta]
            grads = torch.autograd.grad(cost, leaves, allow_unused=True)
        return float(cost.detach()), [
            torch.zeros_like(t) if g is None else g.detach()
            for t, g in zip(self.theta, grads, strict=True)
        ]

    def pairs(
        self, tensor: np.ndarray, local: np.ndarray, steps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """J(θ + h·e_i) and J(θ − h·e_i) for each component (``tensor``, ``local``) and step h."""
        plus = np.empty(len(local))
        minus = np.empty(len(local))
        with torch.no_grad():
            for k, (t, i, h) in enumerate(zip(tensor, local, steps, strict=True)):
                flat = self._flat[int(t)]
                original = flat[int(i)].clone()
                try:
                    flat[int(i)] = original + float(h)
                    plus[k] = float(self._call(self.theta))
                    flat[int(i)] = original - float(h)
                    minus[k] = float(self._call(self.theta))
                finally:
                    flat[int(i)] = original
        return plus, minus
