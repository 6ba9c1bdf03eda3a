"""The gradient a sharded model trains with: one forward and backward of the model itself, on
this process's batch, after FSDP's reduce-scatter and tensor parallelism's collectives, read
whole (``full_tensor()``) per parameter; ``.grad``, buffers and training flags put back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gradwatch.common.user_state import dropout_disabled
from gradwatch.evaluation.cost import LossFn
from gradwatch.sharding.replica import full, replica_of
from gradwatch.training.gradient_runs import _buffers_kept, _context
from gradwatch.training_path import TrainingPath


def sharded_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    names: Sequence[str],
    path: TrainingPath,
    group: dist.ProcessGroup,
) -> list[torch.Tensor]:
    """The whole gradient of each of ``names`` as the sharded training computes it (a
    collective: every process of ``group`` calls it). A plain (not DTensor) parameter is
    replicated: its gradient is the group's first process's, so every process judges the same
    numbers (a gradient never reduced differs there from the mean's)."""
    params = dict(model.named_parameters())
    with _grads_kept(model), dropout_disabled(model, disable=True), _buffers_kept(model):
        with torch.enable_grad(), _context(path):
            value = loss_fn(model, batch).reshape(())
        scale = path.loss_scale
        (value * scale if scale != 1.0 else value).backward()
        found = []
        for name in names:
            p = params[name]
            grad = torch.zeros(p.shape, dtype=p.dtype) if p.grad is None else full(p.grad)
            if not hasattr(p, "full_tensor"):
                dist.broadcast(grad, src=dist.get_global_rank(group, 0), group=group)
            found.append(grad / scale)
        return found


@contextlib.contextmanager
def _grads_kept(model: nn.Module) -> Iterator[None]:
    """Every parameter's ``.grad`` as it was (None during the body), also when it raises."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.grad = None
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


def training_replica(model: nn.Module, twin: nn.Module) -> tuple[nn.Module, str]:
    """The replica the training path's eager runs use, and what it says of precision: under
    FSDP2's ``MixedPrecisionPolicy`` the parameters of each sharded module in its
    ``param_dtype`` and its floating inputs (and output, with ``output_dtype``) cast as FSDP
    casts them, so the eager baseline computes in the precision training computes in (in the
    model's own dtypes, FSDP's reduction in float32 would look 10⁴× off). Without a policy,
    ``twin``, the replica of the float64 check."""
    params, casts = _policies(model)
    if not params:
        return twin, ""
    lowered = replica_of(model, lambda t: full(t).to(params.get(id(t), t.dtype)))
    for module, copied in zip(model.modules(), lowered.modules(), strict=True):
        if id(module) in casts:
            given, output = casts[id(module)]
            copied.register_forward_pre_hook(_caster(given), with_kwargs=True)
            copied.register_forward_hook(_caster(output, given))
    names = sorted({str(d).removeprefix("torch.") for d in params.values()})
    return lowered, f"FSDP mixed precision: parameters in {', '.join(names)}"


def _policies(model: nn.Module) -> tuple[dict[int, torch.dtype], dict[int, tuple[Any, Any]]]:
    """FSDP2's mixed-precision policy: param_dtype by parameter (id), input and output casts by
    module (id). FSDP2 keeps the policy on private state (``_get_fsdp_state()._mp_policy``,
    the param group's ``fsdp_params``): where that moves, no policy is read."""
    params: dict[int, torch.dtype] = {}
    casts: dict[int, tuple[Any, Any]] = {}
    for module in model.modules():
        try:
            state = module._get_fsdp_state()  # type: ignore[operator]
            policy, group = state._mp_policy, state._fsdp_param_group
        except (AttributeError, AssertionError):
            continue  # not an FSDP module, or another torch's private layout
        if policy.param_dtype is None and policy.output_dtype is None:
            continue
        given = policy.param_dtype if policy.cast_forward_inputs else None
        casts[id(module)] = (given, policy.output_dtype)
        for fsdp_param in getattr(group, "fsdp_params", []) if policy.param_dtype else []:
            params[id(fsdp_param.sharded_param)] = policy.param_dtype
    return params, casts


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple | list):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def _caster(dtype: torch.dtype | None, when: torch.dtype | None = None) -> Any:
    """FSDP's cast of a module's inputs (``when`` None) or output, made only while the module's
    parameters are in ``param_dtype`` (``when``, or ``dtype`` for inputs): the eager runs. The
    float64 reference runs the same replica on float64 copies, uncast."""

    def applies(module: nn.Module) -> bool:
        first = next((p for p in module.parameters() if p.is_floating_point()), None)
        wanted = when if when is not None else dtype
        return dtype is not None and first is not None and first.dtype == wanted

    def inputs(module: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        if not applies(module):
            return None
        return _cast(args, dtype), _cast(kwargs, dtype)  # type: ignore[arg-type]

    def output(module: nn.Module, args: Any, out: Any) -> Any:
        return _cast(out, dtype) if applies(module) else None  # type: ignore[arg-type]

    return inputs if when is None else output
