"""Backprop against the two-sided estimate for a torch module: the evaluations the evidence model
asks for (pairs, probes of J's noise, re-checks at half the step and off kinks), shared across
processes when the check is partitioned."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from gradwatch.check.sampling import sample_components
from gradwatch.common.numeric import auto_steps, relative_difference
from gradwatch.evaluation.call_plan import PROBES
from gradwatch.evaluation.cost import ModuleCost
from gradwatch.evidence.model import JITTER_STEPS, gather_evidence
from gradwatch.evidence.noise import (
    PROBE_WIDTH,
    JNoise,
    NoiseProbes,
    measure_noise,
    rounding_floor,
)
from gradwatch.evidence.objective import Moved
from gradwatch.evidence.probing import gather_with_probes
from gradwatch.evidence.readings import Evidence
from gradwatch.layout import Layout
from gradwatch.partition import Exchange
from gradwatch.report import PrecisionDrift

# A jitter off a kink moves θ_i by at most this share of max(1, |θ_i|): "nearby". It binds only
# where a step is coarse (epsilon="auto" in float32: 1000 steps of 4.9e-3 would move every
# component by ~5, to another model, whose routing and saturation differ); float64's steps
# (1e-7, or 6e-6 with "auto") keep 1000 steps below it.
JITTER_REACH = 0.1
# The probes' copies of θ's tensors are built this many bytes at a time.
_PROBE_BYTES = 64 * 2**20


def steps_of(values: torch.Tensor, epsilon: float | str) -> torch.Tensor:
    """The step h of each value: ε as given, or the precision's step (``numeric.auto_steps``)."""
    if epsilon != "auto":
        return torch.full_like(values, float(epsilon))
    unit = torch.finfo(values.dtype).eps
    return torch.from_numpy(auto_steps(values.double().cpu().numpy(), unit)).to(values)


