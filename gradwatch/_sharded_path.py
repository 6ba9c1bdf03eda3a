"""The gradient a sharded model trains with: one forward and backward of the model itself, on
this process's batch, after FSDP's reduce-scatter and tensor parallelism's collectives, read
whole (``full_tensor()``) per parameter; ``.grad``, buffers and training flags put back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradwatch._evaluate import LossFn
from gradwatch._replica import full
from gradwatch._state import dropout_disabled
from gradwatch._training_run import _buffers_kept, _context
from gradwatch.training_path import TrainingPath


def sharded_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    names: Sequence[str],
    path: TrainingPath,
    group: dist.ProcessGroup,
) -> list[torch.Tensor]:
    """The whole gradient of each of ``names`` as the sharded training computes it (a
    collective: every process of ``group`` calls it). A plain (not DTensor) parameter is
    replicated: its gradient is the group's first process's, so every process judges the same
    numbers (a gradient never reduced differs there from the mean's)."""
    params = dict(model.named_parameters())
    with _grads_kept(model), dropout_disabled(model, disable=True), _buffers_kept(model):
        with torch.enable_grad(), _context(path):
            value = loss_fn(model, batch).reshape(())
        scale = path.loss_scale
        (value * scale if scale != 1.0 else value).backward()
        found = []
        for name in names:
            p = params[name]
            grad = torch.zeros(p.shape, dtype=p.dtype) if p.grad is None else full(p.grad)
            if not hasattr(p, "full_tensor"):
                dist.broadcast(grad, src=dist.get_global_rank(group, 0), group=group)
            found.append(grad / scale)
        return found


@contextlib.contextmanager
def _grads_kept(model: nn.Module) -> Iterator[None]:
    """Every parameter's ``.grad`` as it was (None during the body), also when it raises."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.grad = None
        yield
    finally:
        for p, grad in saved:
            p.grad = grad
