"""A check that could not finish (the loss raised, ran out of memory, the batch did not fit J) is
a failed check: a report with verdict fail and the reason, never a crash of training unless the
user asked for one (``on_fail="raise"``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch import GradCheckReport, Layout, Thresholds
from gradwatch.module import checked_parameters

# How much of a batch and of an error message a reason shows.
_ITEMS = 4
_MESSAGE = 300


def describe_batch(batch: Any, depth: int = 0) -> str:
    """``tuple of 3: Tensor[8, 4] float32, Tensor[8] int64, …``: what the check was given.

    Example:
        >>> describe_batch({"x": torch.zeros(2, 3), "id": "a"})
        'dict of 2: x: Tensor[2, 3] float32, id: str'
    """
    if isinstance(batch, torch.Tensor):
        return f"Tensor{list(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if depth < 2 and isinstance(batch, Mapping):
        items = [f"{k}: {describe_batch(v, depth + 1)}" for k, v in list(batch.items())[:_ITEMS]]
        return _listed(type(batch).__name__, len(batch), items)
    if depth < 2 and isinstance(batch, Sequence) and not isinstance(batch, str | bytes):
        items = [describe_batch(v, depth + 1) for v in list(batch)[:_ITEMS]]
        return _listed(type(batch).__name__, len(batch), items)
    return type(batch).__name__


def _listed(kind: str, count: int, items: list[str]) -> str:
    more = ", …" if count > len(items) else ""
    return f"{kind} of {count}: {', '.join(items)}{more}"


def reason(err: BaseException, batch: Any, where: str = "") -> str:
    """Why the check could not finish (``where``: in which process), with what it was given.

    Example:
        >>> reason(ValueError("no"), torch.zeros(2))
        "the check could not finish: ValueError: no (J on this step's batch: Tensor[2] float32)"
    """
    message = " ".join(str(err).split())
    if len(message) > _MESSAGE:
        message = message[: _MESSAGE - 1] + "…"
    return (
        f"the check could not finish{where}: {type(err).__name__}: {message} (J on this step's "
        f"batch: {describe_batch(batch)})"
    )


def failed_report(
    module: nn.Module,
    include: Sequence[str] | None,
    why: str,
    epsilon: float | str,
    thresholds: Thresholds,
) -> GradCheckReport:
    """A report of no components with verdict fail and ``why`` as its message."""
    params = dict(module.named_parameters())
    names = checked_parameters(module, include)
    empty = np.zeros(0)
    return GradCheckReport(
        layout=Layout(tuple(names), tuple(tuple(params[n].shape) for n in names)),
        indices=np.zeros(0, dtype=np.int64),
        analytic=empty,
        numeric=empty,
        epsilon=epsilon,
        dtype="float64",
        evaluations=0,
        seconds=0.0,
        thresholds=thresholds,
        failure=why,
    )
