"""Pieces of the vectorized evaluation of J: how much memory one evaluation needs, how many
perturbed copies fit in one call, which tensors feed a single layer (so a perturbation is a
low-rank change of its output), which buffers a batched evaluation may leave out, and when the
batched J agrees with the plain one.

The batched evaluation itself lives in :mod:`gradwatch.evaluation.cost`; everything here is small
and stateless so it can be tested alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# The size of one vmapped call the check aims for. Chunks of this size carry hundreds of copies
# of a small model, so the Python overhead of a call (~1 ms) is spread thin, while they stay in
# the CPU's caches. Measured on the 17k-parameter MLP (2-core CPU): 8 MiB chunks lose to call
# overhead, 64 MiB and more to cache misses; 32 MiB was fastest.
CHUNK_BYTES = 32 * 2**20
# At least this many copies per call where the memory budget allows, however large one copy.
# A vmapped forward of a deep net costs ~10-30 ms of Python and dispatch per call whatever its
# size, and each of its ops is a parallel region whose end waits for every thread: when other
# processes hold the cores, that wait is a time slice. Measured on a shared 2-core machine, per
# copy of a 532k-parameter transformer (4x32 tokens): 8.0 ms in calls of 16 copies, 5.7 ms in
# calls of 50 on one thread; 22 and 11 ms on two. On one thread 16, 64 and 128 copies per call
# cost the same CPU time for a whole check, so calls are made as large as a big batch.
MIN_COPIES = 64
# The default bound on the memory of one batched call (``memory_budget``): a GiB is free on any
# machine that trains the models whose activations make calls that large (ResNet-18 at batch 4:
# ~6 MB a copy). A call that still runs out of memory is retried in halves.
DEFAULT_MEMORY_BUDGET = 2**30

# How far a batched J may be from the plain J at the same θ, relative to |J|, before the batched
# path is rejected. Legitimate differences are a few ulps (another summation order inside a
# matmul); a different random draw or buffer state moves J by far more.
AGREEMENT: dict[torch.dtype, float] = {
    torch.float64: 1e-13,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 6e-2,
}

# How a tensor's perturbed copies are evaluated: a low-rank nn.Linear change carried as a column
# (``linear``), a layer-output change per copy (``shift``, gradwatch.evaluation.output_shift),
# copies of the whole tensor under vmap (``vmap``), or one plain evaluation at a time (``loop``).
Way = Literal["linear", "shift", "vmap", "loop"]

# What out-of-memory errors say (torch.OutOfMemoryError is a RuntimeError; CPU allocators raise
# plain RuntimeErrors).
_MEMORY_ERRORS = ("out of memory", "can't allocate memory", "not enough memory")


def agreement(dtype: torch.dtype) -> float:
    """The relative tolerance between a batched and a plain J in ``dtype`` (see ``AGREEMENT``)."""
    return AGREEMENT.get(dtype, 1e-2)


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says an allocation failed (a smaller call may fit).

    Example:
        >>> out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        True
    """
    if isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _MEMORY_ERRORS)


def saved_bytes(root: torch.Tensor, exclude: Sequence[torch.Tensor] = ()) -> int:
    """Bytes of the tensors the autograd graph of ``root`` saved for backward (each storage
    once), leaving out those sharing storage with ``exclude`` (parameters, buffers, the batch).

    That is every activation the forward kept: an upper bound on what one evaluation of J holds
    at once when no graph is kept, as in the batched calls. It is read off the graph the check
    builds anyway for backprop, so it costs no evaluation.

    Example:
        >>> w = torch.ones(3, 3, dtype=torch.float64, requires_grad=True)
        >>> x = torch.ones(2, 3, dtype=torch.float64)
        >>> saved_bytes(torch.tanh(x @ w).sum(), exclude=[w, x])  # tanh keeps its output
        48
    """
    skip = {_storage(t) for t in exclude}
    found: dict[int, int] = {}
    names: dict[type, list[str]] = {}
    for node in _nodes(root):
        for tensor in _saved(node, names):
            key = _storage(tensor)
            if key not in skip:
                found[key] = max(found.get(key, 0), tensor.numel() * tensor.element_size())
    return sum(found.values())


