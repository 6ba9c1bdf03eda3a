"""The zoo's Hugging Face models (tests/zoo_hf.py), built from configs and checked with their own
``output.loss``: correct ones pass wherever judged (their float32 islands kept in float64 by the
precision guard), planted bugs fail and are named. Skipped without ``transformers`` (the
``test`` extra installs it)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

import gradwatch
from tests.planting import Kind
from tests.test_zoo import bug_runs, check_correct, check_planted, correct_runs
from tests.zoo import Case
from tests.zoo_hf import HF_CASES

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


@pytest.mark.parametrize(("case", "seed"), correct_runs(HF_CASES))
def test_correct_models_never_fail(case: Case, seed: int) -> None:
    check_correct(case, seed)


@pytest.mark.parametrize(("case", "kind"), bug_runs(HF_CASES))
def test_planted_bugs_fail_and_are_named(case: Case, kind: Kind) -> None:
    check_planted(case, kind)


@pytest.mark.slow
@pytest.mark.parametrize("case", HF_CASES[:2], ids=lambda c: c.name)
def test_as_written_their_float32_islands_are_judged_only_at_a_step_fitted_to_them(
    case: Case,
) -> None:
    # GPT-2's loss and Llama's RMSNorm compute in float32: read at epsilon 1e-7, every
    # numeric component is rounding noise (most exactly 0; the course's plain difference is
    # ~1). As written, nothing is judged at that step: the components are read again at a step
    # fitted to float32's noise (escalation), where the correct model passes, but only to
    # float32's rounding (a difference ~1e-4, where the guard's float64 check reads ~1e-8).
    model, loss, batch = case.build(0)
    report = gradwatch.check_module(model, loss, batch, keep_precision=False, **case.options)
    assert report.verdict is gradwatch.Verdict.PASS
    assert report.plain_difference > 0.5
    judged = [report.component(p) for p in range(report.components_checked)]
    judged = [c for c in judged if c.reading != "not judged"]
    # GPT-2's tensors that no step judges at θ are read at the generic point (its zero biases
    # moved off zero), there too at the steps fitted to float32's noise
    assert any(c.recheck == "fitted step" for c in judged)
    assert all(c.recheck in ("fitted step", "generic point") for c in judged)
    assert report.difference > 1e-5
    assert any("a cast to float32 as written" in note for note in report.notes)


@pytest.mark.slow
@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: c.name)
def test_with_the_guard_every_component_agrees_at_float64_level(case: Case) -> None:
    # Rounding at epsilon 1e-7 in float64 moves a component by ~eps_mach·|J|/epsilon ≈ 1e-8
    # here; as written (float32 islands) by up to ~|J|·1e-7/1e-7, i.e. O(1).
    model, loss, batch = case.build(0)
    report = gradwatch.check_module(model, loss, batch, **case.options)
    assert np.max(np.abs(report.analytic - report.numeric)) < 1e-6
