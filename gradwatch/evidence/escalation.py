"""The second readings that concern a tensor or a component left within noise: the step fitted
to J's noise, the tensor test's re-read, and J's noise measured along a tensor's own components
(see :mod:`gradwatch.evidence.model` for where each comes in)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gradwatch.evidence.noise import (
    HALF_NORMAL_Q75,
    JUMP_FACTOR,
    PROBE_DIRECTIONS,
    PROBE_WIDTH,
    fourth_differences,
    probe_rows,
    rounding_floor,
)
from gradwatch.evidence.readings import (
    DISAGREES,
    FITTED_STEP,
    LONGER_STEPS,
    NOT_JUDGED,
    Record,
    read,
)
from gradwatch.evidence.recheck import at_steps, extrapolate, fitted_steps, longest_steps, reread
from gradwatch.evidence.tensor_test import convicts

if TYPE_CHECKING:
    from gradwatch.evidence.objective import Objective

__all__ = ["escalate", "read_fitted", "retest", "tensor_noise"]


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
# A tensor's noise is read at its readings' stride (_noise_along): a direction along which J did
# not move is read once more at twice the stride, which reaches the 4h of the re-check, no further.
REACH_TRIES = 2


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
    each, or J is not smooth along them, they stay "not judged, within noise".
    Elsewhere each is read alone, by Richardson's estimate from that step and its double, where J
    is smooth over both, on a ladder of longer steps while the tensor stays too close to J's noise
    (``RUNG``, ``RUNGS``)."""
    warn_max = bands[1]
    rng = np.random.default_rng([seed, 19])
    noisy = _noisy(record, groups, warn_max, record.recheck == 0)
    quiet = record.within_noise()
    for g in np.unique(groups[np.concatenate([quiet, noisy])]):
        mine = noisy[groups[noisy] == g]
        if mine.size:
            at, fitted = _fitted(objective, record, mine, center, steps)
            _ladder(objective, record, groups == g, (at, fitted), center, bands)
            continue
        at, fitted = _fitted(objective, record, quiet[groups[quiet] == g], center, steps)
        if at.size:
            _gate(objective, record, groups == g, (at, fitted), center, rng, bands)


def _gate(
    objective: Objective,
    record: Record,
    group: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    center: float,
    rng: np.random.Generator,
    bands: tuple[float, float],
) -> None:
    """Reads a tensor's components within noise along random directions, at the longest step of
    the ladder first (the least noise) and shorter ones where J is not smooth along it; where a
    direction shows a gradient, each component is read alone (``_ladder``)."""
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
            _ladder(objective, record, group, (at, fitted), center, bands)
        if smooth:
            return


def _ladder(
    objective: Objective,
    record: Record,
    group: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    center: float,
    bands: tuple[float, float],
) -> None:
    """Reads ``at`` at their fitted steps, then at ``RUNG`` times longer ones while the tensor
    (``group``: a mask) stays too close to J's noise or they stay within noise."""
    pass_max, warn_max = bands
    at, fitted = start
    for _ in range(RUNGS):
        if at.size == 0:
            return
        read_fitted(objective, record, at, fitted, center, pass_max)
        if (record.reading[group] == DISAGREES).any():
            return
        if _noisy(record, np.where(group, 0, -1), warn_max, group).size == 0:
            left = record.reading[at] == NOT_JUDGED
            at, fitted = at[left], fitted[left]
        longest = longest_steps(objective.values(at))
        at, fitted = at[fitted < longest], np.minimum(fitted * RUNG, longest)[fitted < longest]


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
    near, far = at_steps(objective, at, fitted, (1.0, 2.0))
    smooth, estimate, spread = extrapolate(center, far, near, record.sigma[at])
    smooth &= np.isfinite(estimate)
    done = at[smooth]
    values = (record.at_theta[done], estimate[smooth], spread[smooth])
    record.set(done, values, pass_max, FITTED_STEP)
    record.step[done] = fitted[smooth]