class ModuleObjective:
    """J of a module near θ for the evidence model: ``positions`` index the checked components
    (flat ``indices`` of θ); pair evaluations are shared out by ``split``."""

    def __init__(
        self,
        cost: ModuleCost,
        layout: Layout,
        indices: np.ndarray,
        split: Exchange,
        epsilon: float | str,
        seed: int,
    ) -> None:
        self.cost, self._layout, self._indices = cost, layout, indices
        self._tensor = layout.tensor_of(indices)
        self._local = indices - np.asarray(layout.offsets)[self._tensor]
        self._split, self._epsilon, self._seed = split, epsilon, seed
        self.moved: list[ModuleCost] = []

    @property
    def evaluations(self) -> int:
        """Evaluations of J at θ and at every jittered θ."""
        return self.cost.evaluations + sum(c.evaluations for c in self.moved)

    def pairs(self, positions: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.asarray(positions, dtype=np.int64)
        steps = np.asarray(steps, dtype=np.float64)
        return self._split.pairs(self.cost.pairs, self._tensor[at], self._local[at], steps)

    def half_gaps(self, positions: np.ndarray, steps: np.ndarray) -> np.ndarray:
        values = self.cost.flat_values(self._indices[np.asarray(positions, dtype=np.int64)])
        h = torch.as_tensor(np.asarray(steps, dtype=np.float64)).to(values)
        return (((values + h) - (values - h)) / 2).double().cpu().numpy()

    def values(self, positions: np.ndarray) -> np.ndarray:
        at = self._indices[np.asarray(positions, dtype=np.int64)]
        return self.cost.flat_values(at).double().cpu().numpy()

    @property
    def tensors(self) -> np.ndarray:
        """The tensor of each checked component (the groups of the tensor test)."""
        return self._tensor

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """J at θ moved by each row of ``rows`` on the components ``support``: in calls of
        consecutive rows, each with copies of the tensors its rows move (``_calls``)."""
        tensors, local = self._tensor[support], self._local[support]
        touched, column = np.unique(tensors, return_inverse=True)
        # moves[r, k]: whether row r moves tensor touched[k]
        moves = (rows != 0).astype(np.float32) @ np.eye(touched.size, dtype=np.float32)[column] > 0
        sizes = [self.cost.theta[t].numel() * self.cost.theta[t].element_size() for t in touched]
        found = []
        for lo, hi in _calls(moves, np.asarray(sizes)):
            part, values = rows[lo:hi], {}
            held = np.flatnonzero(moves[lo:hi].any(axis=0))
            for k in held if held.size else [0]:  # a call of unmoved rows still copies a tensor
                t, mine = int(touched[k]), np.flatnonzero(moves[lo:hi, k])
                theta, cols = self.cost.theta[t], np.flatnonzero(tensors == touched[k])
                copies = theta.reshape(1, -1).repeat(len(part), 1)
                at = torch.as_tensor(mine, device=theta.device)[:, None]
                where = torch.as_tensor(local[cols], device=theta.device)[None, :]
                copies[at, where] += torch.as_tensor(part[np.ix_(mine, cols)]).to(theta)
                values[t] = copies.view(len(part), *theta.shape)
            found.append(self.cost.at(values, PROBES))
        return np.concatenate(found)

    def jittered(self, attempt: int) -> Moved:
        generator = torch.Generator().manual_seed(self._seed * 1009 + 101 + attempt)
        deltas = []
        for theta in self.cost.theta:
            z = torch.randn(theta.shape, generator=generator, dtype=torch.float64).to(theta)
            reach = JITTER_REACH * theta.abs().clamp(min=1)
            deltas.append(torch.minimum(JITTER_STEPS * steps_of(theta, self._epsilon), reach) * z)
        cost = self.cost.moved(deltas)
        self.moved.append(cost)
        _, grads = cost.gradient()
        flat = torch.cat([g.reshape(-1).to(torch.float64).cpu() for g in grads]).numpy()
        other = ModuleObjective(cost, self._layout, self._indices, self._split, self._epsilon, 0)
        return Moved(other, flat[self._indices], cost.value())


def _calls(moves: np.ndarray, sizes: np.ndarray) -> list[tuple[int, int]]:
    """Calls [lo, hi) over consecutive rows, each holding copies of the tensors its rows move
    (``moves[row, tensor]``; ``sizes``: their bytes) for every row, within ``_PROBE_BYTES``. A
    run of rows that move the same tensors (the noise probes; one tensor's gate directions) joins
    the call before it while their copies fit: a call's fixed cost (a forward's set-up, a new
    batched way's validation against the plain loop) is paid once for many small tensors. A run
    that does not fit is cut every ``_PROBE_BYTES // size`` rows, in calls of its own."""
    change = np.flatnonzero(np.any(moves[1:] != moves[:-1], axis=1)) + 1
    bounds = [0, *change.tolist(), len(moves)] if len(moves) else []
    calls, lo, held = [], 0, np.zeros(moves.shape[1], bool)
    for a, b in itertools.pairwise(bounds):
        more = held | moves[a]
        if int(np.sum(sizes[more])) * (b - lo) <= _PROBE_BYTES:
            held = more
            continue
        if a > lo:
            calls.append((lo, a))
        each = max(1, _PROBE_BYTES // max(int(np.sum(sizes[moves[a]])), 1))
        if b - a <= each:
            lo, held = a, moves[a]
            continue
        calls += [(r, min(r + each, b)) for r in range(a, b, each)]
        lo, held = b, np.zeros(moves.shape[1], bool)
    return [*calls, (lo, len(moves))] if lo < len(moves) else calls


def noise_before(
    cost: ModuleCost, layout: Layout, epsilon: float | str, split: Exchange, seed: int
) -> JNoise:
    """J's noise measured before any component is chosen (for the directional search): along
    directions over a sample of θ's first tensors."""
    indices = sample_components(layout, 4 * PROBE_WIDTH, seed)
    objective = ModuleObjective(cost, layout, indices, split, epsilon, seed)
    steps = steps_of(cost.flat_values(indices), epsilon).double().cpu().numpy()
    center = cost.value()
    support = probe_support(objective, np.ones(indices.size, dtype=bool))
    floor = rounding_floor(center, torch.finfo(cost.theta[0].dtype).eps)
    return measure_noise(objective.line, center, (), support, steps[support], seed, floor)


def probe_support(objective: ModuleObjective, moving: np.ndarray) -> np.ndarray:
    """Positions the noise probes move: components where J moved, from θ's first tensors (the
    earliest layers, whose perturbations pass through every later operation and so carry the
    most rounding), enough of them for one probe."""
    candidates = np.flatnonzero(moving) if moving.any() else np.arange(moving.size)
    tensors = objective._tensor[candidates]
    kept: list[int] = []
    for t in np.unique(tensors):
        kept.extend(candidates[tensors == t].tolist())
        if len(kept) >= PROBE_WIDTH:
            break
    return np.asarray(kept, dtype=np.int64)


@dataclass(frozen=True)
class Comparison:
    """What the comparison found: the evidence per component, J's measured noise, J(θ), and why
    the check could not be carried out (None when it could)."""

    evidence: Evidence | None
    analytic: np.ndarray
    numeric: np.ndarray
    plain_analytic: np.ndarray
    gradients: dict[str, np.ndarray]
    noise: JNoise | None
    center: float
    failure: str | None


def compare(
    cost: ModuleCost,
    layout: Layout,
    indices: np.ndarray,
    epsilon: float | str,
    split: Exchange,
    seed: int,
    pass_max: float,
    measured: JNoise | None = None,
    warn_max: float = 1e-3,
) -> tuple[Comparison, ModuleObjective]:
    """Backprop's gradient, the two-sided estimates, J's measured noise (``measured`` where it
    was measured already) and the readings.

    With a partition, each process evaluates its share of the pairs (and of the re-checks), and
    every process goes on with process 0's gradient and J values: the same report everywhere.
    """
    objective = ModuleObjective(cost, layout, indices, split, epsilon, seed)
    j_grad, grads = cost.gradient()
    center = cost.value()
    every = np.arange(indices.size)
    steps = steps_of(cost.flat_values(indices), epsilon).double().cpu().numpy()
    plus, minus = objective.pairs(every, steps)
    again = cost.value()
    flat_grad = torch.cat([g.reshape(-1).to(torch.float64).cpu() for g in grads]).numpy()
    (center, j_grad, again), analytic = split.agree((center, j_grad, again), flat_grad[indices])
    with np.errstate(invalid="ignore", divide="ignore"):
        numeric = (plus - minus) / (2 * objective.half_gaps(every, steps))
    if not math.isfinite(center):
        failure = f"the loss J(θ) is {center}: fix the forward pass before checking gradients"
        return Comparison(None, analytic, numeric, analytic, {}, None, center, failure), objective
    if measured is None:  # J's noise from the first pairs, and every pair where a reading asks
        support = probe_support(objective, (plus != center) | (minus != center))
        floor = rounding_floor(center, torch.finfo(cost.theta[0].dtype).eps)
        probes = NoiseProbes(objective.line, center, (again,), support, steps[support], seed, floor)
        found, noise = gather_with_probes(
            objective, analytic, (plus, minus), center, steps, probes, pass_max,
            objective.tensors, seed, warn_max,
        )  # fmt: skip
    else:
        noise = replace(measured, spread=max(measured.spread, abs(again - center)))
        found = gather_evidence(
            objective, analytic, (plus, minus), center, steps, noise.effective, pass_max,
            objective.tensors, seed, warn_max,
        )  # fmt: skip
    full = {n: g.to(torch.float64).cpu().numpy() for n, g in zip(layout.names, grads, strict=True)}
    comparison = Comparison(
        found, found.analytic, found.numeric, analytic, full, noise, center, None
    )
    return comparison, objective


def drift(
    low: ModuleCost,
    layout: Layout,
    indices: np.ndarray,
    reference: Comparison,
    split: Exchange,
    seed: int,
) -> tuple[PrecisionDrift, int]:
    """The same check in a training precision (``low``), at the step that suits it, and the
    evaluations it took."""
    # No band to judge by: the repeat reports its difference, it gives no verdict.
    found, objective = compare(low, layout, indices, "auto", split, seed, 0.0, None, math.inf)
    return (
        PrecisionDrift(
            dtype=str(low.theta[0].dtype).removeprefix("torch."),
            gradient_drift=relative_difference(found.analytic, reference.analytic),
            difference=relative_difference(found.numeric, found.analytic),
            failure=found.failure,
        ),
        objective.evaluations,
    )
