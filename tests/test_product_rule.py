"""The missing product-rule term (gradwatch.check.product_rule): a backward of an x·g(x) activation
that returns g(x) alone is named as such and located at that activation, in a SiLU conv chain,
in a ConvNeXt-like block (at the generic point) and in a Llama; other bugs in the same place,
and correct models, are never named so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.check.product_rule import KIND, activations
from tests.generic_nets import LayerScaleNet, batch_for, cross_entropy
from tests.planting import Kind, planted_copy
from tests.zoo import norm_chain


def _named(report: gradwatch.GradCheckReport) -> dict[str, str]:
    """The tensors whose finding is the missing product-rule term, and the text."""
    return {f.parameter: f.text for f in report.findings if f.kind == KIND}


class _Renamed(nn.Module):
    """x·σ(x) under a name that says nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def test_the_activations_tried_are_those_that_compute_x_times_a_gate() -> None:
    model = nn.Sequential(
        nn.Linear(2, 4), nn.GELU(), nn.Sequential(nn.SiLU(), nn.ReLU()), nn.Mish(), nn.Tanh(),
        _Renamed(), nn.Softmax(-1), nn.Hardswish(), nn.LayerNorm(4),
    )  # fmt: skip
    found = [name for name, _ in activations(model, lambda: model(torch.randn(5, 2)))]
    assert found == ["1", "2.0", "3", "5", "7"]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["missing_term", "factor", "sign"])
def test_a_silu_without_its_product_term_is_named_and_located(seed: int, kind: Kind) -> None:
    model, loss, batch = norm_chain(seed, "group")
    report = gradwatch.check_module(planted_copy(model, "act", kind), loss, batch)
    assert report.verdict is gradwatch.Verdict.FAIL
    if kind != "missing_term":  # the twin: another bug at the same activation
        assert _named(report) == {}
        return
    named = _named(report)
    assert set(named) == set(report.parameters_with("fail")) == {
        "conv1.weight", "conv1.bias", "norm.weight", "norm.bias"
    }  # fmt: skip
    assert all("without the x·g′(x) term of act" in text for text in named.values())
    assert report.location is not None and report.location.located
    assert "act" in report.location.modules
    assert "x·g′(x) term of act" in report.message


def test_in_a_convnext_block_it_is_named_at_the_generic_point() -> None:
    torch.manual_seed(0)
    net = LayerScaleNet(bug=True)
    report = gradwatch.check_module(net, cross_entropy, batch_for(net, 0), progress=False)
    assert set(_named(report)) == {"norm.weight", "norm.bias", "up.weight", "up.bias"}
    assert report.location is not None and "act" in report.location.modules


def test_a_correct_model_has_no_finding() -> None:
    model, loss, batch = norm_chain(0, "group")
    report = gradwatch.check_module(model, loss, batch)
    assert report.verdict is gradwatch.Verdict.PASS and report.findings == ()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing_term", "factor"])
def test_in_a_llama_the_mlp_activation_is_named(kind: Kind) -> None:
    pytest.importorskip("transformers")
    from tests.zoo_hf import HF_CASES

    case = next(c for c in HF_CASES if c.name == "Llama")
    model, loss, batch = case.build(0)
    bad = planted_copy(model, "model.layers.0.mlp.act_fn", kind)
    report = gradwatch.check_module(bad, loss, batch, **case.options)
    assert report.verdict is gradwatch.Verdict.FAIL
    named = _named(report)
    if kind == "factor":
        assert named == {}
        return
    wrong = {n for n, r in report.parameters.items() if r.disagrees}
    assert "model.layers.0.mlp.gate_proj.weight" in named and set(named) <= wrong
    assert all("model.layers.0.mlp.act_fn" in text for text in named.values())
    assert report.location is not None and report.location.located
    assert "model.layers.0.mlp.act_fn" in report.location.modules
