"""The check of one eager module in one precision: the material's algorithm, with the evidence
model's readings (:mod:`gradwatch.evidence.model`) and, where something disagrees, the diagnosis."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gradwatch.arguments import (
    CHECK_MODES,
    DROPOUT_MODES,
    check_choice,
    check_epsilon,
    check_flag,
    check_memory_budget,
    check_sample,
    check_seed,
    check_thresholds,
    check_torch_dtype,
)
from gradwatch.check.comparison import Comparison, compare, drift, noise_before
from gradwatch.check.directions import search_directions
from gradwatch.check.generic_point import generic_deltas, scales_at_zero, to_generic_point
from gradwatch.check.product_rule import name_missing_terms
from gradwatch.check.sampling import sample_components
from gradwatch.check.scope import checked_parameters, hook_note, leave_out, padding_rows
from gradwatch.common.user_state import (
    attention_fast_path_disabled,
    dropout_disabled,
    preserved_rng,
)
from gradwatch.diagnosis import batch_size_of, diagnose, trace_backward
from gradwatch.evaluation.context import CheckContext
from gradwatch.evaluation.cost import LossFn, ModuleCost
from gradwatch.evaluation.vectorized import DEFAULT_MEMORY_BUDGET
from gradwatch.evidence.noise import JNoise
from gradwatch.layout import Layout
from gradwatch.partition import Exchange, Partition, exchanging
from gradwatch.report import GradCheckReport, PrecisionDrift, Thresholds
from gradwatch.reporting.progress import expected_evaluations, progress_bar

__all__ = ["check_eager"]


@dataclass(frozen=True)
class _Options:
    """The arguments of one check, validated (each by the engine's rule for it)."""

    step: float | Literal["auto"]
    sample: int | None
    dropout: str
    mode: str
    dtype: torch.dtype
    drift_dtype: torch.dtype | None
    seed: int
    bands: Thresholds
    progress: bool
    keep_precision: bool
    memory_budget: int


def _options(options: dict[str, Any], partition: Partition | None) -> _Options:
    drift_dtype = options["drift_dtype"]
    first = not isinstance(partition, Partition) or partition.rank == 0  # else checked below
    return _Options(
        step=check_epsilon(options["epsilon"]),
        sample=check_sample(options["sample"]),
        dropout=check_choice("dropout", options["dropout"], DROPOUT_MODES),
        mode=check_choice("mode", options["mode"], CHECK_MODES),
        dtype=check_torch_dtype(options["dtype"]),
        drift_dtype=None if drift_dtype is None else check_torch_dtype(drift_dtype, "drift_dtype"),
        seed=check_seed(options["seed"]),
        bands=check_thresholds(options["thresholds"]),
        progress=check_flag("progress", options["progress"]) and first,
        keep_precision=check_flag("keep_precision", options["keep_precision"]),
        memory_budget=check_memory_budget(options["memory_budget"], DEFAULT_MEMORY_BUDGET),
    )


def check_eager(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    include: str | Sequence[str] | None,
    partition: Partition | None,
    **options: Any,
) -> GradCheckReport:
    """:func:`gradwatch.check_module` on an eager module in one ``dtype`` (``options``: its
    keyword arguments, each validated here): the material's algorithm, then the diagnosis."""
    names = checked_parameters(model, include)
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable (model, batch) -> J; got {loss_fn!r}")
    o = _options(options, partition)
    params = dict(model.named_parameters())
    layout = Layout(tuple(names), tuple(tuple(params[n].shape) for n in names))
    left_out, notes = _scope(model, names, layout, o.sample)
    start = time.perf_counter()
    with (
        preserved_rng(),
        attention_fast_path_disabled(),
        dropout_disabled(model, disable=(o.dropout == "off")),
        exchanging(partition) as split,
        progress_bar(o.progress) as ticks,
    ):
        context = CheckContext(
            model, loss_fn, batch, tuple(names), o.dtype, o.seed, o.keep_precision, o.memory_budget
        )
        cost = context.cost(ticks)
        indices, measured, chosen = _components(cost, layout, o, split, left_out)
        ticks.plan(cost.evaluations + _planned(indices, layout, partition, o.drift_dtype))
        found, objective = compare(
            cost, layout, indices, o.step, split, o.seed, o.bands.pass_max, measured,
            o.bands.warn_max,
        )  # fmt: skip
        evaluations, in_training = objective.evaluations, None
        found, spent, generic = _generic_point(context, layout, indices, found, o, split, ticks)
        evaluations += spent
        if o.drift_dtype is not None:
            # the training precision's repeat runs the model as written
            low = replace(context, dtype=o.drift_dtype, keep_precision=False).cost(ticks)
            in_training, spent = drift(low, layout, indices, found, split, o.seed)
            evaluations += spent
        evaluations, seconds, shared = split.finish(
            evaluations, time.perf_counter() - start, cost.describe()
        )
        notes = (*notes, *chosen, *cost.precision_notes, *generic, *shared)
        report = _report(layout, indices, found, o, evaluations, seconds, notes, in_training)
        if report.reading_counts["disagrees"]:  # what kind of bug, and where it enters
            graph = trace_backward(model, loss_fn, batch, names, dtype=o.dtype, seed=o.seed)
            report = diagnose(report, found.gradients, batch_size_of(batch), graph)
            report = name_missing_terms(report, model, lambda generic: _point(context, generic))
    return report


def _generic_point(
    context: CheckContext,
    layout: Layout,
    indices: np.ndarray,
    found: Comparison,
    o: _Options,
    split: Exchange,
    ticks: Any,
) -> tuple[Comparison, int, tuple[str, ...]]:
    """``found`` with the tensors left without a gradient at θ read at the generic point where
    they are judged there (:mod:`gradwatch.check.generic_point`), the evaluations it took, and its
    note."""
    model = context.model
    if o.mode != "components" or found.evidence is None or not scales_at_zero(model):
        return found, 0, ()  # nothing to move: no report at θ to build
    at_theta = _report(layout, indices, found, o, 0, 0.0, (), None)
    moved = to_generic_point(
        model, lambda names: replace(context, names=tuple(names)).cost(ticks), at_theta,
        found, o.step, split, o.seed,
    )  # fmt: skip
    merged, point, spent = moved
    return merged, spent, () if point is None else (point.note,)


def _point(context: CheckContext, generic: bool) -> ModuleCost:
    """J over every checked tensor at θ, or at the generic point
    (:mod:`gradwatch.check.generic_point`)."""
    cost, model = context.cost(), context.model
    if not generic:
        return cost
    return cost.shifted(generic_deltas(model, scales_at_zero(model), context.seed))


def _scope(
    model: nn.Module, names: Sequence[str], layout: Layout, sample: int | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The components left out (embeddings' padding rows), and the notes on what the check
    leaves out or cannot see."""
    notes: list[str] = []
    if sample is not None and sample > layout.size:
        notes.append(f"sample={sample} exceeds the {layout.size} components of θ: checked them all")
    left_out, padding = padding_rows(model, names, layout)
    return left_out, (*notes, *padding, *hook_note(model, names))


def _components(
    cost: ModuleCost, layout: Layout, o: _Options, split: Exchange, left_out: np.ndarray
) -> tuple[np.ndarray, JNoise | None, tuple[str, ...]]:
    """The components to check one by one: a sample (or all), or those the directional search
    points at; J's noise where the search measured it already; the search's note."""
    if o.mode != "directions":
        sampled = sample_components(layout, o.sample, o.seed)
        return leave_out(sampled, left_out, layout, o.seed), None, ()
    measured = noise_before(cost, layout, o.step, split, o.seed)
    search = search_directions(
        cost, layout, o.step, o.bands, spot=o.sample, seed=o.seed, left_out=left_out,
        sigma=measured.effective,
    )  # fmt: skip
    return search.indices, measured, (search.note,)


def _report(
    layout: Layout,
    indices: np.ndarray,
    found: Comparison,
    o: _Options,
    evaluations: int,
    seconds: float,
    notes: tuple[str, ...],
    in_training: PrecisionDrift | None,
) -> GradCheckReport:
    evidence = found.evidence
    return GradCheckReport(
        layout=layout,
        indices=indices,
        analytic=found.analytic,
        numeric=found.numeric,
        epsilon=o.step,
        dtype=str(o.dtype).removeprefix("torch."),
        evaluations=evaluations,
        seconds=seconds,
        thresholds=o.bands,
        notes=notes,
        failure=found.failure,
        mode=o.mode,
        numeric_noise=None if evidence is None else evidence.noise,
        readings=None if evidence is None else evidence.reading,
        reasons=None if evidence is None else evidence.reason,
        rechecks=None if evidence is None else evidence.recheck,
        kinks=None if evidence is None else evidence.kink,
        plain_analytic=found.plain_analytic,
        plain_numeric=None if evidence is None else evidence.first_numeric,
        j_noise=found.noise,
        drift=in_training,
    )


def _planned(
    indices: np.ndarray, layout: Layout, partition: Partition | None, drift: torch.dtype | None
) -> int:
    """The evaluations of J left once the components are chosen (progress's total)."""
    pairs = indices.size if partition is None else partition.share(indices.size).size
    tensors = np.unique(layout.tensor_of(indices)).size
    return expected_evaluations(pairs, tensors) * (2 if drift is not None else 1)
