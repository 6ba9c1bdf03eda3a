"""check_module on kinds of models and losses found in the wild: attention with a padding mask in
eval mode (PyTorch's fast path), losses that use autograd themselves (gradient penalty),
activation checkpointing, sparse and padded embeddings, parameter hooks, and what the notes say
about the evaluation path of a tiny sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gradwatch import Verdict, check_module
from gradwatch.check.scope import leave_out as _leave_out
from gradwatch.layout import Layout
from tests.nets import ScaledGradient, classification_batch, cross_entropy
from tests.test_module import changes, snapshot

# --- attention: the fast path PyTorch takes without grad is another function -------------------


class Encoder(nn.Module):
    """A one-layer TransformerEncoder over (batch, tokens, 8) with a key padding mask."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x, src_key_padding_mask=mask).mean(1))


def encoder_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 8, generator=generator)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, -1] = True
    return x, torch.tensor([0, 2, 1]), mask


def encoder_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y, mask = batch
    return F.cross_entropy(model(x, mask), y)


# vmap runs attention through its slow generic fallback (and says so), then the loop takes over.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _fastpath() -> bool:
    return bool(torch.backends.mha.get_fastpath_enabled())


def test_transformer_encoder_in_eval_mode_with_a_padding_mask_passes() -> None:
    """Without grad, PyTorch's fast path zero-fills padded positions in eval mode; with grad it
    does not. J must be one function at every θ."""
    model = Encoder().eval()
    before = snapshot(model)
    report = check_module(model, encoder_loss, encoder_batch(), sample=24)
    assert report.failure is None, report.message
    assert report.verdict is Verdict.PASS, str(report)
    assert changes(before, model) == []
    assert _fastpath()  # the user's setting is back


def test_the_fast_path_setting_is_restored_when_the_check_raises() -> None:
    def broken(model: nn.Module, batch: Any) -> torch.Tensor:
        assert not _fastpath()  # disabled for the check
        raise RuntimeError("broken loss")

    with pytest.raises(RuntimeError, match="broken loss"):
        check_module(Encoder().eval(), broken, encoder_batch())
    assert _fastpath()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        check_module(Encoder().eval(), encoder_loss, encoder_batch(), sample=3)
        assert not _fastpath()  # a user who turned it off keeps it off
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


# --- a loss that runs autograd itself (WGAN-GP, input-gradient regularization, PINNs) ------------


def critic() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def gradient_penalty(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    out = model(x)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return out.mean() + 10 * ((gx.norm(dim=1) - 1) ** 2).mean()


@pytest.mark.parametrize("mode", ["components", "directions"])
def test_a_gradient_penalty_loss_is_checked(mode: str) -> None:
    model = critic()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    report = check_module(model, gradient_penalty, x, mode=mode)  # type: ignore[arg-type]
    assert report.verdict is Verdict.PASS, str(report)
    assert changes(before, model) == []


def test_a_gradient_penalty_loss_still_finds_a_wrong_backward() -> None:
    model = critic()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))

    def loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        return gradient_penalty(m, b) + ScaledGradient.apply(m[2].bias, 0.5).sum()

    report = check_module(model, loss, x)
    assert report.verdict is Verdict.FAIL
    assert report.worst(1)[0].name == "2.bias"


# --- activation checkpointing: the backward recomputes the forward ------------------------------


class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh())
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(checkpoint(self.block, x, use_reentrant=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_activation_checkpointing_is_checked_in_float64(dtype: torch.dtype) -> None:
    model = Checkpointed().to(dtype)
    batch = classification_batch((4,))
    cross_entropy(model, (batch[0].to(dtype), batch[1])).backward()  # trains fine
    before = snapshot(model)
    report = check_module(model, cross_entropy, batch)
    assert report.verdict is Verdict.PASS, str(report)
    assert report.dtype == "float64"
    assert changes(before, model) == []


# --- embeddings: sparse gradients, and the padding row PyTorch leaves without one --------------


class Embedded(nn.Module):
    def __init__(self, **options: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.e = nn.Embedding(10, 4, **options)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.e(tokens)).mean(1))


def token_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10, (8, 5), generator=generator)
    tokens[:, -1] = 0  # the padding token, where there is one
    return tokens, torch.randint(0, 3, (8,), generator=generator)


