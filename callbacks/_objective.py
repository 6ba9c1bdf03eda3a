"""J for a LightningModule, and the quiet room it is evaluated in.

J is what the module trains on: the loss ``training_step(batch, batch_idx)`` returns (a tensor, or
the ``"loss"`` entry of a dict), or ``gradcheck_loss(batch)`` where the module defines one. The
engine evaluates J a few thousand times; none of those calls may reach a logger, a progress bar
or a metric's running state, so training sees nothing of the check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import nn
from torchmetrics import Metric

LossFn = Callable[[nn.Module, Any], torch.Tensor]

_OPTIONS = (
    "return the loss from `training_step` (a tensor, or a dict with a 'loss' entry), or define "
    "`gradcheck_loss(self, batch)` on `{name}` returning the scalar cost J"
)
# torchmetrics keeps these next to the states in `metric_state`; `forward` and `update` write them.
_METRIC_COUNTERS = ("_update_count", "_computed", "_forward_cache")


class ObjectiveError(TypeError):
    """J cannot be had from the module as written: raised whatever ``on_fail`` says, since no
    check can run until the module changes (not a failed check)."""


def has_custom_loss(module: nn.Module) -> bool:
    """Whether the module gives J itself through ``gradcheck_loss(batch)``."""
    return callable(getattr(module, "gradcheck_loss", None))


def require_objective(module: Any) -> None:
    """Fails at setup when ``training_step`` cannot give J and ``gradcheck_loss`` is missing."""
    if has_custom_loss(module):
        return
    name = type(module).__name__
    if not module.automatic_optimization:
        reason = "uses manual optimization, so its `training_step` does not return the loss J"
    elif is_param_in_hook_signature(module.training_step, "dataloader_iter", explicit=True):
        reason = "takes `dataloader_iter` in `training_step`, so the check cannot hand it a batch"
    else:
        return
    raise ValueError(
        f"GradientCheck: `{name}` {reason}; define `gradcheck_loss(self, batch)` on `{name}` "
        "returning the scalar cost J (regularization included)"
    )


def objective(module: Any, batch_idx: int) -> LossFn:
    """``loss_fn(model, batch)`` for the engine: ``gradcheck_loss`` or ``training_step``'s loss.

    Metric states are put back after every evaluation: the engine may evaluate many θ at once
    under ``torch.func.vmap``, and a batched tensor left in a metric would break the next call.
    """
    loss = _custom_loss if has_custom_loss(module) else _training_loss(module, batch_idx)

    def evaluation(model: nn.Module, batch: Any) -> torch.Tensor:
        with _metrics_restored(model):
            return _scalar(loss(model, batch), model)

    return evaluation


def _scalar(loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if loss.numel() != 1:
        source = "gradcheck_loss" if has_custom_loss(model) else "training_step"
        raise ObjectiveError(
            f"GradientCheck: `{type(model).__name__}.{source}` returned a loss of shape "
            f"{list(loss.shape)}; J must be a scalar (one element) tensor, e.g. the mean over "
            "the batch"
        )
    return loss


def _custom_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    output = model.gradcheck_loss(batch)  # type: ignore[operator]
    if not isinstance(output, torch.Tensor):
        name = type(model).__name__
        raise ObjectiveError(
            f"GradientCheck: `{name}.gradcheck_loss` returned {type(output).__name__}; it must "
            "return the scalar cost J as a tensor computed from the module's parameters"
        )
    return output


def _training_loss(module: Any, batch_idx: int) -> LossFn:
    # Lightning passes batch_idx only to a training_step that takes it; so do we.
    with_index = is_param_in_hook_signature(module.training_step, "batch_idx", min_args=2)

    def training_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        step: Callable[..., Any] = model.training_step  # type: ignore[assignment]
        output = step(batch, batch_idx) if with_index else step(batch)
        return _loss_of(output, type(model).__name__)

    return training_loss


def _loss_of(output: object, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), torch.Tensor):
        return output["loss"]
    if isinstance(output, Mapping):
        got = f"a dict without a tensor 'loss' entry (keys {sorted(map(str, output))})"
    else:
        got = type(output).__name__
    raise ObjectiveError(
        f"GradientCheck: `{name}.training_step` returned {got}, not the loss J; "
        + _OPTIONS.format(name=name)
    )


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


@contextmanager
def logging_muted(module: nn.Module) -> Iterator[None]:
    """``self.log``/``self.log_dict`` of the module (and LightningModules inside it) do nothing."""
    # Instance attributes shadow LightningModule.log/log_dict for the check only: no trainer
    # state is touched, and the check's values never reach a logger or the progress bar.
    names = ("log", "log_dict")
    targets = [m for m in module.modules() if all(callable(getattr(m, n, None)) for n in names)]
    shadowed = [{n: vars(m)[n] for n in names if n in vars(m)} for m in targets]
    try:
        for m in targets:
            for n in names:
                object.__setattr__(m, n, _ignore)
        yield
    finally:
        for m, own in zip(targets, shadowed, strict=True):
            for n in names:
                vars(m).pop(n, None)
            vars(m).update(own)


def _copied(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


@contextmanager
def _metrics_restored(module: nn.Module) -> Iterator[None]:
    # A training_step that updates a torchmetrics metric would otherwise count the check's
    # evaluations into the epoch's accuracy.
    saved = []
    for metric in (m for m in module.modules() if isinstance(m, Metric)):
        state = {name: _copied(value) for name, value in metric.metric_state.items()}
        state.update({n: getattr(metric, n) for n in _METRIC_COUNTERS if hasattr(metric, n)})
        saved.append((metric, state))
    try:
        yield
    finally:
        for metric, state in saved:
            for name, value in state.items():
                object.__setattr__(metric, name, value)
