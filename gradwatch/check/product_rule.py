"""The missing product-rule term, named and located.

An activation of the form x·g(x) (SiLU = x·σ(x), GELU = x·Φ(x), Swish, Mish) has the derivative
g(x) + x·g′(x). A hand-written backward that forgets the product rule returns g(x) alone, and then
backprop's gradient below it is J's gradient with the x·g′(x) term left out. No pattern in one
tensor's two values shows that (the error depends on every activation input), so the hypothesis is
tested the way it is stated, at each activation module that computes an x·g(x) (:func:`activations`:
matched by what it computes, never by its class name). Backprop is run twice more with that module's
backward replaced, from the input x and output y its forward hook sees: once by the true derivative
f′(x) (central differences of the module's own forward), once by g(x) = y/x alone. The module is
named where, on the wrong components of the check (counted by :mod:`gradwatch.findings.patterns`'
rule), the true derivative gives J's gradient (the module is where the error enters: fixing it
clears the error) and g(x) alone gives backprop's values (what its backward computes is the missing
term), the two being told apart there, and where the simpler explanations of the same tensor (a
constant factor on its gradient, a factor on the module's derivative) miss backprop's values by more
than one tolerance and ``MARGIN`` times as much as the missing term does.
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["KIND", "MARGIN", "activations", "name_missing_terms"]

KIND = "product rule"
# Activation modules tried at most: each costs one backprop; past this, a model is too large
# for one more backprop per activation to be the cheap step of a diagnosis.
MOST_TRIED = 64
# The missing term is named for a tensor only where the simpler explanations (a constant factor
# on its gradient, a factor on the module's derivative) miss backprop's values by more than one
# fit tolerance (8 noises + 1e-6 of the value: a miss noise cannot make), root mean square over
# its wrong components, and by more than this many times the missing term's own miss (which,
# backprop against backprop, is rounding: ~1e-14 tolerances where it holds).
MARGIN = 4.0
# A gate g(x) = f(x)/x is a soft switch: off far below 0, on far above. Probed at ±_FAR, within
# _GATE_SLACK of 0 and 1 (GELU, SiLU, Swish, Mish, Hardswish: below 1e-6 there; Tanh's is 0.05).
_FAR, _GATE_SLACK = 20.0, 1e-3
# Where x·g′(x) stays below this share of max(1, |f′(x)|) on a grid of 64 inputs across
# [−3, 3] (none at 0, where a kink would be), it is no term: dropping it changes nothing (ReLU,
# the identity), and the module is not tried. SiLU's is 0.2 at x = 1, Hardswish's 0.33.
_NO_TERM, _GRID = 1e-3, torch.linspace(-3.0, 3.0, 64, dtype=torch.float64)
_GENERIC = RECHECKS.index("generic point")


def _derivative(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f′(x) of an elementwise module by central differences of its own forward, at the step
    ε^(1/3)·max(1, |x|) that balances truncation and rounding (relative error ~ε^(2/3), 4e-11 in
    float64: far inside the fit tolerance's 1e-6)."""
    step = torch.finfo(x.dtype).eps ** (1 / 3) * x.abs().clamp(min=1.0)
    return (module.forward(x + step) - module.forward(x - step)) / (2 * step)


def _gate(x: torch.Tensor, y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """g(x) = y/x; at x = 0, where x·g′(x) vanishes, g(0) = f′(0)."""
    return torch.where(x != 0, y / torch.where(x != 0, x, 1), slope)


def _computes_x_times_gate(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether this call of ``module`` computed an elementwise x·g(x) with a gate g and a
    non-zero x·g′(x) term: a permutation of its input permutes its output, f(0) = 0, g(−20) ≈ 0,
    g(20) ≈ 1, and x·g′(x) = f′(x) − g(x) is not negligible on a grid of inputs."""
    if not (x.is_floating_point() and y.shape == x.shape and y.dtype == x.dtype and x.numel()):
        return False
    x, y = x.detach(), y.detach()
    order = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0)).to(x.device)
    permuted = module.forward(x.reshape(-1)[order].reshape(x.shape))
    if not torch.allclose(permuted.reshape(-1), y.reshape(-1)[order], rtol=1e-5, atol=1e-7):
        return False
    at = [module.forward(torch.full_like(x, v)).reshape(-1)[0] for v in (-_FAR, 0.0, _FAR)]
    gates = (float(at[0]) / -_FAR, float(at[1]), float(at[2]) / _FAR - 1)
    if not all(abs(g) <= _GATE_SLACK for g in gates):
        return False
    grid = _GRID.to(x)[torch.arange(x.numel(), device=x.device) % _GRID.numel()].reshape(x.shape)
    slope = _derivative(module, grid)
    term = (slope - _gate(grid, module.forward(grid), slope)).abs()
    return bool((term > _NO_TERM * slope.abs().clamp(min=1.0)).any())


def activations(model: nn.Module, run: Callable[[], Any]) -> list[tuple[str, nn.Module]]:
    """The model's leaf modules that compute an elementwise x·g(x) with a gate g (off far below
    0, on far above) and a non-zero x·g′(x) term on the inputs they see while ``run()`` runs the
    model: matched by what they compute, whatever their class is named.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.SiLU(), nn.Tanh(), nn.ReLU(), nn.GELU())
        >>> activations(model, lambda: model(torch.randn(3, 2)))
        [('1', SiLU()), ('4', GELU(approximate='none'))]
    """
    leaves = {  # a module with buffers (BatchNorm's running statistics) is no activation, and
        # calling it once more could change them
        id(m): name
        for name, m in model.named_modules()
        if name and not any(m.children()) and not any(True for _ in m.buffers(recurse=False))
    }
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if id(module) not in leaves or id(module) in seen or len(found) >= MOST_TRIED:
            return
        seen.add(id(module))  # judged on its first call
        if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            with torch.no_grad():
                if _computes_x_times_gate(module, args[0], out):
                    found[leaves[id(module)]] = module

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    order = [name for name, _ in model.named_modules()]
    return sorted(found.items(), key=lambda item: order.index(item[0]))


class _Replaced(torch.autograd.Function):
    """y as computed, whose backward multiplies by ``slope`` (given, not differentiated)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(slope)
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


