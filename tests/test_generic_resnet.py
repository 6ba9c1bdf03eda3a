"""A ResNet-style net at random initialization (torchvision's BasicBlock with ReLU and
``zero_init_residual``, the external run's ``repro_resnet_warn.py``): it passes, and a bug planted
in the branch that the zero BN scale cuts off fails, at the same seeds.

The stem's ReLU leaves half its outputs exactly 0, and while a block's branch is 0 those sit on the
kink of the block's last ReLU, all at θ together. The jitter that leaves the kink spreads them
over ~1000 steps, with the next block's BN scale moved off zero to ~1e-4: a kink within 4h whose
slope changes by ~1e-8, under what the smoothness test sees, put Richardson's estimate beyond its
tolerance ("disagrees, off kink" on ``3.bn2``, 7 of seeds 0–10 before the fix). Why the existing
tests passed: the tanh ``ResidualNet`` of tests/test_generic.py has no exact zeros (no cluster),
and the zoo's ResNet (tests/zoo.py) has one block, so no later BN scale the jitter moves to ~1e-4
(no weak kinks); this net has both.
"""

from __future__ import annotations

import pytest
import torch

import gradwatch
from tests.generic_nets import cross_entropy, relu_resnet, relu_resnet_batch

# Seeds 2, 3, 4, 7, 8, 9 and 10 read a "disagrees, off kink" on 3.bn2 before the fix. A check
# takes ~10 s here: the twins run at three of those seeds in the slow set (at all of 0–10 they
# failed so when measured; see the branch's report).
FAST = [2]
SLOW = [s for s in range(11) if s not in FAST]
SLOW_TWINS = [3, 7, 10]
# The planted twins: their tensor (in the first block, cut off at θ by its zero BN scale) and
# how many of its components are checked, all of which must disagree.
PLANTED = {"conv2": ("3.conv2.weight", 576), "bn1": ("3.bn1.weight", 8)}


def _check(bug: str | None, seed: int) -> gradwatch.GradCheckReport:
    torch.manual_seed(seed)
    net = relu_resnet(bug)
    return gradwatch.check_module(net, cross_entropy, relu_resnet_batch(seed), progress=False)


def _passes(seed: int) -> None:
    report = _check(None, seed)
    assert report.verdict is gradwatch.Verdict.PASS, str(report)
    assert report.reading_counts["disagrees"] == 0
    assert all(r.verdict is gradwatch.Verdict.PASS for r in report.parameters.values())
    checked = [report.component(p) for p in range(report.components_checked)]
    # What is not judged is a kink that no jittered θ left (or whose reading there depended
    # on where θ stood), never a gradient too small: the generic point judged the branch.
    assert {c.reason for c in checked if c.reading == "not judged"} <= {"on a kink"}
    assert sum(c.reading == "not judged" for c in checked) <= 8  # of 2645


def _fails(bug: str, seed: int) -> None:
    report = _check(bug, seed)
    name, size = PLANTED[bug]
    assert report.verdict is gradwatch.Verdict.FAIL
    assert report.parameters_with("fail") == [name]
    checked = [report.component(p) for p in range(report.components_checked)]
    assert sum(c.reading == "disagrees" for c in checked if c.name == name) == size


@pytest.mark.parametrize("seed", FAST)
def test_a_relu_resnet_with_zero_init_residual_passes_at_init(seed: int) -> None:
    _passes(seed)


@pytest.mark.parametrize("seed", FAST)
@pytest.mark.parametrize("bug", list(PLANTED))
def test_its_planted_twins_fail(bug: str, seed: int) -> None:
    _fails(bug, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW)
def test_a_relu_resnet_with_zero_init_residual_passes_at_every_seed(seed: int) -> None:
    _passes(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_TWINS)
@pytest.mark.parametrize("bug", list(PLANTED))
def test_its_planted_twins_fail_at_every_seed(bug: str, seed: int) -> None:
    _fails(bug, seed)
