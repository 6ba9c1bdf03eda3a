"""J as a function of θ for a torch module, evaluated on private float64 copies of its tensors,
one θ at a time or many perturbed copies of θ per call."""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from gradwatch._blame import users_code
from gradwatch._lowrank import LowRankShift
from gradwatch._precision import PrecisionGuard
from gradwatch._state import reseed
from gradwatch._vectorize import (
    Way,
    agreement,
    copies_per_call,
    graph_uses,
    linear_owner,
    produced_bytes,
)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
# The label of the evaluations that measure J's noise (gradwatch._noise), which describe() leaves
# out: they move no one tensor's components.
PROBES = "noise probes"


CALLS_BACKWARD = (
    "`loss_fn` must return the cost J without calling .backward() on it: the check runs "
    "backprop itself; got a loss_fn that ran backward"
)
DETACHED = (
    "`loss_fn` must return J computed from the checked parameters through autograd; the J it "
    "returned has no autograd graph back to any of them, so there is no backprop to check. The "
    "usual causes: `.item()`, `.detach()`, `torch.tensor(...)`, a numpy round trip or "
    "`torch.no_grad()` inside the loss, or an `include` that selects parameters J does not use"
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


def _gap(batched: np.ndarray, plain: np.ndarray) -> float:
    """Largest |batched − plain| / |plain| (0 where both are the same NaN or infinity)."""
    same = (batched == plain) | (np.isnan(batched) & np.isnan(plain))
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(batched - plain) / np.maximum(np.abs(plain), np.finfo(np.float64).tiny)
    return float(np.max(np.where(same, 0.0, np.nan_to_num(gap, nan=np.inf)), initial=0.0))


def _why(err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {textwrap.shorten(first, 200, placeholder=' …')}"


class ModuleCost:
    """J(θ) for ``loss_fn(model, batch)``: θ is ``names``'s tensors, everything else held fixed.

    The model's own parameters and buffers are never written: every evaluation runs through
    ``torch.func.functional_call`` on copies in ``dtype`` (BatchNorm updates the copies' running
    statistics, not the model's). Before each evaluation every global RNG is re-seeded with
    ``seed``, so random draws in the forward are the same at every θ. Every evaluation runs with
    grad mode on, as backprop's does: a loss may run autograd itself (a gradient penalty), and
    some modules compute another function without grad (see ``attention_fast_path_disabled``).
    The copies of θ do not require grad, so no graph is kept for them.

    Many perturbed copies are evaluated per call with ``torch.func.vmap`` (``randomness="same"``:
    one draw shared by all copies, the draw of a plain evaluation), in chunks sized from the
    measured memory of one evaluation. A perturbed ``nn.Linear`` entry becomes a low-rank update
    of the layer's output instead of a batched weight. Each path is used for a tensor only after
    it reproduced the plain J on a first pair of perturbations; otherwise (vmap cannot run the
    module, or disagrees) that tensor falls back to the plain loop. ``paths`` and ``describe()``
    say which path ran; ``vectorize=False`` always takes the loop (the reference).
    ``progress``, when given, is called with the number of evaluations of J each call (one
    plain evaluation, or one batched chunk) has just made.
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
        progress: Callable[[int], None] | None = None,
        keep_precision: bool = False,
    ) -> None:
        self._model = model
        self._progress = progress
        self._vectorize = vectorize
        self._module = _LossModule(model, loss_fn)
        self._batch = batch
        self._seed = seed
        self.evaluations = 0
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
        self._uses: list[int] | None = None  # graph edges into each θ tensor (from gradient())
        self._bytes: int | None = None  # bytes one evaluation produces
        self._ways: dict[Hashable, Way] = {}
        self.paths: dict[str, Way] = {}
        self.reasons: dict[str, str] = {}
        self._batched: set[str] = set()  # labels evaluated vectorized beyond the first pair
        self.largest_call = 0
        # Entered around every evaluation of J (and of its gradient): see gradwatch._precision.
        self._guard = PrecisionGuard(model, dtype, keep_precision, self._probe)

    @property
    def precision_notes(self) -> list[str]:
        """Where the model's casts were kept in the check's dtype, and where precision leaks."""
        return self._guard.notes

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

    def moved(self, deltas: Sequence[torch.Tensor]) -> ModuleCost:
        """The same J at a nearby point, θ + ``deltas`` (one per checked tensor), sharing this
        one's fixed tensors and its choices of evaluation path; its evaluations count apart."""
        other = copy.copy(self)
        other.theta = [t + d.to(t) for t, d in zip(self.theta, deltas, strict=True)]
        other._flat = [t.view(-1) for t in other.theta]
        other.evaluations = 0
        return other

    def _count(self, count: int) -> None:
        self.evaluations += count
        if self._progress is not None:
            self._progress(count)

    def _probe(self) -> None:
        """One evaluation of J: the precision guard decides on the first one."""
        with torch.enable_grad():
            self._call(self.theta)

    def flat_values(self, indices: np.ndarray) -> torch.Tensor:
        """θ's values at flat ``indices`` (in the check's dtype, on the first tensor's device)."""
        flat = torch.cat([t.reshape(-1).to(self.theta[0].device) for t in self.theta])
        return flat[torch.as_tensor(indices, device=flat.device)]

    def value(self) -> float:
        """J at θ (no gradient is taken)."""
        with torch.enable_grad():
            return float(self._call(self.theta).detach())

    def gradient(self) -> tuple[float, list[torch.Tensor]]:
        """J at θ and autograd's gradient (zeros where J does not depend on a tensor; sparse
        gradients, of ``nn.Embedding(sparse=True)``, made dense)."""
        leaves = [t.clone().requires_grad_(True) for t in self.theta]

        def backprop(cost: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor | None]]:
            if any(leaf.grad is not None for leaf in leaves):
                raise TypeError(CALLS_BACKWARD)
            if not cost.requires_grad:  # J detached from θ: nothing to check, and no evidence
                raise ValueError(DETACHED)
            self._uses = graph_uses(cost, leaves)
            try:
                with users_code():  # backprop runs the user's backward functions
                    return cost.detach(), torch.autograd.grad(cost, leaves, allow_unused=True)
            except RuntimeError as err:
                if _SECOND_BACKWARD in str(err):
                    raise TypeError(CALLS_BACKWARD) from err
                raise

        with torch.enable_grad():
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
        for t in np.unique(np.asarray(tensor, dtype=np.int64)):
            rows = np.flatnonzero(tensor == t)
            flat = self._flat[int(t)]
            index = torch.as_tensor(np.asarray(local)[rows], device=flat.device)
            h = torch.as_tensor(np.asarray(steps)[rows], device=flat.device).to(flat.dtype)
            base = flat[index]
            values = torch.stack((base + h, base - h), dim=1).reshape(-1)
            found = self._entries(int(t), index.repeat_interleave(2), values)
            plus[rows], minus[rows] = found[0::2], found[1::2]
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
        label = label or f"directions on {where}"

        def part(lo: int, hi: int) -> dict[int, torch.Tensor]:
            return {t: v[lo:hi] for t, v in values.items()}

        runs: dict[Way, Callable[[int, int], np.ndarray]] = {
            "vmap": lambda lo, hi: self._vmapped(part(lo, hi)),
            "loop": lambda lo, hi: self._loop_at(part(lo, hi)),
        }
        copied = sum(self.theta[t].numel() for t in values)
        return self._chunked(key, label, ["vmap"], runs, count, copied)

    def describe(self) -> str:
        """One line for the report: which evaluation path ran for which tensors.

        A tensor whose vectorized path was validated but had nothing left to batch after the
        first pair (a small sample: one or two components) was evaluated by the plain loop, and
        is named so.
        """
        paths = {n: v for n, v in self.paths.items() if n != PROBES}
        if not paths:
            return "evaluation: no perturbed evaluations"
        batched = {n: v for n, v in paths.items() if v != "loop" and n in self._batched}
        by_way = {w: [n for n, v in batched.items() if v == w] for w in ("linear", "vmap")}
        parts = []
        if batched:
            text = f"vectorized (torch.func.vmap, up to {self.largest_call} copies per call"
            if by_way["linear"]:
                text += f"; low-rank nn.Linear updates for {_listing(by_way['linear'])}"
            parts.append(text + ")")
        loops = [n for n, v in paths.items() if v == "loop"]
        if loops:
            why = "; ".join(f"{n}: {self.reasons[n]}" for n in loops[:2] if n in self.reasons)
            parts.append(f"plain loop for {_listing(loops)}" + (f" ({why})" if why else ""))
        few = [n for n, v in paths.items() if v != "loop" and n not in batched]
        if few:
            parts.append(f"plain loop for {_listing(few)} (too few evaluations to batch)")
        return "evaluation: " + "; ".join(parts)

    # -- the three ways of evaluating many entries of one tensor -------------------------------

    def _entries(self, t: int, index: torch.Tensor, values: torch.Tensor) -> np.ndarray:
        """J with entry ``index[k]`` of tensor ``t`` set to ``values[k]``, for every k."""
        runs: dict[Way, Callable[[int, int], np.ndarray]] = {
            "linear": lambda lo, hi: self._linear(t, index[lo:hi], values[lo:hi]),
            "vmap": lambda lo, hi: self._vmapped({t: self._copies(t, index[lo:hi], values[lo:hi])}),
            "loop": lambda lo, hi: self._loop_entries(t, index[lo:hi], values[lo:hi]),
        }
        uses = self._uses[t] if self._uses is not None else 0
        fast = uses == 1 and linear_owner(self._model, self.names[t]) is not None
        candidates: list[Way] = ["linear", "vmap"] if fast else ["vmap"]
        key = ("entries", t)
        return self._chunked(
            key, self.names[t], candidates, runs, len(index), self.theta[t].numel()
        )

    def _chunked(
        self,
        key: Hashable,
        label: str,
        candidates: list[Way],
        runs: Mapping[Way, Callable[[int, int], np.ndarray]],
        count: int,
        copied: int,
    ) -> np.ndarray:
        """Runs ``count`` evaluations in chunks, deciding the way on the first call for ``key``:
        the first two evaluations run through the plain loop and each candidate in turn; the
        first candidate that reproduces them is kept. Under ``"vmap"`` each copy also holds
        ``copied`` entries of θ (and vmap may copy them once more)."""
        out = np.empty(count)
        start = 0
        if key not in self._ways:
            start = min(2, count)
            out[:start] = runs["loop"](0, start)
            tried = candidates if self._vectorize else []
            self._ways[key] = self._decide(label, tried, runs, out[:start], start)
        way = self._ways[key]
        self.paths.setdefault(label, way)
        step = count
        if way != "loop":
            held = 2 * self.theta[0].element_size() * copied if way == "vmap" else 0
            step = copies_per_call(self._evaluation_bytes() + held)
        for lo in range(start, count, step):
            hi = min(lo + step, count)
            try:
                out[lo:hi] = runs[way](lo, hi)
                if way != "loop" and label != PROBES:
                    self._batched.add(label)
                    self.largest_call = max(self.largest_call, hi - lo)
            except Exception as err:  # e.g. out of memory in a larger chunk: finish plainly
                if way == "loop":
                    raise
                self.reasons[label] = f"{way} failed after the first call, {_why(err)}"
                way = self._ways[key] = self.paths[label] = "loop"
                out[lo:hi] = runs[way](lo, hi)
        return out

    def _decide(
        self,
        label: str,
        candidates: list[Way],
        runs: Mapping[Way, Callable[[int, int], np.ndarray]],
        plain: np.ndarray,
        count: int,
    ) -> Way:
        tolerance = agreement(self.theta[0].dtype)
        for way in candidates:
            try:
                batched = runs[way](0, count)
            except Exception as err:  # any failure under vmap means: evaluate this one plainly
                self.reasons[label] = f"{way} failed, {_why(err)}"
                continue
            gap = _gap(batched, plain)
            if gap <= tolerance:
                self.reasons.pop(label, None)
                return way
            self.reasons[label] = f"{way} gave J {gap:.1e} (relative) away from the plain one"
        return "loop"

    def _copies(self, t: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """One copy of tensor ``t`` per entry, entry ``index[k]`` of copy k set to ``values[k]``."""
        copies = self._flat[t].repeat(len(index), 1)
        copies[torch.arange(len(index), device=copies.device), index] = values
        return copies.view(len(index), *self.theta[t].shape)

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
            raise RuntimeError(f"the layer ran {shift.calls} times in one evaluation of J")
        return found

    def _vmapped(
        self,
        batched: Mapping[int, torch.Tensor],
        shift: LowRankShift | None = None,
        extra: tuple[torch.Tensor, ...] = (),
    ) -> np.ndarray:
        """J per copy: tensors ``batched`` (leading dim: copies), or ``shift`` fed ``extra``."""
        count = len(next(iter(batched.values())) if batched else extra[0])
        names = [self._names[t] for t in batched]
        # Buffers the forward writes in place (BatchNorm's running statistics in train mode) get
        # one copy per perturbed model: vmap cannot write batched values into one shared tensor.
        self._written.update(
            n for n, b in self._initial.items() if not torch.equal(b, self._fixed[n])
        )
        written = {
            n: self._fixed[n].expand(count, *self._fixed[n].shape).clone() for n in self._written
        }

        def one(
            values: tuple[torch.Tensor, ...], buffers: dict[str, torch.Tensor], *args: torch.Tensor
        ) -> torch.Tensor:
            tensors = dict(self._fixed)
            tensors.update(zip(self._names, self.theta, strict=True))
            tensors.update(zip(names, values, strict=True))
            tensors.update(buffers)
            if shift is None:
                return _scalar(functional_call(self._module, tensors, (self._batch,)))
            shift.step, shift.row, shift.col = args
            with shift.active():
                return _scalar(functional_call(self._module, tensors, (self._batch,)))

        with self._guard.evaluating(), torch.enable_grad():
            reseed(self._seed)
            found = vmap(one, randomness="same")(tuple(batched.values()), written, *extra)
        self._count(count)
        return found.detach().to(torch.float64).cpu().numpy().reshape(count)

    def _loop_entries(self, t: int, index: torch.Tensor, values: torch.Tensor) -> np.ndarray:
        flat = self._flat[t]
        out = np.empty(len(index))
        with torch.enable_grad():
            for k in range(len(index)):
                i = int(index[k])
                original = flat[i].clone()
                try:
                    flat[i] = values[k]
                    out[k] = float(self._call(self.theta).detach())
                finally:
                    flat[i] = original
        return out

    def _loop_at(self, values: Mapping[int, torch.Tensor]) -> np.ndarray:
        count = len(next(iter(values.values())))
        out = np.empty(count)
        with torch.enable_grad():
            for k in range(count):
                theta = list(self.theta)
                for t, v in values.items():
                    theta[t] = v[k]
                out[k] = float(self._call(theta).detach())
        return out

    def _evaluation_bytes(self) -> int:
        """Bytes one plain evaluation produces (measured once; the copies-per-call budget)."""
        if self._bytes is None:
            try:
                with torch.enable_grad():
                    self._bytes = produced_bytes(lambda: self._call(self.theta))
            except Exception:  # a forward that resists dispatch modes: guess from the tensors
                held = [*self.theta, *self._fixed.values()]
                self._bytes = sum(t.numel() * t.element_size() for t in held)
        return self._bytes


def _listing(names: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
