"""J for a LightningModule, and the quiet room it is evaluated in (no Lightning imported: the
callback says whether ``training_step`` takes ``batch_idx``).

J is what the module trains on: the loss ``training_step(batch, batch_idx)`` returns (a tensor, or
the ``"loss"`` entry of a dict), or ``gradcheck_loss(batch)`` where the module defines one. The
engine evaluates J a few thousand times; none of those calls may reach a logger, a progress bar
or the state the module keeps (lists, counters, metrics), so training sees nothing of the check.
What J does outside the module (writes to a logger's ``experiment``, prints, files) is not undone:
such a module defines ``gradcheck_loss``.
"""

from __future__ import annotations

import operator
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch._C import _functorch

from gradwatch.module import LossFn

__all__ = ["ObjectiveError", "SkippedBatch", "has_custom_loss", "logging_muted", "objective"]

_OPTIONS = (
    "return the loss from `training_step` (a tensor, or a dict with a 'loss' entry), or define "
    "`gradcheck_loss(self, batch)` on `{name}` returning the scalar cost J"
)


class ObjectiveError(TypeError):
    """J cannot be had from the module as written: raised whatever ``on_fail`` says, since no
    check can run until the module changes (not a failed check)."""


class SkippedBatch(ObjectiveError):
    """``training_step`` returned None: Lightning skips such a batch. Once an earlier check of
    the run found J, a check due on a skipped batch waits for the next batch; before that, the
    module may never give J, and this stops the run like any ObjectiveError."""


def has_custom_loss(module: nn.Module) -> bool:
    """Whether the module gives J itself through ``gradcheck_loss(batch)``."""
    return callable(getattr(module, "gradcheck_loss", None))


def objective(module: Any, batch_idx: int, with_index: bool = True) -> LossFn:
    """``loss_fn(model, batch)`` for the engine: ``gradcheck_loss`` or ``training_step``'s loss
    (``training_step(batch, batch_idx)``, or ``training_step(batch)`` unless ``with_index``).

    The state the module and its submodules keep is put back as it was after every evaluation
    (see :class:`_StateKeeper`): the engine evaluates J hundreds of times, many θ at once under
    ``torch.func.vmap``, and training must see none of it (a batched tensor left in a list or a
    metric would also break the next call). Warnings raised under vmap are dropped (see
    :func:`_batched_quietly`). One objective serves one check.
    """
    loss = _custom_loss if has_custom_loss(module) else _training_loss(batch_idx, with_index)
    keeper = _StateKeeper()

    def evaluation(model: nn.Module, batch: Any) -> torch.Tensor:
        with _batched_quietly(), keeper.restored(model):
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


