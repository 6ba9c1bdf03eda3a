"""The vectorized evaluation of J agrees with the plain loop, ulp for ulp, on every kind of
module, and says when it had to fall back to the loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_hooks

import gradwatch.evaluation.vectorized as vectorizing
from gradwatch import check_module
from gradwatch.common.user_state import cast_batch, dropout_disabled
from gradwatch.evaluation.call_plan import _why
from gradwatch.evaluation.cost import ModuleCost
from tests.nets import GatedNet, classification_batch, cnn, cross_entropy, mlp
from tests.refused import FillNet, ItemNet, NoRuleNet


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


class Residual(nn.Module):
    """A hidden layer's activation feeds the next Linear and a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.act = nn.Tanh()
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x))
        return self.head(torch.sigmoid(self.mid(h)) + h)


class Sequence(nn.Module):
    """Tokens (batch, time, features) through Linear → GELU → LayerNorm → Linear, pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.block(x)).mean(dim=1))


class Attention(nn.Module):
    """Token embeddings through multi-head attention and LayerNorm, pooled, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 8)
        self.attend = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 7)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = self.norm(h + self.attend(h, h, h, need_weights=False)[0])
        return self.head(h.mean(dim=1))


def _strided_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 3, 1), nn.Flatten(), nn.Linear(3 * 3 * 3, 3),
    )  # fmt: skip


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
    "conv_strided_groups": (_strided_cnn, lambda: classification_batch((2, 5, 5)), "off"),
    "embedding_attention": (Attention, _tokens, "off"),
    "tied_weights": (Tied, _tokens, "off"),
    "residual": (Residual, lambda: classification_batch((6,)), "off"),
    "sequence_layernorm": (Sequence, lambda: classification_batch((4, 6)), "off"),
    "inplace_relu": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)),
        lambda: classification_batch((6,)),
        "off",
    ),
    "linear_called_twice": (Twice, lambda: classification_batch((4,)), "off"),
    "custom_function": (GatedNet, lambda: classification_batch((3,), classes=2), "off"),
    "function_without_vmap_rule": (NoRuleNet, lambda: classification_batch((6,)), "off"),
    "inplace_buffer": (FillNet, lambda: classification_batch((6,)), "off"),
    "item": (ItemNet, lambda: classification_batch((6,)), "off"),
}


# "shared": the tiny tensors here have too few evaluations for calls of their own, so they share
# calls; "own": calls of 3 copies, so every tensor with more evaluations gets calls of its own.
LAYOUTS = ("shared", "own")


def _pairs(
    case: str,
    vectorize: bool,
    layout: str = "shared",
    budget: int = vectorizing.DEFAULT_MEMORY_BUDGET,
) -> tuple[np.ndarray, np.ndarray, ModuleCost]:
    build, batch, dropout = CASES[case]
    torch.manual_seed(0)
    model = build().double()
    names = [n for n, _ in model.named_parameters()]
    with dropout_disabled(model, disable=dropout == "off"), pytest.MonkeyPatch.context() as patch:
        if layout == "own":
            patch.setattr(vectorizing, "CHUNK_BYTES", 1)
            patch.setattr(vectorizing, "MIN_COPIES", 3)
        cost = ModuleCost(
            model, cross_entropy, cast_batch(batch(), torch.float64, torch.device("cpu")),
            names, torch.float64, seed=0, vectorize=vectorize, memory_budget=budget,
        )  # fmt: skip
        cost.gradient()
        sizes = [t.numel() for t in cost.theta]
        tensor = np.repeat(np.arange(len(sizes)), sizes)
        local = np.concatenate([np.arange(s) for s in sizes])
        plus, minus = cost.pairs(tensor, local, np.full(tensor.size, 1e-7))
    return plus, minus, cost


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES))
def test_vectorized_matches_the_loop_within_a_few_ulps(case: str, layout: str) -> None:
    plus, minus, _ = _pairs(case, vectorize=True, layout=layout)
    ref_plus, ref_minus, _ = _pairs(case, vectorize=False)
    ulp = np.spacing(np.abs(ref_plus).max())
    assert np.abs(plus - ref_plus).max() <= 8 * ulp
    assert np.abs(minus - ref_minus).max() <= 8 * ulp
    # the numbers the check uses: J(θ+h) − J(θ−h), here within rounding of J itself
    assert np.abs((plus - minus) - (ref_plus - ref_minus)).max() <= 16 * ulp


