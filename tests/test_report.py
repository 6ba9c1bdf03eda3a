"""GradCheckReport, Thresholds and Verdict: the numbers, the verdict bands, and the text that
points at the bug. Reports are built through check_function on quadratics, whose two-sided
estimate is exact up to rounding, so every expected number is known in closed form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gradwatch
from gradwatch import Thresholds, Verdict
from gradwatch.evidence.noise import FIRST_PAIRS, PROBE_DIRECTIONS

THETA = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
LAYOUT = {"W": (2, 2), "b": (1,)}
# Bugs planted in the analytic gradient of J = ½‖θ‖² (true gradient θ).
OFFSETS = np.array([0.0, 0.5, 0.0, 0.1, 0.3])


def half_square(theta: np.ndarray) -> float:
    return 0.5 * float(theta @ theta)


def report_for(grad: np.ndarray, **kwargs: object) -> gradwatch.GradCheckReport:
    # ε = 1e-3: the quadratic has no truncation error, and rounding stays below 1e-11.
    return gradwatch.check_function(half_square, THETA, grad, epsilon=1e-3, layout=LAYOUT, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def buggy() -> gradwatch.GradCheckReport:
    return report_for(THETA + OFFSETS)


def test_difference_is_the_material_formula(buggy: gradwatch.GradCheckReport) -> None:
    grad = THETA + OFFSETS
    expected = np.linalg.norm(OFFSETS) / (np.linalg.norm(THETA) + np.linalg.norm(grad))
    assert buggy.difference == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(buggy.numeric, THETA, atol=1e-9)
    np.testing.assert_array_equal(buggy.analytic, grad)


def test_each_parameters_difference_is_the_formula_per_tensor(
    buggy: gradwatch.GradCheckReport,
) -> None:
    assert list(buggy.parameters) == ["W", "b"]
    w, grad_w = THETA[:4], THETA[:4] + OFFSETS[:4]
    expected_w = np.linalg.norm(OFFSETS[:4]) / (np.linalg.norm(w) + np.linalg.norm(grad_w))
    assert buggy.parameters["W"].difference == pytest.approx(expected_w, rel=1e-9)
    assert buggy.parameters["b"].difference == pytest.approx(0.3 / (5.0 + 5.3), rel=1e-9)


def test_worst_orders_by_abs_error_with_every_field(buggy: gradwatch.GradCheckReport) -> None:
    worst = buggy.worst(3)
    assert [c.label for c in worst] == ["W[0, 1]", "b[0]", "W[1, 1]"]
    first = worst[0]
    assert first.name == "W"
    assert first.index == (0, 1)
    assert first.flat_index == 1
    assert first.analytic == 2.5
    assert first.numeric == pytest.approx(2.0, abs=1e-9)
    assert first.abs_error == pytest.approx(0.5, abs=1e-9)
    assert first.rel_error == pytest.approx(0.5 / 4.5, abs=1e-9)
    assert (worst[1].name, worst[1].index, worst[1].flat_index) == ("b", (0,), 4)
    assert (worst[2].name, worst[2].index, worst[2].flat_index) == ("W", (1, 1), 3)
    errors = [c.abs_error for c in buggy.worst(5)]
    assert errors == sorted(errors, reverse=True)


@pytest.mark.parametrize(("k", "expected"), [(0, 0), (1, 1), (5, 5), (50, 5)])
def test_worst_returns_at_most_k(buggy: gradwatch.GradCheckReport, k: int, expected: int) -> None:
    assert len(buggy.worst(k)) == expected


def test_worst_defaults_to_ten() -> None:
    theta = np.arange(12.0)
    report = gradwatch.check_function(half_square, theta, theta + np.arange(12.0), epsilon=1e-3)
    assert [c.flat_index for c in report.worst()] == list(range(11, 1, -1))


@pytest.mark.parametrize(("k", "error"), [(-1, ValueError), (1.5, TypeError), ("3", TypeError)])
def test_worst_rejects_bad_k(
    buggy: gradwatch.GradCheckReport, k: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="`k` must be a non-negative int"):
        buggy.worst(k)  # type: ignore[arg-type]


def test_non_finite_components_come_first_in_worst() -> None:
    grad = THETA + OFFSETS
    grad[2] = math.nan
    report = report_for(grad)
    assert report.worst(1)[0].label == "W[1, 0]"
    assert report.verdict is Verdict.FAIL


def test_message_points_at_the_bad_tensor(buggy: gradwatch.GradCheckReport) -> None:
    assert buggy.verdict is Verdict.FAIL
    # W's two wrong components of four, then the worst component, in the material's spirit.
    assert buggy.message.startswith(
        "W's difference 4.5e-02 > 1e-03, with 2 of 4 judged components disagreeing beyond J's "
        "measured noise: very likely a bug in backprop. Look at W (also b). Worst W[0, 1]: "
        "analytic 2.5, numeric 2."
    )
    assert buggy.parameters_with(Verdict.FAIL) == ["W", "b"]
    assert [buggy.parameters[n].disagrees for n in ("W", "b")] == [2, 1]


def test_report_counts(buggy: gradwatch.GradCheckReport) -> None:
    assert buggy.components_checked == 5
    assert buggy.components_total == 5
    assert buggy.epsilon == 1e-3
    assert buggy.dtype == "float64"
    # two per component, J(θ) twice (is J deterministic?), four along each of the directions
    # that measure J's noise, four per component that disagreed at first (J(θ ± 2ε) and
    # J(θ ± 4ε), the re-check at longer steps), and J's noise again along each of the two
    # tensors that disagree
    # J's noise from the first pairs alone: every gap is far from its tolerance, no reading asks
    probes = 2 * FIRST_PAIRS * 4
    assert buggy.j_noise.directions == 2 * FIRST_PAIRS
    assert buggy.evaluations == 2 * 5 + 2 + probes + 4 * 3 + 2 * PROBE_DIRECTIONS * 4
    assert buggy.reading_counts == {"agrees": 2, "disagrees": 3, "not judged": 0}


def test_both_vectors_zero_is_nothing_judged_never_a_pass() -> None:
    report = gradwatch.check_function(lambda t: 1.0, np.ones(3), np.zeros(3))
    assert report.verdict is Verdict.NOT_JUDGED
    assert math.isnan(report.difference) and math.isnan(report.parameters["theta"].difference)
    assert report.parameters["theta"].reason == "within noise"
    assert report.message.startswith("nothing could be judged")
    assert report.headline().startswith("not judged: nothing judged; 3 of 3 components")


# --- verdict bands ----------------------------------------------------------------------------


G = np.array([1.0, -2.0, 3.0, 0.5, -1.5])
SMALL_THETA = np.array([0.1, -0.1, 0.2, -0.05, 0.03])


def linear(theta: np.ndarray) -> float:
    # J = G·θ near θ = 0: exact slopes at the default ε, rounding below 1e-9.
    return float(G @ theta)


def scaled(difference: float, **kwargs: object) -> gradwatch.GradCheckReport:
    # grad·(1 + δ) gives the difference δ / (2 + δ) exactly: solve for δ.
    delta = 2 * difference / (1 - difference)
    return gradwatch.check_function(linear, SMALL_THETA, G * (1 + delta), layout=LAYOUT, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("difference", "verdict"),
    [(2e-6, Verdict.WARN), (1e-4, Verdict.WARN), (5e-3, Verdict.FAIL), (1e-1, Verdict.FAIL)],
)
def test_default_bands_are_the_materials(difference: float, verdict: Verdict) -> None:
    report = scaled(difference)
    assert report.difference == pytest.approx(difference, rel=1e-2)
    assert report.verdict is verdict


def test_correct_gradient_passes_the_default_band() -> None:
    # Pass needs a difference at the rounding level: a correct gradient of a curved cost.
    theta = np.array([0.3, -1.2, 0.8, 2.0, -0.4])
    report = gradwatch.check_function(lambda t: float(np.sum(np.sin(t))), theta, np.cos(theta))
    assert report.difference < 1e-8
    assert report.verdict is Verdict.PASS


def test_difference_is_the_formula_at_a_large_epsilon() -> None:
    # J = ½‖θ‖² at ε = 1e-3: the two-sided estimate is exact (no third derivative); the one-sided
    # slopes differ by ε·J″ = 2e-3 from plain curvature, which is no kink. A uniform relative
    # error of 2e-5 in grad is a difference of 1e-5: warn, as the material says.
    report = gradwatch.check_function(half_square, THETA, THETA * (1 + 2e-5), epsilon=1e-3)
    assert report.difference == pytest.approx(1e-5, rel=1e-3)
    assert report.verdict is Verdict.WARN


@pytest.mark.parametrize(
    ("difference", "verdict"),
    [
        (0.0, Verdict.PASS),
        (1e-7, Verdict.PASS),
        (1.0000001e-7, Verdict.WARN),
        (1e-3, Verdict.WARN),
        (1.0000001e-3, Verdict.FAIL),
        (1.0, Verdict.FAIL),
        (math.nan, Verdict.FAIL),
        (math.inf, Verdict.FAIL),
    ],
)
def test_classify_band_edges(difference: float, verdict: Verdict) -> None:
    assert Thresholds().classify(difference) is verdict


def test_bands_are_configurable() -> None:
    loose = Thresholds(pass_max=1e-3, warn_max=1e-1)
    assert scaled(1e-2).verdict is Verdict.FAIL
    assert scaled(1e-2, thresholds=loose).verdict is Verdict.WARN
    as_mapping = scaled(1e-2, thresholds={"pass_max": 1e-3, "warn_max": 1e-1})
    assert as_mapping.verdict is Verdict.WARN
    assert as_mapping.thresholds == loose
    strict = Thresholds(pass_max=1e-7, warn_max=1e-6)
    assert scaled(1e-5).verdict is Verdict.WARN
    assert scaled(1e-5, thresholds=strict).verdict is Verdict.FAIL
    assert "warn <= 1e-06" in str(scaled(1e-5, thresholds=strict)).splitlines()[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"pass_max": 0.0},
            ValueError,
            r"`pass_max` must be a positive finite float, e.g. 1e-7; got 0\.0",
        ),
        ({"pass_max": -1e-7}, ValueError, r"`pass_max`.*-1e-07"),
        ({"warn_max": math.nan}, ValueError, r"`warn_max`.*nan"),
        ({"warn_max": math.inf}, ValueError, r"`warn_max`.*inf"),
        ({"warn_max": "1e-3"}, TypeError, r"`warn_max`.*'1e-3'"),
        ({"pass_max": True}, TypeError, r"`pass_max`.*True"),
        (
            {"pass_max": 1e-2, "warn_max": 1e-3},
            ValueError,
            r"`pass_max` must not exceed `warn_max`",
        ),
    ],
)
def test_thresholds_validation(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Thresholds(**kwargs)


def test_thresholds_store_their_bands_as_floats_and_may_be_equal() -> None:
    # An int band is stored as the float it was checked as; a warn band equal to the pass band
    # leaves no warn verdict, which is not an error. The message starts with the argument.
    bands = Thresholds(pass_max=1, warn_max=2)
    assert (type(bands.pass_max), type(bands.warn_max)) == (float, float)
    same = Thresholds(pass_max=1e-3, warn_max=1e-3)
    assert same.classify(1e-3) is Verdict.PASS and same.classify(1.1e-3) is Verdict.FAIL
    with pytest.raises(ValueError, match=r"^`pass_max` must not exceed `warn_max` \(pass <="):
        Thresholds(pass_max=1e-2, warn_max=1e-3)


def test_thresholds_of_the_wrong_type_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"`thresholds` must be None, a gradwatch.Thresholds"):
        report_for(THETA, thresholds=1e-7)


def test_verdict_is_a_str_enum() -> None:
    assert isinstance(Verdict.PASS, str)
    assert [v.value for v in Verdict] == ["pass", "warn", "fail", "not judged"]
    assert Verdict("warn") is Verdict.WARN
    assert Verdict.FAIL == "fail"
    assert str(Verdict.FAIL) == "fail" and f"{Verdict.PASS}" == "pass"
    assert json.dumps({"verdict": Verdict.WARN}) == '{"verdict": "warn"}'
    assert [v.level for v in Verdict] == [0, 1, 2, -1]


# --- str(report) and to_dict() ----------------------------------------------------------------


def test_str_is_a_readable_summary(buggy: gradwatch.GradCheckReport) -> None:
    text = str(buggy)
    lines = text.splitlines()
    assert "FAIL" in lines[0] and f"{buggy.difference:.3e}" in lines[0]
    assert buggy.message in text
    assert "5 of 5 components" in text
    assert "epsilon 0.001" in text
    assert "worst components" in text and "\nparameters:" in text
    table = text[text.index("worst components") : text.index("\nparameters:")]
    rows = [row.split()[0] for row in table.splitlines()[2:]]
    assert rows[:3] == ["W[0,", "b[0]", "W[1,"]
    assert table.splitlines()[2].endswith("disagrees (longer steps)")
    rows = text[text.index("\nparameters:") :].splitlines()[3:]
    assert [row.split()[0] for row in rows] == ["W", "b"]
    assert rows[0].endswith("2/2/0  fail")
    assert f"{buggy.parameters['b'].difference:.2e}" in rows[1]


def test_to_dict_is_json_safe_and_matches_the_report(buggy: gradwatch.GradCheckReport) -> None:
    data = json.loads(json.dumps(buggy.to_dict(), allow_nan=False))
    assert data["verdict"] == "fail"
    assert data["difference"] == pytest.approx(buggy.difference)
    assert data["message"] == buggy.message
    assert data["epsilon"] == 1e-3 and data["dtype"] == "float64"
    assert (data["components_checked"], data["components_total"]) == (5, 5)
    assert data["evaluations"] == buggy.evaluations
    assert data["thresholds"] == {"pass_max": 1e-7, "warn_max": 1e-3}
    assert "per_parameter" not in data  # each parameter's difference is in "parameters"
    assert data["parameters"]["W"] == {
        "verdict": "fail",
        "difference": pytest.approx(buggy.parameters["W"].difference),
        "noise_floor": pytest.approx(buggy.parameters["W"].noise_floor),
        "agrees": 2,
        "disagrees": 2,
        "not_judged": 0,
        "reason": "",
        "tensor_test": pytest.approx(buggy.parameters["W"].tensor_test),
    }
    assert data["parameters"]["W"]["tensor_test"] > 1  # the errors are far beyond J's noise
    assert data["reading_counts"] == {"agrees": 2, "disagrees": 3, "not judged": 0}
    assert data["kink_count"] == buggy.kink_count == 0
    first = data["worst"][0]
    assert first["name"] == "W" and first["index"] == [0, 1] and first["flat_index"] == 1
    assert first["analytic"] == 2.5 and first["abs_error"] == pytest.approx(0.5)
    assert first["reading"] == "disagrees" and first["recheck"] == "longer steps"
    assert set(first) >= {"numeric", "rel_error", "numeric_noise", "reason", "kink"}
    assert first["numeric_noise"] == buggy.worst(1)[0].numeric_noise


def test_to_dict_keeps_non_finite_values_as_floats() -> None:
    # NaN (not judged) and inf stay numbers; save_report writes them as JSON null
    # (tests/test_report_file.py).
    grad = THETA.copy()
    grad[0] = math.inf
    data = report_for(grad).to_dict()
    assert data["verdict"] == "fail"
    assert math.isnan(data["difference"])
    assert data["worst"][0]["analytic"] == math.inf


def test_worst_of_named_parameters(buggy: gradwatch.GradCheckReport) -> None:
    assert [c.label for c in buggy.worst(5, parameters=["b"])] == ["b[0]"]
    assert [c.label for c in buggy.worst(2, parameters=["W"])] == ["W[0, 1]", "W[1, 1]"]
    assert buggy.worst(3, parameters=["no such"]) == []


def test_a_pass_says_what_it_rests_on() -> None:
    # J = θ₀²: θ₁ has no gradient to compare, so the pass rests on half the components.
    report = gradwatch.check_function(
        lambda t: float(t[0] ** 2), np.array([1.0, 2.0]), np.array([2.0, 0.0]),
        layout={"w": (1,), "b": (1,)},
    )  # fmt: skip
    assert report.verdict is Verdict.PASS and report.judged_share == 0.5
    assert report.headline().startswith("pass: difference")
    assert "; 2 of 2 components (50% judged): 1 agree, 1 not judged;" in report.headline()
    assert "not judged: 1 tensor (b)" in report.headline()
    assert "  coverage: pass on 50% of components; not judged: 1 tensor (b)" in str(report)
    assert report.to_dict()["coverage"] == {"judged_share": 0.5, "parameters_not_judged": ["b"]}
    twin = gradwatch.check_function(
        lambda t: float(t[0] ** 2 + t[1] ** 2), np.array([1.0, 2.0]), np.array([2.0, 4.0]),
        layout={"w": (1,), "b": (1,)},
    )  # fmt: skip
    assert twin.judged_share == 1.0 and "not judged" not in twin.headline()
