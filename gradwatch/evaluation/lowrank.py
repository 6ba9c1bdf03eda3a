"""A perturbed ``nn.Linear`` entry as a low-rank change, carried through elementwise layers.

W[r, c] + δ changes y = x Wᵀ + b by δ·x[..., c] in output column r only; b[r] + δ by δ in
column r. So the copies of a vmapped call share the layer's matmul and carry only their own
column r. An elementwise layer (tanh, ReLU, …) keeps the change in column r: the copies share
its unperturbed output and apply it to their column alone. The next ``nn.Linear`` turns the
column change Δ into Δ ⊗ W'[:, r], one multiply-add per output, and from there on the copies
are ordinary batched tensors. Along an MLP this replaces two layers of per-copy work (and the
per-copy tanh of a whole hidden layer) by a column.

A tensor whose copies differ only in column r is held *virtually*: the physical tensor is the
shared, unperturbed one, its true column r is kept aside. Any operation other than the layers
above that touches a virtual tensor (a residual add, a view, a norm, a loss) receives the
materialized batched tensor instead, through a ``TorchFunctionMode``, so the result is the same
as with a batched weight, only cheaper.

The perturbed parameter itself stays unperturbed in memory: only its layer's forward may read
it. Any other use (a penalty on the weight, a ``.detach()`` of it, a second module sharing it)
would see the unperturbed value, so it raises ``OutsideUse`` and the caller evaluates plainly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

# Layers that act on each element alone, so column r of the output depends on column r of the
# input only (PReLU is not: its weight runs along dim 1, not along the last dim).
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Tanh,
    nn.Sigmoid,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Tanhshrink,
)


def _plain(module: nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks)


def _elementwise(module: nn.Module) -> bool:
    return type(module) in ELEMENTWISE and not getattr(module, "inplace", False)


def _linear(module: nn.Module) -> bool:
    return type(module).forward is nn.Linear.forward


def _column(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return tensor.index_select(-1, index.reshape(1)).squeeze(-1)


class NotLowRank(RuntimeError):
    """A perturbed entry is not a change of its layer's output alone: that way of evaluating it
    does not apply (another way may)."""


class OutsideUse(NotLowRank):
    """The perturbed parameter was read outside its own layer's forward."""


@dataclass
class _Virtual:
    """``base`` (shared, unperturbed) with its last-dim column ``row`` replaced by ``column``."""

    base: torch.Tensor
    column: torch.Tensor
    full: torch.Tensor | None = None


@dataclass
class LowRankShift:
    """Forward hook for the perturbed ``nn.Linear`` (row ``row``, column ``col`` of its weight,
    or entry ``row`` of its bias, moved by ``step``; all three batched under ``vmap``).

    Use inside the vmapped function as ``with shift.active(): J = loss(...)``; ``calls`` counts
    the forwards of the layer (the path is valid only if it runs once per J).
    """

    kind: str
    owner: nn.Module | None = None
    parameter: torch.Tensor | None = None
    step: torch.Tensor | None = None
    row: torch.Tensor | None = None
    col: torch.Tensor | None = None
    calls: int = 0
    _virtual: list[_Virtual] = field(default_factory=list)
    _consumers: list[tuple[nn.Module, _Virtual]] = field(default_factory=list)
    _trusted: int = 0
    _inside: int = 0

    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        assert self.step is not None and self.row is not None and self.col is not None
        self.calls += 1
        with self._trust():
            column = _column(output, self.row)
            if self.kind == "weight":
                column = column + _column(args[0], self.col) * self.step
            else:
                column = column + self.step
        self._virtual.append(_Virtual(output, column))
        return output

    def bind(self, step: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> None:
        """The copy's step and the row and column of the moved entry (column 0 for a bias)."""
        self.step, self.row, self.col = step, row, col

    @contextmanager
    def active(self) -> Iterator[None]:
        """Hooks on every module and the mode that materializes virtual tensors."""
        self._virtual, self._consumers, self._trusted, self._inside = [], [], 0, 0
        pre = register_module_forward_pre_hook(self._before)
        post = register_module_forward_hook(self._after)
        try:
            with _Materialize(self):
                yield
        finally:
            pre.remove()
            post.remove()
            self._virtual, self._consumers = [], []

    @contextmanager
    def _trust(self) -> Iterator[None]:
        self._trusted += 1
        try:
            yield
        finally:
            self._trusted -= 1

    def _find(self, value: object) -> _Virtual | None:
        return next((v for v in self._virtual if v.base is value), None)

    def real(self, value: Any) -> Any:
        """``value``, or the batched tensor a virtual one stands for."""
        found = self._find(value) if isinstance(value, torch.Tensor) else None
        if found is None or self._trusted:
            return value
        if found.full is None:
            assert self.row is not None
            with self._trust():
                shape = (*found.base.shape[:-1], 1)
                index = self.row.reshape((1,) * found.base.dim()).expand(shape)
                found.full = found.base.scatter(-1, index, found.column.unsqueeze(-1))
        return found.full

    def outside(self, value: Any) -> None:
        """Raises ``OutsideUse`` if ``value`` is the perturbed parameter read outside its layer."""
        if value is self.parameter and self.parameter is not None and not self._inside:
            raise OutsideUse(f"the {self.kind} is used outside its nn.Linear")

    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module is self.owner:
            self._inside += 1
        if self._trusted or len(args) != 1 or not _plain(module):
            return
        found = self._find(args[0])
        if found is not None and (_elementwise(module) or _linear(module)):
            self._consumers.append((module, found))
            self._trusted += 1  # its forward runs on the shared tensor

    def _after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if module is self.owner:
            self._inside -= 1
        if not self._consumers or self._consumers[-1][0] is not module:
            return None
        _, found = self._consumers.pop()
        self._trusted -= 1  # out of the consumer's forward
        assert self.row is not None
        with self._trust():
            if _linear(module):  # the column change times the layer's column r: now batched
                change = found.column - _column(found.base, self.row)
                weight = module.weight
                assert isinstance(weight, torch.Tensor)
                return output + change.unsqueeze(-1) * _column(weight, self.row)
            column = type(module).forward(module, found.column)
        self._virtual.append(_Virtual(output, column))
        return output


class _Materialize(TorchFunctionMode):
    """Gives every torch function the batched tensor for a virtual argument."""

    def __init__(self, shift: LowRankShift) -> None:
        super().__init__()
        self.shift = shift

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        tree_map(self.shift.outside, (args, kwargs))
        if self.shift._virtual and not self.shift._trusted:
            args, kwargs = tree_map(self.shift.real, (args, kwargs))
        return func(*args, **kwargs)
