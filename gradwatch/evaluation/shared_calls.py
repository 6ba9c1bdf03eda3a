"""Calls shared by tensors with few evaluations each (a sampled check of a big model: a few
components per tensor).

A tensor whose evaluations do not fill a call of their own joins shared calls when it has a way
that works there: a layer-output shift (:mod:`gradwatch.evaluation.output_shift`), or copies of a
tensor no larger than one copy's activations. Its first pair runs through the plain loop; the first
pairs of all such tensors then run again in one batched call (split by tensor if it fails), and each
way is kept only where it reproduced the plain J. The rest runs in calls that move entries of
several tensors, in θ's order, so that the layers before the first moved tensor run once for
all copies. A call that runs out of memory is retried in halves, one that fails otherwise
tensor by tensor; a tensor that fails gets calls of its own with the next way, or the plain
loop when vmap cannot run J at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import torch

from gradwatch.evaluation.call_plan import FIRST, Chunks, _gap, _why
from gradwatch.evaluation.lowrank import NotLowRank
from gradwatch.evaluation.vectorized import Way, agreement, out_of_memory

# The entries (flat index in θ's tensor, one per evaluation) and the values they are set to.
Group = tuple[torch.Tensor, torch.Tensor]
# A group and the way its tensor takes in shared calls.
Job = tuple[torch.Tensor, torch.Tensor, Way]


class SharedCalls(Chunks):
    """The shared-call half of the scheduling (see
    :class:`gradwatch.evaluation.call_plan.Chunks`)."""

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
