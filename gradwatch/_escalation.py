"""The second readings that concern a tensor or a component left within noise: the step fitted
to J's noise, the tensor test's re-read, and J's noise measured along a tensor's own components
(see :mod:`gradwatch._evidence` for where each comes in)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gradwatch._noise import measure_noise
from gradwatch._readings import (
    DISAGREES,
    FITTED_STEP,
    LONGER_STEPS,
    NOT_JUDGED,
    WIDER,
    Record,
    read,
)
from gradwatch._recheck import at_steps, extrapolate, fitted_steps
from gradwatch._tensor_test import convicts

if TYPE_CHECKING:
    from gradwatch._evidence import Objective

__all__ = ["escalate", "retest", "tensor_noise"]


# Random ±1 directions a tensor's components left within noise are read along at the fitted step,
# before any is read alone: a sum Σ (a_i − g_i)·u_i·H_i has the size of ‖(a − g)·H‖ whatever the
# signs, so one direction shows an error in any of them; two leave a cancellation by chance
# (odds ~ 1 in 4 for two equal errors) at 1 in 16.
GATE_DIRECTIONS = 2


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
    ``GATE_DIRECTIONS`` random directions over them per tensor (four evaluations each): where
    every direction is zero within the fitted step's noise, they stay "not judged, within noise".
    Elsewhere each is read alone, by Richardson's estimate from that step and its double, where J
    is smooth over both."""
    pass_max, warn_max = bands
    rng = np.random.default_rng([seed, 19])
    noisy = _noisy(record, groups, warn_max)
    quiet = record.within_noise()
    for g in np.unique(groups[np.concatenate([quiet, noisy])]):
        mine = noisy[groups[noisy] == g]
        if mine.size == 0:
            mine = quiet[groups[quiet] == g]
            at, fitted = _fitted(objective, record, mine, center, steps)
            if at.size == 0 or _quiet(objective, record, at, fitted, center, rng, pass_max):
                continue
        at, fitted = _fitted(objective, record, mine, center, steps)
        _each(objective, record, at, fitted, center, pass_max)


def _noisy(record: Record, groups: np.ndarray, warn_max: float) -> np.ndarray:
    """The first-step measured components of each tensor with no disagreement whose noise floor
    (the material's formula with the noise in place of the errors) is above ``warn_max``."""
    first = record.measured() & (record.recheck == 0) & np.isfinite(record.analytic)
    out = []
    for g in np.unique(groups):
        m = (groups == g) & first
        if not m.any() or (record.reading[groups == g] == DISAGREES).any():
            continue
        scale = np.linalg.norm(record.analytic[m]) + np.linalg.norm(record.numeric[m])
        if np.linalg.norm(record.noise[m]) > warn_max * scale:
            out.append(np.flatnonzero(m))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _fitted(
    objective: Objective, record: Record, at: np.ndarray, center: float, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The positions among ``at`` whose fitted step is longer than the first, and those steps."""
    at = at[np.isfinite(record.analytic[at])]
    fitted = fitted_steps(objective.values(at), steps[at], record.sigma[at], center)
    longer = fitted > steps[at]
    return at[longer], fitted[longer]


def _quiet(
    objective: Objective,
    record: Record,
    at: np.ndarray,
    fitted: np.ndarray,
    center: float,
    rng: np.random.Generator,
    pass_max: float,
) -> bool:
    """Whether J along random ±1 directions over ``at`` (each moved by its fitted step) is smooth
    and shows no gradient, analytic or numeric, beyond the noise of Richardson's estimate."""
    signs = rng.choice([-1.0, 1.0], size=(GATE_DIRECTIONS, at.size))
    rows = np.concatenate([signs * fitted * t for t in (1.0, -1.0, 2.0, -2.0)])
    values = objective.line(at, rows).reshape(4, GATE_DIRECTIONS)
    one = np.ones(GATE_DIRECTIONS)
    near, far = (values[0], values[1], one), (values[2], values[3], 2 * one)
    sigma = float(np.max(record.sigma[at]))
    smooth, estimate, noise = extrapolate(center, far, near, sigma)
    along = (signs * fitted) @ record.analytic[at]
    reading, _ = read(along, estimate, noise, pass_max)
    return bool(np.all(smooth) and np.all(reading == NOT_JUDGED))


def _each(
    objective: Objective,
    record: Record,
    at: np.ndarray,
    fitted: np.ndarray,
    center: float,
    pass_max: float,
) -> None:
    """Reads each component at its fitted step H, by Richardson's estimate from H and 2H."""
    near, far = at_steps(objective, at, fitted, (1.0, 2.0))
    smooth, estimate, spread = extrapolate(center, far, near, record.sigma[at])
    smooth &= np.isfinite(estimate)
    done = at[smooth]
    values = (record.analytic[done], estimate[smooth], spread[smooth])
    record.set(done, values, pass_max, FITTED_STEP)


def _failing(record: Record, groups: np.ndarray, pass_max: float) -> list[int]:
    """The groups whose errors together exceed J's noise (see gradwatch._tensor_test)."""
    measured = record.measured()
    out = []
    for g in np.unique(groups):
        m = (groups == g) & measured
        if convicts(record.analytic, record.numeric, record.noise, m, pass_max):
            out.append(int(g))
    return out


def retest(
    objective: Objective,
    record: Record,
    groups: np.ndarray,
    center: float,
    steps: np.ndarray,
    pass_max: float,
) -> None:
    """Reads the first-step components of each tensor that fails the tensor test with no
    component disagreeing again by Richardson's estimate at 2h and 4h: the h² truncation is not a
    shared error. (A tensor with a disagreement is convicted by it already.)"""
    disagreeing = set(np.unique(groups[record.reading == DISAGREES]).tolist())
    for g in set(_failing(record, groups, pass_max)) - disagreeing:
        at = np.flatnonzero((groups == g) & (record.recheck == 0) & record.measured())
        at = at[np.isfinite(record.analytic[at])]
        if at.size == 0:
            continue
        wide, wider = at_steps(objective, at, steps[at], WIDER)
        smooth, estimate, spread = extrapolate(center, wider, wide, record.sigma[at])
        done = at[smooth]
        values = (record.analytic[done], estimate[smooth], spread[smooth])
        record.set(done, values, pass_max, LONGER_STEPS)


def tensor_noise(
    objective: Objective,
    record: Record,
    groups: np.ndarray,
    center: float,
    steps: np.ndarray,
    seed: int,
    pass_max: float,
    measured: set[int],
) -> None:
    """J's noise along the components of each tensor that disagrees or fails the tensor test
    (once per tensor); where it is larger than the noise behind its readings, they are read
    against it."""
    asking = set(np.unique(groups[record.reading == DISAGREES]).tolist())
    asking |= set(_failing(record, groups, pass_max))
    for g in sorted(asking - measured):
        measured.add(g)
        support = np.flatnonzero((groups == g) & np.isfinite(record.noise))
        if support.size == 0:
            continue
        found = measure_noise(objective.line, center, (), support, steps[support], seed, 0.0)
        at = support[record.sigma[support] < found.sigma]
        if at.size == 0:
            continue
        record.noise[at] *= found.sigma / record.sigma[at]
        record.sigma[at] = found.sigma
        read_again = at[record.measured()[at]]
        values = (record.analytic[read_again], record.numeric[read_again], record.noise[read_again])
        recheck = record.recheck[read_again].copy()
        record.set(read_again, values, pass_max, 0)
        record.recheck[read_again] = recheck
