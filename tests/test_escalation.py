"""Escalation's ladder on J's with a known answer: a tensor too close to J's noise, or a component
the gate found a gradient along, is read at the step fitted to J's noise and ``RUNG`` times
longer ones while the tensor stays too close (``gradwatch.evidence.ladder.climb``); and the
tensor test's re-read by Richardson's estimate. The gate itself: ``tests/test_gate.py``."""

from __future__ import annotations

import numpy as np
import pytest

import gradwatch
from gradwatch import Verdict
from gradwatch.evidence.escalation import noise_at
from gradwatch.evidence.ladder import NOISE_GROWTH
from gradwatch.evidence.readings import AGREES, DISAGREES, FITTED_STEP, Record
from gradwatch.evidence.recheck import longest_steps
from tests.noisy_costs import BIG, LAYOUT, Cubes, Stairs, one_gradient, origin


def test_tensors_too_close_to_j_noise_are_read_again_beside_one_that_disagrees() -> None:
    # J = 3e5 + g·θ + θ·θ at θ = 0 (σ ≈ 2.6e-4 per component at ε = 1e-7). "a", "b" and "c" (|g|
    # ~ 0.03) have a noise floor ~1e-2 > warn_max: too close to J's noise, each read again at the
    # fitted step on its own ("d" and "e" beside them would hide that noise if counted with
    # theirs). "a" with a sign flip disagrees: it keeps its first readings, the others are read
    # again. "e" (0.3 and 24 zeros within noise) is not too close: its floor counts e[0] only.
    layout = {"a": (3,), "d": (1,), "b": (3,), "c": (3,), "e": (25,)}
    grad = np.r_[0.03, -0.02, 0.025, 1.0, 0.03, -0.02, 0.025, -0.02, 0.04, 0.03, 0.3, np.zeros(24)]

    def cost(t: np.ndarray) -> float:
        return BIG + float(grad @ t) + float(t @ t)

    wrong = grad.copy()
    wrong[1] = -wrong[1]
    for analytic, a_fails in ((grad, False), (wrong, True)):
        report = gradwatch.check_function(cost, np.zeros(grad.size), analytic, layout=layout)
        verdicts = {name: p.verdict for name, p in report.parameters.items()}
        a = Verdict.FAIL if a_fails else Verdict.PASS
        assert verdicts == {
            "a": a,
            "d": Verdict.PASS,
            "b": Verdict.PASS,
            "c": Verdict.PASS,
            "e": Verdict.PASS,
        }, str(report)
        rechecks = [report.component(i).recheck for i in range(11)]
        first = "" if a_fails else "fitted step"
        assert rechecks == [first, "longer steps" if a_fails else first, first, ""] + [
            "fitted step"
        ] * 6 + [""], str(report)
        assert report.component(1).reading == ("disagrees" if a_fails else "agrees")