@pytest.mark.parametrize(
    ("case", "own", "shared"),
    [
        ("mlp", {"0.weight": "linear", "2.bias": "linear"},
         {"0.weight": "shift", "4.bias": "shift"}),
        ("batchnorm_dropout_freeze", {"0.weight": "linear", "1.weight": "vmap"},
         {"0.weight": "shift", "1.weight": "vmap"}),
        ("conv_batchnorm_freeze", {"0.weight": "shift", "1.bias": "vmap", "5.weight": "linear"},
         {"0.weight": "shift", "1.bias": "vmap", "5.weight": "shift"}),
        ("tied_weights", {"embed.weight": "vmap", "out.bias": "linear"},
         {"embed.weight": "vmap", "out.bias": "shift"}),
        ("linear_called_twice", {"cell.weight": "vmap", "head.weight": "linear"},
         {"cell.weight": "vmap", "head.weight": "shift"}),
        ("residual", {"inp.weight": "linear", "mid.bias": "linear"},
         {"inp.weight": "shift", "mid.bias": "shift"}),
        ("sequence_layernorm", {"block.0.weight": "linear", "block.2.weight": "vmap"},
         {"block.0.weight": "shift", "block.2.weight": "vmap"}),
        ("conv_strided_groups", {"0.weight": "shift", "1.weight": "vmap", "3.weight": "shift"},
         {"0.weight": "shift", "1.weight": "vmap", "3.weight": "shift"}),
        ("embedding_attention",
         {"embed.weight": "shift", "attend.in_proj_weight": "vmap",
          "attend.out_proj.weight": "vmap", "norm.weight": "vmap", "head.weight": "linear"},
         {"embed.weight": "shift", "attend.in_proj_weight": "vmap",
          "attend.out_proj.weight": "vmap", "norm.weight": "vmap", "head.weight": "shift"}),
        ("custom_function", {"inp.weight": "linear", "gate.weight": "vmap", "head.bias": "linear"},
         {"inp.weight": "shift", "gate.weight": "vmap", "head.bias": "shift"}),
        ("function_without_vmap_rule", {"inp.weight": "linear", "head.bias": "linear"},
         {"inp.weight": "shift", "head.bias": "shift"}),
        ("inplace_buffer", {"inp.weight": "linear", "head.bias": "linear"},
         {"inp.weight": "shift", "head.bias": "shift"}),
        ("item", {"inp.weight": "loop", "head.bias": "linear"},
         {"inp.weight": "loop", "head.bias": "shift"}),
    ],
)  # fmt: skip
def test_each_tensor_takes_the_expected_path(
    case: str, own: dict[str, str], shared: dict[str, str]
) -> None:
    for layout, expected in (("own", own), ("shared", shared)):
        _, _, cost = _pairs(case, vectorize=True, layout=layout)
        assert {name: cost.paths[name] for name in expected} == expected, layout


def test_a_module_vmap_cannot_run_falls_back_and_says_why() -> None:
    _, _, cost = _pairs("item", vectorize=True)
    note = cost.describe()
    assert "plain loop for inp.weight, inp.bias (inp.weight: shift failed" in note
    assert "data-dependent control flow" in cost.reasons["inp.weight"]
    assert "functionalize" not in note  # tried, did not help: not said


@pytest.mark.parametrize(
    ("case", "functions", "functional"),
    [
        ("custom_function", "SelfGate", False),
        ("function_without_vmap_rule", "NoRule", False),
        ("inplace_buffer", "Scaled", True),  # any Function under functionalize
    ],
)
def test_the_note_names_what_was_batched_for_values_only(
    case: str, functions: str, functional: bool
) -> None:
    _, _, cost = _pairs(case, vectorize=True)
    note = cost.describe()
    assert set(cost.paths.values()) <= {"shift", "vmap"}, note
    assert f"; autograd.Functions batched through their own forward: {functions}" in note
    assert ("; in-place writes batched through torch.func.functionalize" in note) is functional


def test_a_long_reason_is_cut_between_words_and_keeps_what_to_do() -> None:
    # torch's error for an autograd.Function without setup_context under vmap: a note once
    # ended "it must override the setu".
    message = (
        "In order to use an autograd.Function with functorch transforms (vmap, grad, jvp, "
        "jacrev, ...), it must override the setup_context staticmethod. For more details, please "
        "see https://pytorch.org/docs/main/notes/extending.func.html"
    )
    why = _why(RuntimeError(message))
    kept = why.removeprefix("RuntimeError: ").removesuffix(" …")
    assert why.endswith(" …") and message.startswith(kept) and message[len(kept)] == " "
    assert "it must override the setup_context staticmethod." in why


def test_the_report_names_the_evaluation_path() -> None:
    torch.manual_seed(0)
    report = check_module(ItemNet().double(), cross_entropy, classification_batch((6,)))
    assert any(n.startswith("evaluation:") and "plain loop" in n for n in report.notes)
    assert report.verdict.value == "pass"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_budget_of_one_copy_gives_calls_of_one_and_the_same_numbers(layout: str) -> None:
    plus, minus, _ = _pairs("batchnorm_dropout_freeze", vectorize=True, layout=layout)
    small_plus, small_minus, cost = _pairs(
        "batchnorm_dropout_freeze", vectorize=True, layout=layout, budget=1
    )
    assert cost.largest_call == 1
    assert "loop" not in {cost.paths[n] for n in cost.names}  # smaller calls, not the loop
    np.testing.assert_allclose(small_plus, plus, rtol=4 * np.finfo(np.float64).eps, atol=0)
    np.testing.assert_allclose(small_minus, minus, rtol=4 * np.finfo(np.float64).eps, atol=0)


