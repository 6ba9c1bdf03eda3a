"""A generic point for designs whose gradients are zero at initialization by construction.

A residual branch whose last BatchNorm scale starts at zero (ResNet's ``zero_init_residual``), a
layer scale of 1e-6 (ConvNeXt), a zero-initialized head (MLP-Mixer): at θ the tensors behind
such a zero have a gradient of zero (or far below J's noise), so no component of theirs can be
judged, and a bug there cannot show. The material asks for a check at random initialization;
for these designs it would rest on the other tensors alone.

So when a check leaves tensors not judged for want of a gradient ("within noise", "too close
to J's noise") and the model has parameters that are zero or tiny (the scales, gates, heads and
biases that start so), those tensors are checked again at a nearby generic point: on the check's
float64 copies only, every such parameter is moved off zero by a seeded amount of the size a
default initialization gives it, and the tensors' components are read there by the same
evidence model. Those that are judged there take that reading (``recheck`` "generic point"),
and a note names them and the parameters that were moved. The model is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from gradwatch.check.comparison import Comparison, compare, steps_of
from gradwatch.evaluation.cost import ModuleCost
from gradwatch.evidence.ladder import RUNG, RUNGS
from gradwatch.evidence.noise import NOISE_MULTIPLE
from gradwatch.evidence.readings import NOT_JUDGED, RECHECKS
from gradwatch.evidence.recheck import fitted_steps, longest_steps
from gradwatch.layout import Layout
from gradwatch.partition import Exchange
from gradwatch.precision.sites import group_names
from gradwatch.report import GradCheckReport
from gradwatch.verdict import Verdict

__all__ = ["GenericPoint", "revisited", "scales_at_zero", "to_generic_point"]

# A parameter is "zero or tiny by design" when no entry exceeds this. Default initializations
# draw at the scale 1/√fan_in, above 1e-4 for any fan-in below 10^8, so a tensor this small was
# set so on purpose (zeros, ConvNeXt's layer scale of 1e-6); 100× above 1e-6 for that margin.
TINY = 1e-4
# Why a tensor is not judged when it is not for want of a gradient: the step sat on a kink
# none of the re-checks left, or the step is lost in θ_i's precision. Every other reason
# ("within noise", "too close to J's noise", and any the reading rule adds) is about a gradient
# too small to judge: read by exclusion, so a change in how a reading is decided keeps it.
_NOT_SMALL = ("on a kink", "step lost")
GENERIC_POINT = RECHECKS.index("generic point")


@dataclass(frozen=True)
class GenericPoint:
    """What the generic point did: the tensors judged there and the parameters moved."""

    judged: tuple[str, ...]
    moved: tuple[str, ...]

    @property
    def note(self) -> str:
        judged, moved = ", ".join(group_names(list(self.judged))), ", ".join(self.moved)
        return (
            f"judged at a generic point: {judged} (too little gradient to judge at θ, where "
            f"{moved} are zero or below {TINY:g} by design: on the check's copy those were moved "
            "off zero by a seeded amount of a default initialization's size)"
        )


def scales_at_zero(model: nn.Module) -> list[str]:
    """The floating parameters of ``model`` that are zero or tiny (every entry ≤ ``TINY``).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
        >>> scales_at_zero(net)
        ['1.bias']
    """
    return [
        name
        for name, p in model.named_parameters()
        if p.is_floating_point() and p.numel() and float(p.detach().abs().max()) <= TINY
    ]


def revisited(report: GradCheckReport) -> list[str]:
    """The tensors a check left not judged for want of a gradient (by their readings' reason)."""
    return [
        name
        for name, result in report.parameters.items()
        if result.verdict is Verdict.NOT_JUDGED and result.reason not in _NOT_SMALL
    ]


def generic_deltas(model: nn.Module, names: Sequence[str], seed: int) -> dict[str, torch.Tensor]:
    """Seeded moves of the parameters ``names``: ±U(½, 1) times the scale a default init gives
    (1 for a vector of scales, gates or biases; 1/√fan_in for a matrix or kernel), in float64."""
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed * 7919 + 2027)
    deltas = {}
    for name in names:
        shape = params[name].shape
        scale = 1.0 if len(shape) < 2 else 1 / math.sqrt(math.prod(shape[1:]))
        size = torch.rand(shape, generator=generator, dtype=torch.float64) / 2 + 0.5
        sign = torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
        deltas[name] = scale * size * sign
    return deltas


def to_generic_point(
    model: nn.Module,
    cost_of: Callable[[Sequence[str]], ModuleCost],
    report: GradCheckReport,
    found: Comparison,
    step: float | str,
    split: Exchange,
    seed: int,
) -> tuple[Comparison, GenericPoint | None, int]:
    """The comparison ``found`` with the tensors the check left without a gradient read at the
    generic point instead, where they are judged there (``cost_of(names)``: J on fresh copies
    with θ = those tensors); what was done (None when there was nothing to revisit, nothing to
    move, or nothing judged there either: then ``found`` itself); the evaluations it took."""
    names, moved = revisited(report), scales_at_zero(model)
    if not names or not moved or found.evidence is None:
        return found, None, 0
    deltas = generic_deltas(model, moved, seed)
    layout, tensor_of = report.layout, report.layout.tensor_of(report.indices)
    offsets = np.asarray(layout.offsets)
    checked = [
        report.indices[tensor_of == t] - offsets[t] for t in map(layout.names.index, names)
    ]  # the components of each tensor that a reading there would read
    there = cost_of(names).shifted(deltas)
    names, spent = _moving(there, names, checked, report, step, split, seed)
    if not names:
        return found, None, spent
    wanted = [layout.names.index(n) for n in names]
    positions = np.flatnonzero(np.isin(tensor_of, wanted))
    sub = Layout(tuple(names), tuple(layout.shapes[t] for t in wanted))
    local = report.indices[positions] - offsets[tensor_of[positions]]
    sub_index = np.asarray(sub.offsets)[np.searchsorted(wanted, tensor_of[positions])]
    there = cost_of(names).shifted(deltas)
    other, objective = compare(
        there, sub, sub_index + local, step, split, seed, report.thresholds.pass_max
    )
    spent += objective.evaluations
    if other.evidence is None:
        return found, None, spent
    judged = [
        n for t, n in enumerate(names)
        if np.any(other.evidence.reading[sub.tensor_of(sub_index + local) == t] != NOT_JUDGED)
    ]  # fmt: skip
    if not judged:
        return found, None, spent
    taken = np.isin(sub.tensor_of(sub_index + local), [names.index(n) for n in judged])
    merged = _merged(found, other, positions[taken], taken, judged)
    return merged, GenericPoint(tuple(judged), tuple(moved)), spent