def _training_loss(batch_idx: int, with_index: bool) -> LossFn:
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
    error = SkippedBatch if output is None else ObjectiveError
    raise error(
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


class _StateKeeper:
    """Puts the state of a module and of every submodule back as it was after each evaluation
    of J: a ``training_step`` that keeps state on the module (appends its loss to a list,
    counts its calls, updates a torchmetrics metric or a running average) would otherwise keep
    the check's hundreds of evaluations, some of them batched tensors of ``torch.func.vmap``.

    The state of a module is ``vars(module)`` but for its registries (submodules, parameters
    and buffers: the engine evaluates J on copies of the parameters and buffers) and its hook
    dicts (the engine's own hooks come and go). After an evaluation, attributes it added are
    deleted, every attribute is bound to its original object again, and the contents of lists,
    dicts, sets and deques and the values of tensors written in place are put back, so other
    references to these objects stay valid. Other objects (a logger, a file) are not copied:
    what J does to them stays done.

    One keeper serves one check, whose evaluations all start from the same state: what was
    taken for one evaluation is reused for the next as long as it still holds (the same
    objects, a tensor's version counter unmoved), so most evaluations copy nothing.
    """

    def __init__(self) -> None:
        self._root: nn.Module | None = None
        self._states: list[tuple[dict[str, Any], _ModuleState | None]] = []

    @contextmanager
    def restored(self, module: nn.Module) -> Iterator[None]:
        """The state of ``module`` and its submodules, as on entry, on exit."""
        if module is not self._root:
            self._root, self._states = module, [(vars(m), None) for m in module.modules()]
        states = []
        for k, (own, state) in enumerate(self._states):
            if state is None or not state.current():
                state = _ModuleState(own)
                self._states[k] = (own, state)
            else:
                state.refresh()
            states.append(state)
        try:
            yield
        finally:
            for state in states:
                state.restore()


class _ModuleState:
    """What one module held when an evaluation started (its ``vars``), and puts it back."""

    __slots__ = ("attributes", "containers", "own", "tensors")

    def __init__(self, own: dict[str, Any]) -> None:
        self.own = own
        self.attributes = dict(own)
        self.containers: list[tuple[Any, Any]] = []  # (a list, dict, set or deque; its items)
        self.tensors: list[list[Any]] = []  # [name, tensor, its version, a copy]
        for name, value in own.items():
            if not isinstance(value, _KEPT) or not _is_state(name):
                continue
            if not isinstance(value, torch.Tensor):
                self.containers.append((value, _items(value)))
            elif not isinstance(value, nn.Parameter) and not value.is_inference():
                self.tensors.append([name, value, value._version, value.detach().clone()])

    def current(self) -> bool:
        """Whether the module holds the same objects under the same names (identity of both,
        in order: a dict left as it was yields the very same key and value objects)."""
        own, attributes = self.own, self.attributes
        return (
            len(own) == len(attributes)
            and not any(map(operator.is_not, own, attributes))
            and not any(map(operator.is_not, own.values(), attributes.values()))
        )

    def refresh(self) -> None:
        """Takes again what moved since it was taken: container items, tensor values."""
        for k, (value, items) in enumerate(self.containers):
            if not _same_items(value, items):
                self.containers[k] = (value, _items(value))
        for entry in self.tensors:
            if entry[1]._version != entry[2]:
                entry[2:] = [entry[1]._version, entry[1].detach().clone()]

    def restore(self) -> None:
        own, attributes = self.own, self.attributes
        if not self.current():
            for name in [n for n in own if n not in attributes and _is_state(n)]:
                del own[name]  # added during the evaluation
            for name, value in attributes.items():
                if _is_state(name) and own.get(name, _MISSING) is not value:
                    own[name] = value
        for value, items in self.containers:
            if not _same_items(value, items):
                _refill(value, items)
        for entry in self.tensors:
            name, tensor, version, copy = entry
            if tensor._version == version:
                continue
            if tensor.shape == copy.shape and tensor.dtype == copy.dtype:  # written in place
                with torch.no_grad():
                    tensor.copy_(copy)
                entry[2] = tensor._version
            else:  # resized in place: the copy takes its place
                own[name] = copy


# nn.Module's registries: submodules, parameters and buffers (evaluated on the engine's copies).
_REGISTRIES = frozenset({"_modules", "_parameters", "_buffers"})
_KEPT = (torch.Tensor, list, dict, set, deque)
_MISSING = object()


def _is_state(name: str) -> bool:
    return name not in _REGISTRIES and "hooks" not in name


def _items(container: Any) -> Any:
    return dict(container) if isinstance(container, dict) else list(container)


def _same_items(container: Any, items: Any) -> bool:
    """Whether ``container`` holds the very objects of ``items`` (by identity, in order)."""
    if isinstance(container, dict):
        return container.keys() == items.keys() and not any(
            map(operator.is_not, container.values(), items.values())
        )
    return len(container) == len(items) and not any(map(operator.is_not, container, items))


def _refill(container: Any, items: Any) -> None:
    if isinstance(container, list):
        container[:] = items
    elif isinstance(container, dict | set):
        container.clear()
        container.update(items)
    else:  # a deque
        container.clear()
        container.extend(items)
