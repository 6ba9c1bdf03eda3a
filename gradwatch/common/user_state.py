"""Keeping the user's world as it was: RNG states, dropout flags, PyTorch's attention fast path,
and the batch copy."""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

# The public dropout layers. Dropout inside other modules (attention) is made deterministic by
# re-seeding before every evaluation instead.
DROPOUT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def _mps() -> bool:
    return bool(torch.backends.mps.is_available())


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restores torch (CPU, every initialized CUDA device, Apple's MPS), numpy's and Python's
    global RNGs, also when the body raises: a check must not shift the random stream of
    training."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    mps = torch.mps.get_rng_state() if _mps() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if mps is not None:
            torch.mps.set_rng_state(mps)
        np.random.set_state(np_state)
        random.setstate(py_state)


def reseed(seed: int) -> None:
    """Seeds every global RNG, so each evaluation of J draws the same random numbers."""
    # Not torch.manual_seed: while CUDA is not initialized it queues a CUDA seed for later, which
    # replaces the user's own queued seed and outlives the check (preserved_rng cannot undo it),
    # and the queueing records a stack trace, ~150 µs per evaluation.
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
    if _mps():
        torch.mps.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@contextmanager
def dropout_disabled(model: nn.Module, disable: bool) -> Iterator[None]:
    """Puts dropout layers in eval mode (identity) for the body; every other flag stays."""
    # Every module's flag is restored, not only dropout's: a loss_fn may call model.eval().
    flags = [(m, m.training) for m in model.modules()]
    layers = [m for m, training in flags if isinstance(m, DROPOUT_LAYERS) and training]
    try:
        if disable:
            for m in layers:
                m.training = False
        yield
    finally:
        for m, training in flags:
            m.training = training


# Checks running at once (threads of one process) share one switch: the first to start turns the
# fast path off and remembers the user's setting, the last to end puts it back.
_FAST_PATH_LOCK = threading.Lock()
_FAST_PATH_USERS: list[bool] = []  # the user's setting, once per check under way


@contextmanager
def attention_fast_path_disabled() -> Iterator[None]:
    """Turns off PyTorch's fast path of ``nn.MultiheadAttention`` and ``nn.TransformerEncoder``
    for the body, restoring the user's setting after, also when the body raises and when
    several checks run at once in threads.

    PyTorch takes that path only where no tensor needs a gradient (eval mode, grad off or
    nothing requiring grad), and it is another function: with a key padding mask it fills
    padded positions with zeros. The analytic evaluation, whose θ requires grad, never takes
    it, so every evaluation of J must not either.
    """
    get = getattr(torch.backends.mha, "get_fastpath_enabled", None)
    put = getattr(torch.backends.mha, "set_fastpath_enabled", None)
    if get is None or put is None:  # torch < 2.2: no switch (and no other function to match)
        yield
        return
    with _FAST_PATH_LOCK:
        _FAST_PATH_USERS.append(bool(get()) if not _FAST_PATH_USERS else _FAST_PATH_USERS[0])
        put(False)
    try:
        yield
    finally:
        with _FAST_PATH_LOCK:
            enabled = _FAST_PATH_USERS.pop()
            if not _FAST_PATH_USERS:
                put(enabled)


def cast_batch(batch: Any, dtype: torch.dtype | None, device: torch.device) -> Any:
    """A copy of ``batch`` with floating tensors in ``dtype`` (None: their own) and every tensor
    on ``device``, through nested dicts, lists, tuples, named tuples and dataclass instances (a
    shallow copy with each field cast: ``__init__`` and ``__post_init__`` do not run again,
    frozen ones included); anything else is passed as is."""
    if isinstance(batch, torch.Tensor):
        target = dtype if batch.is_floating_point() and dtype is not None else batch.dtype
        return batch.detach().to(device=device, dtype=target, copy=True)
    if isinstance(batch, Mapping):
        cast = {k: cast_batch(v, dtype, device) for k, v in batch.items()}
        if isinstance(batch, dict):  # a shallow copy keeps a subclass's own state (defaultdict)
            copied = copy.copy(batch)
            copied.update(cast)
            return copied
        return type(batch)(cast)  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(cast_batch(v, dtype, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(cast_batch(v, dtype, device) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        shallow = copy.copy(batch)
        for f in dataclasses.fields(batch):
            if hasattr(batch, f.name):  # an init=False field may be unset
                value = cast_batch(getattr(batch, f.name), dtype, device)
                object.__setattr__(shallow, f.name, value)
        return shallow
    return batch
