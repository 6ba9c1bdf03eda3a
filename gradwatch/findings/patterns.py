"""The kind of bug: a pattern shared by the wrong components of one tensor.

Each pattern predicts, for a component, what the numeric estimate should be (or what the analytic
value is): a constant ratio predicts numeric = r·analytic, a transposed gradient predicts
numeric[i, j] = analytic[j, i], and so on. A pattern is named only when it explains the wrong
components as well as a correct gradient explains right ones (:func:`fits`), for nearly all of
them (:data:`FIT_SHARE`), and for enough of them that a fitted ratio is not a coincidence of the
fit (:data:`MIN_WRONG`). Components whose numeric and analytic values agree within the same
tolerance tell nothing about a pattern, whatever the caller's ``wrong`` mask says, and are left
out: differences that noise makes never name a pattern.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# A pattern fits a component when it predicts the numeric value within this many times the
# component's measured rounding noise: the margin the check allows a correct gradient (the
# largest rounding error among 17,226 components of a correct MLP was 2.5 typical noises).
FIT_NOISE = 8.0
# ... and within this fraction of the value: the two-sided step's truncation error,
# h²·|J'''|/6, stays below 1e-6 of the slope at the steps the check takes (h up to ~1e-5) unless
# J''' exceeds J' by 10^4 per unit of θ. A real pattern fits to rounding; chance rarely to 1e-6.
FIT_RELATIVE = 1e-6
# A pattern is named when it fits at least this share of the tensor's wrong components: room for
# the few whose step crossed a kink (their numeric is the mean of two slopes, which no pattern
# predicts), while chance, at the tolerance above, fits a wrong component almost never.
FIT_SHARE = 0.9
# ... and at least this many of them: a ratio fitted on one or two components always fits them.
MIN_WRONG = 5


def tolerance(numeric: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """How far a prediction may be from the numeric value and still fit: ``FIT_NOISE`` measured
    noises plus ``FIT_RELATIVE`` of the value.

    Example:
        >>> tolerance(np.array([1.0, -2.0]), np.array([1e-9, 0.0])).tolist()
        [1.008e-06, 2e-06]
    """
    return FIT_NOISE * np.abs(noise) + FIT_RELATIVE * np.abs(numeric)


def fits(value: np.ndarray, prediction: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Where ``prediction`` is within ``tol`` of ``value`` (never where either is NaN).

    Example:
        >>> fits(np.array([1.0, 1.0, np.nan]), np.array([1.0, 1.1, 1.0]), np.full(3, 0.01))
        array([ True, False, False])
    """
    with np.errstate(invalid="ignore"):
        return np.abs(value - prediction) <= tol


def named(fitted: int, tested: int) -> bool:
    """The counting rule: at least ``MIN_WRONG`` components tested and ``FIT_SHARE`` of them fit.

    Example:
        >>> named(9, 10), named(8, 10), named(2, 2)
        (True, False, False)
    """
    return tested >= MIN_WRONG and fitted >= FIT_SHARE * tested


@dataclass(frozen=True)
class Fit:
    """A pattern that fits: its kind, how many components it fits of how many were tested, and
    its parameter (the ratio numeric/analytic, the swapped axes, the other tensor)."""

    kind: str
    fitted: int
    tested: int
    ratio: float | None = None
    axes: tuple[int, int] | None = None
    other: str | None = None


def zero_fit(analytic: np.ndarray, tol: np.ndarray) -> Fit | None:
    """Backprop gives 0 where J moves: |analytic| within tolerance on the wrong components.

    Example:
        >>> zero_fit(np.zeros(6), np.full(6, 1e-9)).kind
        'zero'
    """
    hit = int(fits(analytic, np.zeros_like(analytic), tol).sum())
    return Fit("zero", hit, analytic.size) if named(hit, analytic.size) else None


