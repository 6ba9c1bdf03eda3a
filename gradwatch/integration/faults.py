"""A check of the callback that could not finish: whose error it is, and how it is told (no
Lightning imported; ``gradwatch.callbacks`` decides what happens).

Whose error it is decides what happens. An error of the user's code (the loss, the model's
forward or backward), a batch J cannot use, or the machine running out of memory makes a failed
check: a report with verdict fail and the reason, where it was raised, never a crash of training
unless the user asked for one (``on_fail="raise"``). An error inside gradwatch itself is ours:
a warning that says so and what to send with a bug report, no verdict, and training goes on.
"""

from __future__ import annotations

import importlib.util
import os
import site
import sys
import sysconfig
import textwrap
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import gradwatch
from gradwatch import GradCheckReport, Layout, PartitionError, Thresholds
from gradwatch.common.blame import raised_in_users_code
from gradwatch.evaluation.cost import CALLS_BACKWARD
from gradwatch.integration.objective import ObjectiveError
from gradwatch.module import checked_parameters

__all__ = [
    "CALLS_BACKWARD",
    "UnsharedBatch",
    "describe_batch",
    "error_text",
    "failed_report",
    "internal_error",
    "is_ours",
    "last_frames",
    "ours_warning",
    "raised_in_users_code",
    "reason",
    "versions",
]


class UnsharedBatch(RuntimeError):
    """Process 0's batch could not be sent to the other processes (under DDP)."""


# How much of a batch and of an error message a reason shows, and how many frames of its
# traceback (the innermost ones, in the user's files where there are such).
_ITEMS = 4
_MESSAGE = 300
_FRAMES = 3
# Errors a check raises on purpose, or the machine's: a failed check, not a bug of gradwatch.
_NOT_OURS: tuple[type[BaseException], ...] = (
    ObjectiveError,
    PartitionError,
    UnsharedBatch,
    MemoryError,
    getattr(torch, "OutOfMemoryError", MemoryError),
)
# The code between the check and the user's: gradwatch, torch and Lightning (whose frames never
# hold the user's bug), and the folders libraries are installed in.
# Found by their specs, without importing them (gradwatch does not import Lightning).
_LIGHTNING = ("gradwatch.callbacks", "pytorch_lightning", "lightning", "lightning_fabric")
_PLUMBING = (
    Path(gradwatch.__file__).resolve().parent,
    Path(torch.__file__).resolve().parent,
    *(
        Path(spec.origin).resolve().parent
        for spec in map(importlib.util.find_spec, _LIGHTNING)
        if spec is not None and spec.origin
    ),
)
_LIBRARIES = tuple(
    {
        Path(folder).resolve()
        for folder in [
            *(sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")),
            *site.getsitepackages(),
        ]
    }
)


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


def is_ours(err: BaseException) -> bool:
    """Whether ``err`` is an error inside gradwatch itself: not raised in the user's code (the
    engine tags those), not one a check raises on purpose, not the machine out of memory."""
    if raised_in_users_code(err) or isinstance(err, _NOT_OURS):
        return False
    return not (isinstance(err, TypeError) and str(err) == CALLS_BACKWARD)


def _within(filename: str, folders: Sequence[Path]) -> bool:
    path = Path(filename).resolve()
    return any(path.is_relative_to(folder) for folder in folders)


def _shown(filename: str) -> str:
    relative = os.path.relpath(filename)
    return relative if not relative.startswith("..") else os.path.join(*Path(filename).parts[-2:])


def last_frames(err: BaseException, count: int = _FRAMES) -> list[str]:
    """``file:line in function`` of the innermost frames of ``err``'s traceback, innermost first:
    those in the user's files, else those in other libraries (a model from a package); never
    gradwatch's, torch's or Lightning's (an error raised by torch itself names no frame)."""
    frames = [
        f for f in traceback.extract_tb(err.__traceback__) if not _within(f.filename, _PLUMBING)
    ]
    users = [f for f in frames if not _within(f.filename, _LIBRARIES)]
    chosen = (users or frames)[-count:]
    return [f"{_shown(f.filename)}:{f.lineno} in {f.name}" for f in reversed(chosen)]


def _message(err: BaseException) -> str:
    return textwrap.shorten(" ".join(str(err).split()), _MESSAGE, placeholder=" …")


def reason(err: BaseException, batch: Any, where: str = "") -> str:
    """Why the check could not finish (``where``: in which process), with what it was given and
    where the error was raised.

    Example:
        >>> reason(ValueError("no"), torch.zeros(2))
        "the check could not finish: ValueError: no (J on this step's batch: Tensor[2] float32)"
    """
    frames = last_frames(err)
    raised = f"; raised at {', called from '.join(frames)}" if frames else ""
    return (
        f"the check could not finish{where}: {type(err).__name__}: {_message(err)} (J on this "
        f"step's batch: {describe_batch(batch)}){raised}"
    )


def versions() -> str:
    """The versions a bug report needs: gradwatch, torch, Lightning, Python."""
    found = [f"gradwatch {gradwatch.__version__}", f"torch {torch.__version__}"]
    for package in ("pytorch_lightning", "lightning"):
        module = sys.modules.get(package)
        if module is not None:
            found.append(f"{package} {getattr(module, '__version__', '?')}")
    found.append(f"Python {sys.version.split()[0]}")
    return ", ".join(found)


def internal_error(err: BaseException, where: str = "") -> str:
    """One line about an error inside gradwatch (``where``: in which process, while doing what).

    Example:
        >>> internal_error(KeyError("theta")).startswith("an error inside gradwatch ")
        True
    """
    frame = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    at = f" at {_shown(frame[0].filename)}:{frame[0].lineno} in {frame[0].name}" if frame else ""
    return (
        f"an error inside gradwatch {gradwatch.__version__}{where}, not in your model or loss: "
        f"{type(err).__name__}: {_message(err)}{at}"
    )


def ours_warning(
    where: str, why: str, consequence: str, text: str, saved: Path | None, own: bool
) -> str:
    """The warning about an error inside gradwatch: what happened, that it is no verdict, what
    to send with a bug report (``text``, saved in ``saved`` or shown here)."""
    if saved is not None:
        attach = f"the traceback saved in {saved}"
    else:
        attach = "the traceback below" if own else "the traceback of the process that raised it"
    shown = f"\n{text}" if own and saved is None else ""
    return (
        f"{where}: {why}. This is a bug in gradwatch, not a verdict on your gradients: "
        f"{consequence}, and training goes on. Please report it with {attach} and these "
        f"versions: {versions()}.{shown}"
    )


def error_text(err: BaseException, step: int, name: str) -> str:
    """What to attach to a bug report: the versions and the whole traceback."""
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return (
        f"gradwatch bug report: GradientCheck {name!r} at step {step}\n"
        f"versions: {versions()}\n\n{trace}"
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