def _failing(record: Record, groups: np.ndarray, pass_max: float) -> list[int]:
    """The groups whose errors together exceed J's noise (see gradwatch.evidence.tensor_test)."""
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
        sigma = record.sigma[at]
        smooth, estimate, spread = reread(objective, center, at, steps[at], sigma, None, False)
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
    measured: set[tuple[int, bool]],
) -> None:
    """J's noise along the components of each tensor that disagrees or fails the tensor test
    (once per tensor and kind of step: the first, or a longer one fitted to J's noise), at the
    stride of their readings; where it is larger than the noise behind their readings, they are
    read against it.

    At that stride because J's rounding is not the same at every stride: where θ reaches J through
    an intermediate rounded to a coarser grid (a float32 island, a float32 check's activations),
    J's error is piecewise constant over moves too small to change that intermediate by an ulp,
    and a fourth difference within one piece cancels it. A reading whose two points lie further
    apart than that sees the whole error (a tiny Funnel's attention scores cast to float32: J's
    noise 2.5e-12 at the first probes' stride, jumps of ~1e-9 between the ends of a 1e-7 step)."""
    asking = set(np.unique(groups[record.reading == DISAGREES]).tolist())
    asking |= set(_failing(record, groups, pass_max))
    longer = record.step > steps
    for g in sorted(asking):
        for kind in (False, True):
            if (g, kind) in measured:
                continue
            support = np.flatnonzero((groups == g) & np.isfinite(record.noise) & (longer == kind))
            if support.size == 0:
                continue
            measured.add((g, kind))
            _raise_noise(objective, record, support, center, seed, pass_max)


def _raise_noise(
    objective: Objective,
    record: Record,
    support: np.ndarray,
    center: float,
    seed: int,
    pass_max: float,
) -> None:
    """Measures J's noise along ``support`` at the stride of its readings (:func:`_noise_along`),
    never below J's rounding floor in float64 (J rounded once), and reads the components whose
    noise was smaller against it."""
    gaps = objective.half_gaps(support, record.step[support])
    found = max(_noise_along(objective, center, support, gaps, seed), rounding_floor(center))
    at = support[record.sigma[support] < found]
    if at.size == 0:
        return
    record.noise[at] *= found / record.sigma[at]
    record.sigma[at] = found
    read_again = at[record.measured()[at]]
    values = (record.analytic[read_again], record.numeric[read_again], record.noise[read_again])
    recheck = record.recheck[read_again].copy()
    record.set(read_again, values, pass_max, 0)
    record.recheck[read_again] = recheck


def _noise_along(
    objective: Objective, center: float, support: np.ndarray, steps: np.ndarray, seed: int
) -> float:
    """J's noise from fourth differences along ``PROBE_DIRECTIONS`` random ±1 directions over
    ``support`` (as :func:`gradwatch.evidence.noise.measure_noise`), each component moved by 1/4 to
    1/2 of its reading's half gap ``steps`` per stride, a random factor per direction: the stencil
    reaches 1 to 2 steps from θ, as far as a reading's points (±h) and its re-check's (2h). The
    factor is random because over a tensor with few checked components (a bias sampled once) ±1
    signs alone give only 2^width distinct lines, and the 75th percentile of two values is no
    measurement. A direction along which J did not move (θ rounded back to itself, or J's
    resolution coarser than the move) is probed once more at twice the stride, reaching the 4h of
    the re-check and no further: J is read only where the readings read it (beyond, a direction
    crosses the kinks the readings never crossed, and a flat J, a saturated hardtanh, would
    measure a kink as noise). One that still did not move J carries no information and is left
    out."""
    rng = np.random.default_rng([seed, 23])
    width = min(PROBE_WIDTH, support.size)
    picks = rng.choice(support.size, width, replace=False)
    signs = rng.choice([-1.0, 1.0], size=(PROBE_DIRECTIONS, width))
    stride = (1.0 + rng.random(PROBE_DIRECTIONS)) / 4
    found = np.full(PROBE_DIRECTIONS, np.nan)
    pending = np.arange(PROBE_DIRECTIONS)
    for _ in range(REACH_TRIES):
        if pending.size == 0:
            break
        rows = probe_rows(steps[picks], signs[pending], stride[pending])
        values = objective.line(support[picks], rows).reshape(-1, 4)
        values = np.concatenate([np.full((pending.size, 1), center), values], 1)
        moved = np.any(values != values[:, :1], axis=1)
        found[pending[moved]] = np.abs(fourth_differences(values[moved]))
        pending = pending[~moved]
        stride[pending] *= 2.0
    # J's first noise's rule, on single directions: one beyond JUMP_FACTOR times the median
    # crossed a jump (a routing flip) and is left out, at most half of them.
    found = found[np.isfinite(found)]
    if found.size == 0:
        return 0.0
    median = float(np.median(found))
    bulk = found[found <= JUMP_FACTOR * median] if median > 0 else found
    return float(np.quantile(bulk, 0.75) / (HALF_NORMAL_Q75 * np.sqrt(70.0)))