@pytest.mark.parametrize("d", [1.0, -1.0])
def test_the_ladder_climbs_while_a_tensor_stays_too_close_to_j_noise(d: float) -> None:
    # J = 3e5 + g·x + x·x, x = θ − θ₀. At the fitted step (noise ~4.7e-6 per component) "b"
    # (|g| ~ 1e-3, judged at the first step) and "c" (|g| ~ 1e-4, within noise, read through the
    # gate) stay too close to J's noise: each climbs to the next rung (noise ~3e-7), where 1% of
    # b[1] and 5% of c[1] (≥ 2e-5 and 1e-5) disagree. b[3] (θ₀ = 1e20: its step is lost) is read at
    # no step. "d" (g = 1) beside them has a noise floor far under warn_max; its sign flipped
    # (d = −1), it fails, and b and c climb all the same.
    layout = {"d": (1,), "b": (4,), "c": (3,)}
    grad = np.r_[1.0, 1e-3, -2e-3, 1.5e-3, 0.01, 1e-4, -2e-4, 1.5e-4]
    theta = np.r_[np.zeros(4), 1e20, np.zeros(3)]

    def cost(t: np.ndarray) -> float:
        x = t - theta
        return BIG + float(grad @ x) + float(x @ x)

    wrong = grad * np.r_[1.0, 1.0, 1.01, 1.0, 1.0, 1.0, 1.05, 1.0]
    for analytic, fails in ((grad, False), (wrong, True)):
        analytic = analytic * np.r_[d, np.ones(7)]
        report = gradwatch.check_function(cost, theta, analytic, layout=layout)
        bug = Verdict.FAIL if fails else Verdict.PASS
        verdicts = {name: p.verdict for name, p in report.parameters.items()}
        flip = Verdict.PASS if d > 0 else Verdict.FAIL
        assert verdicts == {"d": flip, "b": bug, "c": bug}, str(report)
        lost = report.component(4)
        assert (lost.reading, lost.reason, lost.recheck) == ("not judged", "step lost", "")
        for i in (1, 2, 3, 5, 6, 7):
            found = report.component(i)
            assert found.recheck == "fitted step" and found.numeric_noise < 1e-6, str(report)
            flipped = fails and i in (2, 6)
            assert found.reading == ("disagrees" if flipped else "agrees"), str(report)


def test_the_auto_step_escalates_like_the_default_step() -> None:
    # c = 5e-6 on w₀: within noise at H₀ (tolerance ~3e-5), clear at 256·H₀. At ε = 1e-7 the
    # gate finds it and a detached w₀ fails; at ε = "auto" (= H₀ for this J) too, where the
    # escalation starts a rung up (a read at H₀ again would tell nothing). The right one passes.
    cost = one_gradient(5e-6)
    for epsilon in (1e-7, "auto"):
        right, detached = (
            gradwatch.check_function(
                cost, origin(), np.r_[g0, np.zeros(6), 1.0], layout=LAYOUT, epsilon=epsilon
            )
            for g0 in (5e-6, 0.0)
        )
        assert right.verdict is Verdict.PASS, (epsilon, str(right))
        assert detached.verdict is Verdict.FAIL, (epsilon, str(detached))


def test_a_tensor_failing_the_tensor_test_by_truncation_is_read_again_by_richardson() -> None:
    # J = 3e7 + Σθ³ + Σb² at ε = 2e-3: each first reading of θ carries the h² truncation
    # h²·J‴/6 = 4e-6, ~6σ of its noise (J's rounding ~1e-9): under every component's 8σ, yet
    # together (100 of them) far beyond the tensor's noise. The tensor test asks for a re-read of
    # θ at 2h and 4h, whose Richardson estimate has no h² term: it passes. b (no truncation) is
    # not re-read. A shared error of 1e-5 (relative) stays beyond the re-read's noise: θ warns,
    # as the material's band says for its D.
    theta = np.r_[np.linspace(0.5, 1.5, 100), 0.5, -1.0, 2.0]
    layout = {"theta": (100,), "b": (3,)}

    def cost(t: np.ndarray) -> float:
        return 3e7 + float(np.sum(t[:100] ** 3)) + float(t[100:] @ t[100:])

    grad = np.r_[3 * theta[:100] ** 2, 2 * theta[100:]]
    right = gradwatch.check_function(cost, theta, grad, epsilon=2e-3, layout=layout)
    assert right.verdict is Verdict.PASS, str(right)
    assert right.parameters["theta"].agrees == 100 and right.parameters["theta"].tensor_test < 1
    rechecks = [right.component(i).recheck for i in range(103)]
    assert rechecks == ["longer steps"] * 100 + [""] * 3
    wrong = gradwatch.check_function(
        cost, theta, grad * np.r_[np.full(100, 1 + 1e-5), 1, 1, 1], epsilon=2e-3, layout=layout
    )
    assert wrong.verdict is Verdict.WARN, str(wrong)
    assert wrong.parameters["theta"].disagrees > 0 and wrong.parameters["theta"].tensor_test > 1
    assert wrong.parameters["b"].verdict is Verdict.PASS


