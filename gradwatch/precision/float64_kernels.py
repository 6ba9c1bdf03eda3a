"""Kernels without float64, in float64: compositions of plain float64 ops for the operations
that have no float64 kernel, run by the precision guard (:mod:`gradwatch.precision.guard`) while J
is evaluated, in place of the kernel.

``torch._grouped_mm`` (which ``torch.nn.functional.grouped_mm`` calls, and Transformers 5 runs
mixture-of-experts layers through) multiplies jagged groups of rows by one matrix per group; its
kernels take float32, bfloat16 and float16 only. Its float64 composition is one matrix product
per group. Autograd differentiates the composition, so backprop runs in float64 too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["Composing", "composition"]

# The dtypes ``torch._grouped_mm`` has kernels for (ATen's grouped GEMM, CPU and CUDA).
_GROUPED_MM_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})


def _batched(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` carries a vmap batch (its values differ per copy: no ``tolist``)."""
    return bool(torch._C._functorch.is_batchedtensor(tensor))


def _group_of_rows(offs: torch.Tensor, rows: int) -> torch.Tensor:
    """The group of each of ``rows`` rows (``offs[g]`` ends group g; rows past the last end get
    the number of groups): a comparison, so it works when ``offs`` differs per vmap copy."""
    index = torch.arange(rows, device=offs.device)
    return (index.unsqueeze(-1) >= offs.unsqueeze(0)).sum(-1)


def _jagged_rows(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``a`` (S, K) with its rows in groups, ``b`` (G, K, N): row r times ``b[group of r]``;
    rows past ``offs[-1]`` are 0 (the kernel leaves them unset)."""
    if not _batched(offs):
        pieces, start = [], 0
        for g, end in enumerate(offs.tolist()):
            pieces.append(a[start:end] @ b[g])
            start = end
        pieces.append(a.new_zeros(a.shape[0] - start, b.shape[-1]))
        return torch.cat(pieces)
    group = _group_of_rows(offs, a.shape[0])  # routing differs per copy: mask each group
    out = a.new_zeros(a.shape[0], b.shape[-1])
    for g in range(b.shape[0]):
        out = out + (group == g).unsqueeze(-1).to(a.dtype) * (a @ b[g])
    return out


def _jagged_inner(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``a`` (M, S), ``b`` (S, N), the shared dimension S in groups: (G, M, N), one product per
    group (the weight gradient of a grouped layer)."""
    group = _group_of_rows(offs, a.shape[1])
    masks = [(group == g).to(a.dtype) for g in range(offs.shape[-1])]
    return torch.stack([(a * m) @ b for m in masks])


def _grouped_mm(
    mat_a: torch.Tensor,
    mat_b: torch.Tensor,
    *,
    offs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``torch._grouped_mm`` composed of matrix products, in the inputs' dtype."""
    shapes = (mat_a.dim(), mat_b.dim(), offs is not None)
    if shapes == (3, 3, False):
        out = torch.bmm(mat_a, mat_b)
    elif shapes == (2, 3, True):
        out = _jagged_rows(mat_a, mat_b, offs)  # type: ignore[arg-type]
    elif shapes == (2, 2, True):
        out = _jagged_inner(mat_a, mat_b, offs)  # type: ignore[arg-type]
    else:  # the kernel's own error is the one to see: the caller runs the model as written
        raise NotImplementedError(f"no float64 composition of torch._grouped_mm for {shapes}")
    return out if bias is None else out + bias


def composition(func: Any, args: tuple[Any, ...]) -> tuple[str, Callable[..., Any]] | None:
    """The float64 composition of ``func`` called on ``args``, with its name for the notes;
    None when ``func`` has a kernel for these arguments.

    Example:
        >>> a, b = torch.ones(3, 2, dtype=torch.float64), torch.ones(2, 2, 4, dtype=torch.float64)
        >>> name, run = composition(torch._grouped_mm, (a, b))
        >>> run(a, b, offs=torch.tensor([1, 3], dtype=torch.int32)).shape, name
        (torch.Size([3, 4]), 'torch._grouped_mm as per-group matrix products')
    """
    if func is torch._grouped_mm and args and args[0].dtype not in _GROUPED_MM_DTYPES:
        return "torch._grouped_mm as per-group matrix products", _grouped_mm
    return None


class Composing(TorchFunctionMode):
    """Runs the compositions alone, without the precision guard's casts: for an evaluation
    that needs J's graph in the check's dtype, not its precision (``trace_backward``)."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        instead = composition(func, args)
        return (func if instead is None else instead[1])(*args, **(kwargs or {}))
