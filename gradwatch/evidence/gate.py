"""Escalation: the components the first step leaves within noise, and those of a tensor too close
to J's noise, read again at steps fitted to J's noise: along random directions over a tensor
first (the gate), then each alone (the ladder, each rung where it asks against J's noise at its
own stride). See :mod:`gradwatch.evidence.model` for where it comes in, and
:mod:`gradwatch.evidence.escalation` for the tensor test's re-read and J's noise along a tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gradwatch.evidence.escalation import noise_at
from gradwatch.evidence.readings import (
    DISAGREES,
    FITTED_STEP,
    NOT_JUDGED,
    ON_KINK,
    WITHIN_NOISE,
    Record,
    read,
)
from gradwatch.evidence.recheck import Pair, at_steps, extrapolate, fitted_steps, longest_steps
from gradwatch.evidence.tensor_test import convicts

if TYPE_CHECKING:
    from gradwatch.evidence.objective import Objective

__all__ = ["GATE_DIRECTIONS", "RUNG", "RUNGS", "escalate", "read_fitted"]


# Random ±1 directions a tensor's components left within noise are read along at the fitted step,
# before any is read alone: a sum Σ (a_i − g_i)·u_i·H_i has the size of ‖(a − g)·H‖ whatever the
# signs, so one direction shows an error in any of them; two leave a cancellation by chance
# (odds ~ 1 in 4 for two equal errors) at 1 in 16.
GATE_DIRECTIONS = 2
# Where the fitted step still leaves a tensor too close to J's noise (its rule assumes J‴ about as
# large as J, which a J with a large constant part is not), the step grows 16× (the noise drops
# 16×), up to twice and never past float32's step (gradwatch.evidence.recheck.longest_steps):
# Richardson's estimate removes the h² truncation, and the smoothness test (J'' the same at H and
# 2H) stops a step where higher terms show.
RUNG = 16.0
RUNGS = 3
# A rung whose readings ask (one disagrees, or together they fail the tensor test) is judged against
# J's noise measured at its own stride (escalation.noise_at), never below the noise held from the
# rung below. That noise is rounding, which does not grow with the stride once the stride spans
# the grid of J's coarsest intermediate (each evaluation's rounding is bounded whatever the
# stride): between a rung and the one below, RUNG times shorter, it may grow by what the shorter
# stride left unresolved. Structure grows at least as fast as the stride: a kink the probes cross
# adds its slope change times the stride to a fourth difference (RUNG times per rung), J's higher
# terms the stride's fourth power (RUNG⁴). A noise measured beyond RUNG times the noise held is
# structure, not rounding (a ReLU kink 5e-4 from θ crossed at 256·H₀: 3e-11 → 1e-4): the rung is
# not smooth there, its readings do not count, and the components keep those of the rung below.
NOISE_GROWTH = RUNG


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
    noisy = _noisy(record, groups, warn_max, record.recheck == 0)
    quiet = record.within_noise()
    for g in np.unique(groups[np.concatenate([quiet, noisy])]):
        mine = noisy[groups[noisy] == g]
        if mine.size:
            at, fitted = _fitted(objective, record, mine, center, steps)
            _ladder(objective, record, groups == g, (at, fitted), center, bands, seed)
            continue
        at, fitted = _fitted(objective, record, quiet[groups[quiet] == g], center, steps)
        if at.size:
            _gate(objective, record, groups == g, (at, fitted), center, rng, bands, seed)


def _gate(
    objective: Objective,
    record: Record,
    group: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    center: float,
    rng: np.random.Generator,
    bands: tuple[float, float],
    seed: int,
) -> None:
    """Reads a tensor's components within noise along random directions, at the longest step of
    the ladder first (the least noise) and shorter ones where J is not smooth along it; where a
    direction shows a gradient, each component is read alone (``_ladder``), and where J is
    smooth along them at no rung, too (``_alone``)."""
    at, fitted = start
    longest = longest_steps(objective.values(at))
    tried: list[float] = []
    for k in range(RUNGS - 1, -1, -1):
        steps = np.minimum(fitted * RUNG**k, longest)
        if tried and float(np.max(steps)) >= tried[-1]:
            continue  # the cap made this rung the same as a longer one
        tried.append(float(np.max(steps)))
        smooth, signal = _directions(objective, record, at, steps, center, rng, bands[0])
        if smooth and signal:
            _ladder(objective, record, group, (at, fitted), center, bands, seed)
        if smooth:
            return
    _alone(objective, record, group, (at, fitted), center, bands, seed)


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
    (``_ladder``); one rough at every rung is "not judged, on a kink"."""
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
    _ladder(objective, record, group, (at[signal], fitted[signal]), center, bands, seed)
    rough = at[pending & (record.reason[at] == WITHIN_NOISE)]
    record.reason[rough] = ON_KINK


def _ladder(
    objective: Objective,
    record: Record,
    group: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    center: float,
    bands: tuple[float, float],
    seed: int,
) -> None:
    """Reads ``at`` at their fitted steps, then at ``RUNG`` times longer ones while the tensor
    (``group``: a mask) stays too close to J's noise or they stay within noise, each rung where
    its readings ask against J's noise at its own stride (``_rung``; ``seed`` draws the probes)."""
    pass_max, warn_max = bands
    at, fitted = start
    for _ in range(RUNGS):
        if at.size == 0:
            return
        at, fitted = _rung(objective, record, (at, fitted), center, pass_max, seed)
        if (record.reading[group] == DISAGREES).any():
            return
        if _noisy(record, np.where(group, 0, -1), warn_max, group).size == 0:
            left = record.reading[at] == NOT_JUDGED
            at, fitted = at[left], fitted[left]
        longest = longest_steps(objective.values(at))
        at, fitted = at[fitted < longest], np.minimum(fitted * RUNG, longest)[fitted < longest]