def _ratio_candidates(estimate: float, batch_size: int | None) -> Iterator[tuple[str, float]]:
    """The ratios worth a name, simplest first, then the estimate itself."""
    yield "extra", 0.0
    yield "sign", -1.0
    if batch_size is not None and batch_size > 1:
        yield "mean/sum", float(batch_size)
        yield "mean/sum", 1.0 / batch_size
    if abs(estimate) >= 1.5:
        yield "scale", float(round(estimate))
    elif estimate != 0 and abs(1.0 / estimate) >= 1.5:
        yield "scale", 1.0 / round(1.0 / estimate)
    yield "scale", estimate


def ratio_fit(
    analytic: np.ndarray, numeric: np.ndarray, tol: np.ndarray, batch_size: int | None
) -> Fit | None:
    """numeric = r·analytic for one constant r on the wrong components.

    r is estimated as the median of numeric/analytic where |analytic| is above tolerance; then
    0 (J does not move), −1 (a sign flip), the batch size and its inverse (a mean/sum mix-up),
    the nearest integer or integer inverse, and the estimate itself are tried in that order, and
    the first that fits (:func:`named`) is kept.

    Example:
        >>> a = np.linspace(1.0, 2.0, 8)
        >>> fit = ratio_fit(a, a / 32, np.full(8, 1e-9), batch_size=32)
        >>> fit.kind, fit.ratio
        ('mean/sum', 0.03125)
    """
    usable = np.abs(analytic) > tol
    if int(usable.sum()) < MIN_WRONG:
        return None
    estimate = float(np.median(numeric[usable] / analytic[usable]))
    for kind, ratio in _ratio_candidates(estimate, batch_size):
        hit = int(fits(numeric, ratio * analytic, tol).sum())
        if named(hit, numeric.size):
            return Fit(kind, hit, numeric.size, ratio=ratio)
    return None


