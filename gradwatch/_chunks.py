"""How the perturbed evaluations of J are grouped into vmapped calls, and which way each tensor's
copies take: the choice, its validation against the plain loop, and the fallbacks.

A tensor with enough evaluations to fill calls of its own gets them (``_entries``): its first
pair runs through the plain loop, then through each candidate way in turn (low-rank
``nn.Linear`` update, layer-output shift, copies of the tensor) in a call of those two copies,
and the first way that reproduces the plain J is kept for the rest. Tensors with fewer
evaluations (a sampled check of a big model: a few components per tensor) share calls
(``_pool``): their first pairs are checked the same way (in one call for all of them, split by
tensor if it fails), then the rest runs in calls that move entries of several tensors, in θ's
order so that the layers before the first moved tensor run once for all copies. A call that
runs out of memory is retried in halves; a tensor whose way fails or disagrees falls back to
calls of its own with the next way, and to the plain loop last.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gradwatch._lowrank import NotLowRank
from gradwatch._shift import shift_owner
from gradwatch._vectorize import (
    Way,
    agreement,
    copies_per_call,
    linear_owner,
    out_of_memory,
)

Runs = Mapping[Way, Callable[[int, int], np.ndarray]]
# The entries (flat index in θ's tensor, one per evaluation) and the values they are set to.
Group = tuple[torch.Tensor, torch.Tensor]
# A group and the way its tensor takes in shared calls.
Job = tuple[torch.Tensor, torch.Tensor, Way]
# How many plain evaluations validate a way: the first pair, J(θ + h·e_i) and J(θ − h·e_i).
FIRST = 2


def _gap(batched: np.ndarray, plain: np.ndarray) -> float:
    """Largest |batched − plain| / |plain| (0 where both are the same NaN or infinity)."""
    same = (batched == plain) | (np.isnan(batched) & np.isnan(plain))
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(batched - plain) / np.maximum(np.abs(plain), np.finfo(np.float64).tiny)
    return float(np.max(np.where(same, 0.0, np.nan_to_num(gap, nan=np.inf)), initial=0.0))


def _why(err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:120]}"


def listing(names: Sequence[str], most: int = 4) -> str:
    """The first ``most`` names, and how many more."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


