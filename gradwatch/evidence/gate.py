"""Escalation: the components the first step leaves within noise, and those of a tensor too close
to J's noise, read again at steps fitted to J's noise: along random directions over a tensor
first (the gate), then each alone (the ladder, each rung where it asks against J's noise at its
own stride). See :mod:`gradwatch.evidence.model` for where it comes in, and
:mod:`gradwatch.evidence.escalation` for the tensor test's re-read and J's noise along a tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gradwatch.evidence.ladder import RUNG, RUNGS, climb, read_fitted, too_close
from gradwatch.evidence.readings import (
    FITTED_STEP,
    NOT_JUDGED,
    ON_KINK,
    WITHIN_NOISE,
    Record,
    read,
)
from gradwatch.evidence.recheck import extrapolate, fitted_steps, longest_steps

if TYPE_CHECKING:
    from gradwatch.evidence.objective import Objective

__all__ = ["GATE_DIRECTIONS", "UNION_SIGMA", "escalate"]


# Random ±1 directions a tensor's components left within noise are read along at the fitted step,
# before any is read alone: a sum Σ (a_i − g_i)·u_i·H_i has the size of ‖(a − g)·H‖ whatever the
# signs, so one direction shows an error in any of them; two leave a cancellation by chance
# (odds ~ 1 in 4 for two equal errors) at 1 in 16.
GATE_DIRECTIONS = 2

# Before the gate reads each tensor, the quiet tensors are read together along GATE_DIRECTIONS
# random ±1 directions over all their components (each moved by its own step at the longest rung):
# 8 rows in all, not 8 per tensor (nn-transformer-j-sum-init: ~32 quiet tensors, 256 rows of ~2 ms
# each). A reading's noise along a direction is J's noise at its points, whatever number of
# components move (Richardson's estimate from ±H, ±2H: ~σ/H); an error in one tensor shows along
# the union's direction at the size it has along its own, Σ u_i·H_i·(a_i − g_i) over the wrong
# tensor only (a correct tensor adds a − g = 0), so one wrong tensor is found as surely as by its
# own gate. Only errors in two or more tensors that cancel along both directions hide, at the odds
# GATE_DIRECTIONS states for two components. The union is judged against the largest σ among its
# tensors (J's noise is measured per tensor): it joins only tensors whose σ lie within
# UNION_SIGMA of the lowest in its class, so none is judged against more than twice its own noise
# (the smallest gradient it shows at most doubles: a sixteenth of a rung, RUNG = 16); a tensor
# alone in its class goes to its own gate. Where J is rough along the union, or a direction shows
# a gradient, every tensor of it goes to its own gate, as before (8 rows more).
UNION_SIGMA = 2.0

# The gate's rows for several tensors are one dense matrix (their rows × all their components,
# zero outside each tensor's own): tensors share a line call while it holds at most this many
# values, 64 MiB of float64 (a full check of a large model would otherwise build one of
# gigabytes; a sampled check's fit in one).
GATE_VALUES = 2**23
# A tensor the gate reads: its mask over the checked components, its components within noise
# and their fitted steps.
Gated = tuple[np.ndarray, np.ndarray, np.ndarray]


def escalate(
    objective: Objective,
    record: Record,
    groups: np.ndarray,
    center: float,
    steps: np.ndarray,
    seed: int,
    bands: tuple[float, float],
) -> None:
    """Reads again at the step fitted to J's noise the components left within noise, and every
    component of a tensor too close to J's noise (its noise floor above ``warn_max``: the first
    step can neither clear nor convict it). Components within noise are read first along
    ``GATE_DIRECTIONS`` random directions over them per tensor (four evaluations each), at the
    fitted step and ``RUNG`` times longer ones: where every direction is zero within the noise of
    each at a rung where J is smooth along them, they stay "not judged, within noise".
    Elsewhere each is read alone, by Richardson's estimate from that step and its double, where
    J is smooth over both, on a ladder of longer steps while the tensor stays too close to J's
    noise (``RUNG``, ``RUNGS``). Where J is smooth along the directions at no rung, each is read
    alone as they were, from the longest rung down (``_alone``): one smooth at no rung is "not
    judged, on a kink"."""
    warn_max = bands[1]
    rng = np.random.default_rng([seed, 19])
    noisy = too_close(record, groups, warn_max, record.recheck == 0)
    quiet = record.within_noise()
    gated: list[Gated] = []
    for g in np.unique(groups[np.concatenate([quiet, noisy])]):
        mine = noisy[groups[noisy] == g]
        if mine.size:
            at, fitted = _fitted(objective, record, mine, center, steps)
            climb(objective, record, groups == g, (at, fitted), center, bands, seed)
            continue
        at, fitted = _fitted(objective, record, quiet[groups[quiet] == g], center, steps)
        if at.size:
            gated.append((groups == g, at, fitted))
    _gate(objective, record, gated, center, rng, bands, seed)


