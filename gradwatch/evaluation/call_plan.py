"""How the perturbed evaluations of J are grouped into vmapped calls, and which way each tensor's
copies take: the choice, its validation against the plain loop, and the fallbacks.

A tensor with enough evaluations to fill calls of its own gets them (``_entries``): its first
pair runs through the plain loop, then through each candidate way in turn (low-rank
``nn.Linear`` update, layer-output shift, copies of the tensor) in a call of those two copies,
and the first way that reproduces the plain J is kept for the rest. A call that runs out of
memory is retried in halves; a way that fails later hands the rest to the plain loop. Tensors
with fewer evaluations share calls (:mod:`gradwatch.evaluation.shared_calls`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gradwatch.evaluation.output_shift import shift_owner
from gradwatch.evaluation.vectorized import (
    Way,
    agreement,
    copies_per_call,
    linear_owner,
    out_of_memory,
)

Runs = Mapping[Way, Callable[[int, int], np.ndarray]]
# The label of the evaluations that measure J's noise (gradwatch.evidence.noise), which describe()
# leaves out: they move no one tensor's components.
PROBES = "noise probes"
# How many plain evaluations validate a way: the first pair, J(θ + h·e_i) and J(θ − h·e_i).
FIRST = 2


def _gap(batched: np.ndarray, plain: np.ndarray) -> float:
    """Largest |batched − plain| / |plain| (0 where both are the same NaN or infinity)."""
    same = (batched == plain) | (np.isnan(batched) & np.isnan(plain))
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(batched - plain) / np.maximum(np.abs(plain), np.finfo(np.float64).tiny)
    return float(np.max(np.where(same, 0.0, np.nan_to_num(gap, nan=np.inf)), initial=0.0))


def _why(err: Exception) -> str:
    """The error's type and first line, shortened at a word (a note is read, not parsed)."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {textwrap.shorten(first, 200, placeholder=' …')}"


def listing(names: Sequence[str], most: int = 4) -> str:
    """The first ``most`` names, and how many more."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


class Chunks:
    """The scheduling half of :class:`gradwatch.evaluation.cost.ModuleCost` (which supplies θ, the
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

    # -- calls of one tensor's own --------------------------------------------------------------

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
        if way != "loop" and copies > 0 and label != PROBES:
            self._batched.add(label)
            self._few.discard(label)
            self.largest_call = max(self.largest_call, copies)

    # -- the report -------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for the report: which evaluation path ran for which tensors.

        A tensor with a vectorized path but only its first pair to evaluate (a small sample: one
        component) was evaluated by the plain loop, and is named so.
        """
        paths = {n: v for n, v in self.paths.items() if n != PROBES}
        if not paths:
            return "evaluation: no perturbed evaluations"
        batched = {n: v for n, v in paths.items() if v != "loop" and n in self._batched}
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
        loops = [n for n, v in paths.items() if v == "loop" and n not in self._few]
        if loops:
            why = "; ".join(f"{n}: {self.reasons[n]}" for n in loops[:2] if n in self.reasons)
            parts.append(f"plain loop for {listing(loops)}" + (f" ({why})" if why else ""))
        few = [n for n in self.paths if n in self._few and n not in batched]
        if few:
            parts.append(f"plain loop for {listing(few)} (too few evaluations to batch)")
        return "evaluation: " + "; ".join(parts)
