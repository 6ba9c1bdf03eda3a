"""The evidence model: what each checked component's two numbers show, from measurements alone.

Component i has backprop's value a_i and the two-sided estimate n_i = (J(θ+h·e_i) − J(θ−h·e_i))/2h.
Its noise σ_i = σ_J / (√2·h) comes from J's measured noise σ_J (:mod:`gradwatch.evidence.noise`):
each of the two evaluations carries σ_J, their difference is divided by 2h. Each component gets one
reading (``K`` = ``NOISE_MULTIPLE``):

============  =================================================================================
reading       requires
============  =================================================================================
disagrees     |a − n| > K·σ_i and |a − n| / (|a| + |n|) > pass_max, also after the re-checks
agrees        not disagrees, and max(|a|, |n|) > K·σ_i: there was a gradient to compare
not judged    both |a| and |n| within K·σ_i ("within noise": a zero gradient as far as J can
              tell); or the step sits on a kink that re-checks at nearby points could not leave
              ("on a kink"); or θ_i ± h == θ_i in the check's precision ("step lost")
============  =================================================================================

A first reading of "disagrees" is never final, and a re-check clears it only by explaining the gap
(:mod:`gradwatch.evidence.recheck`): J is read again at 2h and 4h, where a truncation error grows 4×
per doubling; if J is smooth there and the fit explains the first reading, Richardson's estimate,
whose noise (0.67·σ_i) is below the first reading's, is read instead ("longer steps"). Where J''
does not agree (a kink: it halves when the step doubles at a kink sitting at θ), θ is moved by a
small seeded jitter off the kink set, backprop is run again there, and the component is read at
that nearby point ("off kink"), up to ``JITTER_TRIES`` times; a disagreement there stands once a
second jittered θ shows it too (a gap only one of them shows: "not judged, on a kink"). At
float32's step the re-check runs at h/2 and h/4, with ~5× the first reading's noise: too noisy
to tell a jump in J (a routing decision of top-k experts that flips within the step) from a
slope, it clears a gap only where the truncation it measures, n(h) − g, is beyond that noise. A
first disagreement it does not explain so, or leaves standing, is read at a jittered θ, at the
first step and with the first reading's tolerance ("off kink"), and stands once a second
jittered θ shows it too.

A tensor whose components disagree, or whose errors together exceed J's noise
(:mod:`gradwatch.evidence.tensor_test`), has J's noise measured along its own components, at the
stride of their readings; where it is larger than the noise measured first, they are read against
it. A component left within noise is read again at a step fitted to J's noise ("fitted step"): only
a gradient that is zero within that step's noise stays "not judged, within noise". A tensor that
fails the tensor test has its components read again by Richardson's estimate, so that the h²
truncation of the first step is not taken for a shared error. Escalation's rungs whose readings
ask (a disagreement, a tensor failing the tensor test) are judged against J's noise at their own
stride, unless it grew as structure does, not rounding (:mod:`gradwatch.evidence.gate`).
"""

from __future__ import annotations

import numpy as np

from gradwatch.evidence.escalation import noise_at, retest, tensor_noise
from gradwatch.evidence.gate import escalate
from gradwatch.evidence.ladder import RUNG, RUNGS, read_fitted
from gradwatch.evidence.noise import NOISE_MULTIPLE
from gradwatch.evidence.objective import Objective
from gradwatch.evidence.readings import (
    AGREES,
    DISAGREES,
    LONGER_STEPS,
    NOT_JUDGED,
    OFF_KINK,
    ON_KINK,
    STEP_LOST,
    Evidence,
    Record,
    read,
)
from gradwatch.evidence.recheck import (
    Pair,
    fitted_steps,
    longest_steps,
    multiples,
    reread,
    slope,
    sub,
)

__all__ = ["JITTER_STEPS", "JITTER_TRIES", "gather_evidence"]

# A kink is left by moving θ this many steps in a random direction: a kink that sat at θ then
# lies ~1000 steps away, and the check's ±h crosses one with odds of about 1 in 1000. Each try
# puts a unit sitting on its kink on either side with even odds (on the flat side there is no
# gradient to compare), so three tries leave one unjudged with odds of 1 in 8.
JITTER_STEPS = 1000.0
JITTER_TRIES = 3