@pytest.mark.parametrize("kink", [np.inf, 4e-6])
def test_a_tensor_that_disagrees_does_not_stop_another_tensors_ladder(kink: float) -> None:
    # c = 5e-6 on w₀: within noise at the first step and at H₀ (tolerance ~3e-5), clear at 16·H₀.
    # The gate's directions (no kink) or w₀ read alone (a kink 4e-6 from θ along w₄ makes every
    # direction rough) show it; the ladder reads w₀ from H₀ up. b's sign flipped disagrees at the
    # first step: w's ladder still climbs, and a detached w₀ fails beside it.
    cost = one_gradient(5e-6, kink=kink)
    for g0, verdict in ((5e-6, Verdict.PASS), (0.0, Verdict.FAIL)):
        analytic = np.r_[g0, np.zeros(6), -1.0]
        report = gradwatch.check_function(cost, origin(), analytic, layout=LAYOUT)
        assert report.parameters["b"].verdict is Verdict.FAIL
        assert report.parameters["w"].verdict is verdict, str(report)
        assert report.component(0).reading == ("agrees" if g0 else "disagrees")


def test_the_ladder_climbs_a_tensor_too_close_to_j_noise_though_every_component_agrees() -> None:
    # J = Σθ³ at θ = (1, 1), H = 1e-4 and J's noise 1e-6: Richardson's noise at H (~1e-2 a
    # component) agrees on 3 but leaves the tensor's noise floor (~3e-3) above warn_max. Both
    # climb to 16·H, where the floor is 16× lower and the ladder stops.
    from gradwatch.evidence.ladder import climb

    theta, h = np.ones(2), 1e-4
    j, a = Cubes(theta), 3 * theta**2
    record = Record(a, a, np.full(2, 1e-9), np.full(2, 1e-6))
    start = (np.arange(2), np.full(2, h))
    climb(j, record, np.ones(2, bool), start, j.center, (1e-7, 1e-3), 0)  # type: ignore[arg-type]
    assert list(record.reading) == [AGREES] * 2 and list(record.recheck) == [FITTED_STEP] * 2
    np.testing.assert_array_equal(record.step, [16 * h] * 2)


# The ladder against J's noise at each rung's stride, on tests/noisy_costs.Stairs (J's noise 1e-7
# at every stride from 3e-4 on): the tensor as escalation finds it, read at the fitted step
# H = 3e-4, where Richardson's noise is 0.95·σ/H = 3.2e-4 a component and the tensor's noise
# floor 1.4e-3: too close to J's noise under the warn band 1e-3 (a planted 1% bug's largest gap,
# 2e-3, is under the tolerance 2.5e-3). One rung up, 16·H = 4.8e-3 (under float32's step): 2e-5 a
# component and a tolerance of 1.6e-4, where the bug's gaps (2e-3, 5e-4) stand out.
FITTED = 3e-4


def _climb(j: Stairs, analytic: np.ndarray, sigma: float, warn_max: float = 1e-3) -> Record:
    from gradwatch.evidence.ladder import climb

    size = Stairs.SLOPES.size
    record = Record(analytic, analytic.copy(), np.full(size, 1e-9), np.full(size, sigma))
    record.step[:] = 1e-7
    start = (np.arange(size), np.full(size, FITTED))
    climb(j, record, np.ones(size, bool), start, j.CENTER, (1e-7, warn_max), j.key)  # type: ignore[arg-type]
    return record


@pytest.mark.parametrize("key", [0, 1, 2])
@pytest.mark.parametrize("planted", [False, True])
def test_a_tensor_too_close_to_j_noise_is_read_at_longer_rungs(planted: bool, key: int) -> None:
    record = _climb(Stairs(key), Stairs.SLOPES * (1.01 if planted else 1.0), Stairs.NOISE)
    np.testing.assert_array_equal(record.step, [16 * FITTED] * 4)
    assert list(record.recheck) == [FITTED_STEP] * 4
    assert list(record.reading) == [DISAGREES if planted else AGREES] * 4
    # The bug's disagreement asks for J's noise at 16·H: measured, about the 1e-7 held.
    found = noise_at(Stairs(key), 1.0, np.arange(4), np.full(4, 16 * FITTED), key)  # type: ignore[arg-type]
    assert 0.5 * Stairs.NOISE < found < 2 * Stairs.NOISE
    assert list(record.sigma) == [max(found, Stairs.NOISE) if planted else Stairs.NOISE] * 4


