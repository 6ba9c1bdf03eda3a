"""Errors about the user's inputs, told from the public call (``check_module``,
``check_function``): an argument error found deep inside the check is raised again from the
public function's frame, without the frames of ours that found it; a dtype mismatch that J hits
on the check's float64 copies is told in the user's own dtypes. Any other error, the user's or
ours, goes on unchanged (ours keep their traceback: they are bug reports)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradwatch.common.blame import raised_in_users_code, users_code

# gradwatch's own source folder (this file's wing is one below it): an argument error is raised
# by a line of ours.
_OURS = Path(__file__).resolve().parents[1]
# What torch says when an op meets two dtypes it will not mix (matmul, linear, conv, an index
# that must be an integer): "same dtype", "should be the same", "scalar type(s)".
_MISMATCH = re.compile(r"same dtype|should be the same|scalar types?\b", re.IGNORECASE)


def restated(
    err: BaseException, model: object = None, batch: Any = None, dtype: object = None
) -> BaseException | None:
    """The exception the public call raises instead of ``err`` (``raise it from None``), or None
    where ``err`` goes on as it is.

    Example:
        >>> from gradwatch.arguments import reject
        >>> try:
        ...     reject("sample", "None or a positive int", -1)
        ... except ValueError as err:
        ...     restated(err) is err
        True
    """
    if _an_argument_error(err):
        return err.with_traceback(None)  # the public frame is added as it is raised again
    if isinstance(model, nn.Module) and _a_dtype_mismatch(err):
        others = [(where, t) for where, t in _tensors(batch, "batch") if not t.is_floating_point()]
        if others:  # else the mismatch is the user's code's own: its error says it best
            return _dtype_error(err, model, others, str(dtype).removeprefix("torch."))
    return None


def _an_argument_error(err: BaseException) -> bool:
    """A ``TypeError``/``ValueError`` that a line of gradwatch raised about an argument: by the
    project's convention its message opens with the argument's name in backticks
    (``arguments.reject``); an error out of the user's code never is one."""
    if not isinstance(err, TypeError | ValueError) or not str(err).startswith("`"):
        return False
    if raised_in_users_code(err) or err.__traceback__ is None:
        return False
    last = err.__traceback__
    while last.tb_next is not None:
        last = last.tb_next
    return Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(_OURS)


def _a_dtype_mismatch(err: BaseException) -> bool:
    return (
        isinstance(err, RuntimeError)
        and raised_in_users_code(err)
        and _MISMATCH.search(str(err)) is not None
    )


def _dtype_error(
    err: BaseException, model: nn.Module, others: list[tuple[str, torch.Tensor]], checked: str
) -> TypeError:
    """A ``TypeError`` in the user's dtypes (the model's, the batch's tensors that are not
    floating point, ``others``), tagged as the user's code's: J stopped there."""
    theirs = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    held = "; ".join(
        f"{where} {str(t.dtype).removeprefix('torch.')} of shape {tuple(t.shape)}"
        for where, t in others
    )
    told = TypeError(
        f"`batch` must suit the model: its parameters are {' and '.join(theirs)}, and the "
        f"batch holds {held}. J stopped with: {err} (torch names the check's {checked} copy "
        "of the model, not your model). Pass floating-point tensors to the layers that "
        "multiply them, e.g. x.float() in the batch or in loss_fn; class labels and "
        "embedding indices stay integer."
    )
    try:
        with users_code():
            raise told
    except TypeError:
        return told.with_traceback(None)


def _tensors(value: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of a batch, with where it is (``batch[0]``, ``batch['x']``)."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{where}[{i}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name, None), f"{where}.{f.name}")
