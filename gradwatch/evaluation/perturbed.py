"""How perturbed copies of θ are evaluated, for entries of θ (``pairs``) and whole directions
(``at``): the batched ways — a perturbed ``nn.Linear`` entry as a low-rank update of the layer's
output (:mod:`gradwatch.evaluation.lowrank`), an entry of a convolution, embedding or linear layer
as a change of that layer's output (:mod:`gradwatch.evaluation.output_shift`), copies of the whole
tensor — and the plain loop, the reference each way is checked against. Which way runs for a tensor,
and in calls of which size, is the scheduling's (:mod:`gradwatch.evaluation.call_plan`,
:mod:`gradwatch.evaluation.shared_calls`); the evaluations of J themselves are
:class:`gradwatch.evaluation.cost.ModuleCost`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_leaves

from gradwatch.evaluation.call_plan import Runs, listing
from gradwatch.evaluation.lowrank import LowRankShift, NotLowRank
from gradwatch.evaluation.output_shift import Entry, EntryShifts
from gradwatch.evaluation.shared_calls import SharedCalls
from gradwatch.evaluation.threads import ThreadChoice, pair_units
from gradwatch.evaluation.vectorized import linear_owner, saved_bytes

Shift = LowRankShift | EntryShifts


class EntryWays(SharedCalls):
    """The ways of evaluating perturbed copies of θ (see the module's docstring); the subclass
    supplies θ and the two evaluations of J, ``_call`` (one θ) and ``_vmapped`` (many copies)."""

    _threads: ThreadChoice
    _fixed: dict[str, torch.Tensor]
    _batch: Any
    _bytes: int | None  # activation bytes of one evaluation, once known
    through_forward: set[str]  # autograd.Functions batched through their forward
    _functional: bool | None  # whether in-place writes were functionalized

    def _call(
        self, theta: Sequence[torch.Tensor], then: Callable[[torch.Tensor], Any] | None = None
    ) -> Any:
        raise NotImplementedError

    def _vmapped(
        self,
        batched: Mapping[int, torch.Tensor],
        shift: Shift | None = None,
        extra: tuple[torch.Tensor, ...] = (),
    ) -> np.ndarray:
        raise NotImplementedError

    def flat_values(self, indices: np.ndarray) -> torch.Tensor:
        """θ's values at flat ``indices`` (in the check's dtype, on the first tensor's device),
        read from each tensor where it lies: escalation asks for a few values per tensor many
        times, and joining θ into one vector for each ask cost a copy of every tensor."""
        at = np.asarray(indices, dtype=np.int64).reshape(-1)
        ends = np.cumsum([t.numel() for t in self.theta])
        owner = np.searchsorted(ends, at, side="right")
        device = self.theta[0].device
        out = torch.empty(at.size, dtype=self.theta[0].dtype, device=device)
        for t in np.unique(owner).tolist():
            rows, flat = np.flatnonzero(owner == t), self._flat[t]
            local = torch.as_tensor(at[rows] - (ends[t] - flat.numel()), device=flat.device)
            out[torch.as_tensor(rows, device=device)] = flat[local].to(device)
        return out

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

    # -- the memory of one evaluation, and the note -----------------------------------------

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
        if self._batched and self.through_forward:
            names = listing(sorted(self.through_forward))
            text += f"; autograd.Functions batched through their own forward: {names}"
        if self._batched and self._functional:
            text += "; in-place writes batched through torch.func.functionalize"
        threads = self._threads.describe()
        return text if threads is None else f"{text}; {threads}"
