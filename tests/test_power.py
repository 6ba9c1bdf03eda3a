"""Power on both sides: correct models pass and planted twins fail, with bugs of graded size (1%
and 0.1% of one tensor, one wrong row, a sign flip of a small-gradient scalar) at J scales of 1,
1e5 and with a large constant part, at random init and after training; and each rule of issue 19
on a J with a known answer: the reading is a test, the tensor test, escalation, J's noise per
tensor."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import Verdict
from gradwatch.verdict import parameter_verdict
from tests import power_nets
from tests.noisy_costs import Cubes

# --- the matrix: bugs × J scales × init/trained × seeds --------------------------------------


def _power_case(scale: str, trained: bool, bug: str, seed: int) -> None:
    model = power_nets.build(seed, trained, bug)
    report = gradwatch.check_module(
        model, power_nets.loss_at(scale), power_nets.batch(seed), seed=seed
    )
    target = report.parameters[power_nets.BUGS[bug]]
    if bug == "none":  # the correct twin: every parameter judged passes, none is left out
        assert report.verdict is Verdict.PASS, str(report)
        assert {r.verdict for r in report.parameters.values()} == {Verdict.PASS}, str(report)
    elif bug == "0.1%":  # D ≈ 5e-4: the material's band says "look", never "pass"
        assert report.verdict in (Verdict.WARN, Verdict.FAIL), str(report)
        assert target.verdict in (Verdict.WARN, Verdict.FAIL), str(report)
    else:
        assert report.verdict is Verdict.FAIL, str(report)
        assert target.verdict is Verdict.FAIL, str(report)


@pytest.mark.parametrize(
    ("scale", "bug"), list(itertools.product(power_nets.SCALES, power_nets.BUGS))
)
def test_correct_twins_pass_and_planted_bugs_are_caught(scale: str, bug: str) -> None:
    _power_case(scale, False, bug, 0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scale", "trained", "bug", "seed"),
    [case for case in itertools.product(power_nets.SCALES, (False, True), power_nets.BUGS, (1, 2))]
    + [
        (scale, True, bug, 0)
        for scale, bug in itertools.product(power_nets.SCALES, power_nets.BUGS)
    ],
)
def test_power_over_seeds_and_after_training(
    scale: str, trained: bool, bug: str, seed: int
) -> None:
    _power_case(scale, trained, bug, seed)


# --- the rules on known answers ---------------------------------------------------------------


def _noisy(sigma: float, f: Any) -> Any:
    """f(θ) plus a Gaussian error of size ``sigma`` that is a function of θ (the same θ, the same
    error: as rounding is)."""

    def cost(t: np.ndarray) -> float:
        digest = hashlib.blake2b(np.asarray(t, np.float64).tobytes(), digest_size=8).digest()
        seed = int.from_bytes(digest, "little")
        return float(f(t)) + sigma * float(np.random.default_rng(seed).standard_normal())

    return cost


SIGMA, H = 1e-12, 1e-7
NOISE = SIGMA / (np.sqrt(2) * H)  # of the two-sided estimate at ε = 1e-7
TWO = {"a": (1,), "b": (1,)}  # θ₀ and θ₁ as two tensors: each has its own verdict


@pytest.mark.parametrize("gap", [12.0, 16.0, 24.0])
def test_a_sign_flip_seen_beyond_the_tolerance_is_never_cleared_by_its_re_check(
    gap: float,
) -> None:
    # J = c·θ₀ + θ₁², backprop says −c: a gap of 2c = 12–24σ. The re-check at 2ε and 4ε reads
    # Richardson at 0.67σ: the gap stays a disagreement (a half-step re-read at 2.7σ cleared it).
    c = gap * NOISE / 2
    cost = _noisy(SIGMA, lambda t: c * t[0] + t[1] ** 2)
    theta = np.array([0.0, 0.5])
    wrong = gradwatch.check_function(cost, theta, np.array([-c, 1.0]), layout=TWO)
    assert wrong.verdict is Verdict.FAIL and wrong.worst(1)[0].label == "a[0]"
    assert wrong.worst(1)[0].reading == "disagrees"
    right = gradwatch.check_function(cost, theta, np.array([c, 1.0]), layout=TWO)
    assert right.verdict is Verdict.PASS


@pytest.mark.parametrize(("error", "verdict"), [(3.0, Verdict.WARN), (0.5, Verdict.PASS)])
def test_the_tensor_test_convicts_an_error_no_reading_shows(error: float, verdict: Verdict) -> None:
    # 1000 components of gradient 3000σ whose readings all agree (each off by error·σ, under 8σ):
    # Σz² ≈ 1000·(error² + 1) against the bound 4·1.25·1000; D = 5e-4 at 3σ: the band says warn.
    rng = np.random.default_rng(0)
    k, noise = 1000, np.full(1000, 1e-9)
    a = 3000 * noise * np.sign(rng.standard_normal(k))
    n = a + error * noise + noise * rng.standard_normal(k)
    agree = np.zeros(k, np.int8)
    result = parameter_verdict("w", a, n, noise, agree, agree, 1e-3, 1e-7)
    assert result.verdict is verdict and (result.tensor_test > 1) == (verdict is Verdict.WARN)
    if verdict is Verdict.WARN:
        assert result.reason == "errors shared across components"


def test_a_small_error_shared_by_many_components_fails_end_to_end() -> None:
    # 1000 slopes of 1000σ, each off by 3σ; ε = 1e-3 on a linear J: no truncation, and the
    # fitted step is not longer.
    k, eps = 1000, 1e-3
    noise = SIGMA / (np.sqrt(2) * eps)
    slopes = 1000 * noise * np.linspace(1.0, 2.0, k)
    cost = _noisy(SIGMA, lambda t: float(slopes @ t))
    theta = np.linspace(-1.0, 1.0, k)
    right = gradwatch.check_function(cost, theta, slopes, epsilon=eps)
    assert right.verdict is Verdict.PASS
    assert right.parameters["theta"].tensor_test < 1
    shared = gradwatch.check_function(cost, theta, slopes + 3 * noise, epsilon=eps)
    result = shared.parameters["theta"]
    assert result.disagrees < k // 100  # hardly any reading stands out
    assert result.tensor_test > 1 and shared.verdict is not Verdict.PASS


def test_a_gradient_within_the_first_steps_noise_is_read_at_the_fitted_step() -> None:
    # J = 3e5 + 1e-6·θ₀ + θ₁²: at ε = 1e-7 the slope 1e-6 is far under the noise (~1e-4).
    cost = lambda t: 3e5 + 1e-6 * t[0] + t[1] ** 2  # noqa: E731
    theta = np.array([0.2, 0.5])
    right = gradwatch.check_function(cost, theta, np.array([1e-6, 1.0]), layout=TWO)
    assert right.component(0).recheck == "fitted step"
    assert right.component(0).reading == "agrees" and right.verdict is Verdict.PASS
    detached = gradwatch.check_function(cost, theta, np.array([0.0, 1.0]), layout=TWO)
    assert detached.verdict is Verdict.FAIL and detached.worst(1)[0].label == "a[0]"


class _Float32Matmul(torch.autograd.Function):
    """x @ wᵀ computed in numpy float32, its backward in float64 (×``factor``: 1 is correct)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.factor = factor
        out = x.detach().numpy().astype(np.float32) @ w.detach().numpy().astype(np.float32).T
        return torch.from_numpy(out.astype(np.float64)).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, w = ctx.saved_tensors
        return grad @ w, ctx.factor * grad.t() @ x, None


