"""The directional check for large models: a few random directions per tensor find the tensor
whose backprop is wrong, bisection finds the components inside it.

For a direction u, two evaluations give (J(θ + εu) − J(θ − εu)) / 2ε ≈ uᵀ∇J, to compare with
uᵀ·grad from backprop. With u a random ±1 vector on one parameter tensor, every component moves
by ±ε as in the material's loop, the error uᵀ(numeric − grad) of a single wrong component is
never hidden (|u_i| = 1), and the material's formula over a few directions estimates the
formula over the whole tensor: a failing tensor is found in O(#tensors) evaluations. Inside a
failing tensor, random directions on each half of a range estimate which half holds more of the
error; keeping the best halves down to a few components localizes the worst components in
O(log n) evaluations, and those are then checked one by one like any other component.

A direction is read as a component is (:mod:`gradwatch.evidence.model`): it disagrees when its error
stands beyond 8 times the noise of the estimate; a first disagreement is read again at 2ε and 4ε
and cleared only where the h² truncation explains it, by Richardson's estimate at 0.67 of the
first noise (where J bends over them, a ReLU within reach, at ε/2 and ε/4 with the first
tolerance); a direction within noise is read again at the step fitted to J's noise
(:mod:`gradwatch.check.direction_reads`: one rule with the components'). A direction moves every
component of a tensor at once, so the h² truncation error of its estimate grows with the tensor
(on ResNet-18 at ε = 1e-7 the first convolution's directions are off by 1e-6, relatively, at h):
without the re-check, a correct tensor would be searched by bisection for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gradwatch.check.direction_reads import along, read_directions
from gradwatch.check.sampling import sample_components
from gradwatch.common.numeric import relative_difference
from gradwatch.evaluation.cost import ModuleCost
from gradwatch.evidence.model import DISAGREES
from gradwatch.evidence.noise import NOISE_MULTIPLE
from gradwatch.layout import Layout
from gradwatch.report import Thresholds, Verdict
from gradwatch.reporting.text import listing

__all__ = ["DirectionalSearch", "directional_step", "search_directions"]

# Directions per tensor and over all of θ: two give the formula a second opinion when one
# direction happens to be nearly orthogonal to the error (chance ~8% each for diffuse errors).
DIRECTIONS = 2
# The bisection keeps this many ranges per level, probes each half with REPEATS directions and
# stops at ranges of LEAF components, which are then checked one by one.
BEAM = 2
REPEATS = 2
LEAF = 8
# At most this many failing tensors are localized (worst first); the rest are named.
LOCALIZED = 3


def directional_step(epsilon: float | str, dtype: torch.dtype) -> float:
    """The step along a ±1 direction: ε as given; for ``"auto"`` ε_mach^(1/3) of ``dtype``, the
    step that balances truncation and rounding error of a central difference (Numerical
    Recipes §5.7).

    Example:
        >>> directional_step(1e-7, torch.float64), f"{directional_step('auto', torch.float64):.1e}"
        (1e-07, '6.1e-06')
    """
    if isinstance(epsilon, str):
        return float(torch.finfo(dtype).eps) ** (1 / 3)
    return float(epsilon)


@dataclass(frozen=True)
class DirectionalSearch:
    """What the directional search found; ``indices`` are the components to check one by one.

    ``differences`` maps each tensor to the material's formula over its directions (uᵀgrad
    against the two-sided estimate); ``overall`` is the same over directions spanning all of θ;
    ``localized`` names the tensors searched by bisection; ``note`` summarizes it for the report.

    Example:
        >>> found = DirectionalSearch(np.array([3, 8]), {"w": 0.4}, 0.3, ("w",), "…")
        >>> found.indices.tolist(), found.localized
        ([3, 8], ('w',))
    """

    indices: np.ndarray
    differences: dict[str, float]
    overall: float
    localized: tuple[str, ...]
    note: str


def search_directions(
    cost: ModuleCost,
    layout: Layout,
    epsilon: float | str,
    thresholds: Thresholds,
    *,
    spot: int | None = None,
    seed: int = 0,
    left_out: np.ndarray | None = None,
    sigma: float | None = None,
) -> DirectionalSearch:
    """Random ±1 directions over θ and per tensor, then bisection inside the failing tensors.

    Args:
        cost: J for the module (see :func:`gradwatch.check_module`).
        layout: θ's tensors, in the order of ``cost.theta``.
        epsilon: the step along a direction, or ``"auto"`` (see :func:`directional_step`).
        thresholds: a tensor is localized when its directional difference does not pass.
        spot: how many components, spread over every tensor, to check one by one besides the
            localized ones and each tensor's largest gradient component (default none).
        seed: seeds the directions and the spot sample.
        left_out: flat indices of components that are not checked (an embedding's padding
            row, which PyTorch gives no gradient by design): no direction moves them and they
            are not among the returned ``indices``.
        sigma: J's measured noise (:mod:`gradwatch.evidence.noise`): a tensor is localized when one
        of
            its directions disagrees beyond that noise (the evidence model's reading), worst
            first; without it, when its directional difference does not pass. A tensor whose
            gradient is zero to within the noise (a bias a following BatchNorm cancels) then
            has a directional difference of about 1 and nothing to localize.

    Returns:
        A :class:`DirectionalSearch`; ``check_module(..., mode="directions")`` checks its
        ``indices`` one by one and reports them.

    Example:
        >>> from torch import nn
        >>> from gradwatch import check_module
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> report = check_module(model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
        ...                       (x, y), mode="directions")
        >>> report.mode, report.verdict.value
        ('directions', 'pass')
    """
    _, grads = cost.gradient()
    grad = [g.to(torch.float64) for g in grads]
    step = directional_step(epsilon, cost.theta[0].dtype)
    generator = torch.Generator(device=cost.theta[0].device).manual_seed(seed)
    left_out = np.zeros(0, dtype=np.int64) if left_out is None else np.asarray(left_out)
    moved = _movable(cost, layout, left_out)
    bands = (thresholds.pass_max, thresholds.warn_max)
    differences, beyond, rechecked, probes = {}, {}, [], {}
    for t, name in enumerate(layout.names):
        signs = {t: _signs((DIRECTIONS, *cost.theta[t].shape), cost.theta[t], generator)}
        differences[name], beyond[name], again, probes[name] = _screen(
            cost, signs, grad, step, moved, sigma, bands
        )
        if again and beyond[name] == 0:
            rechecked.append(name)
    every = {
        t: _signs((DIRECTIONS, *theta.shape), theta, generator)
        for t, theta in enumerate(cost.theta)
    }
    overall, overall_beyond, _, _ = _screen(cost, every, grad, step, moved, sigma, bands)
    if sigma is None:
        failing = sorted(
            (n for n, d in differences.items() if thresholds.classify(d) is not Verdict.PASS),
            key=lambda n: -np.nan_to_num(differences[n], nan=np.inf),
        )
    else:
        failing = sorted((n for n, z in beyond.items() if z > 0), key=lambda n: -beyond[n])
    # Each tensor's largest gradient component is checked one by one too: every tensor shows in
    # the report, and a wrong scale shows there first, above the rounding noise.
    largest = [layout.offsets[t] + int(g.abs().argmax()) for t, g in enumerate(grad) if g.numel()]
    found = [np.array(largest, dtype=np.int64)]
    if spot:
        found.append(sample_components(layout, spot, seed))
    before = cost.evaluations
    for name in failing[:LOCALIZED]:
        t = layout.names.index(name)
        # Bisection probes at the step the tensor's directions were read at (the fitted step
        # where the first one left them too close to J's noise).
        probe = probes[name]
        found.append(layout.offsets[t] + _localize(cost, t, grad, probe, generator, moved))
    within = None if sigma is None else overall_beyond == 0
    note = _note(differences, overall, within, failing, cost.evaluations - before, rechecked)
    return DirectionalSearch(
        indices=np.setdiff1d(np.concatenate(found), left_out).astype(np.int64),
        differences=differences,
        overall=overall,
        localized=tuple(failing[:LOCALIZED]),
        note=note,
    )


def _screen(
    cost: ModuleCost,
    signs: dict[int, torch.Tensor],
    grad: list[torch.Tensor],
    step: float,
    moved: dict[int, torch.Tensor],
    sigma: float | None,
    bands: tuple[float, float],
) -> tuple[float, float, bool, float]:
    """The directions ``signs`` read as components are (:mod:`gradwatch.check.direction_reads`): the
    material's formula over them, how far the ones that disagree stand beyond their tolerance
    (see :func:`_beyond_noise`), whether a first disagreement was read again at longer steps,
    and the longest step a reading rests on."""
    if sigma is None:
        numeric, analytic = _project(cost, signs, grad, step, moved)
        return relative_difference(numeric, analytic), 0.0, False, step
    found = read_directions(cost, signs, grad, step, moved, sigma, bands)
    beyond = _beyond_noise(found.numeric, found.analytic, found.noise, found.reading)
    difference = relative_difference(found.numeric, found.analytic)
    return difference, beyond, found.rechecked, found.step


def _beyond_noise(
    numeric: np.ndarray, analytic: np.ndarray, noise: np.ndarray, reading: np.ndarray
) -> float:
    """How far the directions that disagree stand beyond their tolerance, in units of it; 0 when
    none disagrees, infinite for a non-finite one."""
    if not (reading == DISAGREES).any():
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(numeric - analytic) / (NOISE_MULTIPLE * noise)
    return float(np.max(np.nan_to_num(z[reading == DISAGREES], nan=np.inf)))


def _signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random ±1 entries (Rademacher), in ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def _movable(cost: ModuleCost, layout: Layout, left_out: np.ndarray) -> dict[int, torch.Tensor]:
    """Per tensor holding left-out components: 1 where a direction may move θ, 0 where not."""
    masks = {}
    tensors = layout.tensor_of(left_out)
    for t in np.unique(tensors):
        theta = cost.theta[int(t)]
        mask = torch.ones(theta.numel(), dtype=theta.dtype, device=theta.device)
        local = left_out[tensors == t] - layout.offsets[int(t)]
        mask[torch.as_tensor(local, device=theta.device)] = 0
        masks[int(t)] = mask.view(theta.shape)
    return masks


def _project(
    cost: ModuleCost,
    directions: dict[int, torch.Tensor],
    grad: list[torch.Tensor],
    step: float,
    moved: dict[int, torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(numeric, analytic) directional derivatives along each of the k directions at ``step``
    (see :func:`gradwatch.check.direction_reads.along`)."""
    count = len(next(iter(directions.values())))
    plus, minus, analytic = along(cost, directions, grad, np.full(count, step), moved)
    return (plus - minus) / (2 * step), analytic


def _localize(
    cost: ModuleCost,
    t: int,
    grad: list[torch.Tensor],
    step: float,
    generator: torch.Generator,
    moved: dict[int, torch.Tensor] | None = None,
) -> np.ndarray:
    """Local indices of the components of tensor ``t`` with the largest errors, by bisection.

    Each level splits the kept ranges in halves and scores a half by the mean squared error
    (numeric − analytic)² of ``REPEATS`` random ±1 directions on it, an estimate of the squared
    norm of the error restricted to that half; the ``BEAM`` best halves go on.
    """
    theta = cost.theta[t]
    kept = [(0, theta.numel())]
    while max(hi - lo for lo, hi in kept) > LEAF:
        halves = [half for lo, hi in kept for half in _halve(lo, hi)]
        signs = theta.new_zeros((len(halves) * REPEATS, theta.numel()))
        for k, (lo, hi) in enumerate(halves):
            part = _signs((REPEATS, hi - lo), theta, generator)
            signs[k * REPEATS : (k + 1) * REPEATS, lo:hi] = part
        directions = {t: signs.view(-1, *theta.shape)}
        numeric, analytic = _project(cost, directions, grad, step, moved)
        error = ((numeric - analytic) ** 2).reshape(len(halves), REPEATS).mean(axis=1)
        best = np.argsort(-np.nan_to_num(error, nan=np.inf), kind="stable")[:BEAM]
        kept = [halves[k] for k in sorted(best)]
    return np.concatenate([np.arange(lo, hi) for lo, hi in kept])


def _halve(lo: int, hi: int) -> list[tuple[int, int]]:
    if hi - lo <= LEAF:
        return [(lo, hi)]
    mid = (lo + hi) // 2
    return [(lo, mid), (mid, hi)]


def _note(
    differences: dict[str, float],
    overall: float,
    within: bool | None,
    failing: list[str],
    spent: int,
    rechecked: list[str],
) -> str:
    """``within``: whether the directions over all of θ agree within J's measured noise (None:
    the noise was not measured, tensors are screened by the pass band)."""
    text = (
        f"mode directions: {DIRECTIONS} random ±1 directions per tensor and over all of θ; "
        f"difference over θ {overall:.1e}"
    )
    if within:
        text += " (within J's measured noise)"
    screen = "beyond J's measured noise" if within is not None else "not within the pass band"
    if failing:
        listed = ", ".join(f"{n} (difference {differences[n]:.1e})" for n in failing[:6])
        text += f"; {screen}: {listed}{' …' if len(failing) > 6 else ''}"
        localized = listing(failing[:LOCALIZED], LOCALIZED)
        text += f"; localized {localized} by bisection ({spent} evaluations)"
    others = len(differences) - len(failing)
    if others:
        text += f"; the other {others} tensor(s): no direction {screen}"
    if rechecked:
        text += (
            f" ({listing(rechecked, 3)} only after a re-check at 2ε and 4ε, or at ε/2 and ε/4 "
            "read with the first tolerance where J bends over the longer ones: at the first "
            "step their directions carried the h² truncation error)"
        )
    return text + "; the components listed were then checked one by one"