@pytest.mark.parametrize("budget", [2**10, 20 * 2**10, 40 * 2**10])
def test_calls_stay_within_the_memory_budget(budget: int) -> None:
    """Copies per call times what one copy holds (activations, plus copied tensors) fits the
    budget (one copy per call when even that does not fit): the largest call is bounded by the
    smallest per-copy size, the activations."""
    _, _, cost = _pairs("conv_batchnorm_freeze", vectorize=True, budget=budget)
    per_copy = cost._evaluation_bytes()
    assert per_copy > 0
    assert cost.largest_call <= max(1, budget // per_copy)
    assert "loop" not in {cost.paths[n] for n in cost.names}


def _failing_above(copies: int, message: str) -> Callable[..., np.ndarray]:
    original = ModuleCost._vmapped

    def vmapped(self: ModuleCost, batched: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        count = len(next(iter(batched.values())) if batched else args[1][0])
        if count > copies:
            raise RuntimeError(message)
        return original(self, batched, *args, **kwargs)

    return vmapped


def test_a_call_out_of_memory_is_retried_in_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls of 16 copies: the weights get calls of their own, the small biases share calls; a
    call of more than 5 copies runs out of memory, so both kinds are halved down to 4."""
    plus, minus, _ = _pairs("mlp", vectorize=False)
    monkeypatch.setattr(vectorizing, "CHUNK_BYTES", 1)
    monkeypatch.setattr(vectorizing, "MIN_COPIES", 16)
    monkeypatch.setattr(ModuleCost, "_vmapped", _failing_above(5, "CUDA out of memory."))
    found_plus, found_minus, cost = _pairs("mlp", vectorize=True)
    assert cost.largest_call == 4
    assert {cost.paths[n] for n in cost.names} == {"linear", "shift"}
    assert cost._shared and cost._shared != set(cost.names)
    np.testing.assert_allclose(found_plus, plus, rtol=4 * np.finfo(np.float64).eps, atol=0)
    np.testing.assert_allclose(found_minus, minus, rtol=4 * np.finfo(np.float64).eps, atol=0)


def test_directions_evaluate_like_the_loop() -> None:
    model = mlp().double().train()
    names = [n for n, _ in model.named_parameters()]
    batch = cast_batch(classification_batch((4,)), torch.float64, torch.device("cpu"))
    found = []
    for flag in (True, False):
        cost = ModuleCost(model, cross_entropy, batch, names, torch.float64, 0, vectorize=flag)
        generator = torch.Generator().manual_seed(0)
        values = {}
        for t in (0, 1):
            noise = torch.randn(5, *cost.theta[t].shape, generator=generator, dtype=torch.float64)
            values[t] = cost.theta[t] + 1e-3 * noise
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
    assert not module_hooks._global_forward_hooks and not module_hooks._global_forward_pre_hooks


def test_a_call_that_fails_later_is_finished_by_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    plus, minus, _ = _pairs("mlp", vectorize=False)
    calls = {"n": 0}
    original = ModuleCost._vmapped

    def flaky(self: ModuleCost, *args: Any, **kwargs: Any) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:  # after the first tensor's first call succeeded
            raise RuntimeError("a kernel that fails on this input")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModuleCost, "_vmapped", flaky)
    found_plus, found_minus, cost = _pairs("mlp", vectorize=True, layout="own")
    assert cost.paths["0.weight"] == "loop"
    assert "fails on this input" in cost.reasons["0.weight"]
    assert np.abs(found_plus - plus).max() <= 8 * np.spacing(np.abs(plus).max())
    assert np.abs(found_minus - minus).max() <= 8 * np.spacing(np.abs(plus).max())


def _penalized(read: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[nn.Module, Any], Any]:
    """Cross-entropy plus a penalty on rows 1: of the first weight, read through ``read``."""

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        return cross_entropy(model, batch) + 0.5 * read(model[0].weight)[1:].square().sum()

    return loss


@pytest.mark.parametrize(
    "read",
    [lambda w: w.detach(), lambda w: w.data, lambda w: w.clone().detach()],
    ids=["detach", "data", "clone_detach"],
)
def test_a_weight_read_outside_its_layer_is_not_carried_low_rank(
    read: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """The penalty's gradient is cut off, so the check must fail on rows 1: of 0.weight. The
    first pair the vectorized path is validated on (row 0) does not see the penalty, so only a
    path that notices the outside read can get this right."""
    model = _mlp().double()
    loss = _penalized(read)
    batch = classification_batch((6,))
    report = check_module(model, loss, batch)
    assert report.verdict.value == "fail"
    assert report.parameters["0.weight"].difference > 0.1
    worst = report.worst(1)[0]
    assert worst.name == "0.weight" and worst.index[0] >= 1
    assert "low-rank nn.Linear updates for 0.weight" not in " ".join(report.notes)


def test_a_weight_penalty_with_its_gradient_passes() -> None:
    report = check_module(_mlp().double(), _penalized(lambda w: w), classification_batch((6,)))
    assert report.verdict.value == "pass"