def _gate(
    objective: Objective,
    record: Record,
    gated: list[Gated],
    center: float,
    rng: np.random.Generator,
    bands: tuple[float, float],
    seed: int,
) -> None:
    """Reads each tensor's components within noise along random directions, at the longest step
    of the ladder first (the least noise) and shorter ones where J is not smooth along it; where a
    direction shows a gradient, each component is read alone (``climb``), and where J is
    smooth along them at no rung, too (``_alone``). Each rung is one ``line`` call over every
    tensor still rough (``_directions``): a call's fixed cost (a forward's set-up, the validation
    of a new batched way) is paid once per rung, not once per tensor. The signs are drawn rung
    by rung, so a tensor rough at the longest rung draws its next rung's after every tensor's
    longest (calls per tensor drew them before the next tensor's)."""
    longest = [longest_steps(objective.values(at)) for _, at, _ in gated]
    gated, longest = _union(objective, record, gated, longest, center, seed, bands[0])
    tried = [np.inf] * len(gated)
    pending = list(range(len(gated)))
    for k in range(RUNGS - 1, -1, -1):
        now: list[tuple[int, np.ndarray]] = []
        for i in pending:
            steps = np.minimum(gated[i][2] * RUNG**k, longest[i])
            if float(np.max(steps)) >= tried[i]:
                continue  # the cap made this rung the same as a longer one
            tried[i] = float(np.max(steps))
            now.append((i, steps))
        if not now:
            continue
        found = _directions(
            objective, record, [(gated[i][1], s) for i, s in now], center, rng, bands[0]
        )
        for (i, _), (smooth, signal) in zip(now, found, strict=True):
            group, at, fitted = gated[i]
            if smooth and signal:
                climb(objective, record, group, (at, fitted), center, bands, seed)
            if smooth:
                pending.remove(i)
    for i in pending:
        group, at, fitted = gated[i]
        _alone(objective, record, group, (at, fitted), center, bands, seed)


def _union(
    objective: Objective,
    record: Record,
    gated: list[Gated],
    longest: list[np.ndarray],
    center: float,
    seed: int,
    pass_max: float,
) -> tuple[list[Gated], list[np.ndarray]]:
    """Reads each class of quiet tensors (σ within ``UNION_SIGMA`` of the class's lowest, at most
    ``GATE_VALUES`` values in its rows) along random directions over all their components at the
    longest rung, in one ``line`` call: a class smooth there with no gradient is cleared (its
    tensors stay "not judged, within noise"). The tensors left (alone in their class, or of a
    class rough or showing a gradient), and their longest steps, go to their own gate. The signs
    come from a generator of their own, so the gate's own draws are those it drew before."""
    sigmas = [float(np.max(record.sigma[at])) for _, at, _ in gated]
    most = GATE_VALUES // (4 * GATE_DIRECTIONS)
    classes: list[list[int]] = []
    for i in sorted(range(len(gated)), key=lambda i: sigmas[i]):
        last = classes[-1] if classes else []
        size = sum(gated[k][1].size for k in last) + gated[i][1].size
        if last and sigmas[i] <= UNION_SIGMA * sigmas[last[0]] and size <= most:
            last.append(i)
        else:
            classes.append([i])
    joined = [c for c in classes if len(c) > 1]
    top = RUNG ** (RUNGS - 1)
    unions = [
        (
            np.concatenate([gated[i][1] for i in c]),
            np.concatenate([np.minimum(gated[i][2] * top, longest[i]) for i in c]),
        )
        for c in joined
    ]
    rng = np.random.default_rng([seed, 19, 1])
    found = _directions(objective, record, unions, center, rng, pass_max) if unions else []
    quiet = [c for c, (smooth, signal) in zip(joined, found, strict=True) if smooth and not signal]
    cleared = {i for c in quiet for i in c}
    left = [i for i in range(len(gated)) if i not in cleared]
    return [gated[i] for i in left], [longest[i] for i in left]


