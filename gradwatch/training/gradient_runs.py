"""The gradients :mod:`gradwatch.training_path` compares: the reference (the check's eager
gradient in its dtype), the eager model in the training precision, and the model as given.

The model as given runs on its own parameters, as training does (``torch.autograd.grad``, so no
``.grad`` is written), so a compiled module meets the guards it was compiled for. The eager runs
take copies through ``torch.func.functional_call``. Every run re-seeds the RNGs with the check's
seed, with dropout layers off (compiled code draws other masks than eager code); buffers a
forward writes (BatchNorm's running statistics), the RNG states and the training flags are put
back after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from gradwatch.common.user_state import (
    attention_fast_path_disabled,
    cast_batch,
    dropout_disabled,
    preserved_rng,
    reseed,
)
from gradwatch.evaluation.context import CheckContext
from gradwatch.evaluation.cost import LossFn
from gradwatch.training.compiled import EAGER_STANCE, EagerView
from gradwatch.training.hooks import hooks_named
from gradwatch.training_path import (
    ParameterPath,
    TrainingPath,
    TrainingPathResult,
    allowance,
    rounding_floor,
)

__all__ = ["Trained", "compare_training_path"]

# The gradient that trains, per checked parameter, when it is not the model's as given.
Trained = Callable[[], list[torch.Tensor]]

# Eager runs at θ moved by one rounding unit of the training precision, in random directions:
# Monte Carlo arithmetic (Parker, Stott & Pierce, 1997) draws rounding errors afresh this way.
# One run's largest error on a tensor of a few entries understates the rounding that precision
# commits there; the largest over these runs does not (the eager baseline is their maximum).
REALIZATIONS = 4


def compare_training_path(
    view: EagerView,
    reference: CheckContext,
    path: TrainingPath,
    trained: Trained | None = None,
) -> TrainingPathResult:
    """Compares the gradient ``path`` computes with the eager gradient of the check's
    ``reference`` (J on ``view.module`` in the check's dtype), per parameter of
    ``reference.names``. A training path that raises (a batch in another dtype than the
    model's, a compiler error) is not judged, and says why. ``trained`` computes the gradient
    that trains instead of the model as given (a sharded model's, after its collectives), in
    ``names`` order."""
    reference_dtype = reference.dtype
    try:
        return _compare(view, reference, path, trained)
    except Exception as err:  # the float64 check stands; this part could not run
        first = (str(err).strip().splitlines() or [""])[0][:160]
        return TrainingPathResult(
            path="compiled module" if view.compiled else "eager module (nothing compiled)",
            compiled=bool(view.compiled),
            reference=_name(reference_dtype),
            reason=f"it raised {type(err).__name__}: {first}",
        )


def _compare(
    view: EagerView, context: CheckContext, path: TrainingPath, trained_by: Trained | None = None
) -> TrainingPathResult:
    loss_fn, batch, names, seed = context.loss_fn, context.batch, context.names, context.seed
    with (
        preserved_rng(),
        attention_fast_path_disabled(),
        dropout_disabled(view.given, disable=True),
        _buffers_kept(view.module),
        torch.enable_grad(),
    ):
        with view.applied():
            params = dict(view.module.named_parameters())
            tensors = [params[n] for n in names]
            device = tensors[0].device
            copied = cast_batch(batch, None, device)
            reference = context.cost().gradient()[1]
            lowered = _autocast_dtype(path, device)
            moving = [(t, _unit(t.dtype, lowered)) for t in tensors]
            eager = _EagerRuns(view.module, loss_fn, copied, names, path)
            first = eager.gradient([t.detach() for t in tensors], seed)
            moved = eager.gradient([t.detach() for t in tensors], seed + 1)
            generator = torch.Generator().manual_seed(seed)
            runs = [first] + [
                eager.gradient([_perturbed(t, u, generator) for t, u in moving], seed)
                for _ in range(REALIZATIONS)
            ]
        if trained_by is None:
            trained = _trained(view.given, loss_fn, copied, tensors, path, seed)
        else:
            reseed(seed)
            trained = trained_by()
    precisions = [_name(_precision(t.dtype, lowered)) for t in tensors]
    scale = torch.stack([r.detach().abs().max().double().cpu() for r in reference if r.numel()])
    figures = {
        n: _figures(reference[k], trained[k], [run[k] for run in runs], precisions[k], scale)
        for k, n in enumerate(names)
    }
    return TrainingPathResult(
        path=_describe(view, tensors, lowered, path),
        compiled=bool(view.compiled),
        reference=_name(context.dtype),
        parameters=hooks_named(figures, tensors, reference, trained),
        reason=_randomness(first, moved, figures, names),
    )


class _Objective(nn.Module):
    """J under the training context and ``then(J)`` (the backward) outside it, while the
    tensors of ``functional_call`` are in the model (a checkpointed forward runs again)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, path: TrainingPath) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.path = path

    def forward(self, batch: Any, then: Callable[[torch.Tensor], Any]) -> Any:
        with _context(self.path):
            value = self.loss_fn(self.model, batch)
        return then(value)


class _EagerRuns:
    """Gradients of the eager model at given values of θ, in the training precision."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: Any,
        names: Sequence[str],
        path: TrainingPath,
    ) -> None:
        self._objective = _Objective(model, loss_fn, path)
        self._batch = batch
        self._names = [f"model.{n}" for n in names]
        self._scale = path.loss_scale

    def gradient(self, theta: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
        leaves = [t.detach().clone().requires_grad_(True) for t in theta]

        def backprop(value: torch.Tensor) -> list[torch.Tensor]:
            return _backprop(value, leaves, self._scale)

        reseed(seed)
        tensors = dict(zip(self._names, leaves, strict=True))
        return functional_call(self._objective, tensors, (self._batch, backprop))


def _trained(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    tensors: Sequence[torch.Tensor],
    path: TrainingPath,
    seed: int,
) -> list[torch.Tensor]:
    """The gradient the model as given computes on its own parameters (no ``.grad`` written)."""
    if EAGER_STANCE.active:  # a check in another thread runs eager code: so would this call
        raise RuntimeError(
            "another check in this process (a thread) runs the eager code now, and the compiled "
            "code cannot run meanwhile; run the training path when no other check runs"
        )
    reseed(seed)
    with _context(path):
        value = loss_fn(model, batch)
    return _backprop(value, list(tensors), path.loss_scale)


def _backprop(value: Any, leaves: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
    cost = value.reshape(())  # the float64 check already required a scalar tensor
    if not cost.requires_grad:
        return [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(cost * scale if scale != 1.0 else cost, leaves, allow_unused=True)
    return [
        torch.zeros_like(t) if g is None else (g.to_dense() if g.is_sparse else g).detach() / scale
        for t, g in zip(leaves, grads, strict=True)
    ]


def _figures(
    reference: torch.Tensor,
    trained: torch.Tensor,
    runs: list[torch.Tensor],
    precision: str,
    scale: torch.Tensor,
) -> ParameterPath:
    """One parameter's figures; ``scale`` is the largest reference entry of any checked tensor.

    A tensor whose reference is no larger than the eager model's own error in the training
    precision has no gradient at that precision (zero to within its rounding, like a bias that
    BatchNorm cancels): its entries are rounding noise of the terms that cancel, whatever size
    they have. Its floor is FlashAttention's at the scale of the model's gradients, as
    FlashAttention's is at the scale of its test tensors rather than of each output.
    """
    ref = reference.detach().to(torch.float64)
    errors = [float((run.to(ref) - ref).abs().max()) if ref.numel() else 0.0 for run in runs]
    error = float((trained.to(ref) - ref).abs().max()) if ref.numel() else 0.0
    judged = all(e == e and e != float("inf") for e in errors)  # the eager gradient is finite
    if error != error:
        error = float("inf")  # a NaN gradient is the largest error there is
    eager_error = max(errors) if judged else float("nan")
    dtype = getattr(torch, precision)
    zero = judged and ref.numel() > 0 and float(ref.abs().max()) <= eager_error
    return ParameterPath(
        error=error,
        eager_error=eager_error,
        floor=rounding_floor(scale if zero else ref, dtype),
        precision=precision,
        judged=judged,
        zero_to_rounding=zero,
    )


def _randomness(
    first: list[torch.Tensor],
    moved: list[torch.Tensor],
    figures: dict[str, ParameterPath],
    names: Sequence[str],
) -> str | None:
    """Why nothing can be judged when the eager gradient moves with the seed by more than the
    rule allows: J draws random numbers, and compiled code draws other ones."""
    for k, name in enumerate(names):
        p = figures[name]
        shift = float((moved[k].double() - first[k].double()).abs().max()) if p.judged else 0.0
        if shift > allowance(p.eager_error, p.floor):
            return (
                f"the eager gradient of {name} changes with the seed ({shift:.1e} between two "
                "seeds): J draws random numbers outside dropout layers, and compiled code draws "
                "other ones than eager code, so their gradients differ whatever their backward "
                "does; make J deterministic (e.g. dropout as nn.Dropout layers) to compare them"
            )
    return None


def _autocast_dtype(path: TrainingPath, device: torch.device) -> torch.dtype | None:
    """The dtype the context autocasts to on ``device``, or None where it does not autocast."""
    if path.context is None:
        return None
    with path.context():
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    return None


def _precision(stored: torch.dtype, lowered: torch.dtype | None) -> torch.dtype:
    """The precision a parameter's gradient is computed in: autocast lowers float32/float16."""
    if lowered is not None and stored in (torch.float32, torch.float16):
        return lowered
    return stored


def _unit(stored: torch.dtype, lowered: torch.dtype | None) -> float:
    """The unit roundoff of the precision a parameter is computed in."""
    return torch.finfo(_precision(stored, lowered)).eps / 2


def _perturbed(theta: torch.Tensor, unit: float, generator: torch.Generator) -> torch.Tensor:
    """θ with each entry moved by −1, 0 or +1 times max(unit·|θ_i|, one ulp of its dtype)."""
    values = theta.detach().to(torch.float64)
    sign = torch.randint(-1, 2, theta.shape, generator=generator).to(values)
    magnitude = values.abs()
    exponent = torch.floor(torch.log2(magnitude.clamp_min(torch.finfo(theta.dtype).tiny)))
    ulp = torch.finfo(theta.dtype).eps * torch.exp2(exponent)
    step = torch.maximum(unit * magnitude, ulp) * (magnitude > 0)  # zeros stay exact
    return (values + sign * step).to(theta.dtype)


def _context(path: TrainingPath) -> AbstractContextManager[Any]:
    return path.context() if path.context is not None else contextlib.nullcontext()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _describe(
    view: EagerView,
    tensors: Sequence[torch.Tensor],
    lowered: torch.dtype | None,
    path: TrainingPath,
) -> str:
    what = "compiled module" if view.compiled else "eager module (nothing compiled)"
    stored = ", ".join(sorted({_name(t.dtype) for t in tensors}))
    text = f"{what}, {stored}"
    if lowered is not None:
        text += f" under autocast({_name(lowered)})"
    if path.loss_scale != 1.0:
        text += f", loss scaled by {path.loss_scale:g}"
    return text


@contextlib.contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Buffers as they were (BatchNorm's running statistics), also when the body raises."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                if not torch.equal(buffer, copy):
                    buffer.copy_(copy)