@pytest.mark.parametrize("mode", ["components", "directions"])
def test_a_sparse_embedding_is_checked(mode: str) -> None:
    model = Embedded(sparse=True)
    before = snapshot(model)
    report = check_module(model, cross_entropy, token_batch(), mode=mode)  # type: ignore[arg-type]
    assert report.verdict is Verdict.PASS, str(report)
    assert changes(before, model) == []


PADDING_NOTE = "e.weight[0, :] (padding_idx) left out: PyTorch gives it no gradient by design"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="all"),
        pytest.param({"sample": 20}, id="sample"),
        pytest.param({"mode": "directions"}, id="directions"),
        pytest.param({"sparse": True}, id="sparse"),
    ],
)
def test_the_padding_row_of_an_embedding_is_left_out_and_said(options: dict[str, Any]) -> None:
    model = Embedded(padding_idx=0, sparse=options.pop("sparse", False))
    report = check_module(model, cross_entropy, token_batch(), **options)
    assert report.verdict is Verdict.PASS, str(report)
    padding = set(range(4))  # e.weight[0, :] is θ[0:4]
    assert not padding & set(report.indices.tolist())
    assert report.components_total == 10 * 4 + 4 * 3 + 3
    assert any(note.startswith(PADDING_NOTE) for note in report.notes), report.notes
    if "sample" in options:
        assert report.components_checked == options["sample"]
    elif "mode" not in options:
        assert report.components_checked == report.components_total - 4


@pytest.mark.parametrize("rows", [20, 20000], ids=["small", "large"])
def test_a_sample_keeps_its_size_without_the_padding_row(rows: int) -> None:
    layout = Layout.from_mapping({"e.weight": (rows, 4), "out.bias": (3,)})
    left_out = np.arange(4, 8)  # row 1
    indices = np.array([0, 4, 5, 7, 9, 4 * rows + 1])
    kept = _leave_out(indices, left_out, layout, seed=0)
    assert kept.size == indices.size == np.unique(kept).size
    assert not np.isin(kept, left_out).any()
    assert np.isin([0, 9, 4 * rows + 1], kept).all()
    assert (kept < 4 * rows).sum() == 5  # the replacements come from the same tensor
    np.testing.assert_array_equal(kept, _leave_out(indices, left_out, layout, seed=0))


def test_without_a_padding_index_every_row_is_checked() -> None:
    report = check_module(Embedded(), cross_entropy, token_batch())
    assert report.components_checked == report.components_total
    assert not any("padding_idx" in note for note in report.notes)


# --- parameter hooks change .grad in training, not autograd's gradient of J ---------------------


def test_a_parameter_hook_is_named_in_the_notes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    handle = model[0].weight.register_hook(lambda g: 2 * g)
    report = check_module(model, cross_entropy, classification_batch((4,)))
    hooks = [n for n in report.notes if "hook" in n]
    assert len(hooks) == 1 and hooks[0].startswith("0.weight has a gradient hook"), report.notes
    handle.remove()
    report = check_module(model, cross_entropy, classification_batch((4,)))
    assert not any("hook" in n for n in report.notes)


# --- what the notes say about the evaluation of a tiny sample -----------------------------------


def test_a_tiny_sample_is_not_called_vectorized() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    report = check_module(model, cross_entropy, classification_batch((4,)), sample=4)
    (note,) = [n for n in report.notes if n.startswith("evaluation")]
    assert note == (
        "evaluation: plain loop for 0.weight, 0.bias, 2.weight, 2.bias (too few evaluations "
        "to batch)"
    )
    # One more component: 0.weight has two, so two of its evaluations are batched (after its
    # first pair, plain and batched, validated the path).
    report = check_module(model, cross_entropy, classification_batch((4,)), sample=5)
    (note,) = [n for n in report.notes if n.startswith("evaluation")]
    assert note == (
        "evaluation: vectorized (torch.func.vmap, up to 2 copies per call; layer-output shifts "
        "for 0.weight; 0.weight in calls shared by tensors with few components); plain loop for "
        "0.bias, 2.weight, 2.bias (too few evaluations to batch)"
    )
    report = check_module(model, cross_entropy, classification_batch((4,)))
    (note,) = [n for n in report.notes if n.startswith("evaluation")]
    assert note.startswith("evaluation: vectorized (torch.func.vmap, up to "), note
    assert "too few" not in note
