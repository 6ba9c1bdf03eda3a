"""The generic point (gradwatch.check.generic_point): designs whose gradients are zero at
initialization by construction are judged at the init check, correct ones pass with their branches
judged, bugs inside those branches fail there, and the model is left bit for bit as it was."""

from __future__ import annotations

from typing import Any, cast
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.check import eager as _module_check
from gradwatch.check.generic_point import TINY, generic_deltas, scales_at_zero
from tests.generic_nets import (
    LayerScaleNet,
    ResidualNet,
    ZeroHeadNet,
    batch_for,
    cross_entropy,
)
from tests.planting import plant
from tests.test_module import changes, snapshot
from tests.zoo import norm_sum

# Per design: the tensors a zero cuts off at θ, the parameters that start at zero or tiny, the
# tensors a planted bug inside the branch fails, and where the cut-off tensors are judged: a
# gradient exactly zero at θ only at the generic point; one 1e-6 of its size (a layer scale) is
# still above J's noise at the step fitted to that noise (gradwatch.evidence.gate), so at θ
# itself.
DESIGNS = {
    "zero-init last BN of a residual branch": (
        ResidualNet,
        ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight"],
        ["stem.1.bias", "bn1.bias", "bn2.weight", "bn2.bias"],
        ["conv1.weight", "bn1.weight", "bn1.bias"],  # a ×1.5 BatchNorm backward in bn1
        "generic point",
    ),
    "layer scale 1e-6": (
        LayerScaleNet,
        ["norm.weight", "norm.bias", "up.weight", "up.bias", "down.weight", "down.bias"],
        ["gamma", "norm.bias"],
        ["norm.weight", "norm.bias", "up.weight", "up.bias"],  # GELU without x·φ(x)
        "fitted step",
    ),
    "zero-init head": (
        ZeroHeadNet,
        ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"],
        ["head.weight", "head.bias"],
        ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"],  # head's dx ×1.5
        "generic point",
    ),
}
# What a BatchNorm cancels: the stem convolution's bias has no gradient at any point.
_CANCELLED = {"stem.0.bias"}


def _check(design: str, bug: bool, seed: int) -> tuple[nn.Module, gradwatch.GradCheckReport]:
    torch.manual_seed(seed)
    net = DESIGNS[design][0](bug)
    return net, gradwatch.check_module(net, cross_entropy, batch_for(net, seed), progress=False)


def _generic_note(report: gradwatch.GradCheckReport) -> str:
    found = [n for n in report.notes if n.startswith("judged at a generic point")]
    assert len(found) == 1, report.notes
    return found[0]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("design", list(DESIGNS))
def test_correct_designs_pass_with_their_branches_judged(design: str, seed: int) -> None:
    _, branch, moved, _, judged_by = DESIGNS[design]
    net, report = _check(design, bug=False, seed=seed)
    assert report.verdict is gradwatch.Verdict.PASS
    for name, result in report.parameters.items():
        expected = gradwatch.Verdict.NOT_JUDGED if name in _CANCELLED else gradwatch.Verdict.PASS
        assert result.verdict is expected, name
    checked = [report.component(p) for p in range(report.components_checked)]
    assert {c.name for c in checked if c.recheck == judged_by} == set(branch)
    assert scales_at_zero(net) == moved
    if judged_by == "generic point":
        note = _generic_note(report)
        assert all(name in note for name in moved)
    else:  # judged at θ: no generic point was needed, and none is said
        assert not any("generic point" in n for n in report.notes)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("design", list(DESIGNS))
def test_bugs_inside_the_branch_fail_at_the_init_check(design: str, seed: int) -> None:
    _, _, _, failing, judged_by = DESIGNS[design]
    _, report = _check(design, bug=True, seed=seed)
    assert report.verdict is gradwatch.Verdict.FAIL
    assert sorted(report.parameters_with("fail")) == sorted(failing)
    assert report.location is not None and report.location.located
    if judged_by == "generic point":
        _generic_note(report)


