"""Gradient hooks on the parameters: part of the gradient that trains, not of J's backprop.

``Parameter.register_hook(fn)`` runs ``fn`` on the parameter's gradient before it is
accumulated: the gradient the optimizer receives is ``fn``'s, and ``torch.autograd.grad`` (the
training path's backward) returns it too. The check's float64 gradient runs on copies of the
parameters, which carry no hooks. So where the training path of a hooked parameter differs, the
hook is the first suspect, and the message names it rather than a kernel.

Hooks on the parameter's gradient accumulator and ``register_post_accumulate_grad_hook`` run
only where a backward accumulates into ``.grad``; the training path writes no ``.grad``
(:mod:`gradwatch.training.gradient_runs`), so they change nothing it compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from gradwatch.training_path import ParameterPath

__all__ = ["gradient_hooks", "hooks_named"]


def gradient_hooks(parameter: torch.Tensor) -> list[str]:
    """The hooks ``parameter.register_hook`` put on ``parameter``'s gradient, by name.

    Example:
        >>> weight = torch.nn.Parameter(torch.ones(2))
        >>> handle = weight.register_hook(lambda g: g * 2)
        >>> gradient_hooks(weight)
        ['<lambda>']
    """
    hooks = getattr(parameter, "_backward_hooks", None) or {}
    return [getattr(h, "__qualname__", type(h).__name__) for h in hooks.values()]


def hooks_named(
    figures: dict[str, ParameterPath],
    tensors: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
    trained: Sequence[torch.Tensor],
) -> dict[str, ParameterPath]:
    """``figures`` (in ``tensors`` order) with each failed parameter that carries gradient hooks
    saying so: by which factor the hooks scale its gradient, where the gradient that trains is
    the reference times one factor within the rule's allowance, else that they change it."""
    out = dict(figures)
    pairs = zip(figures.items(), tensors, reference, trained, strict=True)
    for (name, p), tensor, ref, grad in pairs:
        hooks = gradient_hooks(tensor)
        if not hooks or p.passed or not p.judged:
            continue
        ref64, grad64 = ref.detach().to(torch.float64), grad.detach().to(ref.device, torch.float64)
        norm = float((ref64 * ref64).sum())
        factor = float((ref64 * grad64).sum()) / norm if norm > 0 else float("nan")
        # One factor explains the gradient when what it leaves is within the rule's allowance.
        scaled = norm > 0 and float((grad64 - factor * ref64).abs().max()) <= p.allowed
        what = f"scales its gradient by {factor:.6g}" if scaled else "changes its gradient"
        found = f"a hook registered on {name} ({', '.join(hooks)}) {what}"
        out[name] = replace(p, hook=found)
    return out
