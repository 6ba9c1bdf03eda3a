"""The ecosystem zoo (tests/zoo.py): correct models never fail, over several seeds, and pass
wherever they are judged; parameters whose gradient is zero by construction are shown as not
judged (never 0.0, never pass); planted backward bugs fail, and ``worst()`` and the
per-parameter differences name a parameter the bug reaches.

"What a bug reaches" is measured, not guessed: the parameters whose autograd gradient differs
between the planted model and the correct one (tests/planting.py's ``corrupted``).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import pytest
import torch

import gradwatch
from tests.planting import Kind, corrupted, planted_copy
from tests.zoo import CASES, Case, resnet

SEEDS = (0, 1, 2)
# The vectorized path runs scaled_dot_product_attention through vmap's slow fallback; fine here.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _params(case: Case, runs: list[Any]) -> list[Any]:
    marks = [pytest.mark.slow] if case.slow else []
    return [pytest.param(case, *run, marks=marks, id=f"{case.name}-{run[-1]}") for run in runs]


def correct_runs(cases: list[Case]) -> list[Any]:
    return [p for case in cases for p in _params(case, [(seed,) for seed in SEEDS])]


def bug_runs(cases: list[Case]) -> list[Any]:
    return [p for case in cases for p in _params(case, [(kind,) for kind in case.bugs])]


def parameter_verdicts(report: gradwatch.GradCheckReport) -> dict[str, str]:
    """Each parameter's verdict: ``"pass"``, ``"warn"``, ``"fail"`` or ``"not judged"``."""
    return {name: result.verdict.value for name, result in report.parameters.items()}


def unjudged_names(case: Case, report: gradwatch.GradCheckReport) -> list[str]:
    names = list(report.parameters)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in case.unjudged)]


def assert_correct(case: Case, report: gradwatch.GradCheckReport) -> None:
    """Never a fail; every judged parameter passes; what cannot be judged says so."""
    assert report.verdict.value != "fail", str(report)
    verdicts = parameter_verdicts(report)
    assert {n: v for n, v in verdicts.items() if v not in ("pass", "not judged")} == {}
    for name in unjudged_names(case, report):
        assert verdicts[name] == "not judged", name


def assert_caught(report: gradwatch.GradCheckReport, reach: set[str]) -> None:
    """A fail, and the worst component and the worst judged parameter are where the bug is."""
    assert report.verdict.value == "fail", str(report)
    assert report.worst(1)[0].name in reach, (report.worst(1)[0].label, reach)
    judged = {
        n: r.difference
        for n, r in report.parameters.items()
        if r.verdict.value != "not judged" and not math.isnan(r.difference)
    }
    assert max(judged, key=judged.__getitem__) in reach, (judged, reach)


def check_correct(case: Case, seed: int) -> None:
    model, loss, batch = case.build(seed)
    assert_correct(case, gradwatch.check_module(model, loss, batch, seed=seed, **case.options))


def check_planted(case: Case, kind: Kind) -> None:
    model, loss, batch = case.build(0)
    bad = planted_copy(model, case.bugs[kind], kind)
    reach = corrupted(model, bad, loss, batch)
    assert reach, "the planted bug must change some gradient"
    assert_caught(gradwatch.check_module(bad, loss, batch, **case.options), reach)


@pytest.mark.parametrize(("case", "seed"), correct_runs(CASES))
def test_correct_models_never_fail(case: Case, seed: int) -> None:
    check_correct(case, seed)


@pytest.mark.parametrize(("case", "kind"), bug_runs(CASES))
def test_planted_bugs_fail_and_are_named(case: Case, kind: Kind) -> None:
    check_planted(case, kind)


@pytest.mark.slow
def test_a_bug_behind_a_zero_scale_fails_at_init_and_after_training() -> None:
    # At init (bn2's scale 0) the residual branch has no gradient at θ: a wrong backward inside
    # it cannot show there, and the branch is judged at the generic point (bn2's scale moved
    # off zero on the check's copy), where it fails.
    model, loss, batch = resnet(0)
    bad = planted_copy(model, "block.conv1", "factor")
    assert corrupted(model, bad, loss, batch) == set()
    report = gradwatch.check_module(bad, loss, batch)
    assert report.verdict.value == "fail", str(report)
    assert "block.conv1.weight" in report.parameters_with("fail")
    assert any(n.startswith("judged at a generic point") for n in report.notes)
    trained, loss, batch = resnet(0, trained=True)
    bad = planted_copy(trained, "block.conv1", "factor")
    reach = corrupted(trained, bad, loss, batch)
    assert "block.conv1.weight" in reach
    assert_caught(gradwatch.check_module(bad, loss, batch), reach)


def test_planting_changes_backprop_only() -> None:
    model, loss, batch = CASES[0].build(0)
    bad = planted_copy(model, "blocks.0.attn.out.weight", "transposed")
    torch.manual_seed(0)
    assert torch.equal(loss(model, batch), loss(bad, batch))
    assert corrupted(model, bad, loss, batch) == {"blocks.0.attn.out.weight"}


def test_planting_rejects_a_bug_that_does_not_fit() -> None:
    model, _, _ = CASES[0].build(0)
    with pytest.raises(ValueError, match=r"cannot plant 'transposed' on blocks\.0\.attn\.qkv"):
        planted_copy(model, "blocks.0.attn.qkv.weight", "transposed")
    with pytest.raises(AttributeError):
        planted_copy(model, "blocks.7", "sign")


@pytest.mark.slow
def test_directions_find_nine_in_ten_corrupted_tensors_across_the_zoo() -> None:
    found = reached = 0
    for case in CASES:
        for kind, site in case.bugs.items():
            model, loss, batch = case.build(0)
            bad = planted_copy(model, site, kind)
            reach = corrupted(model, bad, loss, batch)
            report = gradwatch.check_module(bad, loss, batch, mode="directions")
            assert report.verdict.value == "fail", (case.name, kind)
            failing = {n for n, v in parameter_verdicts(report).items() if v == "fail"}
            found, reached = found + len(reach & failing), reached + len(reach)
    assert found >= 0.9 * reached, f"{found} of {reached}"
