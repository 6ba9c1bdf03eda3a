"""The vectorized evaluation of J agrees with the plain loop, ulp for ulp, on every kind of
module, and says when it had to fall back to the loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch._vectorize as vectorize
from gradwatch import check_module
from gradwatch._evaluate import ModuleCost
from gradwatch._state import cast_batch, dropout_disabled
from tests.nets import GatedNet, classification_batch, cnn, cross_entropy, mlp


class Tied(nn.Module):
    """Embedding and output layer share one weight (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 5)
        self.out = nn.Linear(5, 7)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(tokens)).mean(dim=1))


class Twice(nn.Module):
    """One Linear applied twice (a tiny recurrence): its weight is not a single low-rank change."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.cell(torch.tanh(self.cell(x)))))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randint(0, 7, (6, 3), generator=generator), torch.randint(0, 7, (6,))


Case = tuple[Callable[[], nn.Module], Callable[[], Any], str]
CASES: dict[str, Case] = {
    "mlp": (_mlp, lambda: classification_batch((6,)), "off"),
    "batchnorm_dropout_off": (mlp, lambda: classification_batch((4,)), "off"),
    "batchnorm_dropout_freeze": (mlp, lambda: classification_batch((4,)), "freeze"),
    "conv_batchnorm_freeze": (cnn, lambda: classification_batch((1, 6, 6)), "freeze"),
    "tied_weights": (Tied, _tokens, "off"),
    "linear_called_twice": (Twice, lambda: classification_batch((4,)), "off"),
    "custom_function": (GatedNet, lambda: classification_batch((3,), classes=2), "off"),
}


def _pairs(case: str, vectorize: bool) -> tuple[np.ndarray, np.ndarray, ModuleCost]:
    build, batch, dropout = CASES[case]
    torch.manual_seed(0)
    model = build().double()
    names = [n for n, _ in model.named_parameters()]
    with dropout_disabled(model, disable=dropout == "off"):
        cost = ModuleCost(
            model, cross_entropy, cast_batch(batch(), torch.float64, torch.device("cpu")),
            names, torch.float64, seed=0, vectorize=vectorize,
        )  # fmt: skip
        cost.gradient()
        sizes = [t.numel() for t in cost.theta]
        tensor = np.repeat(np.arange(len(sizes)), sizes)
        local = np.concatenate([np.arange(s) for s in sizes])
        plus, minus = cost.pairs(tensor, local, np.full(tensor.size, 1e-7))
    return plus, minus, cost


@pytest.mark.parametrize("case", list(CASES))
def test_vectorized_matches_the_loop_within_a_few_ulps(case: str) -> None:
    plus, minus, _ = _pairs(case, vectorize=True)
    ref_plus, ref_minus, _ = _pairs(case, vectorize=False)
    ulp = np.spacing(np.abs(ref_plus).max())
    assert np.abs(plus - ref_plus).max() <= 8 * ulp
    assert np.abs(minus - ref_minus).max() <= 8 * ulp
    # the numbers the check uses: J(θ+h) − J(θ−h), here within rounding of J itself
    assert np.abs((plus - minus) - (ref_plus - ref_minus)).max() <= 16 * ulp


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("mlp", {"0.weight": "linear", "2.bias": "linear", "4.weight": "linear"}),
        ("batchnorm_dropout_freeze", {"0.weight": "linear", "1.weight": "vmap"}),
        ("conv_batchnorm_freeze", {"0.weight": "vmap", "1.bias": "vmap", "5.weight": "linear"}),
        ("tied_weights", {"embed.weight": "vmap", "out.bias": "linear"}),
        ("linear_called_twice", {"cell.weight": "vmap", "head.weight": "linear"}),
        ("custom_function", {"inp.weight": "loop", "gate.weight": "loop", "head.bias": "loop"}),
    ],
)
def test_each_tensor_takes_the_expected_path(case: str, expected: dict[str, str]) -> None:
    _, _, cost = _pairs(case, vectorize=True)
    assert {name: cost.paths[name] for name in expected} == expected


def test_a_module_vmap_cannot_run_falls_back_and_says_why() -> None:
    _, _, cost = _pairs("custom_function", vectorize=True)
    note = cost.describe()
    assert "plain loop for inp.weight" in note
    assert "autograd.Function" in cost.reasons["gate.weight"]


def test_the_report_names_the_evaluation_path() -> None:
    model = GatedNet()
    report = check_module(model.double(), cross_entropy, classification_batch((3,), classes=2))
    assert any(n.startswith("evaluation:") and "plain loop" in n for n in report.notes)
    assert report.verdict.value == "pass"


def test_small_chunks_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    plus, minus, _ = _pairs("batchnorm_dropout_freeze", vectorize=True)
    monkeypatch.setattr(vectorize, "CHUNK_BYTES", 1)  # one copy per call
    small_plus, small_minus, cost = _pairs("batchnorm_dropout_freeze", vectorize=True)
    assert cost.largest_call == 1
    np.testing.assert_array_equal(small_plus, plus)
    np.testing.assert_array_equal(small_minus, minus)


def test_directions_evaluate_like_the_loop() -> None:
    model = mlp().double().train()
    names = [n for n, _ in model.named_parameters()]
    batch = cast_batch(classification_batch((4,)), torch.float64, torch.device("cpu"))
    found = []
    for flag in (True, False):
        cost = ModuleCost(model, cross_entropy, batch, names, torch.float64, 0, vectorize=flag)
        generator = torch.Generator().manual_seed(0)
        values = {t: cost.theta[t] + 1e-3 * torch.randn(5, *cost.theta[t].shape, generator=generator, dtype=torch.float64) for t in (0, 1)}  # fmt: skip
        found.append(cost.at(values))
    assert np.abs(found[0] - found[1]).max() <= 8 * np.spacing(np.abs(found[1]).max())


def test_the_model_is_untouched_by_the_vectorized_paths() -> None:
    model = cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_module(model, cross_entropy, classification_batch((1, 6, 6)), dropout="freeze")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(not m._forward_hooks and m.training for m in model.modules())


def test_produced_bytes_counts_every_result() -> None:
    x = torch.ones(3, 4, dtype=torch.float64)
    assert vectorize.produced_bytes(lambda: torch.tanh(x @ x.T)) == 2 * 9 * 8


@pytest.mark.parametrize(
    ("per_copy", "budget", "copies"), [(1, 10, 10), (3, 10, 3), (100, 10, 1), (0, 10, 10)]
)
def test_copies_per_call(per_copy: int, budget: int, copies: int) -> None:
    assert vectorize.copies_per_call(per_copy, budget) == copies


def test_graph_uses_counts_tied_and_single_uses() -> None:
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    c = torch.ones(2, requires_grad=True)
    root = (a * b).sum() + F.linear(a, b.reshape(1, 2)).sum()
    assert vectorize.graph_uses(root, [a, b, c]) == [2, 2, 0]


@pytest.mark.parametrize(
    ("name", "owner"),
    [("0.weight", "weight"), ("0.bias", "bias"), ("1.weight", None), ("2.weight", None)],
)
def test_linear_owner_accepts_only_stock_linear_layers(name: str, owner: str | None) -> None:
    class Custom(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), Custom(2, 2))
    found = vectorize.linear_owner(model, name)
    assert (found[1] if found else None) == owner