def _alone(
    objective: Objective,
    record: Record,
    group: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    center: float,
    bands: tuple[float, float],
    seed: int,
) -> None:
    """Where J is rough along the gate's directions at every rung (a kink within reach of one
    component crosses every direction, since each moves them all), reads each component alone,
    as the gate reads a tensor: along its own e_i it crosses only its own kinks. From the longest
    rung down, each is read at the first where J is smooth along it (the least noise); one that
    shows a gradient there is read on the ladder from its fitted step, as the gate's would be
    (``climb``); one rough at every rung is "not judged, on a kink"."""
    at, fitted = start
    longest = longest_steps(objective.values(at))
    pending, previous = np.ones(at.size, bool), np.full(at.size, np.inf)
    for k in range(RUNGS - 1, -1, -1):
        steps = np.minimum(fitted * RUNG**k, longest)
        now = pending & (steps < previous)  # not where the cap made it a longer rung's step
        previous = steps
        if now.any():
            read_fitted(objective, record, at[now], steps[now], center, bands[0])
        # Nothing before escalation reads a component at a fitted step: FITTED_STEP marks those
        # smooth (and finite) at this rung's step.
        pending &= record.recheck[at] != FITTED_STEP
    signal = ~pending & (record.reading[at] != NOT_JUDGED)
    climb(objective, record, group, (at[signal], fitted[signal]), center, bands, seed)
    rough = at[pending & (record.reason[at] == WITHIN_NOISE)]
    record.reason[rough] = ON_KINK


def _fitted(
    objective: Objective, record: Record, at: np.ndarray, center: float, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The positions among ``at`` whose fitted step is longer than the first, and those steps.
    Where the first step is the fitted step already (``epsilon="auto"``), escalation starts a rung
    (``RUNG``) higher, up to float32's step: a read at the same step would tell nothing new."""
    at = at[np.isfinite(record.at_theta[at])]
    values = objective.values(at)
    fitted = fitted_steps(values, steps[at], record.sigma[at], center)
    fitted = np.where(fitted > steps[at], fitted, np.minimum(fitted * RUNG, longest_steps(values)))
    longer = fitted > steps[at]
    return at[longer], fitted[longer]


def _directions(
    objective: Objective,
    record: Record,
    tensors: list[tuple[np.ndarray, np.ndarray]],
    center: float,
    rng: np.random.Generator,
    pass_max: float,
) -> list[tuple[bool, bool]]:
    """For each tensor's components ``at`` (each moved by its step): whether J along
    ``GATE_DIRECTIONS`` random ±1 directions over them is smooth, and whether it shows a gradient,
    analytic or numeric, beyond the noise of Richardson's estimate. The signs are drawn tensor
    after tensor, as calls of their own would draw them; the tensors share ``line`` calls
    (``_shared_lines``)."""
    moves = [rng.choice([-1.0, 1.0], size=(GATE_DIRECTIONS, at.size)) * s for at, s in tensors]
    blocks = [np.concatenate([m * t for t in (1.0, -1.0, 2.0, -2.0)]) for m in moves]
    values = _shared_lines(objective, [at for at, _ in tensors], blocks)
    found = []
    for (at, _), move, v in zip(tensors, moves, values, strict=True):
        one = np.ones(GATE_DIRECTIONS)
        v = v.reshape(4, GATE_DIRECTIONS)
        near, far = (v[0], v[1], one), (v[2], v[3], 2 * one)
        sigma = float(np.max(record.sigma[at]))
        smooth, estimate, noise = extrapolate(center, far, near, sigma)
        reading, _ = read(move @ record.at_theta[at], estimate, noise, pass_max)
        found.append((bool(np.all(smooth)), bool(np.any(reading != NOT_JUDGED))))
    return found


def _shared_lines(
    objective: Objective, supports: list[np.ndarray], blocks: list[np.ndarray]
) -> list[np.ndarray]:
    """J along each block of rows over its own support, in ``line`` calls shared by consecutive
    blocks: the support of a call is their union, each block's rows zero outside its own, while
    that matrix holds at most ``GATE_VALUES`` values (a block alone may hold more)."""
    groups: list[list[int]] = []
    width = 0
    for k, block in enumerate(blocks):
        count = sum(len(blocks[i]) for i in groups[-1]) + len(block) if groups else 0
        if groups and count * (width + block.shape[1]) <= GATE_VALUES:
            groups[-1].append(k)
            width += block.shape[1]
        else:
            groups.append([k])
            width = block.shape[1]
    found: list[np.ndarray] = []
    for group in groups:
        support = np.concatenate([supports[k] for k in group])
        rows = np.zeros((sum(len(blocks[k]) for k in group), support.size))
        r = c = 0
        for k in group:
            rows[r : r + len(blocks[k]), c : c + blocks[k].shape[1]] = blocks[k]
            r, c = r + len(blocks[k]), c + blocks[k].shape[1]
        values = objective.line(support, rows)
        found += np.split(values, np.cumsum([len(blocks[k]) for k in group])[:-1])
    return found
