"""The kind of bug and where it enters: planted bugs named and located, correct models and noise
left alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import diagnosis
from gradwatch.diagnosis import (
    Observations,
    find_patterns,
    locate,
    observations,
    parameter_verdicts,
    trace_backward,
)
from gradwatch.layout import Layout
from tests import nets, planted

BATCH = 16


def _batch(examples: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(examples, 5, generator=generator), torch.randint(
        0, 3, (examples,), generator=generator
    )


def _findings(model: nn.Module, batch: Any, **options: Any) -> list[diagnosis.Finding]:
    report = gradwatch.check_module(model, nets.cross_entropy, batch, **options)
    return find_patterns(observations(report, batch_size=diagnosis.batch_size_of(batch)))


# -- the kind of bug ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bug", "kind", "ratio"),
    [
        ("x2", "scale", 0.5),
        ("xB", "mean/sum", 1 / BATCH),
        ("x1/B", "mean/sum", float(BATCH)),
        ("sign", "sign", -1.0),
        ("zero", "zero", None),
        ("transpose", "transpose", None),
    ],
)
def test_a_planted_weight_bug_is_named_on_every_wrong_component(
    bug: planted.WeightBug, kind: str, ratio: float | None
) -> None:
    findings = _findings(planted.linear_net(bug), _batch())
    assert [(f.parameter, f.kind, f.ratio) for f in findings] == [("2.weight", kind, ratio)]
    # The diagonal of a transposed 6×6 gradient is right: 30 wrong components, else 36.
    assert findings[0].fitted == findings[0].tested == (30 if bug == "transpose" else 36)


@pytest.mark.parametrize(
    ("bug", "text"),
    [
        (
            "xB",
            "2.weight: numeric/analytic = 1/16 on 36 of 36 wrong components: backprop's gradient "
            "is 16× too large, and 16 is the batch size: a mean/sum mix-up? (a sum over the "
            "batch where J takes the mean: a division by the batch size missing)",
        ),
        (
            "sign",
            "2.weight: numeric/analytic = −1 on 36 of 36 wrong components: backprop's gradient "
            "has the wrong sign",
        ),
        (
            "zero",
            "2.weight: backprop's gradient is 0 on 36 of 36 wrong components, where J moves: a "
            "missing term or a detached path (.detach(), .data, torch.no_grad)?",
        ),
    ],
)
def test_the_finding_reads_as_a_sentence(bug: planted.WeightBug, text: str) -> None:
    (finding,) = _findings(planted.linear_net(bug), _batch())
    assert finding.text == text
    assert finding.to_dict()["text"] == text and finding.to_dict()["kind"] == finding.kind


def test_swapped_gradients_of_two_tensors_are_named_as_each_others() -> None:
    findings = _findings(planted.linear_net(swapped=True), _batch())
    assert [(f.parameter, f.kind, f.other) for f in findings] == [
        ("2.a", "neighbour", "2.b"),
        ("2.b", "neighbour", "2.a"),
    ]


def test_a_sampled_check_names_a_transposed_gradient_from_the_full_analytic_one() -> None:
    model = planted.linear_net("transpose")
    report = gradwatch.check_module(model, nets.cross_entropy, _batch(), sample=40)
    full = _backprop_gradient(model, _batch())
    evidence = observations(report, gradients={"2.weight": full})
    assert [(f.parameter, f.kind) for f in find_patterns(evidence)] == [("2.weight", "transpose")]


def _backprop_gradient(model: nn.Module, batch: Any) -> np.ndarray:
    """Backprop's (wrong) gradient of the middle weight, as the check has it in full."""
    model.zero_grad()
    nets.cross_entropy(model, (batch[0].double(), batch[1])).backward()
    grad = model[2].weight.grad.detach().numpy().copy()
    model.zero_grad(set_to_none=True)
    return grad


@pytest.mark.parametrize(
    "make",
    [
        lambda: (planted.linear_net("none"), _batch()),
        lambda: (nets.mlp(), nets.classification_batch((4,))),
        lambda: (nets.cnn(), nets.classification_batch((1, 6, 6))),
        lambda: (nets.GatedNet().double(), nets.classification_batch((3,), classes=2)),
    ],
    ids=["linear", "mlp-batchnorm", "cnn-batchnorm", "custom-function"],
)
def test_a_correct_model_gives_no_finding_and_no_location(make: Any) -> None:
    model, batch = make()
    report = gradwatch.check_module(model, nets.cross_entropy, batch)
    assert find_patterns(observations(report, batch_size=len(batch[0]))) == []
    assert (
        locate(trace_backward(model, nets.cross_entropy, batch), parameter_verdicts(report)) is None
    )