def gather_evidence(
    objective: Objective,
    analytic: np.ndarray,
    first: tuple[np.ndarray, np.ndarray],
    center: float,
    steps: np.ndarray,
    sigma: float,
    pass_max: float,
    groups: np.ndarray | None = None,
    seed: int = 0,
    warn_max: float = 1e-3,
) -> Evidence:
    """Readings of every checked component from backprop's ``analytic`` values, the two-sided
    pairs ``first`` = (J(θ+h·e_i), J(θ−h·e_i)) at ``steps`` h, J(θ) = ``center`` and J's noise
    ``sigma``; re-checks go through ``objective``. ``groups`` (the tensor of each component; one
    tensor when None) are what the tensor test and the noise per tensor are about; a tensor whose
    noise floor is above ``warn_max`` is read again at the step fitted to J's noise.

    Example:
        >>> from gradwatch.evidence.objective import Moved
        >>> from gradwatch.evidence.readings import READINGS, RECHECKS
        >>> class Relu:  # J(θ) = relu(θ₀) + 2·θ₁ at θ = (0, 1): a kink in θ₀
        ...     def __init__(self, theta): self.theta = theta
        ...     def cost(self, t): return max(t[0], 0.0) + 2 * t[1]
        ...     def pairs(self, at, h):
        ...         moved = lambda s: [self.cost(self.theta + s * hk * np.eye(2)[i])
        ...                            for i, hk in zip(at, h)]
        ...         return np.array(moved(1)), np.array(moved(-1))
        ...     def half_gaps(self, at, h): return np.asarray(h, float)
        ...     def values(self, at): return self.theta[np.asarray(at)]
        ...     def line(self, support, rows): return np.full(len(rows), 2.0)
        ...     def jittered(self, attempt):
        ...         moved = Relu(self.theta + [1e-4, 0.0])
        ...         return Moved(moved, np.array([1.0, 2.0]), moved.cost(moved.theta))
        >>> j = Relu(np.array([0.0, 1.0]))
        >>> h = np.full(2, 1e-7)
        >>> grad = np.array([1.0, 2.0])
        >>> found = gather_evidence(j, grad, j.pairs([0, 1], h), 2.0, h, 1e-16, 1e-7)
        >>> [READINGS[r] for r in found.reading], [RECHECKS[r] for r in found.recheck]
        (['agrees', 'agrees'], ['off kink', ''])
    """
    analytic = np.asarray(analytic, np.float64)
    steps = np.asarray(steps, np.float64)
    every = np.arange(analytic.size)
    groups = np.zeros(analytic.size, np.int64) if groups is None else np.asarray(groups)
    gaps = objective.half_gaps(every, steps)
    plus, minus = first
    with np.errstate(invalid="ignore", divide="ignore"):
        numeric = np.where(gaps > 0, (plus - minus) / (2 * np.where(gaps > 0, gaps, 1.0)), 0.0)
        noise = np.where(gaps > 0, sigma / (np.sqrt(2) * gaps), np.inf)
    record = Record(analytic, numeric, noise, np.full(analytic.size, float(sigma)))
    record.step[:] = steps
    record.reading, record.reason = read(analytic, numeric, noise, pass_max)
    lost = ~(gaps > 0)
    record.reading[lost], record.reason[lost] = NOT_JUDGED, STEP_LOST
    finite = np.isfinite(analytic) & np.isfinite(numeric)
    suspects = np.flatnonzero((record.reading == DISAGREES) & finite)
    firsts = (plus, minus, gaps)
    _explain(objective, record, suspects, firsts, center, steps, pass_max)
    measured: set[tuple[int, bool]] = set()
    tensor_noise(objective, record, groups, center, steps, seed, pass_max, measured)
    escalate(objective, record, groups, center, steps, seed, (pass_max, warn_max))
    retest(objective, record, groups, center, steps, pass_max)
    tensor_noise(objective, record, groups, center, steps, seed, pass_max, measured)
    _at_longer_steps(objective, record, center, steps, pass_max, groups, seed)
    return record.done()