def swappable_axes(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Pairs of axes of equal length: a gradient transposed over them keeps its shape.

    Example:
        >>> swappable_axes((3, 3)), swappable_axes((4, 4, 3, 3)), swappable_axes((2, 3))
        ([(0, 1)], [(0, 1), (2, 3)], [])
    """
    return [(i, j) for i, j in itertools.combinations(range(len(shape)), 2) if shape[i] == shape[j]]


def transpose_fit(
    local: np.ndarray, numeric: np.ndarray, tol: np.ndarray, gradient: np.ndarray
) -> Fit | None:
    """numeric[..i..j..] = analytic[..j..i..]: backprop's gradient transposed over two axes.

    ``gradient`` is the tensor's full analytic gradient (NaN where unknown); ``local`` the wrong
    components' flat positions in it. Components whose transposed partner is unknown, or is
    themselves (the diagonal), are not tested.

    Example:
        >>> g = np.arange(9.0).reshape(3, 3) + 1
        >>> local = np.array([1, 2, 3, 5, 6, 7])
        >>> transpose_fit(local, g.T.reshape(-1)[local], np.full(6, 1e-9), g).axes
        (0, 1)
    """
    shape = gradient.shape
    index = np.unravel_index(local, shape)
    for i, j in swappable_axes(shape):
        swapped = list(index)
        swapped[i], swapped[j] = index[j], index[i]
        partner = np.ravel_multi_index(tuple(swapped), shape)
        prediction = gradient.reshape(-1)[partner]
        tested = np.isfinite(prediction) & (partner != local)
        hit = int(fits(numeric[tested], prediction[tested], tol[tested]).sum())
        if named(hit, int(tested.sum())):
            return Fit("transpose", hit, int(tested.sum()), axes=(i, j))
    return None


def neighbour_fit(
    analytic: np.ndarray, numeric: np.ndarray, tol: np.ndarray, references: dict[str, np.ndarray]
) -> Fit | None:
    """analytic of this tensor = the true gradient of another tensor of the same shape.

    ``references`` maps each other tensor's name to its true gradient at the wrong components'
    positions (its numeric values, or its analytic ones where it was found right; NaN where
    unknown). A component is tested where the reference is known, and counts only where the
    reference also differs from this tensor's own numeric value (else the two tensors merely
    have the same gradient there). The best-fitting tensor is kept.

    Example:
        >>> n, other = np.linspace(1, 2, 6), np.linspace(-3, -1, 6)
        >>> neighbour_fit(other, n, np.full(6, 1e-9), {"b": other, "c": n}).other
        'b'
    """
    best: Fit | None = None
    for name, reference in references.items():
        tested = np.isfinite(reference)
        distinct = ~fits(numeric, reference, tol)
        hit = int((fits(analytic, reference, tol) & distinct & tested).sum())
        count = int(tested.sum())
        if named(hit, count) and (best is None or hit > best.fitted):
            best = Fit("neighbour", hit, count, other=name)
    return best


def _ratio_text(ratio: float) -> str:
    """2 → '2', 0.015625 → '1/64', 0.3 → '0.3'."""
    for value, prefix in ((ratio, ""), (1 / ratio if ratio else 0.0, "1/")):
        if value and abs(value) >= 1 and float(value).is_integer():
            sign = "−" if value < 0 else ""
            return f"{sign}{prefix}{abs(int(value))}"
    return f"{ratio:.4g}"


def _scale_text(ratio: float, batch_size: int | None) -> str:
    factor = 1 / ratio
    size = "too large" if abs(factor) > 1 else "too small"
    times = _ratio_text(abs(factor) if abs(factor) >= 1 else abs(ratio))
    text = f"backprop's gradient is {times}× {size}"
    if batch_size is not None and ratio in (batch_size, 1 / batch_size):
        how = (
            "a sum over the batch where J takes the mean: a division by the batch size missing"
            if ratio < 1
            else "divided by the batch size once too often: a mean where a sum belongs"
        )
        return f"{text}, and {batch_size} is the batch size: a mean/sum mix-up? ({how})"
    return f"{text} (one constant factor: a wrong coefficient or normalization?)"


def describe(name: str, fit: Fit, batch_size: int | None) -> str:
    """The sentence that names tensor ``name``'s pattern ``fit``."""
    on = f"on {fit.fitted} of {fit.tested} wrong components"
    if fit.kind == "zero":
        return (
            f"{name}: backprop's gradient is 0 {on}, where J moves: a missing term or a "
            "detached path (.detach(), .data, torch.no_grad)?"
        )
    if fit.kind == "extra":
        return (
            f"{name}: J does not move {on}, yet backprop gives them a gradient: a term J does "
            "not have, or a gradient that belongs to another tensor?"
        )
    if fit.kind == "transpose":
        i, j = fit.axes or (0, 1)
        axes = "" if (i, j) == (0, 1) else f" over axes {i} and {j}"
        return (
            f"{name}: backprop's gradient is the transpose{axes} of the true one {on} "
            "(analytic[i, j] matches numeric[j, i])"
        )
    if fit.kind == "neighbour":
        return (
            f"{name}: backprop's gradient matches the true gradient of {fit.other} (same shape) "
            f"{on}: the gradients of {name} and {fit.other} mixed up?"
        )
    ratio = float(fit.ratio or 0.0)
    head = f"{name}: numeric/analytic = {_ratio_text(ratio)} {on}: "
    if fit.kind == "sign":
        return head + "backprop's gradient has the wrong sign"
    return head + _scale_text(ratio, batch_size)


@dataclass(frozen=True)
class Finding:
    """A pattern shared by the wrong components of one tensor: the kind of bug.

    ``kind`` is one of ``"zero"`` (backprop gives 0 where J moves), ``"extra"`` (J does not move
    where backprop gives a gradient), ``"sign"``, ``"mean/sum"`` (numeric/analytic is the batch
    size or its inverse), ``"scale"`` (another constant ratio), ``"transpose"``,
    ``"neighbour"`` (another tensor's gradient) and ``"product rule"`` (J's gradient without the
    x·g′(x) term of an x·g(x) activation: :mod:`gradwatch.check.product_rule`). ``fitted`` of
    ``tested`` wrong components fit; ``ratio`` is numeric/analytic, ``axes`` the transposed
    axes, ``other`` the other tensor.
    """

    parameter: str
    kind: str
    text: str
    fitted: int
    tested: int
    ratio: float | None = None
    axes: tuple[int, int] | None = None
    other: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        out = dataclasses.asdict(self)
        out["axes"] = None if self.axes is None else list(self.axes)
        return out
