"""The negative log-likelihood of class labels, written with operations vmap batches natively, for
the batched evaluations of J.

``F.cross_entropy`` and ``F.nll_loss`` have no batching rule: under ``torch.func.vmap`` they run
PyTorch's Python decomposition of ``nll_loss_forward``, whose first call imports sympy through
``torch.fx.experimental.symbolic_shapes`` (0.25-0.45 s here, a third of a whole check of a 17k
parameter MLP), and whose every call runs a Python function per op. Inside the check's vmapped
calls the mode below computes the same loss as ``-log_p[target]`` picked with ``gather``. It
rounds like the kernel up to the order of the final sum (a few ulps of J); every batched path is
compared with the plain J on its first pair anyway. Any use it does not cover (class
probabilities as targets, label smoothing, the deprecated arguments) runs PyTorch's own.

A matrix product of a transposed (non-contiguous) input that all copies share with a weight
that differs per copy is 25-45 times slower under vmap than with a contiguous input (measured:
4x32 tokens of width 128 times 64 copies of a 384x128 weight, 11 ms against 460 ms
on CPU). ``nn.MultiheadAttention(batch_first=True)`` hands ``F.multi_head_attention_forward``
such transposed inputs, so a check copying its projection weights spent most of its time there.
The mode gives that function, and ``F.linear``, contiguous inputs: the same values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode


def _bind(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """The arguments of ``F.nll_loss`` / ``F.cross_entropy`` by name (same order and defaults)."""
    return dict(
        input=input, target=target, weight=weight, size_average=size_average,
        ignore_index=ignore_index, reduce=reduce, reduction=reduction,
        label_smoothing=label_smoothing,
    )  # fmt: skip


def _covered(args: dict[str, Any]) -> bool:
    target, input = args["target"], args["input"]
    return (
        isinstance(target, torch.Tensor)
        and isinstance(input, torch.Tensor)
        and not target.is_floating_point()
        and args["size_average"] is None
        and args["reduce"] is None
        and args["label_smoothing"] == 0.0
        and args["reduction"] in ("mean", "sum", "none")
        and input.dim() >= 1
        and target.dim() == input.dim() - 1
    )


def nll(
    log_p: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """``F.nll_loss`` for class-index targets (input (C,) or (N, C, d1, ...)), from ``gather``.

    Example:
        >>> log_p = torch.log_softmax(torch.randn(4, 3, dtype=torch.float64), dim=1)
        >>> target = torch.tensor([0, 2, -100, 1])
        >>> torch.allclose(nll(log_p, target), F.nll_loss(log_p, target), rtol=1e-15, atol=0)
        True
    """
    single = log_p.dim() == 1
    if single:  # one example: (C,) and a 0-d target
        log_p, target = log_p.unsqueeze(0), target.unsqueeze(0)
    keep = target != ignore_index
    safe = torch.where(keep, target, torch.zeros_like(target))
    picked = log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    share = keep.to(log_p.dtype) if weight is None else weight[safe] * keep
    losses = torch.where(keep, -picked * share, torch.zeros_like(picked))
    if reduction == "none":
        return losses.squeeze(0) if single else losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / share.sum()


def _contiguous(tensors: tuple[Any, ...]) -> tuple[Any, ...]:
    """Contiguous copies of ``tensors`` (where not already), the same object where the same
    object was given (attention checks ``query is key``)."""
    made: dict[int, Any] = {}
    for t in tensors:
        if id(t) not in made:
            made[id(t)] = t.contiguous() if isinstance(t, torch.Tensor) else t
    return tuple(made[id(t)] for t in tensors)


class BatchedOps(TorchFunctionMode):
    """Computes ``F.cross_entropy`` and ``F.nll_loss`` of class labels with :func:`nll`, and gives
    attention and linear layers contiguous inputs, inside the body (enter it around a vmapped
    call)."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward and len(args) >= 3:
            args = (*_contiguous(args[:3]), *args[3:])
        elif func is F.linear and args and isinstance(args[0], torch.Tensor):
            args = (args[0].contiguous(), *args[1:])
        if func is F.cross_entropy or func is F.nll_loss:
            bound = _bind(*args, **kwargs)
            if _covered(bound):
                log_p = bound["input"]
                if func is F.cross_entropy:
                    log_p = torch.log_softmax(log_p, dim=0 if log_p.dim() == 1 else 1)
                return nll(
                    log_p, bound["target"], bound["weight"], bound["ignore_index"],
                    bound["reduction"],
                )  # fmt: skip
        return func(*args, **kwargs)