def _explain(
    objective: Objective,
    record: Record,
    suspects: np.ndarray,
    firsts: Pair,
    center: float,
    steps: np.ndarray,
    pass_max: float,
) -> None:
    """Re-checks first disagreements at 2h and 4h: where J is smooth and the fit explains the
    first reading, Richardson's estimate is read; elsewhere J is read off the kink. At float32's
    step (h/2 and h/4), what the fit leaves unexplained is read off a flip (``_off_flips``)."""
    if suspects.size == 0:
        return
    sigma, first = record.sigma[suspects], sub(firsts, suspects)
    smooth, estimate, spread = reread(objective, center, suspects, steps[suspects], sigma, first)
    short = multiples(objective.values(suspects), steps[suspects])[0] < 1
    unexplained = np.zeros(0, np.int64)
    if short:
        # Richardson's noise at h/2 and h/4 is ~5x the first reading's. Where it reads the
        # component within noise, it saw no gradient, which does not explain the gap the first
        # reading saw (a sign-flipped gradient 17σ off at h read so), unless the truncation it
        # measures, n(h) − g, is itself beyond that noise: such a component is read at a
        # jittered θ with the first reading's tolerance.
        truncation = np.abs(slope(first) - estimate)
        measured = truncation > NOISE_MULTIPLE * np.hypot(record.noise[suspects], spread)
        blind = read(record.analytic[suspects], estimate, spread, pass_max)[0] == NOT_JUDGED
        unexplained = suspects[smooth & blind & ~measured]
        smooth &= ~blind | measured
    at = suspects[smooth]
    values = (record.analytic[at], estimate[smooth], spread[smooth])
    record.set(at, values, pass_max, LONGER_STEPS)
    kinks = suspects[~smooth & ~np.isin(suspects, unexplained)]
    record.kink[kinks] = True
    _off_kinks(objective, record, kinks, steps, pass_max)
    if short:
        standing = at[record.reading[at] == DISAGREES]
        _off_flips(objective, record, np.concatenate([unexplained, standing]), steps, pass_max)


