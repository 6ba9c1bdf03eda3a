"""The gate of escalation on J's with a known answer (``gradwatch.evidence.gate``): a tensor the
first step leaves within noise is read along random ±1 directions at the step fitted to J's noise
and its rungs, and component by component only where a direction shows a gradient; where J is
rough along the directions at every rung, each component is read alone. J = 3e5 + … (see
``tests/noisy_costs.py``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import gradwatch
from gradwatch import Verdict
from tests.noisy_costs import BIG, LAYOUT, one_gradient, origin, readings


def test_a_tensor_with_no_gradient_is_cleared_along_directions_not_read_one_by_one() -> None:
    # J = 3e5 + 1e-12·Σw + Σw² + b² at w = 0: w's gradient (1e-12) is within the noise of every
    # step up to float32's, along a direction too (Σ u·H·1e-12 ≈ 1e-15 against ~1e-10). The gate
    # clears the tensor: each component keeps its first reading, none is read alone.
    def cost(t: np.ndarray) -> float:
        return BIG + 1e-12 * float(np.sum(t[:7])) + float(t[:7] @ t[:7]) + t[7] ** 2

    report = gradwatch.check_function(cost, origin(), np.r_[np.full(7, 1e-12), 1.0], layout=LAYOUT)
    assert report.verdict is Verdict.PASS and report.parameters["b"].verdict is Verdict.PASS
    assert report.parameters["w"].verdict is Verdict.NOT_JUDGED
    for i in range(7):
        found = report.component(i)
        assert (found.reading, found.reason, found.recheck) == ("not judged", "within noise", "")


def _hidden(g: float, kink: float = np.inf):  # type: ignore[no-untyped-def]
    # J = 3e5 + g·(3w₀ − w₁ − w₂ − w₃) + 50·Σw² + relu(w₄ − kink) + b²: at w = 0 the gradient
    # g·(3, −1, −1, −1, 0, 0, 0) sums to zero, so only a direction with mixed signs over w₀…w₃
    # shows it; the curvature (100) makes a stencil read at the wrong steps rough, not smooth.
    weights = np.array([3.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0])

    def cost(t: np.ndarray) -> float:
        w = t[:7]
        return BIG + g * float(weights @ w) + 50 * float(w @ w) + max(w[4] - kink, 0.0) + t[7] ** 2

    return cost, np.r_[g * weights, 1.0]


def test_a_detached_gradient_under_the_first_steps_noise_fails_through_the_gate() -> None:
    # g = 2e-7: 3g is ~5000× under the first step's tolerance (~1e-3) and under the fitted step's
    # along a direction (6·H₀·g ≈ 5e-12 against ~1.3e-10), but 256·H₀ (the gate's longest rung)
    # shows it (2·256·H₀·g ≈ 4e-10 at the least): the tensor is read component by component
    # there, and backprop's zero (a detached path) disagrees.
    cost, grad = _hidden(2e-7)
    detached = gradwatch.check_function(cost, origin(), np.r_[np.zeros(7), 1.0], layout=LAYOUT)
    assert detached.verdict is Verdict.FAIL, str(detached)
    assert detached.parameters["w"].verdict is Verdict.FAIL
    assert detached.worst(1)[0].label == "w[0]" and detached.worst(1)[0].recheck == "fitted step"
    right = gradwatch.check_function(cost, origin(), grad, layout=LAYOUT)
    assert right.verdict is Verdict.PASS, str(right)
    assert right.parameters["w"].disagrees == 0


def test_the_gate_steps_down_a_rung_where_j_is_not_smooth_along_its_longest() -> None:
    # A kink 5e-4 from θ along w₄: the directions at 256·H₀ (moving each component up to 2e-3)
    # cross it, those at 16·H₀ (up to 1.2e-4) do not. g = 3e-6 shows along a direction at 16·H₀
    # (2·16·H₀·g ≈ 4e-10 at the least, against ~1.3e-10) and not at H₀ (6·H₀·g ≈ 7e-11): the
    # gate reads the rung below the longest, and the detached gradient fails there.
    cost, grad = _hidden(3e-6, kink=5e-4)
    detached = gradwatch.check_function(cost, origin(), np.r_[np.zeros(7), 1.0], layout=LAYOUT)
    assert detached.verdict is Verdict.FAIL, str(detached)
    assert detached.worst(1)[0].label == "w[0]" and detached.worst(1)[0].recheck == "fitted step"
    right = gradwatch.check_function(cost, origin(), grad, layout=LAYOUT)
    assert right.verdict is Verdict.PASS, str(right)
    assert right.parameters["w"].disagrees == 0


def test_the_gate_climbs_two_rungs_at_most() -> None:
    # c = 9e-8: along a direction at 256·H₀ (1.6e-3) it moves J by 1.4e-10, under the tolerance
    # of Richardson's estimate (8·0.95·σ_J ≈ 2.3e-10); at float32's step (4.9e-3), 3.2× longer,
    # it would show. The gate stops at its longest rung, 256·H₀: no component is read alone.
    cost = one_gradient(9e-8)
    for g0 in (9e-8, 0.0):
        report = gradwatch.check_function(
            cost, origin(), np.r_[g0, np.zeros(6), 1.0], layout=LAYOUT
        )
        assert report.parameters["w"].verdict is Verdict.NOT_JUDGED, str(report)
        assert readings(report, 7) == [("not judged", "within noise", "")] * 7


def _float32_cost(c: float, kink: float, seen: list[float]):  # type: ignore[no-untyped-def]
    # J = 1 + c·w₀ + Σw² + relu(w₄ − kink) + b², computed in float32: σ_J ≈ 3e-8, so the fitted
    # step H₀ = σ_J^(1/3) ≈ 3.1e-3 and its rungs 16·H₀ and 256·H₀ are all capped at float32's
    # step (4.9e-3). `seen` collects the step of each evaluation along a gate direction of w
    # (all seven components moved by the same amount, b not moved).
    f32 = np.float32

    def cost(t: np.ndarray) -> float:
        moved = np.abs(t[:7])
        if moved.min() > 1e-4 and moved.max() == moved.min() and t[7] == 0.5:
            seen.append(float(moved[0]))
        w = t[:7].astype(f32)
        return float(
            f32(1) + f32(c) * w[0] + w @ w + max(w[4] - f32(kink), f32(0)) + f32(t[7]) ** 2
        )

    return cost


def test_a_rung_the_cap_makes_the_same_as_a_longer_one_is_skipped_not_read_again() -> None:
    # A kink 8e-3 from θ along w₄: the directions at float32's step (moving each component up to
    # 9.8e-3) cross it, those at H₀ (up to 6.2e-3) do not. 16·H₀ is capped to float32's step too:
    # the gate reads that step once (two directions, four points each), skips the rung the cap
    # made the same, and steps down to H₀, where c = 1e-2 (within noise at the first step, whose
    # tolerance is ~2) shows: backprop's zero (a detached path) disagrees there.
    for g0, verdict in ((1e-2, Verdict.PASS), (0.0, Verdict.FAIL)):
        seen: list[float] = []
        cost = _float32_cost(1e-2, 8e-3, seen)
        report = gradwatch.check_function(
            cost, origin(), np.r_[g0, np.zeros(6), 1.0], layout=LAYOUT
        )
        assert report.verdict is verdict and report.parameters["w"].verdict is verdict, str(report)
        assert report.component(0).recheck == "fitted step"
        assert report.component(0).reading == ("agrees" if g0 else "disagrees")
        # H, not 2H; a step seen fewer than 4 times is not the gate's: where w disagrees, its own
        # noise is measured along random strides (evidence.escalation.tensor_noise), each at ±u
        steps = sorted({s for s in seen if s < 5e-3 and seen.count(s) >= 4}, reverse=True)
        assert len(steps) == 2 and steps[0] == pytest.approx(np.cbrt(np.finfo(np.float32).eps))
        assert [seen.count(s) for s in steps] == [4, 4]  # ±H per direction, once per rung


@pytest.mark.parametrize(
    ("c", "kink", "along"),
    [
        # A kink 4e-6 from θ along w₄: within H₀ (~6e-6), so the gate's directions cross it at
        # every rung; c = 1.2e-3 is within noise at the first step (tolerance ~1.7e-3).
        (1.2e-3, 4e-6, 4),
        # A kink 8e-6 from θ along w₂: beyond H₀, within 2·H₀ (the directions' ±2H points cross
        # it at every rung); c = 1e-4, 17× under the first step's tolerance.
        (1e-4, 8e-6, 2),
    ],
)
def test_a_kink_along_one_component_does_not_hide_a_detached_gradient_beside_it(
    c: float, kink: float, along: int
) -> None:
    # J is rough along the gate's directions at every rung, so no direction clears or convicts
    # w: each component is read alone, from the longest rung (256·H₀) down, where its reading
    # crosses only its own kinks. w₀ shows c there and is read on the ladder from H₀; the five
    # zeros are zero within the longest rung's noise (the least of any reading); the kinked
    # component is rough at every rung: "not judged, on a kink".
    cost = one_gradient(c, kink=kink, along=along)
    right = gradwatch.check_function(cost, origin(), np.r_[c, np.zeros(6), 1.0], layout=LAYOUT)
    detached = gradwatch.check_function(cost, origin(), np.r_[np.zeros(7), 1.0], layout=LAYOUT)
    assert right.verdict is Verdict.PASS and right.parameters["w"].verdict is Verdict.PASS
    assert detached.verdict is Verdict.FAIL and detached.parameters["w"].verdict is Verdict.FAIL
    for report, first in ((right, "agrees"), (detached, "disagrees")):
        zero = ("not judged", "within noise", "fitted step")
        expected = [(first, "", "fitted step")] + [zero] * 6
        expected[along] = ("not judged", "on a kink", "")
        assert readings(report, 7) == expected, str(report)
        noise = [report.component(i).numeric_noise for i in range(7) if i != along]
        assert len(set(noise[1:])) == 1 and noise[1] <= noise[0], str(report)
    # The detached w₀ disagrees at H₀, the ladder's first step: 256× the zeros' noise (at 256·H₀).
    w0, zero = detached.component(0), detached.component(1)
    assert w0.numeric_noise == pytest.approx(256 * zero.numeric_noise, rel=1e-9)


def test_the_gate_directions_are_drawn_from_the_check_seed() -> None:
    # Twelve tensors with gradient g·(1, −1): a ±1 direction reads it where its two signs differ
    # (odds 1/2), so whether each tensor is read alone depends on the draw. The same check gives
    # the same readings; the draw reads some tensors alone and leaves others within noise.
    k, g = 12, 2e-7
    grad = np.tile([g, -g], k)
    layout = {f"t{i}": (2,) for i in range(k)}

    def cost(t: np.ndarray) -> float:
        return BIG + float(grad @ t) + 50 * float(t @ t)

    runs = [gradwatch.check_function(cost, np.zeros(2 * k), grad, layout=layout) for _ in "ab"]
    first, second = (readings(r, 2 * k) for r in runs)
    assert first == second
    alone = {i // 2 for i, (_, _, recheck) in enumerate(first) if recheck == "fitted step"}
    assert 0 < len(alone) < k
    assert all(reading != "disagrees" for reading, _, _ in first)


@pytest.mark.parametrize(("g0", "verdict"), [(1e-2, Verdict.PASS), (0.0, Verdict.FAIL)])
def test_a_rough_gate_reads_a_component_alone_once_at_each_step_the_cap_leaves(
    g0: float, verdict: Verdict
) -> None:
    # A float32 J as _float32_cost's, with a kink 2e-3 from θ along w₄: the gate's directions
    # cross it at float32's step (4.9e-3) and at H₀ (3.1e-3), so each component is read alone,
    # from the longest rung down. w₄ is rough alone too: read once at float32's step (16·H₀ and
    # 256·H₀ are both capped to it) and once at H₀, ±H and ±2H each, then "on a kink". c = 1e-2
    # on w₀ (within noise at the first step, tolerance ~2) is read there: a detached one fails.
    f32, alone = np.float32, []

    def cost(t: np.ndarray) -> float:
        if np.count_nonzero(t[:7]) == 1 and abs(t[4]) > 1e-3 and t[7] == 0.5:
            alone.append(abs(float(t[4])))  # w₄ moved alone, beyond the first step's reach
        w = t[:7].astype(f32)
        kinked = max(w[4] - f32(2e-3), f32(0))
        return float(f32(1) + f32(1e-2) * w[0] + w @ w + kinked + f32(t[7]) ** 2)

    report = gradwatch.check_function(cost, origin(), np.r_[g0, np.zeros(6), 1.0], layout=LAYOUT)
    assert report.verdict is verdict and report.parameters["w"].verdict is verdict, str(report)
    assert report.component(0).reading == ("agrees" if g0 else "disagrees")
    assert readings(report, 7)[4] == ("not judged", "on a kink", "")
    cap = float(np.cbrt(np.finfo(np.float32).eps))
    h0, *rest = sorted(set(alone))  # H₀ ≈ 3.1e-3 (σ_J ≈ 3e-8 at J ≈ 1), then cap, 2H₀, 2·cap
    assert h0 < cap and rest == pytest.approx([cap, 2 * h0, 2 * cap], rel=1e-6)
    assert [alone.count(s) for s in [h0, *rest]] == [2, 2, 2, 2]  # ±, once per step


def _rough_alone(c: float, own: Callable[[float], float], width: int = 7):  # type: ignore[no-untyped-def]
    # J = 3e5 + c·w₀ + Σw² + relu(w₄ − 4e-6) + own(w₀) + b²: every gate direction is rough (w₄'s
    # kink within H₀ ≈ 6e-6), so each component is read alone; `own` is what w₀ alone crosses.
    def cost(t: np.ndarray) -> float:
        w = t[:width]
        return BIG + c * w[0] + float(w @ w) + max(w[4] - 4e-6, 0.0) + own(w[0]) + t[width] ** 2

    return cost


def test_a_component_alone_is_read_at_the_longest_rung_where_it_is_smooth() -> None:
    # A kink 5e-4 from θ along w₀: alone, it is rough at 256·H₀ (1.6e-3) and smooth at 16·H₀ (its
    # ±2H reach 2e-4), where c = 1e-5 shows (tolerance ~2e-6; ~3e-5 at H₀, where it would not):
    # w₀ is read on the ladder from H₀ up, and a detached one fails at 16·H₀. (The right one:
    # test_a_kink_beyond_a_correct_components_fitted_reading_does_not_fail_it.)
    cost = _rough_alone(1e-5, lambda x: max(x - 5e-4, 0.0))
    report = gradwatch.check_function(cost, origin(), np.r_[np.zeros(7), 1.0], layout=LAYOUT)
    assert report.verdict is Verdict.FAIL and report.parameters["w"].verdict is Verdict.FAIL
    w0, zero = report.component(0), report.component(1)
    assert (w0.reading, w0.recheck) == ("disagrees", "fitted step"), str(report)
    assert w0.numeric == pytest.approx(1e-5, rel=0.1)
    # w₁ is read at 256·H₀: w₀'s reading at 16·H₀ has 16× its noise
    assert w0.numeric_noise == pytest.approx(16 * zero.numeric_noise, rel=1e-9)


@pytest.mark.parametrize("kink", [5e-4, 1e-3])
def test_a_kink_beyond_a_correct_components_fitted_reading_does_not_fail_it(kink: float) -> None:
    # J = 3e5 + 1e-5·w₀ + Σw² + relu(w₀ − kink) + b², a kink 4e-6 along w₄ (kink 1e-3: none, and
    # the gate reads w₀). w₀ is within noise at the first step and agrees at 16·H₀ (≈ 6.4e-5);
    # 256·H₀ (≈ 1e-3) crosses its kink, rough against the noise held, and asks for no noise
    # there: w₀ keeps its reading at 16·H₀, and w stays too close to J's noise (its floor 1.5e-2
    # over w₀ alone). (Before the ladder measured J's noise only where a rung asks, a second
    # climb measured it across the kink, 3e-11 → 1e-4, read Richardson's 0.31 there as smooth and
    # failed the right gradient.) The detached twin:
    # test_a_component_alone_is_read_at_the_longest_rung_where_it_is_smooth.
    if kink < 1e-3:
        cost = _rough_alone(1e-5, lambda x: max(x - kink, 0.0))
    else:
        cost = one_gradient(1e-5, kink=kink, along=0)
    report = gradwatch.check_function(cost, origin(), np.r_[1e-5, np.zeros(6), 1.0], layout=LAYOUT)
    w = report.parameters["w"]
    assert report.verdict is Verdict.PASS and w.verdict is Verdict.NOT_JUDGED, str(report)
    assert (w.agrees, w.disagrees, w.reason) == (1, 0, "too close to J's noise")
    w0 = report.component(0)
    assert (w0.reading, w0.recheck) == ("agrees", "fitted step"), str(report)
    assert w0.numeric == pytest.approx(1e-5, rel=0.1)
    reasons = ["on a kink" if i == 4 and kink < 1e-3 else "within noise" for i in range(1, 7)]
    assert [r[:2] for r in readings(report, 7)[1:]] == [("not judged", r) for r in reasons]


@pytest.mark.parametrize(("g0", "verdict"), [(5e-4, Verdict.PASS), (5e-4 * 1.0006, Verdict.WARN)])
def test_a_reading_alone_that_the_ladder_cannot_repeat_is_read_against_the_pass_band(
    g0: float, verdict: Verdict
) -> None:
    # An even ripple 1e-8·(cos(w₀/3e-6) − 1)·exp(−(w₀/1.8e-5)²) around θ: it cancels in every
    # two-sided difference, and makes J rough along w₀ at H₀ but not at 256·H₀. w₀ alone is read
    # at 256·H₀; the ladder's read at H₀ is rough and leaves it. A gradient 0.06% off (a gap of
    # 3e-7, ~10σ; relative 3e-4, between the bands) disagrees there: w warns. (40 components in
    # w: the tensor test, under its bound, does not read it again.)
    def ripple(x: float) -> float:
        return 1e-8 * (np.cos(x / 3e-6) - 1) * np.exp(-((x / 1.8e-5) ** 2))

    theta, layout = np.r_[np.zeros(40), 0.5], {"w": (40,), "b": (1,)}
    analytic = np.r_[g0, np.zeros(39), 1.0]
    report = gradwatch.check_function(
        _rough_alone(5e-4, ripple, 40), theta, analytic, layout=layout
    )
    assert report.verdict is verdict and report.parameters["w"].verdict is verdict, str(report)
    assert report.parameters["w"].tensor_test < 1
    assert report.component(0).reading == ("agrees" if verdict is Verdict.PASS else "disagrees")
    assert report.component(0).recheck == "fitted step"


def _four_tensors(g: float):  # type: ignore[no-untyped-def]
    # J = 3e5 + Σ_k g_k·(3w₀ − w₁ − w₂ − w₃) + 50·Σw² + relu(w₄ − kink_k) over four tensors of
    # seven components (as _hidden's): t0 has no gradient (cleared at the longest rung), t1 the
    # hidden g (shown at the longest rung: read on the ladder), t2 a kink 5e-4 along its w₄
    # (rough at 256·H₀, cleared at 16·H₀), t3 a kink 4e-6 along its w₄ (rough at every rung).
    weights = np.array([3.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0])
    gs, kinks = (0.0, g, 0.0, 0.0), (np.inf, np.inf, 5e-4, 4e-6)

    def cost(t: np.ndarray) -> float:
        w = t.reshape(4, 7)
        terms = [gk * float(weights @ wk) + 50 * float(wk @ wk) + max(wk[4] - kink, 0.0)
                 for gk, kink, wk in zip(gs, kinks, w, strict=True)]  # fmt: skip
        return BIG + sum(terms)

    layout = {f"t{k}": (7,) for k in range(4)}
    return cost, np.zeros(28), layout, np.concatenate([gk * weights for gk in gs])


def test_the_gate_reads_every_tensor_in_one_line_call_per_rung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same check twice: the gate as it is, and with each tensor's directions in a call of
    # their own (drawn in the same order). The readings are the same, bit for bit; the gate makes
    # one line call for the union of the four (rough: t3's kink; and t1's gradient shows), then
    # one per rung it reads (3: all four tensors, then t2 and t3, then t3), not one per tensor
    # and rung (4 + 2 + 1).
    from gradwatch import function
    from gradwatch.evidence import gate, model

    calls: list[int] = []
    escalating, reading = [False], [False]
    line, escalate, directions = function._FunctionObjective.line, model.escalate, gate._directions

    def counted(self, support, rows):  # type: ignore[no-untyped-def]
        # the gate's calls only: a rung of the ladder that asks measures J's noise (probes) too
        calls.extend([len(rows)] if escalating[0] and reading[0] else [])
        return line(self, support, rows)

    def watched(*args):  # type: ignore[no-untyped-def]
        reading[0] = True
        try:
            return directions(*args)
        finally:
            reading[0] = False

    def escalating_once(*args):  # type: ignore[no-untyped-def]
        escalating[0] = not calls  # the first reading's escalation only (probes may read twice)
        try:
            return escalate(*args)
        finally:
            escalating[0] = False

    def alone(objective, record, tensors, *rest):  # type: ignore[no-untyped-def]
        return [found for one in tensors for found in watched(objective, record, [one], *rest)]

    monkeypatch.setattr(function._FunctionObjective, "line", counted)
    monkeypatch.setattr(model, "escalate", escalating_once)
    cost, theta, layout, grad = _four_tensors(2e-7)
    wrong = grad * np.r_[np.ones(7), np.zeros(7), np.ones(14)]  # t1 detached
    found = {}
    for way in ("batched", "alone"):
        monkeypatch.setattr(gate, "_directions", watched if way == "batched" else alone)
        for name, analytic in (("right", grad), ("wrong", wrong)):
            calls.clear()
            report = gradwatch.check_function(cost, theta, analytic, layout=layout)
            data = {k: v for k, v in report.to_dict().items() if k != "seconds"}
            found[way, name] = (readings(report, 28), data, list(calls))
    for name in ("right", "wrong"):
        batched, by_tensor = found["batched", name], found["alone", name]
        assert batched[:2] == by_tensor[:2]  # every reading, and the report's every figure
        assert batched[2] == [8, 8 * 4, 8 * 2, 8] and by_tensor[2] == [8] * 8
    (right, data), (wrong_, wrong_data) = (found["batched", n][:2] for n in ("right", "wrong"))
    assert data["parameters"]["t1"]["verdict"] != "fail" and wrong_data["verdict"] == "fail"
    assert right[:7] == [("not judged", "within noise", "")] * 7  # t0 cleared along directions
    assert right[14:21] == [("not judged", "within noise", "")] * 7  # t2 too, at 16·H₀
    assert right[7] == ("agrees", "", "fitted step") and wrong_[7][:2] == ("disagrees", "")
    assert right[21 + 4] == wrong_[21 + 4] == ("not judged", "on a kink", "")  # t3 read alone


def _quiet(n: int, g: float = 0.0, at: int = 0):  # type: ignore[no-untyped-def]
    # n tensors of seven components as _hidden's w, the hidden g·(3, −1, −1, −1, 0, 0, 0) in tensor
    # ``at`` only: every tensor is within noise at the first step.
    weights = np.array([3.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0])
    gs = [g if k == at else 0.0 for k in range(n)]

    def cost(t: np.ndarray) -> float:
        w = t.reshape(n, 7)
        return BIG + sum(
            gk * float(weights @ wk) + 50 * float(wk @ wk) for gk, wk in zip(gs, w, strict=True)
        )

    layout = {f"t{k}": (7,) for k in range(n)}
    return cost, np.zeros(7 * n), layout, np.concatenate([gk * weights for gk in gs])


def _gate_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    # the rows of each of the gate's line calls (the union's and the per-tensor gate's)
    from gradwatch.evidence import gate

    rows: list[int] = []
    shared = gate._shared_lines

    def counted(objective, supports, blocks):  # type: ignore[no-untyped-def]
        rows.append(sum(len(b) for b in blocks))
        return shared(objective, supports, blocks)

    monkeypatch.setattr(gate, "_shared_lines", counted)
    return rows


def test_many_quiet_tensors_are_cleared_by_one_union_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Twelve tensors with no gradient, the same σ: one call of 8 rows (2 directions × 4 points)
    # clears them all, where each tensor's own gate read 8 rows each (96).
    rows = _gate_rows(monkeypatch)
    cost, theta, layout, grad = _quiet(12)
    report = gradwatch.check_function(cost, theta, grad, layout=layout)
    assert report.verdict is Verdict.NOT_JUDGED, str(report)
    assert readings(report, 84) == [("not judged", "within noise", "")] * 84
    assert rows == [8]


def test_a_hidden_gradient_in_one_quiet_tensor_shows_along_the_union_and_its_own_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same twelve, t5 with _hidden's detached g = 2e-7: the union shows it (one wrong tensor
    # shows at its own size), each tensor's own gate reads it (8 rows for all twelve at the longest
    # rung), and t5 alone is read component by component and fails; the others stay cleared.
    rows = _gate_rows(monkeypatch)
    cost, theta, layout, grad = _quiet(12, 2e-7, 5)
    report = gradwatch.check_function(cost, theta, np.zeros(84), layout=layout)
    assert report.verdict is Verdict.FAIL, str(report)
    assert [k for k in layout if report.parameters[k].verdict is Verdict.FAIL] == ["t5"]
    assert report.worst(1)[0].label == "t5[0]"
    assert rows[:2] == [8, 8 * 12]
    right = gradwatch.check_function(cost, theta, grad, layout=layout)
    assert right.verdict is not Verdict.FAIL and right.parameters["t5"].disagrees == 0, str(right)


def test_a_tensor_whose_noise_is_much_lower_is_not_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three tensors, t0 with the detached g = 2e-7 (shown at its own noise by its own gate) and
    # t1, t2 as if J's noise along them were 1000× larger: judged against theirs, along the union,
    # t0's error would hide (the union cleared: the check not judged); alone in its σ class, t0
    # goes to its own gate and fails.
    from gradwatch.evidence import gate, model

    escalate = model.escalate

    def noisier(objective, record, groups, *rest):  # type: ignore[no-untyped-def]
        record.sigma[groups != 0] *= 1000
        return escalate(objective, record, groups, *rest)

    monkeypatch.setattr(model, "escalate", noisier)
    rows = _gate_rows(monkeypatch)
    cost, theta, layout, _ = _quiet(3, 2e-7, 0)
    report = gradwatch.check_function(cost, theta, np.zeros(21), layout=layout)
    assert report.verdict is Verdict.FAIL and report.worst(1)[0].label == "t0[0]", str(report)
    assert rows[:2] == [8, 8 * 1]  # t1 and t2 together (cleared), then t0's own gate
    monkeypatch.setattr(gate, "UNION_SIGMA", np.inf)
    joined = gradwatch.check_function(cost, theta, np.zeros(21), layout=layout)
    assert joined.verdict is not Verdict.FAIL, str(joined)


class _Lines:
    # J linear in θ (J = x·θ, x = 1…n): each line call's support and rows shape kept.
    def __init__(self, n: int) -> None:
        self.x, self.calls = np.arange(1.0, n + 1), []  # type: list[tuple[list[int], tuple]]

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        self.calls.append((support.tolist(), rows.shape))
        return rows @ self.x[support]


@pytest.mark.parametrize(
    ("most", "calls"),
    [
        (18, [([0, 3, 5], (6, 3)), ([2], (2, 1))]),  # 6 rows × 3 = 18: three share one call
        (17, [([0, 3], (4, 2)), ([5, 2], (4, 2))]),  # 18 > 17: the third starts a call of its own
    ],
)
def test_blocks_share_a_line_call_while_its_matrix_holds_at_most_gate_values(
    monkeypatch: pytest.MonkeyPatch, most: int, calls: list
) -> None:
    # Four blocks of 2 rows over one component each: consecutive blocks join a call while its
    # rows × support stay within GATE_VALUES, and each block's values are its own rows' (exactly:
    # one product per row, the zeros outside add nothing).
    from gradwatch.evidence import gate

    monkeypatch.setattr(gate, "GATE_VALUES", most)
    supports = [np.array([k]) for k in (0, 3, 5, 2)]
    blocks = [np.array([[1.0], [-2.0]]) * (k + 1) for k in range(4)]
    objective = _Lines(6)
    values = gate._shared_lines(objective, supports, blocks)  # type: ignore[arg-type]
    assert objective.calls == calls
    assert len(values) == 4
    for v, s, b in zip(values, supports, blocks, strict=True):
        np.testing.assert_array_equal(v, b @ objective.x[s])


@pytest.mark.parametrize(("smooth", "signal"), [(True, False), (True, True), (False, False)])
def test_the_union_joins_tensors_by_sigma_class_and_size_and_clears_only_a_quiet_one(
    monkeypatch: pytest.MonkeyPatch, smooth: bool, signal: bool
) -> None:
    # Five tensors, σ 1, 8, 2, 8, 1.5 and sizes 2, 1, 3, 8, 3; at most 64 // 8 = 8 components a
    # union. By σ: t0 (1), t4 (1.5), t2 (2 = UNION_SIGMA × 1, joins) make one union of 8; t1 (8)
    # starts a class, and t3 (8) would make it 9: both go to their own gate. The union is read at
    # the longest rung (fitted × RUNG², under the cap); only smooth with no gradient clears it.
    from gradwatch.evidence import gate
    from gradwatch.evidence.ladder import RUNG, RUNGS

    sizes, sigmas = [2, 1, 3, 8, 3], [1.0, 8.0, 2.0, 8.0, 1.5]
    ats = np.split(np.arange(17), np.cumsum(sizes)[:-1])
    record = type("R", (), {"sigma": np.repeat(sigmas, sizes)})()
    gated = [(np.zeros(17, bool), at, 1e-6 * (1.0 + at)) for at in ats]
    longest = [np.full(at.size, np.inf) for at in ats]
    longest[2][0] = 1e-5  # capped: 4e-6 × 256 > 1e-5
    read: list[tuple[np.ndarray, np.ndarray]] = []

    def directions(objective, record, unions, center, rng, pass_max):  # type: ignore[no-untyped-def]
        read.extend(unions)
        return [(smooth, signal)] * len(unions)

    monkeypatch.setattr(gate, "GATE_VALUES", 64)
    monkeypatch.setattr(gate, "_directions", directions)
    left, capped = gate._union(None, record, gated, longest, 0.0, 0, 1e-7)  # type: ignore[arg-type]
    joined = np.concatenate([ats[0], ats[4], ats[2]])
    assert len(read) == 1 and read[0][0].tolist() == joined.tolist()
    top = RUNG ** (RUNGS - 1)
    np.testing.assert_array_equal(
        read[0][1],
        np.minimum(
            1e-6 * (1.0 + joined) * top, np.concatenate([longest[0], longest[4], longest[2]])
        ),
    )
    kept = [1, 3] if smooth and not signal else [0, 1, 2, 3, 4]
    assert [g[1].tolist() for g in left] == [ats[k].tolist() for k in kept]
    assert all(c is longest[k] for c, k in zip(capped, kept, strict=True))


def test_the_unions_signs_are_drawn_from_the_check_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two quiet tensors of one σ make a union; the generator its signs come from is the check
    # seed's: the same seed draws the same signs, another seed others.
    from gradwatch.evidence import gate

    draws: list[int] = []

    def directions(objective, record, unions, center, rng, pass_max):  # type: ignore[no-untyped-def]
        draws.append(int(rng.integers(2**62)))
        return [(True, False)] * len(unions)

    monkeypatch.setattr(gate, "_directions", directions)
    record = type("R", (), {"sigma": np.ones(4)})()
    gated = [(np.zeros(4, bool), at, np.full(2, 1e-6)) for at in (np.arange(2), np.arange(2, 4))]
    longest = [np.full(2, np.inf)] * 2
    for seed in (0, 0, 1):
        gate._union(None, record, gated, longest, 0.0, seed, 1e-7)  # type: ignore[arg-type]
    assert draws[0] == draws[1] != draws[2]


def test_a_tensor_whose_rung_the_cap_repeats_does_not_stop_the_others_rung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two tensors rough along their directions at every rung: t0's steps capped at 2 (its rungs
    # 256 and 16 are both 2: the second is skipped), t1's not. t1 is still read at 16, after t0
    # skipped it; both at 1; then each is read alone.
    from gradwatch.evidence import gate

    caps = np.array([2.0, np.inf])
    objective = type("O", (), {"values": lambda self, at: caps[at]})()
    reads: list[list[tuple[list[int], list[float]]]] = []
    alone: list[list[int]] = []

    def directions(objective, record, tensors, center, rng, pass_max):  # type: ignore[no-untyped-def]
        reads.append([(at.tolist(), s.tolist()) for at, s in tensors])
        return [(False, False)] * len(tensors)

    monkeypatch.setattr(gate, "longest_steps", lambda values: values)
    monkeypatch.setattr(gate, "_union", lambda o, r, gated, longest, *_: (gated, longest))
    monkeypatch.setattr(gate, "_directions", directions)
    monkeypatch.setattr(gate, "_alone", lambda o, r, g, start, *_: alone.append(start[0].tolist()))
    gated = [(np.zeros(2, bool), np.array([k]), np.array([1.0])) for k in (0, 1)]
    rng = np.random.default_rng(0)
    gate._gate(objective, None, gated, 0.0, rng, (1e-7, 1e-3), 0)  # type: ignore[arg-type]
    assert reads == [
        [([0], [2.0]), ([1], [256.0])],
        [([1], [16.0])],
        [([0], [1.0]), ([1], [1.0])],
    ]
    assert alone == [[0], [1]]