class _LateFloat32(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(64, 12), nn.Linear(12, 10)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        return _Float32Matmul.apply(h, self.out.weight, self.factor) + self.out.bias


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_is_measured_on_the_tensor_that_reaches_a_float32_op(seed: int) -> None:
    torch.manual_seed(seed)
    model = _LateFloat32(1.0)
    loss, batch = power_nets.loss_at("1"), power_nets.batch(seed)
    right = gradwatch.check_module(model, loss, batch, seed=seed)
    assert right.verdict is Verdict.PASS, str(right)
    model.factor = 1.01  # 1% off, behind the same float32 step
    wrong = gradwatch.check_module(model, loss, batch, seed=seed)
    assert wrong.verdict is Verdict.FAIL and "out.weight" in wrong.parameters_with(Verdict.FAIL)


# --- escalation's re-reads, one function at a time, on J = Σθ³ -------------------------------


def test_a_failing_tensor_with_nothing_left_to_re_read_does_not_stop_the_next() -> None:
    # Two tensors fail the tensor test (ten components at 6σ each, S/bound 1.7), none disagrees.
    # The first (tensor 0: a set of small ints iterates in order) was read at the fitted step
    # already: no first-step component is left, it stays as read. The second's gaps are the h²
    # truncation of its first step: re-read at 2h and 4h, it agrees, by Richardson's estimate.
    from gradwatch.evidence.escalation import retest
    from gradwatch.evidence.readings import AGREES, FITTED_STEP, LONGER_STEPS, Record, read
    from gradwatch.evidence.tensor_test import convicts

    theta, h = np.r_[np.ones(10), np.linspace(0.5, 1.0, 10)], 1e-3
    j = Cubes(theta)
    a = 3 * theta**2
    noise = np.r_[np.full(10, 1e-6), np.full(10, h**2 / 6)]
    n = a + np.r_[6 * noise[:10], np.full(10, h**2)]
    record = Record(a, n, noise, noise * np.sqrt(2) * h)
    record.reading, record.reason = read(a, n, noise, 1e-7)
    record.recheck[:10] = FITTED_STEP
    groups, steps = np.repeat([0, 1], 10), np.full(20, h)
    assert (record.reading == AGREES).all()
    assert all(convicts(a, n, noise, groups == g, 1e-7) for g in (0, 1))
    retest(j, record, groups, j.center, steps, 1e-7)  # type: ignore[arg-type]
    np.testing.assert_array_equal(record.numeric[:10], n[:10])
    assert list(record.recheck) == [FITTED_STEP] * 10 + [LONGER_STEPS] * 10
    np.testing.assert_allclose(record.numeric[10:], a[10:], rtol=1e-9)
    assert (record.reading == AGREES).all()


def test_a_fitted_reading_is_richardsons_from_h_and_2h_and_keeps_its_step() -> None:
    # J = Σθ³ at H = 1e-3 and 2e-3: the estimate is 3θ² without the h² term, its noise that of
    # Richardson's at a ratio of 1/2, and the step it was read at is kept (J's noise along the
    # tensor is measured at that stride).
    from gradwatch.evidence.ladder import read_fitted
    from gradwatch.evidence.readings import AGREES, FITTED_STEP, Record
    from gradwatch.evidence.recheck import richardson_noise

    theta, sigma = np.array([0.5, 1.0]), 1e-12
    j, fitted = Cubes(theta), np.array([1e-3, 2e-3])
    a = 3 * theta**2
    record = Record(a, a, np.full(2, 1e-9), np.full(2, sigma))
    read_fitted(j, record, np.arange(2), fitted, j.center, 1e-7)  # type: ignore[arg-type]
    np.testing.assert_allclose(record.numeric, a, rtol=1e-9)
    noise = richardson_noise(0.5, sigma / (np.sqrt(2) * 2 * fitted), sigma / (np.sqrt(2) * fitted))
    np.testing.assert_allclose(record.noise, noise, rtol=1e-12)
    assert list(record.recheck) == [FITTED_STEP] * 2 and list(record.reading) == [AGREES] * 2
    np.testing.assert_array_equal(record.step, fitted)


def test_the_ladder_climbs_with_the_components_left_within_noise_only() -> None:
    # θ = (1, 0) of J = Σθ³ at H = 1e-4: the first agrees at H and keeps that step; the second
    # (no gradient) stays within noise and climbs to 16·H and to float32's step. A component
    # whose step is float32's already has no longer step to be read at.
    from gradwatch.evidence.gate import _fitted
    from gradwatch.evidence.ladder import climb
    from gradwatch.evidence.readings import AGREES, FITTED_STEP, NOT_JUDGED, Record
    from gradwatch.evidence.recheck import longest_steps

    theta, h = np.array([1.0, 0.0]), 1e-4
    j, a = Cubes(theta), 3 * theta**2
    record = Record(a, a, np.full(2, 1e-9), np.full(2, 1e-12))
    start = (np.arange(2), np.full(2, h))
    climb(j, record, np.ones(2, bool), start, j.center, (1e-7, 1e-3), 0)  # type: ignore[arg-type]
    assert list(record.reading) == [AGREES, NOT_JUDGED]
    assert list(record.recheck) == [FITTED_STEP] * 2
    np.testing.assert_array_equal(record.step, [h, longest_steps(np.zeros(1))[0]])
    capped = longest_steps(theta)
    at, fitted = _fitted(j, record, np.arange(2), j.center, capped)  # type: ignore[arg-type]
    assert at.size == 0 and fitted.size == 0


class _Slopes:
    """J = Σ slope_i·θ_i at θ = 0, J(θ) = 0, and a rounding of 1e-14 (about 100 times the 1e-16
    measured first) along any probe of a tensor's own noise."""

    def __init__(self, slope: np.ndarray) -> None:
        self.slope, self.rng = slope, np.random.default_rng(5)

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.slope[at] * h, -self.slope[at] * h

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def values(self, at: np.ndarray) -> np.ndarray:
        return np.zeros(len(at))

    def line(self, support: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return rows @ self.slope[support] + 1e-14 * self.rng.standard_normal(len(rows))


@pytest.mark.parametrize("planted", [False, True])
def test_a_tensor_failing_the_tensor_test_is_read_against_its_noise_at_its_readings_stride(
    planted: bool,
) -> None:
    # Fifty slopes read 5σ off (of the 1e-16 first measured): together they fail the tensor test.
    # J's noise along the tensor, probed at the readings' stride h, is ~100× that: read against
    # it, every component agrees at its first step. Backprop 1% off (a bug) disagrees at ~140σ.
    from gradwatch.evidence.model import gather_evidence
    from gradwatch.evidence.readings import AGREES, DISAGREES, LONGER_STEPS

    h, sigma = 1e-7, 1e-16
    a = np.linspace(1e-3, 2e-3, 50)
    j = _Slopes(a + 5 * sigma / (np.sqrt(2) * h))
    analytic = a * (1.01 if planted else 1.0)
    steps = np.full(50, h)
    first = j.pairs(np.arange(50), steps)
    found = gather_evidence(j, analytic, first, 0.0, steps, sigma, 1e-7)  # type: ignore[arg-type]
    ratio = found.noise / (sigma / (np.sqrt(2) * h))
    assert np.all((ratio > 30) & (ratio < 300)) and np.ptp(ratio) == 0
    assert list(found.reading) == [DISAGREES if planted else AGREES] * 50
    assert list(found.recheck) == [LONGER_STEPS if planted else 0] * 50


class _Jittered:
    """J = 2·θ₀ at every θ, whose k-th jittered θ has backprop ``analytic[k]`` there; the attempts
    asked for are kept."""

    def __init__(self, analytic: list[float]) -> None:
        self.analytic, self.asked = analytic, []  # type: ignore[var-annotated]

    def pairs(self, at: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return 2.0 * h, -2.0 * h

    def half_gaps(self, at: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64)

    def jittered(self, attempt: int):  # type: ignore[no-untyped-def]
        from gradwatch.evidence.objective import Moved

        self.asked.append(attempt)
        return Moved(self, np.array([self.analytic[attempt]]), 0.0)


@pytest.mark.parametrize("second", [2.2, 2.0])
def test_a_gap_off_a_flip_is_read_at_two_jittered_thetas_and_no_third(second: float) -> None:
    # Backprop 10% off at the first jittered θ: a disagreement that stands where the second shows
    # it too, and "not judged, on a kink" where the second agrees; a third θ (where it agrees)
    # is never asked for.
    from gradwatch.evidence.model import _off_flips
    from gradwatch.evidence.readings import DISAGREES, NOT_JUDGED, OFF_KINK, ON_KINK, Record, read

    j, steps = _Jittered([2.2, second, 2.0]), np.full(1, 5e-3)
    a, n, noise = np.array([2.2]), np.array([2.0]), np.full(1, 1e-10 / (np.sqrt(2) * 5e-3))
    record = Record(a, n, noise, np.full(1, 1e-10))
    record.reading, record.reason = read(a, n, noise, 1e-7)
    _off_flips(j, record, np.zeros(1, np.int64), steps, 1e-7)  # type: ignore[arg-type]
    assert j.asked == [0, 1] and record.recheck[0] == OFF_KINK
    stands = second != 2.0
    assert (record.reading[0], record.reason[0]) == (
        (DISAGREES, 0) if stands else (NOT_JUDGED, ON_KINK)
    )
