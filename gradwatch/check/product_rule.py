"""The missing product-rule term, named and located.

An activation of the form x·g(x) (SiLU = x·σ(x), GELU = x·Φ(x), Swish, Mish) has the derivative
g(x) + x·g′(x). A hand-written backward that forgets the product rule returns g(x) alone, and
then backprop's gradient below it is J's gradient with the x·g′(x) term left out. No pattern
in one tensor's two values shows that (the error depends on every activation input), so the
hypothesis is tested the way it is stated: for each such activation module of the model, J's
gradient is computed once more with that module's backward replaced by g(x) = y/x, and where it
predicts backprop's value on the wrong components of a tensor (by
:mod:`gradwatch.findings.patterns`' rule: within tolerance on ``FIT_SHARE`` of at least
``MIN_WRONG`` of them), the finding names the module: the bug is in its backward.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.evaluation.cost import ModuleCost
from gradwatch.evidence.readings import DISAGREES, RECHECKS
from gradwatch.findings.location import Location
from gradwatch.findings.patterns import FIT_SHARE, Finding, fits, named, tolerance
from gradwatch.report import GradCheckReport

__all__ = ["KIND", "activations", "name_missing_terms"]

KIND = "product rule"
# Activations of the form x·g(x), by the class names torch, Transformers and timm give them.
_X_TIMES_GATE = re.compile(r"gelu|silu|swish|mish", re.IGNORECASE)
# Activation modules tried at most: each costs one backprop; past this, a model is too large
# for one more backprop per activation to be the cheap step of a diagnosis.
MOST_TRIED = 64
_GENERIC = RECHECKS.index("generic point")


def activations(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's leaf modules whose class names an x·g(x) activation.

    Example:
        >>> activations(nn.Sequential(nn.Linear(2, 2), nn.SiLU(), nn.Tanh(), nn.GELU()))
        [('1', SiLU()), ('3', GELU(approximate='none'))]
    """
    return [
        (name, m)
        for name, m in model.named_modules()
        if name and not any(True for _ in m.children()) and _X_TIMES_GATE.search(type(m).__name__)
    ][:MOST_TRIED]


class _GateAlone(torch.autograd.Function):
    """y = f(x) as computed, whose backward is g(x) = y/x: the x·g′(x) term left out (at x = 0,
    where y/x is undefined, g(0) = ½, GELU's and SiLU's value there)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, y = ctx.saved_tensors
        gate = torch.where(x != 0, y / torch.where(x != 0, x, 1), 0.5)
        return grad * gate, None


@contextmanager
def _without_term(target: nn.Module) -> Iterator[None]:
    """While the body runs, ``target``'s output goes through :class:`_GateAlone` (a global
    forward hook: the model's own modules carry no hook of ours)."""

    def hook(module: nn.Module, args: Any, out: Any) -> Any:
        if module is not target or not args or not isinstance(out, torch.Tensor):
            return None
        return _GateAlone.apply(args[0], out)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _flat(cost: ModuleCost, target: nn.Module) -> np.ndarray:
    with _without_term(target):
        _, grads = cost.gradient()
    return torch.cat([g.reshape(-1).to(torch.float64).cpu() for g in grads]).numpy()


def name_missing_terms(
    report: GradCheckReport, model: nn.Module, cost_at: Callable[[bool], ModuleCost]
) -> GradCheckReport:
    """``report`` with a finding for each wrong tensor whose backprop values are J's gradient
    without the x·g′(x) term of one activation module, and the location there when the report
    could not locate the bug. ``cost_at(generic)``: J over every checked tensor, at θ or at the
    generic point (where components were judged there)."""
    reading, recheck = np.asarray(report.readings), np.asarray(report.rechecks)
    wrong = np.flatnonzero(reading == DISAGREES)
    if wrong.size == 0:
        return report
    tensor = report.layout.tensor_of(report.indices[wrong])
    generic = recheck[wrong] == _GENERIC
    for module_name, module in activations(model):
        fitted = np.zeros(wrong.size, bool)
        for at_generic in sorted({bool(g) for g in generic}):
            here = generic == at_generic
            predicted = _flat(cost_at(at_generic), module)[report.indices[wrong[here]]]
            fitted[here] = _fits(report, wrong[here], predicted)
        found = _findings(report, tensor, fitted, f"{module_name} ({type(module).__name__})")
        if found:
            return _with(report, found, module_name, type(module).__name__)
    return report


def _fits(report: GradCheckReport, at: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Where ``predicted`` is backprop's value and not J's own gradient (a component where the
    prediction is also J's gradient says nothing of the hypothesis)."""
    tol = tolerance(report.numeric[at], np.asarray(report.numeric_noise)[at])
    distinct = ~fits(report.numeric[at], predicted, tol)
    return np.asarray(fits(report.analytic[at], predicted, tol) & distinct)


def _findings(
    report: GradCheckReport, tensor: np.ndarray, fitted: np.ndarray, module: str
) -> list[Finding]:  # module: "name (Class)"
    """One finding per wrong tensor the hypothesis fits (``FIT_SHARE`` of its wrong components),
    when it fits the wrong components of the whole check by the counting rule: one backward
    explains them all, so they are counted together (a bias of 4 channels is named with its
    weight), and a prediction that happens to fit one tensor's few components names nothing."""
    if not named(int(fitted.sum()), fitted.size):
        return []
    tensors = [int(t) for t in np.unique(tensor)]
    counts = {t: (int(fitted[tensor == t].sum()), int((tensor == t).sum())) for t in tensors}
    kept = [t for t, (hit, tested) in counts.items() if hit >= FIT_SHARE * tested]
    found = []
    for t in kept:
        name, (hit, tested) = report.layout.names[t], counts[t]
        text = (
            f"{name}: analytic = numeric without the x·g′(x) term of {module} on {hit} of "
            f"{tested} wrong components: the backward of this x·g(x) activation returns g(x) "
            "alone, the product rule's second term missing"
        )
        found.append(Finding(name, KIND, text, hit, tested))
    return found


def _with(report: GradCheckReport, found: list[Finding], module: str, kind: str) -> GradCheckReport:
    location = report.location
    if location is None or not location.located or module not in location.modules:
        failing = tuple(f.parameter for f in found)
        more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
        text = (
            f"The first wrong gradient enters in the backward of {module} ({kind}): its "
            f"x·g′(x) term is missing (see the findings), which explains "
            f"{', '.join(failing[:3])}{more}."
        )
        location = Location(True, (module,), (), failing, text)
    return dataclasses.replace(report, findings=(*found, *report.findings), location=location)
