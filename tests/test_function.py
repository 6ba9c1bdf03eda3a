"""check_function on numpy: the material's loop on a hand-written network, planted bugs, bad
input and non-finite values."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradwatch
from gradwatch import Layout, Verdict
from gradwatch.evidence.noise import FIRST_PAIRS
from tests.nets import LAYOUT, NumpyNet


@pytest.fixture(scope="module")
def net() -> NumpyNet:
    net = NumpyNet()
    # ReLU inputs far from 0 compared with ε: the check crosses no kink (issue 4's business).
    assert net.relu_margin() > 1e-3
    return net


def check(net: NumpyNet, bugs: dict[str, float] | None = None) -> gradwatch.GradCheckReport:
    return gradwatch.check_function(
        net.cost, net.theta, net.backward(net.theta, bugs), layout=LAYOUT
    )


# --- the material's examples ------------------------------------------------------------------


def test_material_example_through_gradient_check() -> None:
    report = gradwatch.check_function(
        lambda t: float(t[0] ** 3), np.array([1.0]), np.array([3.0]), epsilon=0.01
    )
    assert report.plain_numeric[0] == pytest.approx(3.0001, abs=1e-12)
    assert report.plain_difference == pytest.approx(1e-4 / 6.0001, rel=1e-6)
    # About 1e-5: "I would take a careful look". The careful look: at half the step the estimate
    # moves by 3/4 of its error, as truncation (ε²·J‴/6) does, and Richardson's estimate agrees.
    assert report.component(0).recheck == "longer steps"
    assert report.numeric[0] == pytest.approx(3.0, abs=1e-9)
    assert report.verdict is Verdict.PASS


def test_correct_backprop_passes(net: NumpyNet) -> None:
    report = check(net)
    assert report.verdict is Verdict.PASS
    assert report.difference < 1e-7
    assert report.components_checked == report.components_total == 47
    assert set(report.parameters) == set(LAYOUT)
    assert max(r.difference for r in report.parameters.values()) < 1e-7


@pytest.mark.parametrize("tensor", list(LAYOUT))
def test_one_wrong_weight_gradient_fails_and_worst_names_it(net: NumpyNet, tensor: str) -> None:
    report = check(net, {tensor: 2.0})
    assert report.verdict is Verdict.FAIL
    assert report.difference > 1e-3
    size = int(np.prod(LAYOUT[tensor]))
    assert [c.name for c in report.worst(3)][:size] == [tensor] * min(3, size)
    worst = report.worst(1)[0]
    # dθ doubled: the analytic value is twice the numeric one.
    assert worst.analytic == pytest.approx(2 * worst.numeric, rel=1e-6)
    assert tensor in report.message
    failing = {n for n, r in report.parameters.items() if r.difference > 1e-3}
    assert failing == {tensor}


def test_two_bugs_in_two_tensors_both_show_in_parameters(net: NumpyNet) -> None:
    report = check(net, {"W2": 2.0, "b1": -1.0})
    assert report.verdict is Verdict.FAIL
    assert report.parameters["b1"].difference == pytest.approx(1.0)  # sign flipped: ‖2g‖ / 2‖g‖
    assert report.parameters["W2"].difference == pytest.approx(
        1 / 3, rel=1e-6
    )  # ‖g‖ / (‖g‖ + ‖2g‖)
    for name in ("W1", "b2", "W3", "b3"):
        assert report.parameters[name].difference < 1e-7, name
    assert {c.name for c in report.worst(10)} == {"W2", "b1"}
    assert "b1" in report.message and "W2" in report.message


def test_components_are_named_by_the_layout(net: NumpyNet) -> None:
    report = check(net, {"W2": 2.0})
    assert report.worst(1)[0].label.startswith("W2[")
    plain = gradwatch.check_function(net.cost, net.theta, net.backward(net.theta, {"W2": 2.0}))
    assert plain.worst(1)[0].label == f"theta[{report.worst(1)[0].flat_index}]"
    as_layout = gradwatch.check_function(
        net.cost, net.theta, net.backward(net.theta), layout=Layout.from_mapping(LAYOUT)
    )
    assert list(as_layout.parameters) == list(LAYOUT)


def test_theta_and_grad_are_left_alone(net: NumpyNet) -> None:
    theta, grad = net.theta.copy(), net.backward(net.theta)
    grad_before = grad.copy()
    gradwatch.check_function(net.cost, theta, grad, layout=LAYOUT)
    np.testing.assert_array_equal(theta, net.theta)
    np.testing.assert_array_equal(grad, grad_before)


def test_each_evaluation_nudges_one_component() -> None:
    theta = np.array([0.5, -1.0, 2.0])
    seen: list[np.ndarray] = []

    def cost(t: np.ndarray) -> float:
        seen.append(t.copy())
        return float(np.sum(t**2))

    report = gradwatch.check_function(cost, theta, 2 * theta, epsilon=1e-3)
    assert report.evaluations == len(seen)
    moved = [np.flatnonzero(t != theta) for t in seen]
    # The noise probes move θ along ±1 directions by whole numbers of steps; every other
    # evaluation nudges one component.
    probes = [t for t, m in zip(seen, moved, strict=True) if m.size > 1]
    # J's noise from the first pairs alone: the exact gradient agrees far beyond its tolerance
    assert report.j_noise.directions == 2 * FIRST_PAIRS
    assert len(probes) == report.j_noise.directions * 4
    for t in probes:
        steps = (t - theta) / 1e-3
        np.testing.assert_allclose(np.abs(steps), np.abs(steps).max(), rtol=1e-9)
    for i in range(3):  # θ + ε·e_i and θ − ε·e_i for every i
        assert any(m.tolist() == [i] and t[i] > theta[i] for m, t in zip(moved, seen, strict=True))
        assert any(m.tolist() == [i] and t[i] < theta[i] for m, t in zip(moved, seen, strict=True))


# --- bad input: raised before any work, naming the argument ----------------------------------


def quadratic(theta: np.ndarray) -> float:
    return float(np.sum(theta**2))


GOOD = {"cost": quadratic, "theta": np.ones(3), "grad": 2 * np.ones(3)}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        pytest.param({"epsilon": 0.0}, ValueError, r"`epsilon`.*got 0\.0", id="eps-zero"),
        pytest.param({"epsilon": -1e-7}, ValueError, r"`epsilon`.*got -1e-07", id="eps-negative"),
        pytest.param({"epsilon": math.nan}, ValueError, r"`epsilon`.*got nan", id="eps-nan"),
        pytest.param({"epsilon": math.inf}, ValueError, r"`epsilon`.*got inf", id="eps-inf"),
        pytest.param({"epsilon": "small"}, TypeError, r"`epsilon`.*'small'", id="eps-str"),
        pytest.param({"epsilon": True}, TypeError, r"`epsilon`.*True", id="eps-bool"),
        pytest.param({"epsilon": None}, TypeError, r"`epsilon`.*None", id="eps-none"),
        pytest.param(
            {"grad": np.ones(4)}, ValueError, r"`grad` must have the shape of `theta`", id="grad"
        ),
        pytest.param(
            {"theta": np.ones((3, 1))},
            ValueError,
            r"`theta` must be a 1-D array.*\(3, 1\)",
            id="2d",
        ),
        pytest.param({"theta": "abc"}, TypeError, r"`theta` must be a 1-D array", id="theta-str"),
        pytest.param({"cost": 3.0}, TypeError, r"`cost` must be a callable", id="cost"),
        pytest.param(
            {"layout": {"W": (1, 2), "b": (2,)}},
            ValueError,
            r"`layout` sizes must add up to len\(theta\) = 3; got 4",
            id="layout-sizes",
        ),
        pytest.param({"layout": [3]}, TypeError, r"`layout` must be an ordered mapping", id="lay"),
        pytest.param({"thresholds": 0.1}, TypeError, r"`thresholds` must be", id="thresholds"),
    ],
)
def test_bad_input_names_the_argument(
    change: dict[str, object], error: type[Exception], match: str
) -> None:
    calls: list[int] = []

    def counting(theta: np.ndarray) -> float:
        calls.append(1)
        return quadratic(theta)

    kwargs = {**GOOD, "cost": counting, **change}
    with pytest.raises(error, match=match):
        gradwatch.check_function(**kwargs)  # type: ignore[arg-type]
    assert calls == []  # raised before any work


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        pytest.param(np.ones(2), ValueError, r"`cost` must return a scalar.*\(2,\)", id="vector"),
        pytest.param(None, TypeError, r"`cost` must return a float.*NoneType", id="none"),
    ],
)
def test_cost_that_returns_no_scalar_is_rejected(
    value: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        gradwatch.check_function(lambda t: value, np.ones(3), np.ones(3))  # type: ignore[arg-type,return-value]


def test_empty_theta_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"`theta` must have at least one component"):
        gradwatch.check_function(quadratic, np.array([]), np.array([]))


# --- non-finite values: a finding, not an exception -----------------------------------------


def test_non_finite_grad_fails_and_says_where() -> None:
    grad = 2 * np.ones(4)
    grad[2] = math.nan
    report = gradwatch.check_function(quadratic, np.ones(4), grad, layout={"W": (2, 2)})
    assert report.verdict is Verdict.FAIL
    assert "analytic" in report.message and "W[1, 0]" in report.message
    assert "NaN" in report.message or "nan" in report.message


def test_cost_that_overflows_near_one_component_fails_and_says_where() -> None:
    def cost(theta: np.ndarray) -> float:
        # Infinite beyond b[0] = 1: only the step θ + ε·e_3 reaches it.
        return math.inf if theta[3] > 1.0 else quadratic(theta)

    report = gradwatch.check_function(cost, np.ones(4), 2 * np.ones(4), layout={"W": 3, "b": 1})
    assert report.verdict is Verdict.FAIL
    assert "numeric" in report.message and "b[0]" in report.message
    assert not any(f"W[{i}]" in report.message for i in range(3))


def test_nan_cost_everywhere_fails() -> None:
    report = gradwatch.check_function(lambda t: math.nan, np.ones(3), np.ones(3))
    assert report.verdict is Verdict.FAIL
    assert "theta[0]" in report.message