@contextmanager
def _replaced(target: nn.Module, how: str) -> Iterator[None]:
    """While the body runs, ``target``'s backward is its true derivative (``how="true"``),
    g(x) alone (``"gate"``) or 0 (``"zero"``); a global forward hook: the model's own modules
    carry no hook of ours."""

    def hook(module: nn.Module, args: Any, out: Any) -> Any:
        if module is not target or not args or not isinstance(out, torch.Tensor):
            return None
        x = args[0]
        with torch.no_grad():
            slope = _derivative(module, x.detach())
            if how == "gate":
                slope = _gate(x.detach(), out.detach(), slope)
            elif how == "zero":
                slope = torch.zeros_like(slope)
        return _Replaced.apply(x, out, slope)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _flat(cost: ModuleCost, target: nn.Module, how: str) -> np.ndarray:
    with _replaced(target, how):
        _, grads = cost.gradient()
    return torch.cat([g.reshape(-1).to(torch.float64).cpu() for g in grads]).numpy()


def name_missing_terms(
    report: GradCheckReport, model: nn.Module, cost_at: Callable[[bool], ModuleCost]
) -> GradCheckReport:
    """``report`` with a finding for each wrong tensor whose backprop values are J's gradient
    without the x·g′(x) term of one activation module, and the location there when the report
    could not locate the bug. ``cost_at(generic)``: J over every checked tensor, at θ or at the
    generic point (where components were judged there)."""
    wrong = np.flatnonzero(np.asarray(report.readings) == DISAGREES)
    if wrong.size == 0:
        return report
    generic = np.asarray(report.rechecks)[wrong] == _GENERIC
    costs = {bool(p): cost_at(bool(p)) for p in np.unique(generic)}
    numeric, analytic = report.numeric[wrong], report.analytic[wrong]
    tol = tolerance(numeric, np.asarray(report.numeric_noise)[wrong])

    def backprop(module: nn.Module, how: str) -> np.ndarray:
        """Backprop's values on the wrong components with ``module``'s backward replaced."""
        out = np.empty(wrong.size)
        for point, cost in costs.items():
            here = generic == point
            out[here] = _flat(cost, module, how)[report.indices[wrong[here]]]
        return out

    first = next(iter(costs.values()))
    for module_name, module in activations(model, first.gradient):
        true = backprop(module, "true")
        fixed = fits(numeric, true, tol)  # the error enters here: its true derivative clears it
        if not named(int(fixed.sum()), wrong.size):
            continue
        gate = backprop(module, "gate")
        fitted = fixed & fits(analytic, gate, tol) & ~fits(numeric, gate, tol)
        if not named(int(fitted.sum()), wrong.size):
            continue
        hypotheses = _Hypotheses(analytic, tol, true, gate, backprop(module, "zero"))
        label = f"{module_name} ({type(module).__name__})"
        found = _findings(report, wrong, fitted, hypotheses, label)
        if found:
            return _with(report, found, module_name, type(module).__name__)
    return report


@dataclasses.dataclass(frozen=True)
class _Hypotheses:
    """The wrong components' analytic values and tolerance, and backprop's values with the
    module's backward replaced by its true derivative (J's gradient, by the fix test), by g(x)
    alone, and by 0."""

    analytic: np.ndarray
    tol: np.ndarray
    true: np.ndarray
    gate: np.ndarray
    zero: np.ndarray

    def misses(self, at: np.ndarray) -> tuple[float, float]:
        """How far, in tolerances (root mean square over the wrong components ``at``), the
        missing term and the better of the simpler explanations miss backprop's values. The
        simpler ones: analytic = true/r (a constant factor on the tensor's gradient) and
        analytic = zero + c·(true − zero) (a factor c on the module's derivative: backprop is
        linear in it); r and c are the median ratios."""
        a, tol, zero, true = self.analytic[at], self.tol[at], self.zero[at], self.true[at]
        term = _rms((a - self.gate[at]) / tol)
        simpler = []
        for base in (0 * a, zero):
            span = true - base
            usable = np.abs(span) > tol
            if not usable.any():
                return term, 0.0  # nothing to tell them apart by: the simpler one stands
            factor = float(np.median((a - base)[usable] / span[usable]))
            simpler.append(_rms((a - base - factor * span) / tol))
        return term, min(simpler)


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def _findings(
    report: GradCheckReport, wrong: np.ndarray, fitted: np.ndarray, h: _Hypotheses, module: str
) -> list[Finding]:  # module: "name (Class)"
    """One finding per wrong tensor the hypothesis fits (``FIT_SHARE`` of its wrong components)
    where the simpler explanations miss by more than a tolerance and ``MARGIN`` times its miss;
    the wrong components of the whole check are counted together (one backward explains them
    all, so a bias of 4 channels is named with its weight), and a prediction that fits a few
    names nothing."""
    tensor = report.layout.tensor_of(report.indices[wrong])
    found = []
    for t in (int(t) for t in np.unique(tensor)):
        at = tensor == t
        hit, tested = int(fitted[at].sum()), int(at.sum())
        term, simpler = h.misses(at)
        if hit < FIT_SHARE * tested or simpler <= max(1.0, MARGIN * term):
            continue
        name = report.layout.names[t]
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