def _moving(
    there: ModuleCost,
    names: list[str],
    checked: list[np.ndarray],
    report: GradCheckReport,
    step: float | str,
    split: Exchange,
    seed: int,
) -> tuple[list[str], int]:
    """The tensors ``names`` (θ of ``there``, the generic point) whose gradient there exceeds
    J's noise on their ``checked`` components (flat positions in each tensor: those a reading
    there reads), by backprop, by J itself along a seeded ±1 direction over them (a backward
    that drops the gradient shows there) or by the gap between the two, each moved by the
    longest step a reading there takes (``_reach``), and the evaluations it took: the others
    would cost two evaluations per component to read as not judged again (a bias that a
    normalization cancels; in a sampled check, the taps of a 3x3 kernel that only ever see a
    1x1 map's zero padding, whatever the generic point moved). Process 0's measurements decide,
    in every process."""
    if report.j_noise is None:
        return names, 0
    center, grads = there.gradient()
    generator = torch.Generator().manual_seed(seed * 7919 + 4049)
    measured, spent = [], there.evaluations
    sigma = report.j_noise.effective
    for k, (theta, grad) in enumerate(zip(there.theta, grads, strict=True)):
        sign = torch.randint(0, 2, theta.shape, generator=generator).to(theta) * 2 - 1
        mask = torch.zeros(theta.numel(), dtype=torch.bool)
        mask[torch.as_tensor(checked[k], dtype=torch.long)] = True
        reach = _reach(theta, step, sigma, center)
        move = reach * sign * mask.view(theta.shape).to(theta.device)
        ends = []
        for direction in (move, -move):
            shifted = there.moved(
                [direction if j == k else torch.zeros(()) for j in range(len(names))]
            )
            ends.append(shifted.value())
            spent += shifted.evaluations
        change = ends[0] - ends[1], 2 * float((move * grad).sum())  # by J, by backprop
        # Backprop's side is the size its ±1 sum has whatever the signs, 2·‖H·a‖: backprop
        # needs no direction, and over a few sampled components a sum cancels by chance.
        along = 2 * float(torch.linalg.vector_norm((move * grad).double()))
        measured += [abs(change[0]), along, abs(change[0] - change[1])]
    _, agreed = split.agree((center,), np.asarray(measured, np.float64))
    # J's change carries the noise of two evaluations, √2·σ_J, and so does its gap to backprop's
    # (a reading, not each side alone: a sign flip of a gradient under the tolerance on either
    # side still shows there); read with the tolerance.
    beyond = agreed.reshape(-1, 3).max(1) > NOISE_MULTIPLE * math.sqrt(2) * sigma
    return [n for n, b in zip(names, beyond, strict=True) if b], spent


def _reach(theta: torch.Tensor, step: float | str, sigma: float, center: float) -> torch.Tensor:
    """The longest step a reading at the generic point takes on each component of ``theta``: a
    component the first step leaves within noise is read along random directions at the step
    fitted to J's noise times ``RUNG``^(``RUNGS`` − 1) first, capped at float32's step
    (``gradwatch.evidence.escalation``), never shorter than the first step. A visit decided at
    the first step alone missed what those readings judge: a float32 Funnel's planted ×1.01
    tensor, along whose six sampled components J did not move at 1e-7, went unvisited and
    passed (read there, it fails)."""
    values = theta.detach().double().cpu().numpy().ravel()
    first = steps_of(theta, step).detach().double().cpu().numpy().ravel()
    fitted = fitted_steps(values, first, sigma, center) * RUNG ** (RUNGS - 1)
    reach = np.maximum(np.minimum(fitted, longest_steps(values)), first)
    return torch.from_numpy(reach.reshape(theta.shape)).to(theta)


def _merged(
    found: Comparison, other: Comparison, at: np.ndarray, taken: np.ndarray, judged: list[str]
) -> Comparison:
    """``found`` with positions ``at`` taken from ``other`` (its positions ``taken``)."""
    assert found.evidence is not None and other.evidence is not None  # checked by the caller
    fields = {}
    for key in ("analytic", "numeric", "noise", "reading", "reason", "recheck", "kink"):
        values = getattr(found.evidence, key).copy()
        values[at] = getattr(other.evidence, key)[taken]
        fields[key] = values
    fields["recheck"][at] = GENERIC_POINT
    first = found.evidence.first_numeric.copy()
    first[at] = other.evidence.first_numeric[taken]
    evidence = replace(found.evidence, **fields, first_numeric=first)
    plain = found.plain_analytic.copy()
    plain[at] = other.plain_analytic[taken]
    gradients = {**found.gradients, **{n: other.gradients[n] for n in judged}}
    return replace(
        found,
        evidence=evidence,
        analytic=evidence.analytic,
        numeric=evidence.numeric,
        plain_analytic=plain,
        gradients=gradients,
    )
