"""Pieces of the vectorized evaluation of J: how many perturbed copies fit in one call, which
tensors feed a single ``nn.Linear`` (so a perturbation is a low-rank change of its output), and
when the batched J agrees with the plain one.

The batched evaluation itself lives in :mod:`gradwatch._evaluate`; everything here is small and
stateless so it can be tested alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Memory for the activations of one vmapped call. Chunks of this size keep the peak extra memory
# of a full check far under 1 GiB while each call carries hundreds of copies of a small model, so
# the Python overhead of a call (~1 ms) is spread thin. Measured on the 17k-parameter MLP (2-core
# CPU): 8 MiB chunks lose to call overhead, 64 MiB and more to cache misses; 32 MiB was fastest.
CHUNK_BYTES = 32 * 2**20

# How far a batched J may be from the plain J at the same θ, relative to |J|, before the batched
# path is rejected. Legitimate differences are a few ulps (another summation order inside a
# matmul); a different random draw or buffer state moves J by far more.
AGREEMENT: dict[torch.dtype, float] = {
    torch.float64: 1e-13,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 6e-2,
}

Way = Literal["linear", "vmap", "loop"]


def agreement(dtype: torch.dtype) -> float:
    """The relative tolerance between a batched and a plain J in ``dtype`` (see ``AGREEMENT``)."""
    return AGREEMENT.get(dtype, 1e-2)


class _ByteCount(TorchDispatchMode):
    """Adds up the bytes of every new tensor an op returns (views and in-place results share
    their input's memory and are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {_storage(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and _storage(leaf) not in inputs:
                self.total += leaf.numel() * leaf.element_size()
        return out


def _storage(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
        return id(tensor)


def produced_bytes(fn: Callable[[], object]) -> int:
    """Bytes of all new tensors the ops inside ``fn()`` produce: an upper bound on the memory one
    evaluation of J needs for its intermediate results (temporaries are counted as if kept).

    Example:
        >>> produced_bytes(lambda: torch.ones(4, dtype=torch.float64) * 2)
        64
    """
    counter = _ByteCount()
    with counter:
        fn()
    return counter.total


def copies_per_call(per_copy: int, budget: int | None = None) -> int:
    """How many perturbed copies one vmapped call may hold: ``budget`` (default
    ``CHUNK_BYTES``) over one copy's bytes.

    Example:
        >>> copies_per_call(1 << 20, budget=64 << 20)
        64
    """
    budget = CHUNK_BYTES if budget is None else budget
    return max(1, budget // max(int(per_copy), 1))


def graph_uses(root: torch.Tensor, leaves: Sequence[torch.Tensor]) -> list[int]:
    """How many edges of the autograd graph of ``root`` end in each of ``leaves``: 1 means the
    tensor enters the computation exactly once (no weight tying, no second use).

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> graph_uses((w * 3).sum() + w.sum(), [w])
        [2]
    """
    where = {id(leaf): k for k, leaf in enumerate(leaves)}
    counts = [0] * len(leaves)
    seen: set[Any] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            variable = getattr(child, "variable", None)
            if variable is not None and id(variable) in where:
                counts[where[id(variable)]] += 1
            elif child is not None:
                stack.append(child)
    return counts


def linear_owner(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The plain ``nn.Linear`` whose ``weight`` or ``bias`` is parameter ``name``, else None.

    Only the stock forward qualifies (a subclass may use its weight differently), and only
    without hooks, which could rely on the output we rewrite.
    """
    owner_name, _, attr = name.rpartition(".")
    if attr not in ("weight", "bias"):
        return None
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        return None
    if type(owner).forward is not nn.Linear.forward:
        return None
    if owner._forward_hooks or owner._forward_pre_hooks:
        return None
    return owner, attr