@pytest.mark.parametrize(("factor", "warn_max"), [(1.02, 1e-3), (1.0, 1e-1)])
def test_a_tensor_disagreeing_or_judged_at_a_rung_is_not_read_higher(
    factor: float, warn_max: float
) -> None:
    # 2% off: w₀'s 4e-3 beyond the tolerance 2.5e-3 at H, a disagreement that convicts the
    # tensor already (against J's noise at H's stride as well); under a warn band of 0.1 the
    # tensor is judged at H as it is. Neither climbs.
    record = _climb(Stairs(0), Stairs.SLOPES * factor, Stairs.NOISE, warn_max)
    np.testing.assert_array_equal(record.step, [FITTED] * 4)
    assert list(record.reading) == [DISAGREES if factor > 1 else AGREES] + [AGREES] * 3
    assert (record.sigma >= Stairs.NOISE).all() and (record.sigma < 2 * Stairs.NOISE).all()


@pytest.mark.parametrize("key", [0, 1])
@pytest.mark.parametrize(("gap", "reading"), [(1e-4, AGREES), (1e-3, DISAGREES)])
def test_a_rung_that_disagrees_is_read_against_j_noise_at_its_own_stride(
    gap: float, reading: int, key: int
) -> None:
    # The noise held is a quarter of J's (the first probes' stride saw a quarter of the cells'
    # error): under a warn band of 2e-4 the tensor (floor 3.5e-4 against it) climbs from H to 16·H.
    # There a gap of 1e-4 on w₁ (5σ of J's noise, 2.5× the tolerance against the noise held)
    # disagrees against the noise held, and agrees against J's noise measured at its stride (4×
    # the held, within the growth rounding allows). 1e-3 disagrees against both.
    analytic = Stairs.SLOPES + np.r_[0.0, gap, 0.0, 0.0]
    record = _climb(Stairs(key), analytic, Stairs.NOISE / 4, 2e-4)
    np.testing.assert_array_equal(record.step, [16 * FITTED] * 4)
    found = [
        noise_at(Stairs(key), 1.0, np.arange(4), np.full(4, s), key)  # type: ignore[arg-type]
        for s in (FITTED, 16 * FITTED)
    ]
    assert all(Stairs.NOISE / 4 < f < NOISE_GROWTH * Stairs.NOISE / 4 for f in found)
    # J's noise at H's stride too where a reading at H asked, never lowered at 16·H
    assert len(set(record.sigma)) == 1 and record.sigma[0] in (found[1], max(found))
    assert record.reading[1] == reading and (record.reading[[0, 2, 3]] == AGREES).all()


@pytest.mark.parametrize("key", [0, 1])
def test_a_rung_whose_noise_grew_as_structure_does_not_count(key: int) -> None:
    # A kink of slope 0.1 along w₃, 6e-3 from θ: w₃'s own reading at 16·H (±2·16·H = 9.6e-3)
    # crosses it, rough; the probes at that stride (1 to 2 half gaps, 4.8e-3 to 9.6e-3, every
    # direction moving w₃) cross it too and read a noise ~1e3× the 1e-7 held: the planted 1% bug
    # that disagrees there asked, and the rung's readings do not count. Every component keeps its
    # reading at H, its noise and its step. Without the kink, 16·H convicts the bug.
    analytic = Stairs.SLOPES * 1.01
    kinked = Stairs(key, kink=0.1, at=5e-3)
    found = noise_at(kinked, 1.0, np.arange(4), np.full(4, 16 * FITTED), key)  # type: ignore[arg-type]
    assert found > NOISE_GROWTH * Stairs.NOISE
    record = _climb(kinked, analytic, Stairs.NOISE)
    np.testing.assert_array_equal(record.step, [FITTED] * 4)
    assert list(record.sigma) == [Stairs.NOISE] * 4 and (record.reading == AGREES).all()
    np.testing.assert_allclose(record.noise, 0.95 * Stairs.NOISE / FITTED, rtol=1e-3)
    assert (_climb(Stairs(key), analytic, Stairs.NOISE).reading == DISAGREES).all()