class Chunks:
    """The scheduling half of :class:`gradwatch._evaluate.ModuleCost` (which supplies θ, the
    model and the evaluations: ``_linear``, ``_mixed``, ``_loop_entries``)."""

    theta: list[torch.Tensor]
    _flat: list[torch.Tensor]
    names: list[str]
    _model: nn.Module
    _uses: list[int] | None

    def __init__(self, vectorize: bool, memory_budget: int) -> None:
        self._vectorize = vectorize
        self._budget = memory_budget
        self.evaluations = 0  # every evaluation of J counts through _count
        self._ways: dict[Hashable, Way] = {}
        self.paths: dict[str, Way] = {}
        self.reasons: dict[str, str] = {}
        self._batched: set[str] = set()  # labels evaluated vectorized beyond the first pair
        self._shared: set[str] = set()  # labels evaluated in calls shared with other tensors
        self._few: set[str] = set()  # labels with too few evaluations to batch
        self.largest_call = 0

    def _linear(self, t: int, index: torch.Tensor, values: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def _mixed(
        self, tensor: torch.Tensor, index: torch.Tensor, values: torch.Tensor, shifted: set[int]
    ) -> np.ndarray:
        raise NotImplementedError

    def _loop_entries(self, t: int, index: torch.Tensor, values: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def _evaluation_bytes(self) -> int:
        raise NotImplementedError

    def _count(self, count: int) -> None:
        """``count`` evaluations of J have just been made (one plain, or one batched call)."""
        self.evaluations += count

    # -- sizes and candidates -----------------------------------------------------------------

    def _bytes_of(self, t: int) -> int:
        return self.theta[t].numel() * self.theta[t].element_size()

    def _call_size(self, way: Way, held: int) -> int:
        """Copies per call: activations per copy, plus (``vmap``) the copied tensors, which vmap
        may copy once more. Even where it can be: a ± pair then never spans two calls."""
        copied = 2 * held if way == "vmap" else 0
        size = copies_per_call(self._evaluation_bytes() + copied, self._budget)
        return size - size % 2 if size > 1 else size

    def _shift_owner(self, t: int) -> tuple[nn.Module, str] | None:
        """The layer whose output a perturbation of tensor ``t`` shifts (single use only)."""
        if self._uses is None or self._uses[t] != 1:
            return None
        return shift_owner(self._model, self.names[t])

    def _candidates(self, t: int) -> list[Way]:
        single = self._uses is not None and self._uses[t] == 1
        ways: list[Way] = []
        if single and linear_owner(self._model, self.names[t]) is not None:
            ways.append("linear")
        if self._shift_owner(t) is not None:
            ways.append("shift")
        return [*ways, "vmap"]

    def _shared_way(self, t: int, count: int) -> Way | None:
        """The way of tensor ``t`` in shared calls, if its ``count`` evaluations do not fill a
        call of their own and it has one: a layer-output shift, or copies of a tensor no larger
        than one copy's activations."""
        if not self._vectorize or "loop" in (
            self._ways.get(("shared", t)),
            self._ways.get(("entries", t)),
        ):
            return None
        way = self._ways.get(("shared", t))
        if way is None and self._shift_owner(t) is not None:
            way = "shift"
        if way is None and self._bytes_of(t) <= self._evaluation_bytes():
            way = "vmap"
        if way is None or count >= self._call_size(way, self._bytes_of(t)):
            return None
        return way

    # -- calls of one tensor's own --------------------------------------------------------------

    def _entry_groups(self, groups: Mapping[int, Group]) -> dict[int, np.ndarray]:
        """J for every (entry, value) of every tensor in ``groups``."""
        found, shared = {}, {}
        for t, (index, values) in groups.items():
            way = self._shared_way(t, len(index))
            if way is None:
                found[t] = self._entries(t, index, values)
            else:
                shared[t] = (index, values, way)
        found.update(self._pool(shared))
        return found

    def _entries(
        self,
        t: int,
        index: torch.Tensor,
        values: torch.Tensor,
        plain: np.ndarray | None = None,
        exclude: Sequence[Way] = (),
    ) -> np.ndarray:
        """J with entry ``index[k]`` of tensor ``t`` set to ``values[k]``, for every k, in calls
        of its own (``plain``: the first pair's plain J, when known)."""
        every = torch.full_like(index, t)
        runs: Runs = {
            "linear": lambda lo, hi: self._linear(t, index[lo:hi], values[lo:hi]),
            "shift": lambda lo, hi: self._mixed(every[lo:hi], index[lo:hi], values[lo:hi], {t}),
            "vmap": lambda lo, hi: self._mixed(every[lo:hi], index[lo:hi], values[lo:hi], set()),
            "loop": lambda lo, hi: self._loop_entries(t, index[lo:hi], values[lo:hi]),
        }
        candidates = [w for w in self._candidates(t) if w not in exclude]
        key = ("entries", t)
        out = self._chunked(
            key, self.names[t], candidates, runs, len(index), self._bytes_of(t), plain
        )
        if self._ways.get(key) in ("shift", "vmap"):  # the same code as in shared calls
            self._ways.setdefault(("shared", t), self._ways[key])
        return out

    def _chunked(
        self,
        key: Hashable,
        label: str,
        candidates: list[Way],
        runs: Runs,
        count: int,
        held: int,
        plain: np.ndarray | None = None,
    ) -> np.ndarray:
        """Runs ``count`` evaluations in calls, deciding the way on the first call for ``key``
        (see ``_first_call``). Under ``"vmap"`` each copy also holds ``held`` bytes of θ."""
        out = np.empty(count)
        done = 0
        way = self._ways.get(key)
        if way is None:
            done = min(FIRST, count)
            out[:done] = runs["loop"](0, done) if plain is None else plain[:done]
            tried = candidates if self._vectorize else []
            if done == count and tried:  # nothing left to batch: a later call decides
                self._few.add(label)
                self.paths.setdefault(label, "loop")
                return out
            way = self._first_call(key, label, tried, runs, out[:done])
        self.paths[label] = way
        step = self._call_size(way, held) if way != "loop" else count
        while done < count:
            hi = min(done + step, count)
            try:
                out[done:hi] = runs[way](done, hi)
            except Exception as err:  # after the first call: a larger chunk, or a rare input
                if way == "loop":
                    raise
                if out_of_memory(err) and step > 1:
                    step //= 2
                    continue
                self.reasons[label] = f"{way} failed after the first call, {_why(err)}"
                way = self._ways[key] = self.paths[label] = "loop"
                step = count
                continue
            self._note_call(label, way, hi - done)
            done = hi
        return out

    def _first_call(
        self, key: Hashable, label: str, candidates: list[Way], runs: Runs, plain: np.ndarray
    ) -> Way:
        """The first candidate whose call on the first pair alone reproduces its ``plain`` J (a
        way that fails, fails on two copies), else ``"loop"``."""
        tolerance = agreement(self.theta[0].dtype)
        for way in candidates:
            try:
                batched = runs[way](0, len(plain))
            except Exception as err:  # any failure under vmap means: try the next way
                self.reasons[label] = f"{way} failed, {_why(err)}"
                continue
            gap = _gap(batched, plain)
            if gap <= tolerance:
                self._ways[key] = way
                self.reasons.pop(label, None)
                return way
            self.reasons[label] = f"{way} gave J {gap:.1e} (relative) away from the plain one"
        self._ways[key] = "loop"
        return "loop"

    def _note_call(self, label: str, way: Way, copies: int) -> None:
        if way != "loop" and copies > 0:
            self._batched.add(label)
            self._few.discard(label)
            self.largest_call = max(self.largest_call, copies)

    # -- calls shared by tensors ----------------------------------------------------------------

    def _pool(
        self, shared: Mapping[int, tuple[torch.Tensor, torch.Tensor, Way]]
    ) -> dict[int, np.ndarray]:
        """J for tensors with few evaluations each, in calls shared between them."""
        out = {t: np.empty(len(index)) for t, (index, _, _) in shared.items()}
        fresh = {t for t in shared if ("shared", t) not in self._ways}
        jobs = {}
        for t in sorted(shared):
            index, values, way = shared[t]
            if t in fresh:
                first = min(FIRST, len(index))
                out[t][:first] = self._loop_entries(t, index[:first], values[:first])
                if first == len(index):  # nothing left to batch: a later call validates
                    self._few.add(self.names[t])
                    self.paths.setdefault(self.names[t], "loop")
                    continue
            jobs[t] = shared[t]
        # The fresh tensors' first pairs again, batched: each way is checked on two copies (one
        # that fails, fails there), before the rest runs in calls as large as the budget allows.
        probe = {t: (i[:FIRST], v[:FIRST], way) for t, (i, v, way) in jobs.items() if t in fresh}
        found, errors = self._shared_calls(probe)
        tolerance = agreement(self.theta[0].dtype)
        for t, got in found.items():
            gap = _gap(got, out[t][:FIRST])
            if gap > tolerance:
                errors[t] = (
                    f"{jobs[t][2]} gave J {gap:.1e} (relative) away from the plain one",
                    True,
                )
        start = {t: FIRST if t in fresh else 0 for t in jobs}
        rest = {
            t: (i[start[t] :], v[start[t] :], w) for t, (i, v, w) in jobs.items() if t not in errors
        }
        found, failed = self._shared_calls(rest)
        errors.update(failed)
        for t, (index, values, way) in jobs.items():
            label = self.names[t]
            if t in errors:  # calls of its own, with the next way (none if vmap cannot run J)
                self._ways[("shared", t)] = "loop"
                self.reasons[label], another = errors[t]
                plain = out[t][:FIRST] if t in fresh else None
                skip: tuple[Way, ...] = (way,) if another else ("linear", "shift", "vmap")
                out[t] = self._entries(t, index, values, plain, exclude=skip)
                continue
            out[t][start[t] :] = found[t]
            self._ways[("shared", t)] = self.paths[label] = way
            self._shared.add(label)
            self._batched.add(label)
            self._few.discard(label)
        return out

    def _shared_calls(
        self, jobs: Mapping[int, Job]
    ) -> tuple[dict[int, np.ndarray], dict[int, tuple[str, bool]]]:
        """Every job's evaluations, in θ's order, in calls sized to the budget. A call that runs
        out of memory is retried in halves; one that fails otherwise, tensor by tensor. Failed
        tensors map to why, and whether another way may work (the failure was the way's own)."""
        if not jobs:
            return {}, {}
        order = sorted(jobs)
        tensor = torch.cat([torch.full_like(jobs[t][0], t) for t in order])
        index = torch.cat([jobs[t][0] for t in order])
        values = torch.cat([jobs[t][1] for t in order])
        shifted = {t for t in order if jobs[t][2] == "shift"}
        results = np.full(len(index), np.nan)
        errors: dict[int, tuple[str, bool]] = {}
        pending = self._shared_sizes(tensor.tolist(), shifted)
        while pending:
            lo, hi, alone = pending.pop(0)
            try:
                results[lo:hi] = self._mixed(tensor[lo:hi], index[lo:hi], values[lo:hi], shifted)
            except Exception as err:
                moved = torch.unique(tensor[lo:hi]).tolist()
                if out_of_memory(err) and hi - lo > 1:
                    pending[:0] = [(lo, (lo + hi) // 2, alone), ((lo + hi) // 2, hi, alone)]
                elif not alone and len(moved) > 1:
                    pending[:0] = self._by_tensor(tensor, lo, hi)
                else:
                    way = "shift" if moved[0] in shifted else "vmap"
                    errors[moved[0]] = (f"{way} failed, {_why(err)}", isinstance(err, NotLowRank))
                continue
            self.largest_call = max(self.largest_call, hi - lo)
        starts = np.cumsum([0] + [len(jobs[t][0]) for t in order])
        found = {
            t: results[starts[k] : starts[k + 1]] for k, t in enumerate(order) if t not in errors
        }
        return found, errors

    def _shared_sizes(self, tensor: list[int], shifted: set[int]) -> list[tuple[int, int, bool]]:
        """Consecutive calls [lo, hi) over evaluations of ``tensor[k]``: each as many copies as
        fit, counting the copied tensors (those not ``shifted``) it holds."""
        calls: list[tuple[int, int, bool]] = []
        lo, held, copied = 0, 0, set[int]()
        for k, t in enumerate(tensor):
            more = 0 if t in shifted or t in copied else self._bytes_of(t)
            if k > lo and k - lo + 1 > self._call_size("vmap", held + more):
                calls.append((lo, k, False))
                lo, held, copied = k, 0, set()
                more = 0 if t in shifted else self._bytes_of(t)
            held += more
            if t not in shifted:
                copied.add(t)
        calls.append((lo, len(tensor), False))
        return calls

    @staticmethod
    def _by_tensor(tensor: torch.Tensor, lo: int, hi: int) -> list[tuple[int, int, bool]]:
        """[lo, hi) split where the tensor changes (the evaluations are in θ's order)."""
        part = tensor[lo:hi].tolist()
        cuts = [lo] + [lo + k for k in range(1, len(part)) if part[k] != part[k - 1]] + [hi]
        return [(a, b, True) for a, b in itertools.pairwise(cuts)]

    # -- the report -------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for the report: which evaluation path ran for which tensors.

        A tensor with a vectorized path but only its first pair to evaluate (a small sample: one
        component) was evaluated by the plain loop, and is named so.
        """
        if not self.paths:
            return "evaluation: no perturbed evaluations"
        batched = {n: v for n, v in self.paths.items() if v != "loop" and n in self._batched}
        parts = []
        if batched:
            text = f"vectorized (torch.func.vmap, up to {self.largest_call} copies per call"
            linear = [n for n, v in batched.items() if v == "linear"]
            shifted = [n for n, v in batched.items() if v == "shift"]
            if linear:
                text += f"; low-rank nn.Linear updates for {listing(linear)}"
            if shifted:
                text += f"; layer-output shifts for {listing(shifted)}"
            shared = [n for n in batched if n in self._shared]
            if shared:
                text += f"; {listing(shared)} in calls shared by tensors with few components"
            parts.append(text + ")")
        loops = [n for n, v in self.paths.items() if v == "loop" and n not in self._few]
        if loops:
            why = "; ".join(f"{n}: {self.reasons[n]}" for n in loops[:2] if n in self.reasons)
            parts.append(f"plain loop for {listing(loops)}" + (f" ({why})" if why else ""))
        few = [n for n in self.paths if n in self._few and n not in batched]
        if few:
            parts.append(f"plain loop for {listing(few)} (too few evaluations to batch)")
        return "evaluation: " + "; ".join(parts)
