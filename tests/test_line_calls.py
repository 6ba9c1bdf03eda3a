"""J along directions for a torch module (``ModuleObjective.line``): rows that each move one
tensor (the escalation gate's directions over many tensors at once) share calls while their
copies fit, the noise probes are cut as before, and the values are J's at every row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradwatch.check import comparison
from gradwatch.check.comparison import ModuleObjective, _calls
from gradwatch.common.user_state import cast_batch
from gradwatch.evaluation.cost import ModuleCost
from gradwatch.layout import Layout
from gradwatch.partition import Exchange
from tests.nets import classification_batch, cross_entropy, mlp

BUDGET = comparison._PROBE_BYTES


def _blocks(*lengths: int) -> np.ndarray:
    """moves[row, tensor] for runs of rows that each move one tensor, ``lengths[t]`` rows each."""
    return np.repeat(np.eye(len(lengths), dtype=bool), lengths, axis=0)


@pytest.mark.parametrize(
    ("moves", "sizes", "calls"),
    [
        # the noise probes: rows moving every tensor alike, cut every BUDGET // size rows
        (np.ones((10, 2), bool), [BUDGET // 4, 0], [(0, 4), (4, 8), (8, 10)]),
        (np.ones((10, 2), bool), [BUDGET // 40, 0], [(0, 10)]),
        # small tensors' runs share one call
        (_blocks(8, 8, 8), [1000, 1000, 1000], [(0, 24)]),
        # a run cut for its size gets calls of its own; the next ones share while they fit
        (_blocks(8, 8, 8), [BUDGET // 6, BUDGET // 9, BUDGET // 9],
         [(0, 6), (6, 8), (8, 16), (16, 24)]),
        (_blocks(8, 8, 8), [BUDGET // 9, BUDGET // 2, 1000],
         [(0, 8), (8, 10), (10, 12), (12, 14), (14, 16), (16, 24)]),
        (np.zeros((0, 1), bool), [5], []),
    ],
)  # fmt: skip
def test_rows_share_calls_while_their_copies_fit(
    moves: np.ndarray, sizes: list[int], calls: list[tuple[int, int]]
) -> None:
    assert _calls(moves, np.asarray(sizes)) == calls


def _objective() -> ModuleObjective:
    model = mlp().double()
    names = [n for n, _ in model.named_parameters()]
    batch = cast_batch(classification_batch((4,)), torch.float64, torch.device("cpu"))
    cost = ModuleCost(model, cross_entropy, batch, names, torch.float64, 0)
    layout = Layout.from_mapping({n: tuple(p.shape) for n, p in model.named_parameters()})
    indices = np.arange(layout.size)
    return ModuleObjective(cost, layout, indices, Exchange(None), 1e-7, 0)


def test_one_call_for_every_tensors_rows_and_j_at_each_row(monkeypatch: pytest.MonkeyPatch) -> None:
    # Four rows on each of three tensors, zero outside its own: one call of J (the plain first
    # pair, then vmap, as one tensor's call takes), against three. Each value is J at θ moved by
    # its row, as the plain loop evaluates it.
    objective = _objective()
    calls: list[tuple[int, ...]] = []
    at = ModuleCost.at

    def counted(self, values, label=None):  # type: ignore[no-untyped-def]
        calls.append(tuple(sorted(values)))
        return at(self, values, label)

    monkeypatch.setattr(ModuleCost, "at", counted)
    tensors = objective.tensors
    supports = [np.flatnonzero(tensors == t) for t in (0, 1, 2)]
    rng = np.random.default_rng(0)
    blocks = [1e-3 * rng.standard_normal((4, s.size)) for s in supports]
    support = np.concatenate(supports)
    rows = np.zeros((12, support.size))
    for k, block in enumerate(blocks):
        lo = sum(s.size for s in supports[:k])
        rows[4 * k : 4 * k + 4, lo : lo + block.shape[1]] = block
    shared = objective.line(support, rows)
    assert calls == [(0, 1, 2)]
    calls.clear()
    alone = np.concatenate([objective.line(s, b) for s, b in zip(supports, blocks, strict=True)])
    assert calls == [(0,), (1,), (2,)]
    theta = [t.clone() for t in objective.cost.theta]
    plain = []
    for k, (s, block) in enumerate(zip(supports, blocks, strict=True)):
        for row in block:
            moved = [t.clone() for t in theta]
            flat = moved[k].view(-1)
            flat[torch.as_tensor(objective._local[s])] += torch.as_tensor(row)
            plain.append(float(objective.cost._call(moved)))
    for found in (shared, alone):
        np.testing.assert_allclose(found, plain, rtol=8 * np.finfo(np.float64).eps, atol=0)


def test_flat_values_read_each_tensor_in_place() -> None:
    objective = _objective()
    flat = torch.cat([t.reshape(-1) for t in objective.cost.theta])
    picked = np.array([0, 5, flat.numel() - 1, 3, 40, flat.numel() - 2])
    assert torch.equal(objective.cost.flat_values(picked), flat[torch.as_tensor(picked)])
    assert objective.cost.flat_values(np.zeros(0, np.int64)).shape == (0,)