class _Quartic(Stairs):
    """Stairs + 1000·x₂⁴: smooth at H along component 2 (J'' at H and 2H 5e-4 apart), rough at
    16·H (0.14 apart, 30× the noise of J'' there); no gradient at θ."""

    def _cost(self, x: np.ndarray) -> float:
        return super()._cost(x) + 1000 * x[2] ** 4


# Under a warn band of 1e-4, component 2's noise (3.2e-4 at H) keeps the tensor too close to J's
# noise at 16·H: the others climb to float32's step too. With the planted 1% bug, w₀, w₁ and w₃
# disagree at 16·H and ask: the rung is read again against J's noise at its stride (9e-8 there,
# under the held 1e-7), and w₂, rough there, keeps its reading at H and its noise.
@pytest.mark.parametrize("planted", [False, True])
@pytest.mark.parametrize("warn_max", [1e-3, 1e-4])
def test_a_component_rough_at_a_longer_rung_keeps_its_reading_and_its_noise(
    warn_max: float, planted: bool
) -> None:
    analytic = Stairs.SLOPES * (1.01 if planted else 1.0)
    record = _climb(_Quartic(0), analytic, Stairs.NOISE, warn_max)
    top = 16 * FITTED if warn_max == 1e-3 or planted else float(longest_steps(np.zeros(1))[0])
    np.testing.assert_array_equal(record.step, [top, top, FITTED, top])
    assert list(record.sigma) == [Stairs.NOISE] * 4
    bug = DISAGREES if planted else AGREES
    assert list(record.reading) == [bug, bug, AGREES, bug]


class _Exact(Stairs):
    """Stairs whose error is zero along a single component: the readings are exact, and J's noise
    (1e-7) shows only along the probes, which move all four components."""

    def _error(self, cells: np.ndarray) -> float:
        return 0.0 if np.count_nonzero(cells) < 2 else super()._error(cells)


@pytest.mark.parametrize(
    ("z", "measured"),
    [((7.0, 7.0, 7.0, 7.0), True), ((5.0, 5.0, 5.0, 5.0), False), ((0.0, 9.0, 0.0, 0.0), True)],
)
def test_readings_that_disagree_or_fail_the_tensor_test_ask_for_j_noise_at_their_stride(
    z: tuple[float, ...], measured: bool
) -> None:
    # The noise held is a quarter of J's; under a warn band of 0.1 the tensor is judged at H.
    # Every component off by 7σ of its reading (none disagrees, 8σ) together fail the tensor
    # test (S = 196 against the bound 163 for four): they ask, and are read against J's noise at
    # H's stride, 4× the held (1.75σ each, S = 12). Off by 5σ (S = 100) they pass it and ask for
    # nothing: the noise held stays. w₁ alone off by 9σ disagrees (S = 81, under the bound): it
    # asks, and agrees against that noise (2.25σ).
    j, held = _Exact(0), Stairs.NOISE / 4
    unit = _climb(j, Stairs.SLOPES.copy(), held, 0.1).noise
    record = _climb(j, Stairs.SLOPES + np.array(z) * unit, held, 0.1)
    assert (record.reading == AGREES).all() and (record.step == FITTED).all()
    found = noise_at(j, 1.0, np.arange(4), np.full(4, FITTED), 0)  # type: ignore[arg-type]
    assert held < found < NOISE_GROWTH * held
    assert list(record.sigma) == [found if measured else held] * 4