def _at_longer_steps(
    objective: Objective,
    record: Record,
    center: float,
    steps: np.ndarray,
    pass_max: float,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> None:
    """Reads a disagreement that stands at the first step's scale once more at θ, at the step
    fitted to J's noise (Richardson's estimate from H and 2H, against backprop at θ) where J is
    smooth there. Its tolerance is the first reading's times h/H, narrower: a wrong backward's gap
    is the same at every step and stands; a gap that shrinks as 1/step was J's noise at the short
    step (a float32 staircase whose stairs the noise probes partly read as jumps). Where J is not
    smooth at H, it is read at ``RUNG`` times longer steps, up to float32's step, as the ladder
    of escalation does; where it is smooth at none, or the gap stands, the first reading stands
    as measured.

    A re-read's smoothness test and tolerance rest on J's noise along its tensor (``groups``)
    at its own stride where that is larger than the first's (see ``tensor_noise``): against the
    first stride's, a correct as-written Funnel read 9.5σ off at H, or not smooth at any rung."""
    at = np.flatnonzero((record.reading == DISAGREES) & np.isfinite(record.at_theta))
    at = at[~(record.step[at] > steps[at])]  # a reading at a fitted step is that step's already
    fitted = fitted_steps(objective.values(at), steps[at], record.sigma[at], center)
    longer = fitted > steps[at]
    at, fitted = at[longer], fitted[longer]
    if at.size == 0:
        return
    groups = np.zeros(record.sigma.size, np.int64) if groups is None else groups
    first_sigma = record.sigma.copy()
    held = (*_held(record, at), *(a[at].copy() for a in (record.recheck, first_sigma, record.step)))
    left, steps_left = at, fitted
    for _ in range(RUNGS):  # not smooth at H: RUNG times H, points off the stairs H landed on
        for g in np.unique(groups[left]):
            mine = groups[left] == g
            found = noise_at(objective, center, left[mine], steps_left[mine], seed)
            record.sigma[left[mine]] = np.maximum(first_sigma[left[mine]], found)
        read_fitted(objective, record, left, steps_left, center, pass_max)
        longest = longest_steps(objective.values(left))
        longer = (record.step[left] != steps_left) & (steps_left < longest)
        left, steps_left = left[longer], np.minimum(steps_left * RUNG, longest)[longer]
        if left.size == 0:
            break
    read = record.step[at] != held[-1]
    stands = (record.reading[at] == DISAGREES) | ~read  # a bug's first reading is the one to show
    fields = (*_fields(record), record.recheck, record.sigma, record.step)
    for field, first in zip(fields, held, strict=True):
        field[at[stands]] = first[stands]


def _off_flips(
    objective: Objective, record: Record, at: np.ndarray, steps: np.ndarray, pass_max: float
) -> None:
    """First disagreements at float32's step where J is smooth over h/2 and h/4 are read at a
    jittered θ, at the first step and with the first reading's tolerance (never a wider one):
    the re-check at h/2 and h/4 has ~5× the first reading's noise, so it can neither explain a
    gap nor convict it. A routing decision (top-k experts) that flips within the step puts a
    jump in J there, which the short steps' noise cannot tell from a slope (a jump of ~7σ_J is
    under the 8σ of J'' at every step, and ~12σ in the slope at h); it does not sit at the
    jittered θ. A wrong backward disagrees there too, and at a second jittered θ: a disagreement
    stands once the second shows it too (a jittered θ may sit next to a flip of its own, as one
    of 200 components of float32 Mixtrals did), is "not judged, on a kink" where the second
    agrees, and stands as first measured where the second has nothing to compare."""
    for attempt in range(2):
        if at.size == 0:
            return
        held = _held(record, at)
        moved = objective.jittered(attempt)
        if moved is None:
            return
        plus, minus = moved.objective.pairs(at, steps[at])
        gaps = moved.objective.half_gaps(at, steps[at])
        with np.errstate(invalid="ignore", divide="ignore"):
            numeric = (plus - minus) / (2 * gaps)
            noise = record.sigma[at] / (np.sqrt(2) * gaps)
        record.set(at, (moved.analytic[at], numeric, noise), pass_max, OFF_KINK)
        record.kink[at] = True
        if attempt:
            cleared = at[record.reading[at] == AGREES]
            record.reading[cleared], record.reason[cleared] = NOT_JUDGED, ON_KINK
            silent = record.reading[at] == NOT_JUDGED
            silent[record.reason[at] == ON_KINK] = False
            for field, first in zip(_fields(record), held, strict=True):
                field[at[silent]] = first[silent]
        at = at[record.reading[at] == DISAGREES]


def _off_kinks(
    objective: Objective, record: Record, kinks: np.ndarray, steps: np.ndarray, pass_max: float
) -> None:
    """Reads components whose step crossed a kink at a jittered θ where J is smooth and the fit
    explains the reading there. A component the jitter put on a flat side (a ReLU turned off: no
    gradient to compare) is tried again at the next jitter; those no jitter frees stay "not
    judged, on a kink". A disagreement there stands once a second jittered θ shows it too
    (``_confirmed``)."""
    record.reading[kinks], record.reason[kinks] = NOT_JUDGED, ON_KINK
    pending = np.zeros(0, np.int64)
    for attempt in range(JITTER_TRIES + 1):
        if attempt == JITTER_TRIES:
            kinks = np.zeros(0, np.int64)  # the last try confirms, it frees no more kinks
        if kinks.size + pending.size == 0:
            return
        moved = objective.jittered(attempt)
        if moved is None:
            return
        both = np.concatenate([kinks, pending])
        smooth, estimate, spread = reread(
            moved.objective, moved.center, both, steps[both], record.sigma[both], None
        )
        first = _held(record, pending)
        at = both[smooth]
        values = (moved.analytic[at], estimate[smooth], spread[smooth])
        record.set(at, values, pass_max, OFF_KINK)
        pending = _confirmed(record, pending, smooth[kinks.size :], first)
        fresh = kinks[smooth[: kinks.size] & (record.reading[kinks] == DISAGREES)]
        kinks = kinks[~smooth[: kinks.size] | (record.reading[kinks] == NOT_JUDGED)]
        pending = np.concatenate([pending, fresh])


def _held(record: Record, at: np.ndarray) -> tuple[np.ndarray, ...]:
    """The readings of ``at`` as they stand: the values, the reading and its reason."""
    return tuple(a[at].copy() for a in _fields(record))


def _fields(record: Record) -> tuple[np.ndarray, ...]:
    return (record.analytic, record.numeric, record.noise, record.reading, record.reason)


def _confirmed(
    record: Record, pending: np.ndarray, smooth: np.ndarray, first: tuple[np.ndarray, ...]
) -> np.ndarray:
    """The components of ``pending`` (a disagreement at one jittered θ) still waiting for a second
    jittered θ where J is smooth. A jitter of 1000 steps spreads a cluster of kinks that sat at θ
    together (the ReLUs after a zero-initialized residual branch, whose input is 0) over 1000
    steps, so one may lie within 4h there; one whose slope changes by less than the smoothness
    test sees (a unit behind a BN scale the jitter moved off zero to ~1e-4) can leave Richardson's
    estimate up to ~1.5× the reading's tolerance off (a kink 4h/3 away fools both tests). A wrong
    backward disagrees at every θ; a gap that the next θ reads as agreeing came from where θ
    stood: such a component is "not judged, on a kink", never "agrees". A next θ with nothing to
    compare (within noise: a ReLU's flat side) is no evidence either way, nor one where J is not
    smooth: the first disagreement stays pending, and at the end of the tries stands as measured."""
    done = pending[smooth]
    second = record.reading[done].copy()
    agrees = done[second == AGREES]
    record.reading[agrees], record.reason[agrees] = NOT_JUDGED, ON_KINK
    waiting = ~smooth
    waiting[smooth] = second == NOT_JUDGED
    keep = pending[waiting]
    for field, held in zip(_fields(record), first, strict=True):
        field[keep] = held[waiting]
    return keep
