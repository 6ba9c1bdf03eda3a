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
from torch.utils._pytree import tree_leaves

from gradwatch._batched_ops import BatchedOps
from gradwatch._blame import users_code
from gradwatch._chunks import Runs
from gradwatch._lowrank import LowRankShift, NotLowRank
from gradwatch._pool import SharedCalls
from gradwatch._precision import PrecisionGuard
from gradwatch._shift import Entry, EntryShifts
from gradwatch._state import reseed
from gradwatch._threads import ThreadChoice, pair_units, torch_threads
from gradwatch._vectorize import (
    DEFAULT_MEMORY_BUDGET,
    graph_uses,
    linear_owner,
    saved_bytes,
    unread_statistics,
)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Shift = LowRankShift | EntryShifts


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
        with users_code():  # an error here is the user's, not gradwatch's (see _blame)
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


class ModuleCost(SharedCalls):
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
    plain evaluation). How the copies differ is chosen per tensor (:mod:`gradwatch._chunks`,
    :mod:`gradwatch._pool`): a perturbed ``nn.Linear`` entry as a low-rank update of the layer's
    output, an entry of a convolution, embedding or linear layer as a change of that layer's
    output (:mod:`gradwatch._shift`), or copies of the whole tensor. Calls are sized to
    ``memory_budget`` bytes (measured activations per copy, plus the copied tensors), and a call
    that runs out of memory is retried in halves. Each path is used for a tensor only after it
    reproduced the plain J on a first pair of perturbations; otherwise that tensor falls back to
    the plain loop. ``paths`` and ``describe()`` say which path ran; ``vectorize=False`` always
    takes the loop. The loop's evaluations run on the thread count measured faster on them
    (:mod:`gradwatch._threads`); the user's count is put back after each. Every evaluation runs
    under the precision guard (:mod:`gradwatch._precision`; ``keep_precision``), and
    ``progress``, when given, is told how many evaluations each call has just made.
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
        wanted = set(names)
        params = dict(model.named_parameters())
        # θ: one leaf per checked tensor, on the parameter's own device, in dtype.
        self.theta = [params[n].detach().to(dtype=dtype).clone() for n in names]
        self._flat = [t.view(-1) for t in self.theta]
        self.names = list(names)
        self._names = [f"model.{n}" for n in names]
        fixed: dict[str, torch.Tensor] = {
            f"model.{n}": (
                p.detach().to(dtype=dtype) if p.is_floating_point() else p.detach()
            ).clone()
            for n, p in params.items()
            if n not in wanted
        }
        # What the buffers held before any evaluation: a forward that writes one in place
        # (BatchNorm's running statistics in train mode) shows as a difference later.
        self._initial: dict[str, torch.Tensor] = {}
        for n, b in model.named_buffers():
            cast = b.to(dtype=dtype) if b.is_floating_point() else b
            fixed[f"model.{n}"] = cast.detach().clone()
            self._initial[f"model.{n}"] = cast.detach().clone()
        self._fixed = fixed
        self._written: set[str] = set()
        # Statistics a batched evaluation leaves out (see unread_statistics).
        self._unread = {f"model.{n}" for n in unread_statistics(model)} & set(fixed)
        self._uses: list[int] | None = None  # graph edges into each θ tensor (from gradient())
        self._bytes: int | None = None  # activation bytes of one evaluation
        self._threads = ThreadChoice()
        # Entered around every evaluation of J (and of its gradient): see gradwatch._precision.
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
        """J at ``theta``, or ``then(J)``, under the precision guard (gradwatch._precision)."""
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
        written = {
            n: self._fixed[n].expand(count, *self._fixed[n].shape).clone()
            for n in self._written - self._unread
        }

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
            reseed(self._seed)
            found = vmap(one, randomness="same")(tuple(batched.values()), written, *extra)
        self._count(count)
        return found.detach().to(torch.float64).cpu().numpy().reshape(count)

    # -- the public evaluations -------------------------------------------------------------------

    def flat_values(self, indices: np.ndarray) -> torch.Tensor:
        """θ's values at flat ``indices`` (in the check's dtype, on the first tensor's device)."""
        flat = torch.cat([t.reshape(-1).to(self.theta[0].device) for t in self.theta])
        return flat[torch.as_tensor(indices, device=flat.device)]

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

    def pairs(
        self, tensor: np.ndarray, local: np.ndarray, steps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """J(θ + h·e_i) and J(θ − h·e_i) for each component (``tensor``, ``local``) and step h.

        θ_i ± h is rounded in the check's dtype, the same for every evaluation path.
        """
        plus = np.empty(len(local))
        minus = np.empty(len(local))
        groups, rows = {}, {}
        for t in np.unique(np.asarray(tensor, dtype=np.int64)).tolist():
            rows[t] = np.flatnonzero(tensor == t)
            flat = self._flat[t]
            index = torch.as_tensor(np.asarray(local)[rows[t]], device=flat.device)
            h = torch.as_tensor(np.asarray(steps)[rows[t]], device=flat.device).to(flat.dtype)
            base = flat[index]
            values = torch.stack((base + h, base - h), dim=1).reshape(-1)
            groups[t] = (index.repeat_interleave(2), values)
        for t, found in self._entry_groups(groups).items():
            plus[rows[t]], minus[rows[t]] = found[0::2], found[1::2]
        return plus, minus

    def at(self, values: Mapping[int, torch.Tensor], label: str | None = None) -> np.ndarray:
        """J with θ's tensor ``t`` replaced by ``values[t][k]``, for every k (directions).

        Example: ``cost.at({0: torch.stack([w + e * u, w - e * u])})`` → [J(w + εu), J(w − εu)].
        """
        count = len(next(iter(values.values())))
        key = ("at", tuple(sorted(values)))
        where = (
            "θ" if len(values) == len(self.theta) > 1 else "+".join(self.names[t] for t in key[1])
        )

        def part(lo: int, hi: int) -> dict[int, torch.Tensor]:
            return {t: v[lo:hi] for t, v in values.items()}

        runs: Runs = {
            "vmap": lambda lo, hi: self._vmapped(part(lo, hi)),
            "loop": lambda lo, hi: self._loop_at(part(lo, hi)),
        }
        copied = sum(self.theta[t].numel() * self.theta[t].element_size() for t in values)
        return self._chunked(key, label or f"directions on {where}", ["vmap"], runs, count, copied)

    # -- what the batched paths need (see Chunks) -------------------------------------------------

    def _linear(self, t: int, index: torch.Tensor, values: torch.Tensor) -> np.ndarray:
        owner = linear_owner(self._model, self.names[t])
        assert owner is not None
        module, kind = owner
        columns = self.theta[t].shape[-1] if kind == "weight" else 1
        shift = LowRankShift(kind, module, self.theta[t])
        handle = module.register_forward_hook(shift)
        try:
            step = values - self._flat[t][index]  # exact: the change the plain loop makes
            found = self._vmapped({}, shift, (step, index // columns, index % columns))
        finally:
            handle.remove()
        if shift.calls != 1:
            raise NotLowRank(f"the layer ran {shift.calls} times in one evaluation of J")
        return found

    def _mixed(
        self, tensor: torch.Tensor, index: torch.Tensor, values: torch.Tensor, shifted: set[int]
    ) -> np.ndarray:
        """J per copy k, entry ``index[k]`` of θ's tensor ``tensor[k]`` set to ``values[k]``:
        tensors in ``shifted`` through their layer's output, the others as batched copies."""
        count = len(index)
        batched, entries = {}, []
        base = values.clone()
        for t in torch.unique(tensor).tolist():
            rows = torch.nonzero(tensor == t).reshape(-1)
            if t in shifted:
                owner = self._shift_owner(t)
                assert owner is not None
                entries.append(Entry(t, owner[0], owner[1], self.theta[t]))
                base[rows] = self._flat[t][index[rows]]
                continue
            copies = self._flat[t].repeat(count, 1)
            copies[rows, index[rows]] = values[rows]
            batched[t] = copies.view(count, *self.theta[t].shape)
        if not entries:
            return self._vmapped(batched)
        step = values - base  # exact: the change the plain loop makes
        return self._vmapped(batched, EntryShifts(entries), (tensor, index, step))

    def _loop_entries(self, t: int, index: torch.Tensor, values: torch.Tensor) -> np.ndarray:
        flat = self._flat[t]

        def one(k: int) -> float:
            i = int(index[k])
            original = flat[i].clone()
            try:
                flat[i] = values[k]
                return float(self._call(self.theta).detach())
            finally:
                flat[i] = original

        with torch.enable_grad():
            return self._threads.run(pair_units(len(index)), one)

    def _loop_at(self, values: Mapping[int, torch.Tensor]) -> np.ndarray:
        count = len(next(iter(values.values())))

        def one(k: int) -> float:
            theta = list(self.theta)
            for t, v in values.items():
                theta[t] = v[k]
            return float(self._call(theta).detach())

        # One thread count for the call: its values may be combined in any way (a stencil).
        with torch.enable_grad():
            return self._threads.run([list(range(count))], one)

    def _activations(self, cost: torch.Tensor, leaves: Sequence[torch.Tensor]) -> int:
        held = [*leaves, *self._fixed.values()]
        held += [t for t in tree_leaves(self._batch) if isinstance(t, torch.Tensor)]
        return saved_bytes(cost, exclude=held)

    def _evaluation_bytes(self) -> int:
        """Activation bytes of one evaluation (read off gradient()'s graph, or measured)."""
        if self._bytes is None:
            leaves = [t.clone().requires_grad_(True) for t in self.theta]
            try:
                with torch.enable_grad():
                    self._bytes = self._call(leaves, lambda c: self._activations(c, leaves))
            except Exception:  # J does not run with θ requiring grad: guess from the tensors
                held = [*self.theta, *self._fixed.values()]
                self._bytes = sum(t.numel() * t.element_size() for t in held)
        return int(self._bytes or 0)

    def describe(self) -> str:
        """One line for the report: which evaluation path ran for which tensors, and the thread
        count the plain evaluations ran on when the check chose it."""
        text = super().describe()
        threads = self._threads.describe()
        return text if threads is None else f"{text}; {threads}"
