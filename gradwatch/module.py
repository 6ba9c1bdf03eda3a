"""The gradient check of a whole torch module: θ is every trainable parameter."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gradwatch._comparison import compare, drift
from gradwatch._evaluate import LossFn, ModuleCost
from gradwatch._progress import expected_evaluations, progress_bar
from gradwatch._scope import hook_note, leave_out, padding_rows
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
    check_flag,
    check_seed,
    check_thresholds,
)
from gradwatch.diagnosis import batch_size_of, diagnose, trace_backward
from gradwatch.directions import search_directions
from gradwatch.layout import Layout
from gradwatch.partition import Partition, exchanging
from gradwatch.report import GradCheckReport, Thresholds
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
    progress: bool = True,
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
        progress: show a bar with the evaluations of J done and the time left, on stderr, for a
            check that runs more than a couple of seconds (with a partition: in process 0
            only); ``False`` shows nothing.

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
    first = not isinstance(partition, Partition) or partition.rank == 0  # else checked below
    show = check_flag("progress", progress) and first
    params = dict(model.named_parameters())
    layout = Layout(tuple(names), tuple(tuple(params[n].shape) for n in names))
    notes: list[str] = []
    if sample is not None and sample > layout.size:
        notes.append(f"components={sample} exceeds the {layout.size} in θ: checked all of them")
    left_out, padding = padding_rows(model, names, layout)
    notes.extend(padding)
    notes.extend(hook_note(model, names))

    start = time.perf_counter()
    device = params[names[0]].device
    with (
        preserved_rng(),
        attention_fast_path_disabled(),
        dropout_disabled(model, disable=(drop == "off")),
        exchanging(partition) as split,
        progress_bar(show) as ticks,
    ):
        cost = ModuleCost(
            model,
            loss_fn,
            cast_batch(batch, precision, device),
            names,
            precision,
            seed,
            progress=ticks,
        )
        if check == "directions":
            search = search_directions(
                cost, layout, step, bands, spot=sample, seed=seed, left_out=left_out
            )
            indices = search.indices
            notes.append(search.note)
        else:
            indices = leave_out(sample_components(layout, sample, seed), left_out, layout, seed)
        ticks.plan(cost.evaluations + _planned(indices, layout, partition, drift_dtype))
        found, objective = compare(cost, layout, indices, step, split, seed, bands.pass_max)
        evaluations = objective.evaluations
        in_training = None
        if drift_dtype is not None:
            low = ModuleCost(
                model,
                loss_fn,
                cast_batch(batch, drift_dtype, device),
                names,
                drift_dtype,
                seed,
                progress=ticks,
            )
            in_training, spent = drift(low, layout, indices, found, split, seed)
            evaluations += spent
        evaluations, seconds, shared = split.finish(
            evaluations, time.perf_counter() - start, cost.describe()
        )
        notes.extend(shared)
        evidence = found.evidence
        report = GradCheckReport(
            layout=layout,
            indices=indices,
            analytic=found.analytic,
            numeric=found.numeric,
            epsilon=step,
            dtype=str(precision).removeprefix("torch."),
            evaluations=evaluations,
            seconds=seconds,
            thresholds=bands,
            notes=tuple(notes),
            failure=found.failure,
            mode=check,
            noise=None if evidence is None else evidence.noise,
            readings=None if evidence is None else evidence.reading,
            reasons=None if evidence is None else evidence.reason,
            rechecks=None if evidence is None else evidence.recheck,
            kinks=None if evidence is None else evidence.kink,
            plain_analytic=found.plain_analytic,
            plain_numeric=None if evidence is None else evidence.first_numeric,
            j_noise=found.noise,
            drift=in_training,
        )
        if report.reading_counts["disagrees"]:  # what kind of bug, and where it enters
            graph = trace_backward(model, loss_fn, batch, names, dtype=precision, seed=seed)
            report = diagnose(report, found.gradients, batch_size_of(batch), graph)
    return report


def _planned(
    indices: np.ndarray, layout: Layout, partition: Partition | None, drift: torch.dtype | None
) -> int:
    """The evaluations of J left once the components are chosen (progress's total)."""
    pairs = indices.size if partition is None else partition.share(indices.size).size
    tensors = np.unique(layout.tensor_of(indices)).size
    return expected_evaluations(pairs, tensors) * (2 if drift is not None else 1)