def _nodes(root: torch.Tensor) -> Iterator[Any]:
    """Every node of ``root``'s autograd graph, once each."""
    seen: set[Any] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(child for child, _ in node.next_functions)


def _saved(node: Any, names: dict[type, list[str]]) -> list[torch.Tensor]:
    """The tensors one graph node saved: its ``_saved_*`` attributes (built-in ops) or its
    ``saved_tensors`` (a custom autograd.Function)."""
    kind = type(node)
    if kind not in names:
        names[kind] = [a for a in dir(node) if a.startswith("_saved_")]
    values: list[Any] = []
    for attr in names[kind]:
        try:
            values.append(getattr(node, attr))
        except RuntimeError:  # freed, or not readable: nothing to count
            continue
    if not names[kind]:
        with contextlib.suppress(RuntimeError):  # freed after a backward
            values.extend(getattr(node, "saved_tensors", ()) or ())
    flat = [v for value in values for v in (value if isinstance(value, list | tuple) else [value])]
    return [v for v in flat if isinstance(v, torch.Tensor) and not v.is_sparse]


def _storage(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without storage (nested)
        return id(tensor)


def copies_per_call(per_copy: int, budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """How many perturbed copies one vmapped call holds: enough to fill ``CHUNK_BYTES`` and at
    least ``MIN_COPIES``, never more than ``budget`` allows, and at least one.

    Example:
        >>> copies_per_call(1 << 10), copies_per_call(8 << 20), copies_per_call(8 << 20, 32 << 20)
        (32768, 64, 4)
    """
    per_copy = max(int(per_copy), 1)
    wanted = max(CHUNK_BYTES // per_copy, MIN_COPIES)
    return max(1, min(wanted, budget // per_copy))


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
    for node in _nodes(root):
        for child, _ in node.next_functions:
            variable = getattr(child, "variable", None)
            if variable is not None and id(variable) in where:
                counts[where[id(variable)]] += 1
    return counts


def linear_owner(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The plain ``nn.Linear`` whose ``weight`` or ``bias`` is parameter ``name``, else None.

    Only the stock forward qualifies (a subclass may use its weight differently), and only
    without hooks, which could rely on the output we rewrite.
    """
    owner = _owner(model, name)
    if owner is None or type(owner[0]).forward is not nn.Linear.forward:
        return None
    return owner


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The module holding parameter ``name`` as its ``weight`` or ``bias``, if it has no hooks
    and its forward is what reads it (``nn.MultiheadAttention`` reads its ``out_proj``'s weight
    itself, without running that Linear)."""
    owner_name, _, attr = name.rpartition(".")
    if attr not in ("weight", "bias"):
        return None
    try:
        owner = model.get_submodule(owner_name)
        parent = model.get_submodule(owner_name.rpartition(".")[0])
    except AttributeError:
        return None
    if isinstance(parent, nn.MultiheadAttention) and owner is parent.out_proj:
        return None
    if owner._forward_hooks or owner._forward_pre_hooks:
        return None
    return owner, attr


def unread_statistics(model: nn.Module) -> set[str]:
    """Names of the running statistics that J writes but never reads: those of stock BatchNorm
    layers in training mode, which normalize by the batch's own statistics.

    A batched evaluation gives them no tensor at all (the layer then skips the update), so they
    need no copy per perturbed model, and the layers before the perturbed one run once for all
    copies instead of once per copy.

    Example:
        >>> sorted(unread_statistics(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))))
        ['1.num_batches_tracked', '1.running_mean', '1.running_var']
    """
    found = set()
    for name, module in model.named_modules():
        if not (isinstance(module, _BatchNorm) and module.training):
            continue
        if type(module).forward is not _BatchNorm.forward or not module.track_running_stats:
            continue
        prefix = f"{name}." if name else ""
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(module, buffer, None) is not None:
                found.add(prefix + buffer)
    return found
