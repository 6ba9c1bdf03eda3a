"""Planted backward bugs: custom ``torch.autograd.Function``s whose forward is exact and whose
backward is wrong, put into a named submodule or parameter of any model (Hugging Face ones
included), and the ground truth of what a planted bug corrupts.

``plant(model, target, kind)`` changes ``model`` in place (plant into a copy); the forward of the
model stays bit-for-bit the same, only backprop changes:

- ``target`` names a parameter (``"layers.0.attn.out_proj.weight"``): that tensor's gradient is
  multiplied by 2 (``"factor"``), negated (``"sign"``), zeroed (``"zeroed"``) or transposed
  (``"transposed"``, square in its last two dimensions), as if the layer's hand-written
  backward got dW wrong;
- ``target`` names a module: the gradient that reaches its output is treated so (every tensor
  below it in backward order is corrupted), or, for ``"missing_term"`` on an activation
  x·gate(x) (SiLU, GELU), backprop uses gate(x) alone: the product rule's x·gate'(x) term is
  missing.

Every Function has a vmap rule (``generate_vmap_rule``), so the check evaluates the planted
model as fast as the correct one.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from gradwatch.common.user_state import (
    attention_fast_path_disabled,
    cast_batch,
    dropout_disabled,
    reseed,
)
from gradwatch.evaluation.cost import _LossModule

_CPU = torch.device("cpu")
Kind = Literal["factor", "sign", "zeroed", "transposed", "missing_term"]
KINDS: tuple[Kind, ...] = ("factor", "sign", "zeroed", "transposed", "missing_term")


def _wrong(grad: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "factor":
        return 2.0 * grad
    if kind == "sign":
        return -grad
    if kind == "zeroed":
        return torch.zeros_like(grad)
    if kind == "transposed":
        return grad.transpose(-1, -2)
    raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}")


class WrongGradient(torch.autograd.Function):
    """The identity whose backward is ``_wrong(grad, kind)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, kind: str) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.kind = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _wrong(grad, ctx.kind), None


class GateOnly(torch.autograd.Function):
    """y = act(x) for an activation x·gate(x); backward grad·gate(x), without x·gate'(x)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return act(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, y = ctx.saved_tensors
        gate = torch.where(x == 0, torch.full_like(x, 0.5), y / torch.where(x == 0, 1.0, x))
        return grad * gate, None


def _first_tensor(out: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``out`` with its first tensor (a module's output, or the first of a tuple) changed."""
    if isinstance(out, torch.Tensor):
        return change(out)
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return (change(out[0]), *out[1:])
    raise TypeError(f"cannot plant a bug on an output of type {type(out).__name__}")


def plant(model: nn.Module, target: str, kind: Kind) -> nn.Module:
    """Plants bug ``kind`` at ``target`` (a parameter or module name) of ``model``; returns it."""
    params = dict(model.named_parameters())
    if target in params:
        return _plant_parameter(model, target, kind)
    module = model.get_submodule(target)  # raises AttributeError naming what is missing
    if kind == "missing_term":
        act = module.forward
        module.forward = lambda x: GateOnly.apply(x, act)  # type: ignore[method-assign]
    else:
        _wrong(torch.ones(2, 2), kind)  # an unknown kind fails here, not at backward
        module.register_forward_hook(
            lambda m, args, out: _first_tensor(out, lambda t: WrongGradient.apply(t, kind))
        )
    return model


def _plant_parameter(model: nn.Module, target: str, kind: Kind) -> nn.Module:
    """For the whole forward of ``model``, the parameter ``target`` is read through
    ``WrongGradient`` (whatever module uses it: ``nn.MultiheadAttention`` reads its
    ``out_proj.weight`` without calling ``out_proj``)."""
    owner_name, _, name = target.rpartition(".")
    owner = model.get_submodule(owner_name)
    shape = owner._parameters[name].shape  # type: ignore[union-attr]
    if kind == "missing_term" or (kind == "transposed" and shape[-2:] != shape[-1:] * 2):
        raise ValueError(f"cannot plant {kind!r} on {target} of shape {tuple(shape)}")
    forward = model.forward

    @functools.wraps(forward)  # keeps the signature that some libraries inspect
    def planted(*args: Any, **kwargs: Any) -> Any:
        held = owner._parameters[name]  # θ during the check: functional_call puts it there
        owner._parameters[name] = WrongGradient.apply(held, kind)
        try:
            return forward(*args, **kwargs)
        finally:
            owner._parameters[name] = held

    model.forward = planted  # type: ignore[method-assign]
    return model


def planted_copy(model: nn.Module, target: str, kind: Kind) -> nn.Module:
    """A deep copy of ``model`` with the bug planted (the original stays correct)."""
    return plant(copy.deepcopy(model), target, kind)


def corrupted(
    correct: nn.Module,
    planted: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batch: Any,
    seed: int = 0,
) -> set[str]:
    """The parameters whose autograd gradient (float64, dropout layers off, every random draw
    seeded alike) differs between the planted and the correct model: what the bug reaches."""
    grads = [_gradient(m, loss_fn, batch, seed) for m in (correct, planted)]
    # A gradient that is zero by construction (a bias before BatchNorm) is rounding noise, which
    # the bug rescales: it differs only far below the gradient's scale, and is not corrupted.
    scale = float(torch.cat([g.reshape(-1) for g in grads[0].values()]).norm())
    found = set()
    for name, right in grads[0].items():
        gap = float((grads[1][name] - right).norm())
        if gap > max(1e-6 * float(right.norm() + grads[1][name].norm()), 1e-10 * scale):
            found.add(name)
    return found


def _gradient(
    model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], batch: Any, seed: int
) -> dict[str, torch.Tensor]:
    """Autograd's gradient of J at float64 copies of the parameters, as the check takes it
    (``functional_call``: a planted model's own forward must see them)."""
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    tensors = {
        f"model.{n}": (t.detach().double() if t.is_floating_point() else t.detach()).clone()
        for n, t in [*model.named_parameters(), *model.named_buffers()]
    }
    leaves = [tensors[f"model.{n}"].requires_grad_() for n in named]
    reseed(seed)
    with attention_fast_path_disabled(), dropout_disabled(model, disable=True):
        cost = functional_call(
            _LossModule(model, loss_fn), tensors, (cast_batch(batch, torch.float64, _CPU),)
        )
    grads = torch.autograd.grad(cost, leaves, allow_unused=True)
    return {
        n: torch.zeros_like(t) if g is None else g.detach()
        for n, t, g in zip(named, leaves, grads, strict=True)
    }
