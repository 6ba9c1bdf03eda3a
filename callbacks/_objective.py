"""J for a LightningModule, and the quiet room it is evaluated in.

J is what the module trains on: the loss ``training_step(batch, batch_idx)`` returns (a tensor, or
the ``"loss"`` entry of a dict), or ``gradcheck_loss(batch)`` where the module defines one. The
engine evaluates J a few thousand times; none of those calls may reach a logger, a progress bar
or a metric's running state, so training sees nothing of the check.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import nn
from torch._C import _functorch
from torchmetrics import Metric

from gradwatch._evaluate import LossFn

_OPTIONS = (
    "return the loss from `training_step` (a tensor, or a dict with a 'loss' entry), or define "
    "`gradcheck_loss(self, batch)` on `{name}` returning the scalar cost J"
)
# nn.Module's registries of a metric: its submodules, parameters and buffers are not its running
# state (torchmetrics keeps that in plain attributes), and evaluating J adds none.
_MODULE_DICTS = ("_modules", "_parameters", "_buffers")


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

    Metrics are put back as they were after every evaluation: the engine may evaluate many θ at
    once under ``torch.func.vmap``, and a batched tensor left in a metric would break the next
    call. Warnings raised under vmap are dropped (see :func:`_batched_quietly`).
    """
    loss = _custom_loss if has_custom_loss(module) else _training_loss(module, batch_idx)

    def evaluation(model: nn.Module, batch: Any) -> torch.Tensor:
        with _batched_quietly(), _metrics_restored(model):
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


def _under_vmap() -> bool:
    stack = _functorch.get_interpreter_stack() or []
    return any(level.key() == _functorch.TransformType.Vmap for level in stack)


@contextmanager
def _batched_quietly() -> Iterator[None]:
    """Warnings are dropped while J is evaluated under ``torch.func.vmap``, the engine's batched
    try: it always comes after plain evaluations of the same J, which warn as the module does, so
    a warning there is vmap's own (an op without a batching rule) or a repeat."""
    if not _under_vmap():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _attributes(metric: Metric) -> dict[str, Any]:
    return {n: _copied(v) for n, v in vars(metric).items() if n not in _MODULE_DICTS}


@contextmanager
def _metrics_restored(module: nn.Module) -> Iterator[None]:
    """Every torchmetrics metric in ``module`` ends with the attributes it had, states bit for bit.

    A training_step that updates a metric would otherwise count the check's evaluations into the
    epoch's accuracy. All attributes are put back, not only the states: ``Metric.forward`` sets
    some for its batch (``compute_on_cpu``, ``_to_sync``, ``_should_unsync``, ``_enable_grad``,
    ...) and restores them only when ``update`` returns, which it does not under vmap.
    """
    saved = [(m, _attributes(m)) for m in module.modules() if isinstance(m, Metric)]
    try:
        yield
    finally:
        for metric, attributes in saved:
            own = vars(metric)
            for name in [n for n in own if n not in attributes and n not in _MODULE_DICTS]:
                del own[name]  # set during the evaluation
            own.update(attributes)
