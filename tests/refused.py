"""Small torch modules written in ways ``torch.func.vmap`` refuses as written: a buffer filled
in place from the batch, an ``autograd.Function`` with ``setup_context`` but no vmap rule, and a
forward that reads a value out (``bool``) (which nothing batches: the plain loop's case).
Each can carry a planted wrong backward. Inputs of width 6, three classes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Scaled(torch.autograd.Function):
    """The identity whose backward multiplies the gradient by ``factor`` (1: correct), written
    the new way, with a generated vmap rule: vmap runs it as it is."""

    generate_vmap_rule = True

    @staticmethod
    def forward(t: torch.Tensor, factor: float) -> torch.Tensor:
        return t.view_as(t)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.factor * grad, None


class NoRule(torch.autograd.Function):
    """tanh with ``setup_context`` but neither a vmap rule nor ``generate_vmap_rule``; its
    backward multiplies the true one by ``factor``."""

    @staticmethod
    def forward(x: torch.Tensor, factor: float) -> torch.Tensor:
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return ctx.factor * grad * (1 - y * y), None


class _TwoLayers(nn.Module):
    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = factor
        self.inp = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)


class FillNet(_TwoLayers):
    """inp → a fresh buffer filled in place (``+=``, ``masked_fill_``, index assignment) → head;
    ``factor`` scales the gradient through the buffer (1: correct)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        buffer = torch.zeros(h.shape, dtype=h.dtype)
        buffer += torch.tanh(h)
        buffer.masked_fill_(h < -1.0, 0.0)
        buffer[:, 0] = h[:, 1] * h[:, 2]
        return self.head(Scaled.apply(buffer, self.factor))


class NoRuleNet(_TwoLayers):
    """inp → :class:`NoRule` (tanh) → head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(NoRule.apply(self.inp(x), self.factor))


class ItemNet(_TwoLayers):
    """inp → tanh → head, behind a test whose value is read out (``bool``, as ``.item()``):
    always true, but vmap cannot run it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        if not bool((h > -2).all()):
            raise AssertionError("tanh is above -1")
        return self.head(h)