def test_a_check_dominated_by_rounding_names_no_pattern() -> None:
    report = gradwatch.check_module(
        nets.mlp(), nets.cross_entropy, nets.classification_batch((4,)), dtype=torch.float32
    )
    evidence = observations(report, batch_size=8)
    evidence = Observations(
        evidence.layout,
        evidence.indices,
        evidence.analytic,
        evidence.numeric,
        evidence.noise,
        np.ones(evidence.indices.size, bool),
    )  # all "wrong"
    assert find_patterns(evidence) == []


def _synthetic(analytic: np.ndarray, numeric: np.ndarray, noise: float = 1e-9) -> Observations:
    n = analytic.size
    return Observations(
        Layout.from_mapping({"w": (n,)}),
        np.arange(n),
        analytic,
        numeric,
        np.full(n, noise),
        np.ones(n, bool),
        batch_size=BATCH,
    )


@pytest.mark.parametrize("spread", [1.0, 3.0, 100.0, 1e4])
def test_errors_of_noise_name_no_pattern_however_large(spread: float) -> None:
    rng = np.random.default_rng(0)
    analytic = rng.normal(size=200)
    numeric = analytic + spread * 1e-9 * rng.normal(size=200)
    assert find_patterns(_synthetic(analytic, numeric)) == []


def test_unrelated_values_name_no_pattern() -> None:
    rng = np.random.default_rng(1)
    assert find_patterns(_synthetic(rng.normal(size=200), rng.normal(size=200))) == []


def test_a_ratio_that_holds_only_to_a_percent_is_not_named() -> None:
    rng = np.random.default_rng(2)
    analytic = rng.normal(size=200)
    assert (
        find_patterns(_synthetic(analytic, 0.5 * analytic * (1 + 0.01 * rng.normal(size=200))))
        == []
    )


@pytest.mark.parametrize(("count", "named"), [(2, False), (4, False), (5, True)])
def test_a_pattern_needs_five_wrong_components(count: int, named: bool) -> None:
    analytic = np.linspace(1.0, 2.0, count)
    assert bool(find_patterns(_synthetic(analytic, -analytic))) is named


def test_one_odd_component_in_ten_still_names_the_pattern_two_do_not() -> None:
    analytic = np.linspace(1.0, 2.0, 10)
    numeric = -analytic
    numeric[0] = 5.0
    assert [f.kind for f in find_patterns(_synthetic(analytic, numeric))] == ["sign"]
    numeric[1] = 7.0
    assert find_patterns(_synthetic(analytic, numeric)) == []


def test_components_that_agree_do_not_count_against_a_pattern() -> None:
    analytic = np.linspace(1.0, 2.0, 20)
    numeric = analytic.copy()
    numeric[:8] *= 2  # eight wrong by ×2, twelve right (the caller marked all as wrong)
    (finding,) = find_patterns(_synthetic(analytic, numeric))
    assert (finding.kind, finding.ratio, finding.fitted, finding.tested) == ("scale", 2.0, 8, 8)


def test_evidence_refuses_arrays_of_another_length() -> None:
    with pytest.raises(ValueError, match=r"`noise` must have one value per checked component \(3"):
        Observations(
            Layout.from_mapping({"w": 3}),
            np.arange(3),
            np.ones(3),
            np.ones(3),
            np.ones(2),
            np.ones(3, bool),
        )
    with pytest.raises(ValueError, match=r"`batch_size` must be None or a positive int; got 0"):
        Observations(
            Layout.from_mapping({"w": 3}),
            np.arange(3),
            np.ones(3),
            np.ones(3),
            np.ones(3),
            np.ones(3, bool),
            batch_size=0,
        )
    with pytest.raises(ValueError, match=r"`gradients\['w'\]` must be the full gradient"):
        Observations(
            Layout.from_mapping({"w": 3}),
            np.arange(3),
            np.ones(3),
            np.ones(3),
            np.ones(3),
            np.ones(3, bool),
            gradients={"w": np.ones(2)},
        )
