"""Custom operators (``torch.library``) for the compiled-model and precision tests, registered
once per process: a cube whose kernel accepts float32 only (its backward right or wrong), and a
softsign whose registered backward is right in eager code and wrong when compiled."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_LIBRARY = "gradwatch_tests"


def _elementwise(op: Any) -> Any:
    """The batching rule of an elementwise op: the op on the batched tensor, as it is."""

    def rule(info: Any, in_dims: tuple[int | None], x: torch.Tensor) -> Any:
        return op(x), in_dims[0]

    return rule


def _float32_cube(name: str, slope: float) -> Any:
    """x³ with a float32-only kernel; its backward says ``slope``·x² (3 is right)."""

    @torch.library.custom_op(f"{_LIBRARY}::{name}", mutates_args=())
    def cube(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"{name} has a float32 kernel only; got {x.dtype}")
        return x * x * x

    @cube.register_fake
    def _(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    def setup(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * slope * x * x

    cube.register_autograd(backward, setup_context=setup)
    cube.register_vmap(_elementwise(cube))
    return cube


cube32 = _float32_cube("cube32", 3.0)
wrong_cube32 = _float32_cube("wrong_cube32", 3.3)  # 10% off: a wrong backward


@torch.library.custom_op(f"{_LIBRARY}::softsign", mutates_args=())
def softsign(x: torch.Tensor) -> torch.Tensor:
    """x / (1 + |x|); its registered backward is wrong only where it is compiled."""
    return x / (1 + x.abs())


@softsign.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _softsign_setup(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0])


def _softsign_backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    slope = 1 / (1 + x.abs()) ** 2
    if torch.compiler.is_compiling():  # the planted fault: the compiled graph loses the square
        slope = 1 / (1 + x.abs())
    return grad * slope


softsign.register_autograd(_softsign_backward, setup_context=_softsign_setup)
softsign.register_vmap(_elementwise(softsign))


class OpNet(nn.Module):
    """Linear(8, 16) → op → Linear(16, 3): a wrong backward of ``op`` shows in ``first``'s
    gradient only."""

    def __init__(self, op: Any) -> None:
        super().__init__()
        self.first = nn.Linear(8, 16)
        self.op = op
        self.last = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.tanh(self.op(self.first(x))))


def batch(seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 8, generator=generator)
    return x, torch.randint(0, 3, (size,), generator=generator)


def cross_entropy(model: nn.Module, data: Any) -> torch.Tensor:
    return nn.functional.cross_entropy(model(data[0]), data[1])
