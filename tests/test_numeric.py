"""The numeric helpers alone, against known answers: the material's θ³ example, (f, f′) pairs,
the order of each method, and the relative difference formula."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from gradwatch.common.numeric import (
    component_errors,
    one_sided_difference,
    relative_difference,
    two_sided_difference,
)


def cube(theta: np.ndarray) -> float:
    return float(theta[0] ** 3)


# --- the material's 1-D example: f(θ) = θ³ at θ = 1, ε = 0.01, true slope g(1) = 3 ------------


def test_material_example_two_sided_is_3_0001() -> None:
    estimate = two_sided_difference(cube, np.array([1.0]), epsilon=0.01)
    assert estimate.shape == (1,)
    # (1.01³ − 0.99³) / 0.02 = 3 + ε² = 3.0001: an error of 1e-4.
    assert estimate[0] == pytest.approx(3.0001, abs=1e-12)
    assert abs(estimate[0] - 3.0) == pytest.approx(1e-4, rel=1e-6)


def test_material_example_one_sided_is_off_by_3e_minus_2() -> None:
    estimate = one_sided_difference(cube, np.array([1.0]), epsilon=0.01)
    # (1.01³ − 1) / 0.01 = 3 + 3ε + ε² = 3.0301: an error of about 3e-2, 300 times the two-sided.
    assert estimate[0] == pytest.approx(3.0301, abs=1e-12)
    assert abs(estimate[0] - 3.0) == pytest.approx(3.01e-2, rel=1e-6)
    two_sided = two_sided_difference(cube, np.array([1.0]), epsilon=0.01)[0]
    assert abs(estimate[0] - 3.0) > 100 * abs(two_sided - 3.0)


# --- known-answer pairs (f, f′) ---------------------------------------------------------------

PAIRS: dict[str, tuple[Callable[[float], float], Callable[[float], float], float]] = {
    "cube": (lambda t: t**3, lambda t: 3 * t**2, 1.0),
    "sin": (math.sin, math.cos, 0.7),
    "exp": (math.exp, math.exp, 0.3),
    "log": (math.log, lambda t: 1 / t, 2.0),
    "tanh": (math.tanh, lambda t: 1 - math.tanh(t) ** 2, 0.4),
    "sigmoid": (
        lambda t: 1 / (1 + math.exp(-t)),
        lambda t: math.exp(-t) / (1 + math.exp(-t)) ** 2,
        -1.3,
    ),
}

METHODS = {"two_sided": two_sided_difference, "one_sided": one_sided_difference}
# Truncation error at ε = 1e-4: two-sided ~ε²·|f‴|/6 (about 1e-9 here), one-sided ~ε·|f″|/2.
TOLERANCE = {"two_sided": 1e-8, "one_sided": 5e-4}
# Order of the error in ε: two-sided O(ε²), one-sided O(ε).
ORDER = {"two_sided": 2, "one_sided": 1}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", PAIRS)
def test_known_derivative(pair: str, method: str) -> None:
    f, derivative, theta = PAIRS[pair]
    estimate = METHODS[method](lambda t: f(float(t[0])), np.array([theta]), epsilon=1e-4)
    assert estimate[0] == pytest.approx(derivative(theta), abs=TOLERANCE[method])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", PAIRS)
def test_error_shrinks_with_the_order_of_the_method(pair: str, method: str) -> None:
    f, derivative, theta = PAIRS[pair]

    def error(epsilon: float) -> float:
        estimate = METHODS[method](lambda t: f(float(t[0])), np.array([theta]), epsilon=epsilon)
        return abs(float(estimate[0]) - derivative(theta))

    # Ten times smaller ε: ten times smaller error one-sided, a hundred times two-sided.
    assert math.log10(error(1e-2) / error(1e-3)) == pytest.approx(ORDER[method], abs=0.15)


def test_two_sided_on_a_vector_matches_the_gradient() -> None:
    theta = np.array([1.0, -2.0, 0.5, 3.0])

    def cost(t: np.ndarray) -> float:
        return float(np.sum(t**3) + t[0] * t[1])

    expected = 3 * theta**2 + np.array([theta[1], theta[0], 0.0, 0.0])
    np.testing.assert_allclose(two_sided_difference(cost, theta, 1e-5), expected, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_difference_leaves_theta_alone(method: str) -> None:
    theta = np.array([1.0, 2.0, 3.0])
    METHODS[method](lambda t: float(np.sum(t**2)), theta, epsilon=0.1)
    np.testing.assert_array_equal(theta, [1.0, 2.0, 3.0])


def test_two_sided_uses_one_nudge_at_a_time() -> None:
    seen: list[np.ndarray] = []

    def cost(t: np.ndarray) -> float:
        seen.append(t.copy())
        return 0.0

    two_sided_difference(cost, np.zeros(3), epsilon=0.5)
    # For each i: θ + ε·e_i, then θ − ε·e_i, every other component left alone.
    expected = [sign * 0.5 * np.eye(3)[i] for i in range(3) for sign in (1, -1)]
    assert len(seen) == 6
    for got, want in zip(seen, expected, strict=True):
        np.testing.assert_array_equal(got, want)


# --- the material's formula ‖numeric − grad‖₂ / (‖numeric‖₂ + ‖grad‖₂) --------------------------


@pytest.mark.parametrize(
    ("numeric", "grad", "expected"),
    [
        pytest.param([3.0001], [3.0], 1e-4 / 6.0001, id="material-example"),
        pytest.param([3.0, 4.0], [3.0, 4.0], 0.0, id="equal"),
        pytest.param([3.0, 4.0], [-3.0, -4.0], 1.0, id="opposite"),
        pytest.param([1.0, 0.0], [0.0, 0.0], 1.0, id="one-zero"),
        pytest.param([0.0, 0.0], [0.0, 0.0], 0.0, id="both-zero"),
        pytest.param([3.0, 4.0], [0.0, 8.0], math.sqrt(25) / (5 + 8), id="pythagoras"),
        pytest.param([2.0, 0.0], [1.0, 0.0], 1 / 3, id="double"),
    ],
)
def test_relative_difference_known_values(
    numeric: list[float], grad: list[float], expected: float
) -> None:
    assert relative_difference(np.array(numeric), np.array(grad)) == pytest.approx(expected)
    assert relative_difference(np.array(grad), np.array(numeric)) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["numeric", "grad"])
def test_relative_difference_of_non_finite_is_nan(bad: float, where: str) -> None:
    clean, dirty = np.array([1.0, 2.0]), np.array([1.0, bad])
    args = (dirty, clean) if where == "numeric" else (clean, dirty)
    assert math.isnan(relative_difference(*args))


def test_relative_difference_is_scale_free() -> None:
    numeric, grad = np.array([1.0, 2.0, 3.0]), np.array([1.1, 2.0, 2.9])
    base = relative_difference(numeric, grad)
    for scale in (1e-9, 1e9):
        assert relative_difference(scale * numeric, scale * grad) == pytest.approx(base)


def test_component_errors_known_values() -> None:
    analytic = np.array([1.0, -2.0, 0.0, 0.0, 3.0])
    numeric = np.array([1.5, 2.0, 0.0, 1e-3, 3.0])
    abs_error, rel_error = component_errors(analytic, numeric)
    np.testing.assert_allclose(abs_error, [0.5, 4.0, 0.0, 1e-3, 0.0])
    # |a − n| / (|a| + |n|), and 0 where both are 0.
    np.testing.assert_allclose(rel_error, [0.5 / 2.5, 1.0, 0.0, 1.0, 0.0])


def test_component_errors_non_finite_is_nan() -> None:
    abs_error, rel_error = component_errors(np.array([1.0, math.nan]), np.array([math.inf, 1.0]))
    assert math.isinf(abs_error[0]) and math.isnan(abs_error[1])
    assert np.isnan(rel_error).all()
