"""The gradient check of a whole torch module: θ is every trainable parameter."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from gradwatch.arguments import check_seed, check_torch_dtype, removed_keywords
from gradwatch.check.eager import check_eager
from gradwatch.check.input_errors import restated
from gradwatch.check.scope import checked_parameters
from gradwatch.evaluation.context import CheckContext
from gradwatch.evaluation.cost import LossFn
from gradwatch.partition import Partition
from gradwatch.report import GradCheckReport, Thresholds
from gradwatch.training.compiled import EagerView, eager_names
from gradwatch.training.float32_fallback import Counted, in_a_precision_j_runs, lower_precision
from gradwatch.training.gradient_runs import compare_training_path
from gradwatch.training_path import TrainingPath, check_training_path

# LossFn (the type of ``loss_fn``), CheckMode and DropoutMode (those of ``mode`` and ``dropout``)
# are public here with check_module, for integrations (gradwatch.integration holds the rest).
__all__ = ["CheckMode", "DropoutMode", "LossFn", "check_module", "checked_parameters"]

DropoutMode = Literal["off", "freeze"]
CheckMode = Literal["components", "directions"]


@removed_keywords(components="`sample`")
def check_module(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    epsilon: float | Literal["auto"] = 1e-7,
    include: str | Sequence[str] | None = None,
    sample: int | None = None,
    dropout: DropoutMode = "off",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    drift_dtype: torch.dtype | None = None,
    mode: CheckMode = "components",
    partition: Partition | None = None,
    progress: bool = True,
    training_path: bool | TrainingPath = False,
    keep_precision: bool = True,
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

    A compiled model (``torch.compile(model)``, ``model.compile()``, compiled submodules) is
    checked through the eager code it wraps, with the eager module's parameter names: nothing is
    traced or run compiled (see :mod:`gradwatch.training.compiled`). Where J cannot be evaluated in
    ``dtype`` (an operation with a float32 kernel only) but can in a lower precision, the check
    runs in the highest such precision with ``epsilon="auto"``, judged against that precision's
    measured noise; the notes say so.

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
        sample: ``None`` checks every component; an int k a reproducible sample of k
            components spread over every parameter tensor (seeded by ``seed``).
        dropout: ``"off"``: dropout layers are the identity during the check; ``"freeze"``: one
            mask is drawn and reused for every evaluation.
        dtype: the precision of the check.
        seed: seed of the component sample and of every random draw inside J.
        thresholds: verdict bands; default pass ≤ 1e-7 < warn ≤ 1e-3 < fail.
        drift_dtype: optionally repeat the check in a training precision (torch.float32,
            torch.bfloat16) and report in ``report.drift`` how far its gradient drifts from the
            float64 one: whether a custom backward is numerically fragile.
        mode: ``"components"`` checks components one by one (all, or ``sample`` of them);
            ``"directions"`` (large models) compares random ±1 directions per tensor first,
            localizes the components of failing tensors by bisection and checks those one by
            one, plus each tensor's largest-gradient component and ``sample`` spread over
            every tensor (default none); see :mod:`gradwatch.check.directions`. ``report.mode`` says
            which ran, the notes what the directions found.
        partition: in data-parallel training, this process's :class:`gradwatch.Partition`:
            every process calls ``check_module`` with the same arguments, evaluates its share
            of the components, and returns the same report (or raises, when any process's
            part raised). The directional search (``mode="directions"``) runs in every process.
        progress: show a bar with the evaluations of J done and the time left, on stderr, for a
            check that runs more than a couple of seconds (with a partition: in process 0
            only); ``False`` shows nothing.
        training_path: also compare the gradient that trains with the checked one: ``True``
            for the model as given (compiled, in its own dtype), or a
            :class:`gradwatch.TrainingPath` naming the autocast of mixed precision; the result
            is ``report.training_path`` (see :mod:`gradwatch.training_path`), and a parameter
            that breaks its rule makes the report fail. Off by default: it costs seven
            forward and backward passes in the training precision and one in ``dtype``.
        memory_budget: bytes one batched evaluation (many perturbed copies of θ in one
            ``torch.func.vmap`` call) may hold: activations per copy, read off the gradient's
            graph, plus any copied parameter tensors. Default 1 GiB. A smaller budget means
            more, smaller calls, never the one-at-a-time loop; a call that runs out of memory
            anyway is retried in halves.
        keep_precision: ``True`` (default): while J and its gradient are evaluated, casts in
            the model's own code to a less precise dtype (``.float()``, ``.to(torch.float32)``,
            ``dtype=`` of factories and ops) keep ``dtype``, and the notes name where (see
            :mod:`gradwatch.precision.guard`); ``False`` runs the model as written.

    Returns:
        A :class:`GradCheckReport` whose parameter names are those of ``named_parameters()``
        (of the eager module, for a compiled one).

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
    try:
        path = check_training_path(training_path)
        precision, seed = check_torch_dtype(dtype), check_seed(seed)
        if not isinstance(model, nn.Module):
            checked_parameters(model)  # raises the TypeError that says what a model must be
        view = EagerView(model)
        include = eager_names(include)
        counted = Counted(loss_fn) if callable(loss_fn) else loss_fn
        run = functools.partial(
            check_eager, view.module, counted, batch, include=include,
            sample=sample,
            dropout=dropout, seed=seed, thresholds=thresholds, drift_dtype=drift_dtype, mode=mode,
            partition=partition, progress=progress, keep_precision=keep_precision,
            memory_budget=memory_budget,
        )  # fmt: skip
        with view.applied():
            report = in_a_precision_j_runs(
                run, counted, precision, epsilon,
                lambda: lower_precision(
                    CheckContext(
                        view.module, loss_fn, batch,
                        tuple(checked_parameters(view.module, include)), precision, seed,
                    ),
                    dropout == "off",
                ),
            )  # fmt: skip
        compiled = view.note(compared=path is not None)
        if compiled is not None:
            report = replace(report, notes=(compiled, *report.notes))
        if path is None:
            return report
        start = time.perf_counter()
        reference = CheckContext(
            view.module, loss_fn, batch, report.layout.names, getattr(torch, report.dtype), seed
        )
        found = compare_training_path(view, reference, path)
        seconds = report.seconds + time.perf_counter() - start
        return replace(report, training_path=found, seconds=seconds)
    except Exception as err:  # an argument error found deep inside, told from here
        public = restated(err, model, batch, dtype)
        if public is None:
            raise
        raise public from None
