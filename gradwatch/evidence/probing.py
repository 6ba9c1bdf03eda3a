"""How many probes J's noise needs: the first pairs, and every pair where a reading asks for them.

J's noise σ_J is first measured on ``FIRST_PAIRS`` mirrored pairs of directions
(:class:`gradwatch.evidence.noise.NoiseProbes`), and the components are read against it. σ_J
from 32 directions scatters more than from 64 (a 75th percentile: 16% against 11%, one standard
deviation), and that matters only to a reading whose outcome it could change. A reading asks for
the rest of the pairs where its statistic lies within ``MARGIN`` of its threshold, either way:

- a component's gap |a − n| between 1/``MARGIN`` and ``MARGIN`` times its tolerance K·σ_i (with
  a relative gap beyond the pass band, without which it cannot disagree), at whatever step it was
  read last (the first, a longer one, the fitted one);
- a tensor's test S / bound between 1/``MARGIN``² and ``MARGIN``² (with D over its measured
  components beyond the pass band, without which it cannot convict).

Then every pair is measured and the components are read again against σ_J from all of them:
what a check measuring every pair would have found. Elsewhere the readings stand, whatever the
rest of the pairs would read, unless σ_J from the first pairs is off by more than ``MARGIN``.
Where the rounding floor or the spread of J at θ is above ``MARGIN`` times σ_J from the first
pairs, those set the noise the readings use, and more pairs would not change it.
"""

from __future__ import annotations

import numpy as np

from gradwatch.common.numeric import relative_difference
from gradwatch.evidence.model import gather_evidence
from gradwatch.evidence.noise import NOISE_MULTIPLE, JNoise, NoiseProbes
from gradwatch.evidence.objective import Objective
from gradwatch.evidence.readings import NOT_JUDGED, WITHIN_NOISE, Evidence
from gradwatch.evidence.tensor_test import tensor_test

__all__ = ["MARGIN", "asks_for_more", "gather_with_probes"]

# How far σ_J from the first pairs may be off before a reading could change: 32 Gaussian
# directions read σ 1.5× low with odds of 1.4% and 1.5× high with odds of 1.4e-3 (simulated over
# 2e5; gradwatch.evidence.noise.FIRST_PAIRS). A reading more than 1.5× from its threshold keeps
# its outcome unless σ_J is off by more than that.
MARGIN = 1.5


def gather_with_probes(
    objective: Objective,
    analytic: np.ndarray,
    first: tuple[np.ndarray, np.ndarray],
    center: float,
    steps: np.ndarray,
    probes: NoiseProbes,
    pass_max: float,
    groups: np.ndarray,
    seed: int,
    warn_max: float,
) -> tuple[Evidence, JNoise]:
    """:func:`gradwatch.evidence.model.gather_evidence` against J's noise from the first pairs of
    ``probes``, and again against every pair where a reading asks for them; the evidence and the
    noise it was read against.

    Example:
        >>> from gradwatch.evidence.objective import Moved
        >>> rng = np.random.default_rng(0)
        >>> class Line:  # J(θ) = 3·θ₀ at θ₀ = 1, with an error of 1e-16 at each evaluation
        ...     def pairs(self, at, h): return 3 * (1 + h), 3 * (1 - h)
        ...     def half_gaps(self, at, h): return np.asarray(h, float)
        ...     def values(self, at): return np.ones(len(at))
        ...     def line(self, support, rows):
        ...         return 3 * (1 + rows.sum(axis=1)) + 1e-16 * rng.standard_normal(len(rows))
        >>> j, h = Line(), np.full(1, 1e-7)
        >>> probes = NoiseProbes(j.line, 3.0, (), np.array([0]), h, 0, 1e-17)
        >>> found, noise = gather_with_probes(
        ...     j, np.array([3.0]), j.pairs([0], h), 3.0, h, probes, 1e-7, np.zeros(1, int), 0, 1e-3
        ... )
        >>> noise.directions  # the reading agrees far from its threshold: the first pairs did
        32
    """

    def read(noise: JNoise) -> Evidence:
        return gather_evidence(
            objective, analytic, first, center, steps, noise.effective, pass_max, groups, seed,
            warn_max,
        )  # fmt: skip

    noise = probes.first()
    found = read(noise)
    others = max(noise.spread, noise.floor)  # what sets the noise read, whatever σ_J reads
    asked = others < MARGIN * noise.sigma and asks_for_more(found, groups, pass_max)
    if asked:
        every = probes.every()
        if every.directions > noise.directions:
            return read(every), every
    return found, noise


def asks_for_more(evidence: Evidence, groups: np.ndarray, pass_max: float) -> bool:
    """Whether a reading of ``evidence`` lies within ``MARGIN`` of its threshold: a component's gap
    against its tolerance, or a tensor's test against its bound (``groups``: each component's
    tensor), each where the gap is beyond the pass band ``pass_max``.

    Example:
        >>> from gradwatch.evidence.readings import AGREES
        >>> def evidence(numeric):
        ...     one = np.ones(1)
        ...     codes = np.full(1, AGREES, np.int8), np.zeros(1, np.int8), np.zeros(1, np.int8)
        ...     return Evidence(one, np.array([numeric]), one * 1e-3, *codes, one > 1, one)
        >>> asks_for_more(evidence(1.006), np.zeros(1, int), 1e-7)  # 6σ: below 8σ by less than 1.5×
        True
        >>> asks_for_more(evidence(1.002), np.zeros(1, int), 1e-7)  # 2σ
        False
    """
    a, n, s = evidence.analytic, evidence.numeric, evidence.noise
    with np.errstate(invalid="ignore", divide="ignore"):
        usable = np.isfinite(a) & np.isfinite(n) & np.isfinite(s) & (s > 0)
        gap = np.where(usable, np.abs(a - n) / (NOISE_MULTIPLE * np.where(usable, s, 1.0)), 0.0)
        relative = np.abs(a - n) / (np.abs(a) + np.abs(n))
    beyond = relative > pass_max  # NaN (a = n = 0): no gap
    if np.any(usable & beyond & (gap > 1 / MARGIN) & (gap <= MARGIN)):
        return True
    measured = (evidence.reading != NOT_JUDGED) | (evidence.reason == WITHIN_NOISE)
    for group in np.unique(groups):
        m = measured & (groups == group)
        if not m.any() or not relative_difference(n[m], a[m]) > pass_max:
            continue
        test = tensor_test(a, n, s, m)
        if 1 / MARGIN**2 < test <= MARGIN**2:
            return True
    return False
