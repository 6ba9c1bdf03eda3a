"""The check of one eager module in one precision: the material's algorithm, with the evidence
model's readings (:mod:`gradwatch._evidence`) and, where something disagrees, the diagnosis."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gradwatch._comparison import compare, drift, noise_before
from gradwatch._directions import search_directions
from gradwatch._evaluate import LossFn, ModuleCost
from gradwatch._progress import expected_evaluations, progress_bar
from gradwatch._sampling import sample_components
from gradwatch._scope import checked_parameters, hook_note, leave_out, padding_rows
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
    check_epsilon,
    check_flag,
    check_sample,
    check_seed,
    check_thresholds,
    check_torch_dtype,
)
from gradwatch.diagnosis import batch_size_of, diagnose, trace_backward
from gradwatch.layout import Layout
from gradwatch.partition import Partition, exchanging
from gradwatch.report import GradCheckReport, Thresholds

__all__ = ["check_eager"]


def check_eager(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    epsilon: float | Literal["auto"],
    include: str | Sequence[str] | None,
    sample: int | None,
    dropout: str,
    dtype: torch.dtype,
    seed: int,
    thresholds: Thresholds | None,
    drift_dtype: torch.dtype | None,
    mode: str,
    partition: Partition | None,
    progress: bool,
    keep_precision: bool,
) -> GradCheckReport:
    """:func:`gradwatch.check_module` on an eager module in one ``dtype``."""
    step = check_epsilon(epsilon)
    names = checked_parameters(model, include)
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable (model, batch) -> J; got {loss_fn!r}")
    sample = check_sample(sample)
    drop = check_choice("dropout", dropout, DROPOUT_MODES)
    check = check_choice("mode", mode, CHECK_MODES)
    precision = check_torch_dtype(dtype)
    if drift_dtype is not None:
        check_torch_dtype(drift_dtype, "drift_dtype")
    seed = check_seed(seed)
    bands = check_thresholds(thresholds)
    first = not isinstance(partition, Partition) or partition.rank == 0  # else checked below
    show = check_flag("progress", progress) and first
    keep = check_flag("keep_precision", keep_precision)
    params = dict(model.named_parameters())
    layout = Layout(tuple(names), tuple(tuple(params[n].shape) for n in names))
    notes: list[str] = []
    if sample is not None and sample > layout.size:
        notes.append(f"sample={sample} exceeds the {layout.size} components of θ: checked them all")
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
            keep_precision=keep,
        )
        measured = None
        if check == "directions":
            measured = noise_before(cost, layout, step, split, seed)
            search = search_directions(
                cost, layout, step, bands, spot=sample, seed=seed, left_out=left_out,
                sigma=measured.effective,
            )  # fmt: skip
            indices = search.indices
            notes.append(search.note)
        else:
            indices = leave_out(sample_components(layout, sample, seed), left_out, layout, seed)
        ticks.plan(cost.evaluations + _planned(indices, layout, partition, drift_dtype))
        found, objective = compare(
            cost, layout, indices, step, split, seed, bands.pass_max, measured
        )
        notes.extend(cost.precision_notes)
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
