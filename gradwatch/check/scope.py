"""Which components a check looks at (θ: the trainable parameters an ``include`` selects), and the
notes about what it leaves out or cannot see: embedding padding rows (no gradient by design),
gradient hooks (not run by the check)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import numpy as np
from torch import nn

from gradwatch.arguments import check_include
from gradwatch.layout import Layout
from gradwatch.reporting.text import listing


def checked_parameters(model: nn.Module, include: str | Sequence[str] | None = None) -> list[str]:
    """Names of the parameters that make up θ: trainable ones, in ``named_parameters()`` order,
    narrowed to those matching any glob in ``include``. Tied parameters appear once.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> checked_parameters(model, include="1.*")
        ['1.weight', '1.bias']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    patterns = check_include(include)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        total = len(list(model.parameters()))
        raise ValueError(
            "`model` has no trainable parameters: it needs at least one with requires_grad=True; "
            f"got a {type(model).__name__} with {total} parameter tensors, none trainable. "
            "There is no gradient to check; unfreeze the layers you want checked"
        )
    for name, p in model.named_parameters():  # a frozen one on meta breaks the forward too
        if p.is_meta:
            raise ValueError(
                "`model` must have its parameters on a device that holds values (cpu, cuda, …); "
                f"got parameter {name!r} on the meta device. Materialize the model (e.g. "
                "model.to_empty(device='cpu') and initialize it) before checking"
            )
        if p.requires_grad and not p.is_floating_point():
            raise TypeError(
                "`model` must have real floating-point trainable parameters "
                f"(float16/bfloat16/float32/float64); got parameter {name!r} with dtype {p.dtype}"
            )
    names = [n for n, _ in trainable]
    if patterns is None:
        return names
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not chosen:
        raise ValueError(
            f"`include` {include!r} matches no trainable parameter; names are like "
            f"{names[:5]}{' …' if len(names) > 5 else ''}"
        )
    return chosen


def padding_rows(
    model: nn.Module, names: Sequence[str], layout: Layout
) -> tuple[np.ndarray, list[str]]:
    """Flat indices in θ of the ``padding_idx`` rows of embeddings, and a note for each.

    PyTorch gives that row no gradient by design (it is not trained), while J does depend on
    it: its components would differ however right backprop is, so they are not checked.
    """
    position = {id(p): names.index(n) for n, p in model.named_parameters() if n in names}
    found: list[np.ndarray] = []
    notes = []
    for module in model.modules():
        if not isinstance(module, nn.Embedding | nn.EmbeddingBag):
            continue
        t = position.get(id(module.weight))
        if module.padding_idx is None or t is None or module.weight.dim() != 2:
            continue
        rows, width = module.weight.shape
        row = module.padding_idx % rows
        start = int(layout.offsets[t]) + row * width
        found.append(np.arange(start, start + width, dtype=np.int64))
        notes.append(
            f"{names[t]}[{row}, :] (padding_idx) left out: PyTorch gives it no gradient by "
            f"design, so its {width} components are not checked"
        )
    if not found:
        return np.zeros(0, dtype=np.int64), notes
    return np.unique(np.concatenate(found)), notes


def leave_out(indices: np.ndarray, left_out: np.ndarray, layout: Layout, seed: int) -> np.ndarray:
    """``indices`` without ``left_out``; each sampled one that was left out is replaced by
    another component of the same tensor where one is free, so a sample keeps its size."""
    hit = np.isin(indices, left_out)
    if not hit.any():
        return indices
    kept = indices[~hit]
    rng = np.random.default_rng([seed, 1])
    extra = []
    tensors = layout.tensor_of(indices[hit])
    for t in np.unique(tensors):
        lo, hi = int(layout.offsets[t]), int(layout.offsets[t + 1])
        taken = np.concatenate([kept, left_out])
        taken = taken[(taken >= lo) & (taken < hi)]
        count = min(int((tensors == t).sum()), hi - lo - taken.size)
        if count > 0:  # none free when every component was sampled (a full check)
            extra.append(_draw(rng, lo, hi, taken, count))
    return np.sort(np.concatenate([kept, *extra])).astype(np.int64)


def _draw(rng: np.random.Generator, lo: int, hi: int, taken: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct integers in [lo, hi) outside ``taken`` (there are that many)."""
    if hi - lo <= 2 * (taken.size + count) + 4096:  # small or crowded: list what is free
        free = np.setdiff1d(np.arange(lo, hi), taken)
        return rng.choice(free, size=count, replace=False)
    found = np.zeros(0, dtype=np.int64)
    while found.size < count:  # mostly free: each draw is new with probability > 1/2
        draw = rng.integers(lo, hi, size=2 * count + 16)
        draw = draw[~np.isin(draw, taken) & ~np.isin(draw, found)]
        _, first = np.unique(draw, return_index=True)
        found = np.concatenate([found, draw[np.sort(first)]])
    return found[:count]


def hook_note(model: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    params = dict(model.named_parameters())
    hooked = [n for n in names if getattr(params[n], "_backward_hooks", None)]
    if not hooked:
        return ()
    has = "has a gradient hook" if len(hooked) == 1 else "have gradient hooks"
    return (
        f"{listing(hooked)} {has} (Tensor.register_hook): the check compares autograd's "
        "gradient of J without it, not the .grad the hook hands the optimizer",
    )
