"""The gradient check of a whole torch module: θ is every trainable parameter."""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gradwatch._evaluate import LossFn, ModuleCost
from gradwatch._state import (
    attention_fast_path_disabled,
    cast_batch,
    dropout_disabled,
    preserved_rng,
)
from gradwatch._validate import (
    CHECK_MODES,
    DROPOUT_MODES,
    check_choice,
    check_components,
    check_epsilon,
    check_memory_budget,
    check_seed,
    check_thresholds,
)
from gradwatch._vectorize import DEFAULT_MEMORY_BUDGET
from gradwatch.analysis import ComponentAnalysis, analyse_components, determinism_note
from gradwatch.directions import search_directions
from gradwatch.layout import Layout
from gradwatch.numeric import auto_steps, relative_difference
from gradwatch.partition import Exchange, Partition, exchanging
from gradwatch.report import GradCheckReport, PrecisionDrift, Thresholds
from gradwatch.sampling import sample_components

__all__ = ["check_module", "checked_parameters"]

DropoutMode = Literal["off", "freeze"]
CheckMode = Literal["components", "directions"]


def checked_parameters(model: nn.Module, include: str | Sequence[str] | None = None) -> list[str]:
    """Names of the parameters that make up θ: trainable ones, in ``named_parameters()`` order,
    narrowed to those matching any glob in ``include``. Tied parameters appear once.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> checked_parameters(model, include="1.*")
        ['1.weight', '1.bias']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    patterns = [include] if isinstance(include, str) else include
    if patterns is not None and not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"`include` must be a glob string or a list of them; got {include!r}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        total = len(list(model.parameters()))
        raise ValueError(
            "`model` has no trainable parameters: it needs at least one with requires_grad=True; "
            f"got a {type(model).__name__} with {total} parameter tensors, none trainable. "
            "There is no gradient to check; unfreeze the layers you want checked"
        )
    for name, p in model.named_parameters():  # a frozen one on meta breaks the forward too
        if p.is_meta:
            raise ValueError(
                "`model` must have its parameters on a device that holds values (cpu, cuda, …); "
                f"got parameter {name!r} on the meta device. Materialize the model (e.g. "
                "model.to_empty(device='cpu') and initialize it) before checking"
            )
        if p.requires_grad and not p.is_floating_point():
            raise TypeError(
                "`model` must have real floating-point trainable parameters "
                f"(float16/bfloat16/float32/float64); got parameter {name!r} with dtype {p.dtype}"
            )
    names = [n for n, _ in trainable]
    if patterns is None:
        return names
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not chosen:
        raise ValueError(
            f"`include` {include!r} matches no trainable parameter; names are like "
            f"{names[:5]}{' …' if len(names) > 5 else ''}"
        )
    return chosen


def _check_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise TypeError(
            f"`{name}` must be a real floating torch dtype (torch.float64 recommended); "
            f"got {dtype!r}"
        )
    return dtype


def _rounding_note(dtype: torch.dtype, epsilon: float | str, cost: float) -> tuple[str, ...]:
    # Each J carries a rounding error of about eps_mach·|J|; the two-sided difference divides it
    # by 2ε. In float64 at ε = 1e-7 that is ~1e-9·|J|, in float32 ~0.3·|J|: noise, not slope.
    unit = torch.finfo(dtype).eps
    if dtype == torch.float64 or not isinstance(epsilon, float):
        return ()  # "auto" picks a step that fits the precision
    noise = unit * max(abs(cost), 1e-30) / (2 * epsilon)
    return (
        f"checked in {str(dtype).removeprefix('torch.')}: rounding noise in each numeric "
        f"component is about {noise:.1e} (eps_mach {unit:.1e} x |J| / 2 epsilon) and dominates "
        "the difference; check in float64 (the default) or with epsilon='auto' to trust the "
        "verdict",
    )


_DETERMINISM_REMEDY = (
    "Randomness outside dropout layers is re-seeded before every evaluation; remove other "
    "sources (state kept between calls, nondeterministic kernels) and check again"
)


def _lost_steps(
    cost: ModuleCost, layout: Layout, indices: np.ndarray, epsilon: float
) -> str | None:
    """A note when θ_i ± ε rounds back to θ_i in the check's dtype: those numeric derivatives are
    0 whatever J does."""
    values = cost.flat_values(indices)
    lost = ((values + epsilon) == values) | ((values - epsilon) == values)
    count = int(lost.sum())
    if count == 0:
        return None
    first = int(indices[int(torch.nonzero(lost)[0, 0])])
    dtype = str(values.dtype).removeprefix("torch.")
    return (
        f"epsilon {epsilon:g} is below {dtype}'s spacing at {count} of {indices.size} checked "
        f"components (e.g. {layout.label(first)}): θ_i ± epsilon == θ_i there, so their numeric "
        "derivative is 0 whatever J does; use epsilon='auto', which scales the step with |θ_i|"
    )


def _padding_rows(
    model: nn.Module, names: Sequence[str], layout: Layout
) -> tuple[np.ndarray, list[str]]:
    """Flat indices in θ of the ``padding_idx`` rows of embeddings, and a note for each.

    PyTorch gives that row no gradient by design (it is not trained), while J does depend on
    it: its components would differ however right backprop is, so they are not checked.
    """
    position = {id(p): names.index(n) for n, p in model.named_parameters() if n in names}
    found: list[np.ndarray] = []
    notes = []
    for module in model.modules():
        if not isinstance(module, nn.Embedding | nn.EmbeddingBag):
            continue
        t = position.get(id(module.weight))
        if module.padding_idx is None or t is None or module.weight.dim() != 2:
            continue
        rows, width = module.weight.shape
        row = module.padding_idx % rows
        start = int(layout.offsets[t]) + row * width
        found.append(np.arange(start, start + width, dtype=np.int64))
        notes.append(
            f"{names[t]}[{row}, :] (padding_idx) left out: PyTorch gives it no gradient by "
            f"design, so its {width} components are not checked"
        )
    if not found:
        return np.zeros(0, dtype=np.int64), notes
    return np.unique(np.concatenate(found)), notes


def _leave_out(indices: np.ndarray, left_out: np.ndarray, layout: Layout, seed: int) -> np.ndarray:
    """``indices`` without ``left_out``; each sampled one that was left out is replaced by
    another component of the same tensor where one is free, so a sample keeps its size."""
    hit = np.isin(indices, left_out)
    if not hit.any():
        return indices
    kept = indices[~hit]
    rng = np.random.default_rng([seed, 1])
    extra = []
    tensors = layout.tensor_of(indices[hit])
    for t in np.unique(tensors):
        lo, hi = int(layout.offsets[t]), int(layout.offsets[t + 1])
        taken = np.concatenate([kept, left_out])
        taken = taken[(taken >= lo) & (taken < hi)]
        count = min(int((tensors == t).sum()), hi - lo - taken.size)
        if count > 0:  # none free when every component was sampled (a full check)
            extra.append(_draw(rng, lo, hi, taken, count))
    return np.sort(np.concatenate([kept, *extra])).astype(np.int64)


def _draw(rng: np.random.Generator, lo: int, hi: int, taken: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct integers in [lo, hi) outside ``taken`` (there are that many)."""
    if hi - lo <= 2 * (taken.size + count) + 4096:  # small or crowded: list what is free
        free = np.setdiff1d(np.arange(lo, hi), taken)
        return rng.choice(free, size=count, replace=False)
    found = np.zeros(0, dtype=np.int64)
    while found.size < count:  # mostly free: each draw is new with probability > 1/2
        draw = rng.integers(lo, hi, size=2 * count + 16)
        draw = draw[~np.isin(draw, taken) & ~np.isin(draw, found)]
        _, first = np.unique(draw, return_index=True)
        found = np.concatenate([found, draw[np.sort(first)]])
    return found[:count]


