"""The second readings that concern a tensor: the tensor test's re-read, and J's noise measured
along a tensor's own components (see :mod:`gradwatch.evidence.model` for where each comes in;
the step fitted to J's noise for components left within noise is
:mod:`gradwatch.evidence.gate`)."""

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
from gradwatch.evidence.readings import DISAGREES, LONGER_STEPS, Record
from gradwatch.evidence.recheck import reread
from gradwatch.evidence.tensor_test import convicts

if TYPE_CHECKING:
    from gradwatch.evidence.objective import Objective

__all__ = ["noise_at", "retest", "tensor_noise"]


# A tensor's noise is read at its readings' stride (_noise_along): a direction along which J did
# not move is read once more at twice the stride, which reaches the 4h of the re-check, no further.
REACH_TRIES = 2


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
    """Measures J's noise along ``support`` at the stride of its readings (:func:`noise_at`), and
    reads the components whose noise was smaller against it."""
    found = noise_at(objective, center, support, record.step[support], seed)
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


def noise_at(
    objective: Objective, center: float, support: np.ndarray, steps: np.ndarray, seed: int
) -> float:
    """J's noise along the components ``support`` at the stride of readings at ``steps`` (1 to 2
    steps from θ, as far as a reading's points and its Richardson partner's, by
    :func:`_noise_along`), never below J's rounding floor in float64 (J rounded once). A reading
    at a longer step (escalation's ladder, a re-read at the fitted step) is judged against it.

    Example:
        >>> class Line:  # J = 1 + Σθ, rounded to a grid of 1e-9 beyond 1e-6 from θ
        ...     def half_gaps(self, at, h): return np.asarray(h, float)
        ...     def line(self, support, rows):
        ...         s = rows.sum(axis=1)
        ...         return 1 + s + np.where(np.abs(s) > 1e-6, np.sin(1e6 * s) * 1e-9, 0.0)
        >>> first = noise_at(Line(), 1.0, np.arange(4), np.full(4, 1e-9), 0)
        >>> longer = noise_at(Line(), 1.0, np.arange(4), np.full(4, 1e-4), 0)
        >>> bool(first < 1e-15 < 1e-10 < longer)
        True
    """
    gaps = objective.half_gaps(support, steps)
    return max(_noise_along(objective, center, support, gaps, seed), rounding_floor(center))


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