@pytest.mark.parametrize("design", list(DESIGNS))
def test_without_the_zero_there_is_no_generic_point(design: str) -> None:
    torch.manual_seed(0)
    net = DESIGNS[design][0](False)
    with torch.no_grad():  # the same design after some training: nothing is zero any more
        for name in scales_at_zero(net):
            net.get_parameter(name).add_(0.1)
    report = gradwatch.check_module(net, cross_entropy, batch_for(net, 0), progress=False)
    assert report.verdict is gradwatch.Verdict.PASS
    assert not any("generic point" in n for n in report.notes)
    assert not any(report.component(p).recheck for p in range(report.components_checked))


def test_the_model_is_left_bit_for_bit_as_it_was() -> None:
    torch.manual_seed(0)
    net = ResidualNet()
    batch = batch_for(net, 0)
    cross_entropy(net, batch).backward()  # .grad set, BatchNorm statistics moved
    before = snapshot(net)
    gradwatch.check_module(net, cross_entropy, batch, progress=False)
    assert changes(before, net) == []


def test_the_model_is_left_as_it_was_when_j_raises_at_the_generic_point() -> None:
    torch.manual_seed(0)
    net = ZeroHeadNet()
    before = snapshot(net)

    def only_at_zero(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if model.head.weight.abs().max() > TINY:  # true at the generic point only
            raise RuntimeError("head moved")
        return cross_entropy(model, batch)

    with pytest.raises(RuntimeError, match="head moved"):
        gradwatch.check_module(net, only_at_zero, batch_for(net, 0), progress=False)
    assert changes(before, net) == []


def test_the_moves_are_seeded_and_of_a_default_initializations_size() -> None:
    net = nn.Sequential(nn.Linear(16, 4), nn.BatchNorm1d(4))
    moves = generic_deltas(net, ["0.weight", "1.bias"], seed=3)
    again = generic_deltas(net, ["0.weight", "1.bias"], seed=3)
    assert all(torch.equal(moves[n], again[n]) for n in moves)
    assert not torch.equal(moves["0.weight"], generic_deltas(net, ["0.weight"], seed=4)["0.weight"])
    weight, bias = moves["0.weight"].abs(), moves["1.bias"].abs()
    assert weight.min() >= 0.5 / 4 and weight.max() <= 1 / 4  # 1/√fan_in = 1/4
    assert bias.min() >= 0.5 and bias.max() <= 1.0


def test_a_branch_whose_backward_drops_the_gradient_fails_at_the_generic_point() -> None:
    # Backprop gives the body nothing at θ and at the generic point alike; J itself moves there.
    torch.manual_seed(0)
    net = plant(ZeroHeadNet(), "body", "zeroed")
    report = gradwatch.check_module(net, cross_entropy, batch_for(net, 0), progress=False)
    assert report.verdict is gradwatch.Verdict.FAIL
    assert sorted(report.parameters_with("fail")) == sorted(DESIGNS["zero-init head"][1])


def test_tensors_without_a_gradient_at_the_generic_point_either_cost_a_few_evaluations() -> None:
    model, loss, batch = norm_sum(0, "batch")  # J = sum of normalized outputs: no gradient
    report = gradwatch.check_module(model, loss, batch, progress=False)
    with mock.patch.object(_module_check, "scales_at_zero", lambda model: []):
        before = gradwatch.check_module(model, loss, batch, progress=False)
    unjudged = [n for n, r in report.parameters.items() if r.verdict.value == "not judged"]
    assert unjudged and report.reading_counts == before.reading_counts
    # one backprop and a pair of evaluations along one direction per tensor, nothing more
    assert report.evaluations == before.evaluations + 1 + 2 * len(unjudged)


def _padded_conv() -> tuple[nn.Module, Any, Any]:
    """A 3x3 convolution on 1x1 maps: its eight outer taps read only zero padding, so their
    gradient is zero at every point; then BatchNorm (a bias at zero by default) and a head."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4, 3),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(8, 4, 1, 1, generator=generator),
        torch.randint(0, 3, (8,), generator=generator),
    )
    return net, cross_entropy, batch


def test_a_sample_of_taps_without_a_gradient_anywhere_is_not_read_at_the_generic_point() -> None:
    # sample=10 picks six taps of 0.weight, all outer ones: the tensor is not judged at θ, and a
    # generic point cannot change that. Only the components a reading there would read decide
    # whether it is visited (not the whole tensor, whose centre taps move J).
    net, loss, batch = _padded_conv()
    report = gradwatch.check_module(net, loss, batch, sample=10, progress=False)
    taps = report.indices[report.indices < net[0].weight.numel()] % 9
    assert taps.size and 4 not in taps  # 4: the centre tap
    assert report.parameters["0.weight"].verdict.value == "not judged"
    with mock.patch.object(_module_check, "scales_at_zero", lambda model: []):
        before = gradwatch.check_module(net, loss, batch, sample=10, progress=False)
    assert report.reading_counts == before.reading_counts
    assert report.evaluations == before.evaluations + 1 + 2  # backprop, one direction
    assert not any("generic point" in n for n in report.notes)


def test_a_sampled_branch_with_a_bug_still_fails_at_the_generic_point() -> None:
    torch.manual_seed(0)
    net = DESIGNS["zero-init last BN of a residual branch"][0](True)
    batch = batch_for(net, 0)
    report = gradwatch.check_module(net, cross_entropy, batch, sample=60, progress=False)
    assert report.verdict is gradwatch.Verdict.FAIL
    assert set(report.parameters_with("fail")) <= {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert report.parameters_with("fail")
    _generic_note(report)


class _Line:
    """J(θ) = 1 + c·θ₀ on a 3-vector θ, with backprop saying ``grad`` (a fake ModuleCost)."""

    def __init__(self, c: float, grad: float, shift: torch.Tensor | None = None) -> None:
        self.c, self.grad, self.evaluations = c, grad, 1
        self.theta = [torch.zeros(3, dtype=torch.float64) + (0 if shift is None else shift)]

    def gradient(self) -> tuple[float, list[torch.Tensor]]:
        return 1.0, [torch.tensor([self.grad, 0.0, 0.0], dtype=torch.float64)]

    def moved(self, deltas: list[torch.Tensor]) -> _Line:
        return _Line(self.c, self.grad, self.theta[0] + deltas[0])

    def value(self) -> float:
        return 1.0 + self.c * float(self.theta[0][0])


# J's noise 1e-15 on J = 1: the fitted step is (1e-15)^(1/3) = 1e-5, and a reading there reads a
# component the first step leaves within noise at 256× that, H = 2.56e-3, first (the gate of
# gradwatch.evidence.escalation); the visit test reads J and backprop at H. Its tolerance is
# 8·√2·σ_J = 1.13e-14: along the checked component J changes by 2H·c, backprop says 2H·grad.
_SIGMA, _H = 1e-15, 256 * 1e-5
VISITS = {
    # 2h·1e-9 = 2e-16 at the first step 1e-7, J's and backprop's, both far under the tolerance
    # (J does not move there: a float32 Funnel's planted tensor went unvisited so and passed);
    # 5e-12 at H: a reading there judges it. A backward that drops it shows at H too.
    "small gradient, first step blind": (1e-9, 1e-9, True),
    "dropped gradient": (1e-9, 0.0, True),
    # 2H·2e-12 = 1.02e-14: each side under the tolerance at H, a sign flip's gap (2e-14) not.
    "sign flip at the tolerance": (2e-12, -2e-12, True),
    "agrees at the tolerance": (2e-12, 2e-12, False),  # within noise at every rung
    "no gradient anywhere": (0.0, 0.0, False),  # the padding taps: visiting would cost, not judge
}


@pytest.mark.parametrize("case", VISITS)
def test_a_tensor_is_visited_where_a_reading_there_would_judge_it(case: str) -> None:
    from gradwatch.check.generic_point import _moving, _reach
    from gradwatch.partition import Exchange

    c, grad, read = VISITS[case]
    reach = _reach(torch.zeros(3, dtype=torch.float64), 1e-7, _SIGMA, 1.0)
    assert torch.allclose(reach, torch.full((3,), _H, dtype=torch.float64))
    report = mock.Mock(j_noise=mock.Mock(effective=_SIGMA))
    there = cast(Any, _Line(c, grad))
    names, spent = _moving(there, ["w"], [np.array([0])], report, 1e-7, Exchange(None), 0)
    assert names == (["w"] if read else []) and spent == 1 + 2