def _hook_note(model: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    params = dict(model.named_parameters())
    hooked = [n for n in names if getattr(params[n], "_backward_hooks", None)]
    if not hooked:
        return ()
    has = "has a gradient hook" if len(hooked) == 1 else "have gradient hooks"
    return (
        f"{_listing(hooked)} {has} (Tensor.register_hook): the check compares autograd's "
        "gradient of J without it, not the .grad the hook hands the optimizer",
    )


def _listing(names: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_module(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    epsilon: float | Literal["auto"] = 1e-7,
    include: str | Sequence[str] | None = None,
    components: int | None = None,
    dropout: DropoutMode = "off",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    drift_dtype: torch.dtype | None = None,
    mode: CheckMode = "components",
    partition: Partition | None = None,
    memory_budget: int | None = None,
) -> GradCheckReport:
    """Checks backprop of a whole module against the material's two-sided difference.

    θ is every trainable parameter in ``named_parameters()`` order (or those matching
    ``include``), J is ``loss_fn(model, batch)``. Both the analytic gradient (autograd) and the
    numeric one are computed on copies of the parameters and buffers in ``dtype`` (float64 by
    default), so a float32 model is checked in float64. The model itself is left bit-for-bit as
    it was: parameters, buffers, ``.grad``, training flags and the global RNG states, also when
    the check raises.

    Every evaluation of J runs with grad mode on, as in training (a loss may use autograd
    itself, e.g. a gradient penalty), and with PyTorch's attention fast path off (another
    function, taken only where nothing needs a gradient); the user's setting is restored after.
    An embedding's ``padding_idx`` row is left out of the checked components (PyTorch gives it
    no gradient by design), and the notes say so, as they do for parameters with gradient
    hooks, which the check's autograd gradient does not run.

    Args:
        model: the module; it stays on its device and the check runs there.
        loss_fn: ``loss_fn(model, batch)`` → the scalar cost J (regularization included). It
            must return J without calling ``.backward()``: the check runs backprop itself.
        batch: anything ``loss_fn`` takes; floating tensors in it (nested dicts, lists, tuples,
            dataclass instances) are cast to ``dtype`` and moved to the model's device.
        epsilon: the step ε (default 1e-7, the material's), or ``"auto"``: a step per
            component that fits ``dtype``, ε_mach^(1/3)·max(1, |θ_i|) (about 6e-6 in float64),
            which takes the rounding noise of the fixed step away.
        include: glob pattern(s) narrowing θ, e.g. ``"decoder.*"``; other parameters stay fixed.
        components: ``None`` checks every component; an int k a reproducible sample of k
            components spread over every parameter tensor (seeded by ``seed``).
        dropout: ``"off"``: dropout layers are the identity during the check; ``"freeze"``: one
            mask is drawn and reused for every evaluation.
        dtype: the precision of the check.
        seed: seed of the component sample and of every random draw inside J.
        thresholds: verdict bands; default pass ≤ 1e-7 < warn ≤ 1e-3 < fail.
        drift_dtype: optionally repeat the check in a training precision (torch.float32,
            torch.bfloat16) and report in ``report.drift`` how far its gradient drifts from the
            float64 one: whether a custom backward is numerically fragile.
        mode: ``"components"`` checks components one by one (all, or ``components`` of them);
            ``"directions"`` (large models) compares random ±1 directions per tensor first,
            localizes the components of failing tensors by bisection and checks those one by
            one, plus each tensor's largest-gradient component and ``components`` spread over
            every tensor (default none); see :mod:`gradwatch.directions`. ``report.mode`` says
            which ran, the notes what the directions found.
        partition: in data-parallel training, this process's :class:`gradwatch.Partition`:
            every process calls ``check_module`` with the same arguments, evaluates its share
            of the components, and returns the same report (or raises, when any process's
            part raised). The directional search (``mode="directions"``) runs in every process.
        memory_budget: bytes one batched evaluation (many perturbed copies of θ in one
            ``torch.func.vmap`` call) may hold: activations per copy, measured on the first
            evaluation, plus any copied parameter tensors. Default 1 GiB. A smaller budget
            means more, smaller calls, never the one-at-a-time loop; a call that runs out of
            memory anyway is retried in halves.

    Returns:
        A :class:`GradCheckReport` whose parameter names are those of ``named_parameters()``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> report = check_module(model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
        ...                       (x, y))
        >>> report.verdict.value, report.components_checked
        ('pass', 67)
    """
    step = check_epsilon(epsilon)
    names = checked_parameters(model, include)
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable (model, batch) -> J; got {loss_fn!r}")
    sample = check_components(components)
    drop = check_choice("dropout", dropout, DROPOUT_MODES)
    check = check_choice("mode", mode, CHECK_MODES)
    precision = _check_dtype(dtype)
    if drift_dtype is not None:
        _check_dtype(drift_dtype, "drift_dtype")
    seed = check_seed(seed)
    bands = check_thresholds(thresholds)
    budget = check_memory_budget(memory_budget, DEFAULT_MEMORY_BUDGET)
    params = dict(model.named_parameters())
    layout = Layout(tuple(names), tuple(tuple(params[n].shape) for n in names))
    notes: list[str] = []
    if sample is not None and sample > layout.size:
        notes.append(f"components={sample} exceeds the {layout.size} in θ: checked all of them")
    left_out, padding = _padding_rows(model, names, layout)
    notes.extend(padding)
    notes.extend(_hook_note(model, names))

    start = time.perf_counter()
    device = params[names[0]].device
    with (
        preserved_rng(),
        attention_fast_path_disabled(),
        dropout_disabled(model, disable=(drop == "off")),
        exchanging(partition) as split,
    ):
        cost = ModuleCost(
            model, loss_fn, cast_batch(batch, precision, device), names, precision, seed,
            memory_budget=budget,
        )  # fmt: skip
        if check == "directions":
            search = search_directions(
                cost, layout, step, bands, spot=sample, seed=seed, left_out=left_out
            )
            indices = search.indices
            notes.append(search.note)
        else:
            indices = _leave_out(sample_components(layout, sample, seed), left_out, layout, seed)
        found = _compare(cost, layout, indices, step, split)
        if step != "auto":
            notes.extend(filter(None, [_lost_steps(cost, layout, indices, float(step))]))
        drift, drift_evaluations = None, 0
        if drift_dtype is not None:
            low = ModuleCost(
                model, loss_fn, cast_batch(batch, drift_dtype, device), names, drift_dtype, seed,
                memory_budget=budget,
            )  # fmt: skip
            drift = _drift(low, layout, indices, found, split)
            drift_evaluations = low.evaluations
        evaluations, seconds, shared = split.finish(
            cost.evaluations + drift_evaluations, time.perf_counter() - start, cost.describe()
        )
        notes.extend(shared)
    return GradCheckReport(
        layout=layout,
        indices=indices,
        analytic=found.analytic,
        numeric=found.numeric,
        epsilon=step,
        dtype=str(precision).removeprefix("torch."),
        evaluations=evaluations,
        seconds=seconds,
        thresholds=bands,
        notes=(*notes, *_rounding_note(precision, step, found.center)),
        failure=found.failure,
        mode=check,
        noise=found.analysis.noise,
        bound=found.analysis.bound,
        kinks=found.analysis.kink,
        flagged=found.analysis.flagged,
        off_slope=found.analysis.off_slope,
        drift=drift,
    )


@dataclass(frozen=True)
class _Comparison:
    analytic: np.ndarray
    numeric: np.ndarray
    center: float
    failure: str | None
    analysis: ComponentAnalysis


def _steps(
    cost: ModuleCost, indices: np.ndarray, epsilon: float | str
) -> tuple[np.ndarray, np.ndarray]:
    """Steps h per checked component, and the half-gaps ((θ_i + h) − (θ_i − h)) / 2 that the
    check's dtype really stores, which the division uses: both ε as given, or the precision's
    step (``numeric.auto_steps``)."""
    if epsilon != "auto":
        steps = np.full(indices.size, float(epsilon))
        return steps, steps
    values = cost.flat_values(indices)
    unit = torch.finfo(values.dtype).eps
    h = torch.from_numpy(auto_steps(values.double().cpu().numpy(), unit)).to(values)
    half = ((values + h) - (values - h)) / 2
    return h.double().cpu().numpy(), half.double().cpu().numpy()


def _compare(
    cost: ModuleCost,
    layout: Layout,
    indices: np.ndarray,
    epsilon: float | str,
    split: Exchange | None = None,
) -> _Comparison:
    """Backprop's gradient, the two-sided estimate and J(θ) (twice: is J deterministic?).

    With a partition, each process evaluates its share of the pairs (and of the halved ones),
    and every process goes on with process 0's gradient and J values: the same report everywhere.
    """
    split = split or Exchange(None)
    j_grad, grads = cost.gradient()
    center = cost.value()
    tensor = layout.tensor_of(indices)
    local = indices - np.asarray(layout.offsets)[tensor]
    steps, half = _steps(cost, indices, epsilon)
    plus, minus = split.pairs(cost.pairs, tensor, local, steps)
    j_after = cost.value()
    flat_grad = torch.cat([g.reshape(-1).to(torch.float64).cpu() for g in grads]).numpy()
    (center, j_grad, j_after), analytic = split.agree((center, j_grad, j_after), flat_grad[indices])
    h_min = float(half.min()) if half.size else 1.0
    failure = determinism_note(center, j_grad, h_min, _DETERMINISM_REMEDY) or determinism_note(
        center, j_after, h_min, _DETERMINISM_REMEDY
    )
    if not math.isfinite(center):
        failure = f"the loss J(θ) is {center}: fix the forward pass before checking gradients"
    unit = float(torch.finfo(cost.theta[0].dtype).eps)
    with np.errstate(invalid="ignore"):  # J infinite: inf − inf is NaN, and reported as such
        numeric = (plus - minus) / (2 * half)
    if failure is not None:  # a J that moves on its own has no kinks or rounding to weigh
        nothing = np.zeros(numeric.size)
        analysis = ComponentAnalysis(nothing, nothing, nothing.astype(bool), nothing.astype(bool))
        return _Comparison(analytic, numeric, center, failure, analysis)
    with np.errstate(invalid="ignore"):
        analysis = analyse_components(
            analytic,
            plus,
            minus,
            center,
            half,
            unit,
            lambda at: split.pairs(cost.pairs, tensor[at], local[at], steps[at] / 2),
        )
    return _Comparison(analytic, numeric, center, failure, analysis)


def _drift(
    low: ModuleCost, layout: Layout, indices: np.ndarray, reference: _Comparison, split: Exchange
) -> PrecisionDrift:
    """The same check in a training precision (``low``), at the step that suits it."""
    found = _compare(low, layout, indices, "auto", split)
    return PrecisionDrift(
        dtype=str(low.theta[0].dtype).removeprefix("torch."),
        gradient_drift=relative_difference(found.analytic, reference.analytic),
        difference=relative_difference(found.numeric, found.analytic),
        failure=found.failure,
    )
