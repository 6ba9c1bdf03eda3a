"""J as a function of θ for a torch module, evaluated on private float64 copies of its tensors,
one θ at a time or many perturbed copies of θ per call."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from gradwatch.common.blame import users_code
from gradwatch.common.user_state import reseed
from gradwatch.evaluation.batched_ops import BatchedOps
from gradwatch.evaluation.forward_only import functional, through_forward
from gradwatch.evaluation.lowrank import LowRankShift
from gradwatch.evaluation.perturbed import EntryWays, Shift
from gradwatch.evaluation.threads import ThreadChoice, torch_threads
from gradwatch.evaluation.vectorized import (
    DEFAULT_MEMORY_BUDGET,
    graph_uses,
    out_of_memory,
    unread_statistics,
)
from gradwatch.precision.guard import PrecisionGuard

LossFn = Callable[[nn.Module, Any], torch.Tensor]


DETACHED = (
    "`loss_fn` must return J computed from the checked parameters through autograd; the J it "
    "returned has no autograd graph back to any of them, so there is no backprop to check. The "
    "usual causes: `.item()`, `.detach()`, `torch.tensor(...)`, a numpy round trip or "
    "`torch.no_grad()` inside the loss, or an `include` that selects parameters J does not use"
)
CALLS_BACKWARD = (
    "`loss_fn` must return the cost J without calling .backward() on it: the check runs "
    "backprop itself; got a loss_fn that ran backward"
)
# What autograd says when backward runs through J after loss_fn already did (without
# retain_graph, and with the .grad it filled cleared again, so the check above missed it).
_SECOND_BACKWARD = "backward through the graph a second time"


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap in our tensors.

    ``then``, when given, is applied to J inside the call, while our tensors are still in the
    model: a backward that runs the forward again (activation checkpointing) must find them.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any, then: Callable[[Any], Any] | None = None) -> Any:
        with users_code():  # an error here is the user's, not gradwatch's (see common.blame)
            value = self.loss_fn(self.model, batch)
        return value if then is None else then(value)


def _scalar(value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            "`loss_fn` must return the cost J as a scalar torch.Tensor computed from the model; "
            f"got {type(value).__name__}"
        )
    if value.numel() != 1:
        raise ValueError(
            "`loss_fn` must return a scalar (one element) tensor, e.g. a mean over the batch; "
            f"got shape {tuple(value.shape)}"
        )
    return value.reshape(())


def _fixed_copies(
    model: nn.Module, names: Sequence[str], dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Private copies in ``dtype`` of every tensor of ``model`` not in ``names``, keyed as
    ``functional_call`` of a :class:`_LossModule` wants them, and of the buffers alone: what they
    held before any evaluation (a forward that writes one in place, BatchNorm's running
    statistics in train mode, shows as a difference later)."""
    wanted = set(names)
    fixed = {
        f"model.{n}": (p.detach().to(dtype=dtype) if p.is_floating_point() else p.detach()).clone()
        for n, p in model.named_parameters()
        if n not in wanted
    }
    initial: dict[str, torch.Tensor] = {}
    for n, b in model.named_buffers():
        cast = b.to(dtype=dtype) if b.is_floating_point() else b
        fixed[f"model.{n}"] = cast.detach().clone()
        initial[f"model.{n}"] = cast.detach().clone()
    return fixed, initial