def _rung(
    objective: Objective,
    record: Record,
    start: tuple[np.ndarray, np.ndarray],
    center: float,
    pass_max: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``at`` at ``fitted`` against the noise held; where a reading there disagrees or
    together they fail the tensor test, reads them again against J's noise measured at this stride
    (never lower), unless that noise grew past ``NOISE_GROWTH`` times the noise held: then the
    probes crossed structure and the rung's readings do not count. Returns the components that
    climb on (all but those of a rung that crossed structure) and their steps."""
    at, fitted = start
    held = _fields(record, at)
    pairs = at_steps(objective, at, fitted, (1.0, 2.0))
    _judge(record, at, fitted, pairs, center, pass_max)
    mine = np.zeros(record.reading.size, bool)
    mine[at] = record.measured()[at]
    asking = (record.reading[at] == DISAGREES).any()
    if not (asking or convicts(record.analytic, record.numeric, record.noise, mine, pass_max)):
        return at, fitted
    found = noise_at(objective, center, at, fitted, seed)
    for field, first in zip(_fields(record), held, strict=True):
        field[at] = first
    if found > NOISE_GROWTH * float(np.max(held[-1])):
        return at[:0], fitted[:0]
    record.sigma[at] = np.maximum(held[-1], found)
    smooth = _judge(record, at, fitted, pairs, center, pass_max)
    record.sigma[at[~smooth]] = held[-1][~smooth]  # not read here: its reading and noise stay
    return at, fitted


def _fields(record: Record, at: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """What a reading sets (J's noise behind it last), or copies of it at ``at``."""
    fields: tuple[np.ndarray, ...] = (record.analytic, record.numeric, record.noise)
    fields = (*fields, record.reading, record.reason, record.recheck, record.step, record.sigma)
    return fields if at is None else tuple(f[at].copy() for f in fields)


def _noisy(record: Record, groups: np.ndarray, warn_max: float, among: np.ndarray) -> np.ndarray:
    """The measured components ``among`` those of each tensor with no disagreement whose noise
    floor over its judged components (the material's formula with the noise in place of the
    errors) is above ``warn_max``: the verdict's "too close to J's noise"."""
    measured = record.measured() & np.isfinite(record.analytic)
    judged = measured & (record.reading != NOT_JUDGED)
    out = []
    for g in np.unique(groups[groups >= 0]):
        m = (groups == g) & judged
        if not m.any() or (record.reading[groups == g] == DISAGREES).any():
            continue
        scale = np.linalg.norm(record.analytic[m]) + np.linalg.norm(record.numeric[m])
        if np.linalg.norm(record.noise[m]) > warn_max * scale:
            out.append(np.flatnonzero((groups == g) & measured & among))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


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
    at: np.ndarray,
    fitted: np.ndarray,
    center: float,
    rng: np.random.Generator,
    pass_max: float,
) -> tuple[bool, bool]:
    """Whether J along random ±1 directions over ``at`` (each moved by its fitted step) is smooth,
    and whether it shows a gradient, analytic or numeric, beyond the noise of Richardson's
    estimate."""
    signs = rng.choice([-1.0, 1.0], size=(GATE_DIRECTIONS, at.size))
    rows = np.concatenate([signs * fitted * t for t in (1.0, -1.0, 2.0, -2.0)])
    values = objective.line(at, rows).reshape(4, GATE_DIRECTIONS)
    one = np.ones(GATE_DIRECTIONS)
    near, far = (values[0], values[1], one), (values[2], values[3], 2 * one)
    sigma = float(np.max(record.sigma[at]))
    smooth, estimate, noise = extrapolate(center, far, near, sigma)
    along = (signs * fitted) @ record.at_theta[at]
    reading, _ = read(along, estimate, noise, pass_max)
    return bool(np.all(smooth)), bool(np.any(reading != NOT_JUDGED))


def read_fitted(
    objective: Objective,
    record: Record,
    at: np.ndarray,
    fitted: np.ndarray,
    center: float,
    pass_max: float,
) -> None:
    """Reads each component at its fitted step H, by Richardson's estimate from H and 2H."""
    pairs = at_steps(objective, at, fitted, (1.0, 2.0))
    _judge(record, at, fitted, pairs, center, pass_max)


def _judge(
    record: Record,
    at: np.ndarray,
    fitted: np.ndarray,
    pairs: list[Pair],
    center: float,
    pass_max: float,
) -> np.ndarray:
    """Reads ``at`` from J at ±H and ±2H (``pairs``) against the noise they carry, where J is smooth
    over both (those it returns True for); the others keep their readings."""
    near, far = pairs
    smooth, estimate, spread = extrapolate(center, far, near, record.sigma[at])
    smooth &= np.isfinite(estimate)
    done = at[smooth]
    values = (record.at_theta[done], estimate[smooth], spread[smooth])
    record.set(done, values, pass_max, FITTED_STEP)
    record.step[done] = fitted[smooth]
    return smooth
