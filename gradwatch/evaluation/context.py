"""What every evaluation of J in one check shares, in one object: the model, the loss, the batch,
the checked tensors, the precision, the seed and how J is evaluated. The check, the float32
fallback's trials and the training path's reference build their :class:`ModuleCost` from it, so
the arguments of J are written down once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradwatch.common.user_state import cast_batch
from gradwatch.evaluation.cost import LossFn, ModuleCost
from gradwatch.evaluation.vectorized import DEFAULT_MEMORY_BUDGET

__all__ = ["CheckContext"]


@dataclass(frozen=True)
class CheckContext:
    """J = ``loss_fn(model, batch)`` over the tensors ``names``, evaluated in ``dtype`` with
    every RNG re-seeded with ``seed`` first; ``keep_precision``, ``memory_budget`` and
    ``vectorize`` say how (see :class:`ModuleCost`). ``dataclasses.replace`` gives the same J in
    another precision or over other tensors.

    Example:
        >>> import dataclasses, torch
        >>> from torch import nn
        >>> model = nn.Linear(2, 1)
        >>> context = CheckContext(model, lambda m, b: m(b).sum(), torch.ones(3, 2),
        ...                        ("weight", "bias"), torch.float64, seed=0)
        >>> cost = context.cost()
        >>> [t.dtype for t in cost.theta], cost.names
        ([torch.float64, torch.float64], ['weight', 'bias'])
        >>> dataclasses.replace(context, dtype=torch.float32).cost().theta[0].dtype
        torch.float32
    """

    model: nn.Module
    loss_fn: LossFn
    batch: Any
    names: tuple[str, ...]
    dtype: torch.dtype
    seed: int
    keep_precision: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    vectorize: bool = True

    @property
    def device(self) -> torch.device:
        """The device of the first checked tensor: where the batch is cast to."""
        return next(p for n, p in self.model.named_parameters() if n == self.names[0]).device

    def cost(self, progress: Callable[[int], None] | None = None) -> ModuleCost:
        """J on private copies of the checked tensors in ``dtype``, the batch cast to it."""
        return ModuleCost(
            self.model, self.loss_fn, cast_batch(self.batch, self.dtype, self.device), self.names,
            self.dtype, self.seed, vectorize=self.vectorize, memory_budget=self.memory_budget,
            progress=progress, keep_precision=self.keep_precision,
        )  # fmt: skip
