"""Which components of θ to check when checking all of them costs too much."""

from __future__ import annotations

import numpy as np

from gradwatch.layout import Layout

__all__ = ["sample_components"]


def sample_components(layout: Layout, k: int | None, seed: int = 0) -> np.ndarray:
    """Flat indices of a reproducible sample of ``k`` components spread over every tensor.

    Every tensor gets at least one component (while ``k`` allows) so that no parameter goes
    unchecked; the rest is shared in proportion to the tensors' sizes. ``None`` or a ``k`` of at
    least θ's size means every component. The result is sorted.

    Example:
        >>> layout = Layout.from_mapping({"W": (100, 10), "b": (100,)})
        >>> idx = sample_components(layout, 11, seed=0)
        >>> len(idx), int((idx >= 1000).sum()) >= 1
        (11, True)
    """
    n = layout.size
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    sizes = np.array(layout.sizes(), dtype=np.int64)
    share = _allocate(sizes, k)
    rng = np.random.default_rng(seed)
    picks = [
        offset + rng.choice(size, size=count, replace=False)
        for offset, size, count in zip(layout.offsets[:-1], sizes, share, strict=True)
        if count
    ]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _allocate(sizes: np.ndarray, k: int) -> np.ndarray:
    """Splits ``k`` over tensors: one each (largest first) while k allows, the rest by size."""
    share = np.zeros_like(sizes)
    nonempty = np.flatnonzero(sizes > 0)
    order = nonempty[np.argsort(-sizes[nonempty], kind="stable")]
    first = order[:k]
    share[first] = 1
    left = k - first.size
    while left > 0:
        room = sizes - share
        weights = room / room.sum()
        extra = np.minimum(np.floor(weights * left).astype(np.int64), room)
        if extra.sum() == 0:  # rounding left a remainder: give it to the roomiest tensors
            extra[np.argsort(-room, kind="stable")[:left]] = 1
            extra = np.minimum(extra, room)
        share += extra
        left = k - int(share.sum())
    return share
