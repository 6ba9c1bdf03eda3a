"""The test of a tensor as a whole: do its components' errors, together, exceed J's noise?

A small error shared by many components (a gradient off by 0.1% everywhere, a missing term that
is small at each entry) may stay under the tolerance of every single reading and still be far
beyond the noise of the tensor. With z_i = (a_i − n_i) / σ_i over the tensor's measured
components (those judged, and those read as within noise), S = Σ z_i² is χ²-distributed with k
degrees of freedom when the errors are J's noise alone. The tensor "disagrees" when S exceeds
``NOISE_MARGIN``² times the χ²_k quantile at ``FALSE_ALARM`` and its difference D over those
components is above the material's pass band (the bands stay the bands for D).
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.common.numeric import relative_difference

__all__ = ["FALSE_ALARM", "NOISE_MARGIN", "chi2_bound", "convicts", "tensor_test"]

# The odds that a tensor of a correct model fails the test by chance: with up to ~1,000 tensors
# in a check, a false alarm once in 10,000 checks (the per-component rule's 8σ is rarer, but a
# component test repeats over ~1e5 components).
FALSE_ALARM = 1e-7
# The standard normal quantile at 1 − FALSE_ALARM (one-sided: only a large S convicts).
_Z = 5.199337582605575
# σ_J is estimated from PROBE_DIRECTIONS = 64 probes (gradwatch.evidence.noise, mirrored pairs);
# from 32 it would be low by 1.5× with odds of 1.5% and by 2× with odds of 2e-4, and more probes
# only make those odds smaller. The bound is widened by that 2× on σ, 4× on S,
# so an underestimated σ_J does not turn J's noise into a disagreement: with σ 2× low the test still
# errs only at FALSE_ALARM.
NOISE_MARGIN = 2.0


def chi2_bound(k: int) -> float:
    """The χ²_k quantile at 1 − ``FALSE_ALARM`` by Wilson and Hilferty's cube-root approximation
    (Johnson, Kotz & Balakrishnan, Continuous Univariate Distributions, vol. 1, §18.5), times
    ``NOISE_MARGIN``². The approximation is above the exact quantile for small k (33.7 against
    28.4 at k = 1) and within 1% of it from k = 10 on.

    Example:
        >>> round(chi2_bound(1) / 4, 1), round(chi2_bound(10_000) / 4 / 10_000, 3)
        (33.7, 1.075)
    """
    c = 2.0 / (9.0 * k)
    return NOISE_MARGIN**2 * k * (1.0 - c + _Z * math.sqrt(c)) ** 3


def tensor_test(
    analytic: np.ndarray, numeric: np.ndarray, noise: np.ndarray, measured: np.ndarray
) -> float:
    """S / bound over the ``measured`` components with a finite positive noise: above 1, their
    errors together exceed J's noise; NaN when none was measured.

    Example:
        >>> a = np.full(400, 1.0)
        >>> round(tensor_test(a, a + 3e-9, np.full(400, 1e-9), np.ones(400, bool)), 2)  # 3σ each
        1.59
        >>> round(tensor_test(a, a + 1e-9, np.full(400, 1e-9), np.ones(400, bool)), 2)  # 1σ each
        0.18
    """
    a, n, s = (np.asarray(x, np.float64) for x in (analytic, numeric, noise))
    used = np.asarray(measured, bool) & np.isfinite(a) & np.isfinite(n) & np.isfinite(s) & (s > 0)
    k = int(used.sum())
    if k == 0:
        return math.nan
    z = (a[used] - n[used]) / s[used]
    return float(np.sum(z * z)) / chi2_bound(k)


def convicts(
    analytic: np.ndarray,
    numeric: np.ndarray,
    noise: np.ndarray,
    measured: np.ndarray,
    pass_max: float,
) -> bool:
    """Whether the tensor test convicts: S above its bound, and D over the measured components
    above the material's pass band.

    Example:
        >>> a = np.full(400, 1.0)
        >>> convicts(a, a + 3e-9, np.full(400, 1e-9), np.ones(400, bool), 1e-7)  # D 1.5e-9
        False
        >>> convicts(a, a + 3e-7, np.full(400, 1e-7), np.ones(400, bool), 1e-7)  # D 1.5e-7
        True
    """  # fmt: skip
    m = np.asarray(measured, bool)
    if not tensor_test(analytic, numeric, noise, m) > 1:  # NaN: nothing measured
        return False
    return relative_difference(np.asarray(numeric)[m], np.asarray(analytic)[m]) > pass_max
