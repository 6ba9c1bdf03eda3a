"""The ladder of escalation: components read at the step fitted to J's noise, by Richardson's
estimate from that step and its double, and at ``RUNG`` times longer ones while their tensor stays
too close to J's noise or they stay within noise; each rung where its readings ask (one
disagrees, or together they fail the tensor test) is judged against J's noise measured at its own
stride. :mod:`gradwatch.evidence.gate` decides which components climb it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gradwatch.evidence.escalation import noise_at
from gradwatch.evidence.readings import DISAGREES, FITTED_STEP, NOT_JUDGED, Record
from gradwatch.evidence.recheck import Pair, at_steps, extrapolate, longest_steps
from gradwatch.evidence.tensor_test import convicts

if TYPE_CHECKING:
    from gradwatch.evidence.objective import Objective

__all__ = ["NOISE_GROWTH", "RUNG", "RUNGS", "climb", "read_fitted", "too_close"]

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


def climb(
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
        if too_close(record, np.where(group, 0, -1), warn_max, group).size == 0:
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


def too_close(record: Record, groups: np.ndarray, warn_max: float, among: np.ndarray) -> np.ndarray:
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