class ModuleCost(EntryWays):
    """J(θ) for ``loss_fn(model, batch)``: θ is ``names``'s tensors, everything else held fixed.

    The model's own parameters and buffers are never written: every evaluation runs through
    ``torch.func.functional_call`` on copies in ``dtype`` (BatchNorm updates the copies' running
    statistics, not the model's). Before each evaluation every global RNG is re-seeded with
    ``seed``, so random draws in the forward are the same at every θ. Every evaluation runs with
    grad mode on, as backprop's does: a loss may run autograd itself (a gradient penalty), and
    some modules compute another function without grad (see ``attention_fast_path_disabled``).
    The copies of θ do not require grad, so no graph is kept for them.

    There are two ways to evaluate J, each with one entry point: ``_call`` (one θ, the plain
    loop: the reference) and ``_vmapped`` (many perturbed copies of θ in one call of
    ``torch.func.vmap``, ``randomness="same"``: one draw shared by all copies, the draw of a
    plain evaluation; what vmap refuses as written, old-style autograd.Functions and in-place
    writes, runs there for its values only, :mod:`gradwatch.evaluation.forward_only`); how the
    copies differ is chosen per tensor (:mod:`gradwatch.evaluation.perturbed`), in calls sized to
    ``memory_budget`` bytes (activations per copy, read off the gradient's graph, plus the copied
    tensors). ``paths`` and ``describe()`` say which way ran; ``vectorize=False`` always takes the
    loop. The loop's evaluations run on the thread count measured faster on them
    (:mod:`gradwatch.evaluation.threads`). Every evaluation runs under the precision guard
    (:mod:`gradwatch.precision.guard`; ``keep_precision``), and ``progress``, when given, is told
    how many evaluations each call has just made.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: Any,
        names: Sequence[str],
        dtype: torch.dtype,
        seed: int,
        vectorize: bool = True,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        progress: Callable[[int], None] | None = None,
        keep_precision: bool = False,
    ) -> None:
        super().__init__(vectorize, memory_budget)
        self._progress = progress
        self._model = model
        self._module = _LossModule(model, loss_fn)
        self._batch = batch
        self._seed = seed
        params = dict(model.named_parameters())
        # θ: one leaf per checked tensor, on the parameter's own device, in dtype.
        self.theta = [params[n].detach().to(dtype=dtype).clone() for n in names]
        self._flat = [t.view(-1) for t in self.theta]
        self.names = list(names)
        self._names = [f"model.{n}" for n in names]
        self._fixed, self._initial = _fixed_copies(model, names, dtype)
        self._written: set[str] = set()
        # Statistics a batched evaluation leaves out (see unread_statistics).
        self._unread = {f"model.{n}" for n in unread_statistics(model)} & set(self._fixed)
        self._uses: list[int] | None = None  # graph edges into each θ tensor (from gradient())
        self._bytes: int | None = None  # activation bytes of one evaluation
        self._threads = ThreadChoice()
        # What vmap refuses as written, run for values only (gradwatch.evaluation.forward_only): the
        # autograd.Functions run through their forward, and whether in-place writes needed
        # functionalize (None: not yet).
        self.through_forward: set[str] = set()
        self._functional: bool | None = None
        # Entered around every evaluation of J (and of its gradient): see gradwatch.precision.guard.
        self._guard = PrecisionGuard(model, dtype, keep_precision, self._probe)

    @property
    def precision_notes(self) -> list[str]:
        """Where the model's casts were kept in the check's dtype, and where precision leaks."""
        return self._guard.notes

    def moved(self, deltas: Sequence[torch.Tensor]) -> ModuleCost:
        """The same J at a nearby point, θ + ``deltas`` (one per checked tensor), sharing this
        one's fixed tensors and its choices of evaluation path; its evaluations count apart."""
        other = copy.copy(self)
        other.theta = [t + d.to(t) for t, d in zip(self.theta, deltas, strict=True)]
        other._flat = [t.view(-1) for t in other.theta]
        other.evaluations = 0
        return other

    def shifted(self, deltas: Mapping[str, torch.Tensor]) -> ModuleCost:
        """The same J with the parameters named in ``deltas`` (checked or held fixed) moved by
        them, on this cost's copies (the generic point of :mod:`gradwatch.check.generic_point`)."""
        other = self.moved([deltas.get(n, torch.zeros(())) for n in self.names])
        other._fixed = {
            k: v + deltas[k[6:]].to(v) if k[6:] in deltas else v for k, v in self._fixed.items()
        }  # keys are "model.<name>"
        return other

    def _count(self, count: int) -> None:
        super()._count(count)
        if self._progress is not None:
            self._progress(count)

    def _probe(self) -> None:
        """One evaluation of J: the precision guard decides on the first one."""
        with torch.enable_grad():
            self._call(self.theta)

    # -- the two ways of evaluating J -----------------------------------------------------------

    def _call(
        self, theta: Sequence[torch.Tensor], then: Callable[[torch.Tensor], Any] | None = None
    ) -> Any:
        """J at ``theta``, or ``then(J)``, under the precision guard (gradwatch.precision.guard)."""
        return self._guard.run(lambda: self._evaluate_at(theta, then))

    def _evaluate_at(
        self, theta: Sequence[torch.Tensor], then: Callable[[torch.Tensor], Any] | None = None
    ) -> Any:
        """J at ``theta``, or ``then(J)`` computed while ``theta`` is in the model."""
        reseed(self._seed)
        self._count(1)
        tensors = dict(self._fixed)
        tensors.update(zip(self._names, theta, strict=True))
        if then is None:
            return _scalar(functional_call(self._module, tensors, (self._batch,)))
        after = {"then": lambda value: then(_scalar(value))}
        return functional_call(self._module, tensors, (self._batch,), after)

    def _vmapped(
        self,
        batched: Mapping[int, torch.Tensor],
        shift: Shift | None = None,
        extra: tuple[torch.Tensor, ...] = (),
    ) -> np.ndarray:
        """J per copy: tensors ``batched`` (leading dim: copies), and ``shift`` fed ``extra``."""
        count = len(next(iter(batched.values())) if batched else extra[0])
        names = [self._names[t] for t in batched]
        # Buffers the forward writes in place get one copy per perturbed model (vmap cannot
        # write batched values into one shared tensor), but for the statistics J never reads.
        self._written.update(
            n for n, b in self._initial.items() if not torch.equal(b, self._fixed[n])
        )

        def one(
            values: tuple[torch.Tensor, ...], buffers: dict[str, torch.Tensor], *args: torch.Tensor
        ) -> torch.Tensor:
            tensors = dict(self._fixed)
            tensors.update(zip(self._names, self.theta, strict=True))
            tensors.update(zip(names, values, strict=True))
            tensors.update(dict.fromkeys(self._unread))  # type: ignore[arg-type]  # None: no update
            tensors.update(buffers)
            if shift is None:
                return _scalar(functional_call(self._module, tensors, (self._batch,)))
            shift.bind(*args)
            with shift.active():
                return _scalar(functional_call(self._module, tensors, (self._batch,)))

        def run(functionalized: bool) -> torch.Tensor:
            written = {  # fresh for each try: a failed one may have written into them
                n: self._fixed[n].expand(count, *self._fixed[n].shape).clone()
                for n in self._written - self._unread
            }
            if isinstance(shift, LowRankShift):
                shift.calls = 0
            reseed(self._seed)
            body = functional(one) if functionalized else one
            with through_forward(seen, every=functionalized):
                return vmap(body, randomness="same")(tuple(batched.values()), written, *extra)

        seen: set[str] = set()
        with (
            self._guard.evaluating(),
            torch.enable_grad(),
            BatchedOps(),
            torch_threads(self._threads.batched()),
            warnings.catch_warnings(),
        ):
            # Plain evaluations of the same J always came first and warned as the model does; a
            # warning here is vmap's own (an op without a batching rule) or a repeat.
            warnings.simplefilter("ignore")
            found = self._as_written_or_functional(run)
        self.through_forward |= seen
        self._count(count)
        return found.detach().to(torch.float64).cpu().numpy().reshape(count)

    def _as_written_or_functional(self, run: Callable[[bool], torch.Tensor]) -> torch.Tensor:
        """``run(functionalized)``: as written until vmap refused a call that functionalize
        then ran, functionalized from then on. vmap refuses in-place writes of batched values
        into a shared tensor with errors that name the op, not the cause, so any refusal but
        running out of memory is tried once more functionalized (its error is the one raised)."""
        try:
            return run(self._functional is True)
        except Exception as err:
            if self._functional is True or out_of_memory(err):
                raise
            try:
                found = run(True)
            except Exception:
                raise err from None
            self._functional = True
            return found

    # -- the public evaluations -------------------------------------------------------------------

    def value(self) -> float:
        """J at θ (no gradient is taken), on the thread count of plain evaluations (its time is
        one sample for that choice)."""
        count = self._threads.next()
        start = time.perf_counter()
        with torch.enable_grad(), torch_threads(count):
            found = float(self._call(self.theta).detach())
        self._threads.record(count, time.perf_counter() - start)
        return found

    def gradient(self) -> tuple[float, list[torch.Tensor]]:
        """J at θ and autograd's gradient (zeros where J does not depend on a tensor; sparse
        gradients, of ``nn.Embedding(sparse=True)``, made dense), on the thread count of plain
        evaluations (the forward's time is one sample for that choice)."""
        leaves = [t.clone().requires_grad_(True) for t in self.theta]
        count = self._threads.next()
        start = time.perf_counter()

        def backprop(cost: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor | None]]:
            self._threads.record(count, time.perf_counter() - start)  # the forward's time
            if any(leaf.grad is not None for leaf in leaves):
                raise TypeError(CALLS_BACKWARD)
            if not cost.requires_grad:  # J detached from θ: nothing to check, and no evidence
                raise ValueError(DETACHED)
            self._uses = graph_uses(cost, leaves)
            self._bytes = self._activations(cost, leaves)
            try:
                with users_code():  # backprop runs the user's backward functions
                    return cost.detach(), torch.autograd.grad(cost, leaves, allow_unused=True)
            except RuntimeError as err:
                if _SECOND_BACKWARD in str(err):
                    raise TypeError(CALLS_BACKWARD) from err
                raise

        with torch.enable_grad(), torch_threads(count):
            cost, grads = self._call(leaves, backprop)
        return float(cost), [
            torch.zeros_like(t) if g is None else (g.to_dense() if g.is_sparse else g).detach()
            for t, g in zip(self.theta, grads, strict=True)
        ]
