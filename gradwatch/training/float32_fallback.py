"""Kernels without float64: when J cannot be evaluated in the check's dtype (an operation that
has a float32 kernel only), the highest precision it can be evaluated in."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradwatch.common.user_state import (
    attention_fast_path_disabled,
    dropout_disabled,
    preserved_rng,
)
from gradwatch.evaluation.context import CheckContext
from gradwatch.evaluation.cost import LossFn
from gradwatch.partition import PartitionError
from gradwatch.report import GradCheckReport

__all__ = ["Counted", "in_a_precision_j_runs", "lower_precision", "raised_by_engine"]

# gradwatch's own source folder, wings included (this file's wing is one below it).
_ENGINE = Path(__file__).resolve().parents[1]


def raised_by_engine(error: BaseException) -> bool:
    """Whether gradwatch itself raised ``error`` (its innermost frame is in this package): the
    engine's word on J (not a scalar, a loss that ran backward), not an operation refusing a
    dtype."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code.co_name == "__torch_function__":
        return False  # the precision guard passing a torch call on: the operation raised
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_ENGINE)


class Counted:
    """``loss_fn`` counting its calls: a check that raised before any call of J raised on its
    arguments, not on a precision J cannot be evaluated in."""

    def __init__(self, loss_fn: LossFn) -> None:
        self.loss_fn = loss_fn
        self.calls = 0

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        return self.loss_fn(model, batch)


def in_a_precision_j_runs(
    run: Callable[..., GradCheckReport],
    loss_fn: Counted | Any,
    dtype: torch.dtype,
    epsilon: float | str,
    lower: Callable[[], tuple[torch.dtype, str] | None],
) -> GradCheckReport:
    """``run(dtype=dtype, epsilon=epsilon)``, the check with every other argument bound
    (``loss_fn`` among them, counting its calls). Where it raises after evaluating J and
    ``lower()`` (:func:`lower_precision`) finds a precision J runs in, ``run`` in that one at
    ``epsilon="auto"``, its report's first note saying so."""
    try:
        return run(dtype=dtype, epsilon=epsilon)
    except PartitionError:
        raise  # another process failed: its error is the one to see
    except Exception as err:
        if not isinstance(loss_fn, Counted) or not loss_fn.calls or raised_by_engine(err):
            raise  # a bad argument, or a J the engine refuses: not a precision's fault
        found = lower()
        if found is None:
            raise
        report = run(dtype=found[0], epsilon="auto")
        return replace(report, notes=(found[1], *report.notes))


def lower_precision(context: CheckContext, dropout_off: bool) -> tuple[torch.dtype, str] | None:
    """After a check in ``context.dtype`` raised: the highest lower precision in which J and its
    gradient evaluate while they do not in ``context.dtype``, and the note that says so; None
    when they evaluate in ``context.dtype`` (the check's error is another one) or in no lower
    precision either.

    The candidates are float32 and the dtypes of the checked parameters, below ``context.dtype``.
    """
    dtype = context.dtype
    failure = _trial(context, dropout_off)
    if failure is None or not _about_a_dtype(failure):
        return None  # J evaluates, or fails for a reason no other precision answers (a shape)
    params = dict(context.model.named_parameters())
    own = {params[n].dtype for n in context.names}
    lower = [d for d in {torch.float32, *own} if torch.finfo(d).eps > torch.finfo(dtype).eps]
    for candidate in sorted(lower, key=lambda d: torch.finfo(d).eps):
        if _trial(replace(context, dtype=candidate), dropout_off) is None:
            return candidate, _note(dtype, candidate, failure)
    return None


# The words an operation's refusal of a dtype uses (torch's "not implemented for 'Double'",
# "expected scalar type Float but found Double", a custom kernel's "float32 only"): an error
# without one (a shape mismatch) is not a kernel without float64, and another precision would
# only hide it.
_DTYPE_WORDS = re.compile(
    r"dtype|double|float(16|32|64)?|half|bfloat16|complex|not implemented for", re.IGNORECASE
)


def _about_a_dtype(error: Exception) -> bool:
    """Whether ``error`` reads as an operation refusing a dtype.

    Example:
        >>> _about_a_dtype(RuntimeError("addmm_impl_cpu_ not implemented for 'Half'"))
        True
        >>> _about_a_dtype(RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x3 and 4x8)"))
        False
    """
    return _DTYPE_WORDS.search(f"{type(error).__name__}: {error}") is not None


def _trial(context: CheckContext, dropout_off: bool) -> Exception | None:
    """The error J or its gradient raises in ``context.dtype`` at θ, or None when both
    evaluate."""
    try:
        with (
            preserved_rng(),
            attention_fast_path_disabled(),
            dropout_disabled(context.model, disable=dropout_off),
        ):
            context.cost().gradient()
    except Exception as err:  # any error: the question is only whether this dtype evaluates
        return err
    return None


def _note(dtype: torch.dtype, lower: torch.dtype, failure: Exception) -> str:
    first = (str(failure).strip().splitlines() or [""])[0][:160]
    high, low = (str(d).removeprefix("torch.") for d in (dtype, lower))
    return (
        f"J cannot be evaluated in {high} ({type(failure).__name__}: {first}), while it can in "
        f"{low}: an operation of the model has no {high} kernel. Checked in {low}, the highest "
        f"precision the model runs, with epsilon='auto' (a step per component fitted to {low}'s "
        f"rounding); the verdict weighs the rounding noise measured in {low}, so it is coarser "
        f"than a {high} check's"
    )
