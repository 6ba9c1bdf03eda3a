"""Verdicts you can trust: kinks, the step that fits the precision, the rounding floor, flags."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import gradwatch
from gradwatch.analysis import analyse_components, rounding_noise
from gradwatch.numeric import auto_steps, represented_steps
from tests.nets import ScaledGradient

EPS64 = float(np.finfo(np.float64).eps)
DIGITS = load_digits()


def _digits(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(DIGITS.images[:n] / 16.0, dtype=torch.float32)
    return x, torch.tensor(DIGITS.target[:n])


def _cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _relu_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))


def _maxpool_cnn() -> nn.Module:
    # Zero biases over the blank borders of the digits: ReLU inputs sit exactly at 0 there.
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8)),
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(48, 10),
    )
    nn.init.zeros_(model[1].bias)
    return model


# --- the small numeric helpers --------------------------------------------------------------


def test_relu_kink_at_zero_is_accepted_as_subgradient() -> None:
    h = np.array([1e-7])
    relu = lambda x: max(x, 0.0)  # noqa: E731
    for analytic in (0.0, 1.0, 0.2):  # any value between the one-sided slopes is valid
        found = analyse_components(
            np.array([analytic]),
            np.array([relu(1e-7)]),
            np.array([relu(-1e-7)]),
            relu(0.0),
            h,
            EPS64,
        )
        assert found.kink[0] and not found.flagged[0]
    outside = analyse_components(
        np.array([2.0]), np.array([relu(1e-7)]), np.array([relu(-1e-7)]), relu(0.0), h, EPS64
    )
    assert not outside.kink[0] and outside.flagged[0]


def test_smooth_function_has_no_kink_and_no_flag() -> None:
    theta = np.linspace(-2, 2, 50)
    h = np.full(theta.size, 1e-7)
    found = analyse_components(3 * theta**2, (theta + h) ** 3, (theta - h) ** 3, 0.0, h, EPS64)
    assert not found.kink.any() and not found.flagged.any()


def test_auto_step_is_cube_root_of_machine_epsilon_scaled_by_theta() -> None:
    steps = auto_steps(np.array([0.0, 0.5, -3.0]), EPS64)
    np.testing.assert_allclose(steps, np.cbrt(EPS64) * np.array([1.0, 1.0, 3.0]))
    assert 6.0e-6 < steps[0] < 6.1e-6


def test_represented_step_is_what_float64_stores() -> None:
    theta, h = np.array([1.0 / 3.0]), np.array([1e-5])
    half = represented_steps(theta, h)
    assert half[0] == ((theta + h) - (theta - h))[0] / 2
    assert half[0] != 1e-5 and abs(half[0] - 1e-5) < 1e-15  # close to h, but not h


def test_rounding_noise_grows_with_cost_and_shrinks_with_step() -> None:
    small = rounding_noise(1.0, np.array([1e-5]), EPS64)[0]
    assert rounding_noise(10.0, np.array([1e-5]), EPS64)[0] == pytest.approx(10 * small)
    assert rounding_noise(1.0, np.array([1e-7]), EPS64)[0] == pytest.approx(100 * small)


# --- kinks: correct ReLU / max-pool networks never fail --------------------------------------


@pytest.mark.parametrize("epsilon", [1e-7, "auto"])
@pytest.mark.parametrize("build", [_relu_mlp, _maxpool_cnn], ids=["relu-mlp", "maxpool-cnn"])
def test_correct_kinked_networks_never_fail_over_20_seeds(build, epsilon) -> None:
    kinks = []
    for seed in range(20):
        torch.manual_seed(seed)
        report = gradwatch.check_module(build(), _cross_entropy, _digits(), epsilon=epsilon)
        assert report.verdict is not gradwatch.Verdict.FAIL, str(report)
        assert report.difference_without_kinks <= 1e-7, str(report)
        kinks.append(report.kink_count)
    if build is _maxpool_cnn:  # zero biases over blank borders: the step crosses ReLU's kink
        assert max(kinks) > 0


def test_kinks_are_reported_and_left_out_of_the_verdict() -> None:
    torch.manual_seed(0)
    report = gradwatch.check_module(_maxpool_cnn(), _cross_entropy, _digits())
    assert report.kink_count > 0
    assert report.difference > 1e-3  # the material's formula alone would call it a bug
    assert report.difference_without_kinks <= 1e-7
    assert report.verdict is gradwatch.Verdict.PASS
    assert "crossed a kink" in report.message
    assert all(not c.kink for c in report.worst(3))  # kinks come last in worst()


# --- the step that fits the precision ----------------------------------------------------------


def test_auto_is_30x_better_on_a_smooth_network() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10), nn.Sigmoid()
    )
    fixed = gradwatch.check_module(model, _cross_entropy, _digits(32))
    auto = gradwatch.check_module(model, _cross_entropy, _digits(32), epsilon="auto")
    assert auto.difference * 30 <= fixed.difference
    assert auto.epsilon == "auto" and auto.verdict is gradwatch.Verdict.PASS


def test_default_path_is_the_material_formula_exactly() -> None:
    theta = np.array([1.0])
    report = gradwatch.gradient_check(lambda t: float(t[0] ** 3), theta, [3.0], epsilon=0.01)
    assert report.numeric[0] == (1.01**3 - 0.99**3) / (2 * 0.01)
    assert report.difference == abs(report.numeric[0] - 3.0) / (report.numeric[0] + 3.0)


def test_warn_from_rounding_is_explained_by_the_floor() -> None:
    # The measurement: a correct 64-128-64-10 tanh MLP at ε = 1e-7 lands near 1.7e-7.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    batch = (torch.randn(32, 64), torch.randint(0, 10, (32,)))
    report = gradwatch.check_module(model, _cross_entropy, batch)
    assert report.difference > 1e-7 and report.verdict is gradwatch.Verdict.WARN
    assert report.explained_by_rounding
    assert report.difference / 3 <= report.noise_floor <= report.difference * 3
    assert "consistent with correct gradients" in report.message
    assert "epsilon='auto'" in report.message
    assert "rounding floor" in report.headline()
    auto = gradwatch.check_module(model, _cross_entropy, batch, epsilon="auto")
    assert auto.verdict is gradwatch.Verdict.PASS and auto.difference < 1e-8


# --- per-component flags and per-parameter weighing -------------------------------------------


class _NumpyTanhNet:
    """A tanh MLP with softmax cross-entropy, forward and backward by hand."""

    def __init__(self, rng: np.random.Generator, sizes: tuple[int, ...], batch: int) -> None:
        self.shapes = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            self.shapes += [(fan_out, fan_in), (fan_out,)]
        self.x = rng.normal(size=(batch, sizes[0]))
        self.y = rng.integers(0, sizes[-1], size=batch)
        self.init = np.concatenate(
            [rng.normal(scale=1 / np.sqrt(s[-1]), size=s).ravel() for s in self.shapes]
        )

    def theta(self) -> np.ndarray:
        return self.init.copy()

    def layout(self) -> dict[str, tuple[int, ...]]:
        names = [f"{k}{i // 2 + 1}" for i, k in enumerate(["W", "b"] * (len(self.shapes) // 2))]
        return dict(zip(names, self.shapes, strict=True))

    def _unpack(self, theta: np.ndarray) -> list[np.ndarray]:
        out, at = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            out.append(theta[at : at + n].reshape(s))
            at += n
        return out

    def _forward(self, theta: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        p, acts = self._unpack(theta), [self.x]
        for i in range(0, len(p), 2):
            z = acts[-1] @ p[i].T + p[i + 1]
            acts.append(np.tanh(z) if i + 2 < len(p) else z)
        logits = acts.pop()
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        return acts, probs / probs.sum(axis=1, keepdims=True)

    def cost(self, theta: np.ndarray) -> float:
        _, probs = self._forward(theta)
        return float(-np.mean(np.log(probs[np.arange(len(self.y)), self.y])))

    def grad(self, theta: np.ndarray) -> np.ndarray:
        p = self._unpack(theta)
        acts, probs = self._forward(theta)
        delta = probs.copy()
        delta[np.arange(len(self.y)), self.y] -= 1
        delta /= len(self.y)
        grads: list[np.ndarray] = []
        for i in range(len(p) - 2, -1, -2):
            grads = [delta.T @ acts[i // 2], delta.sum(axis=0), *grads]
            if i:
                delta = (delta @ p[i]) * (1 - acts[i // 2] ** 2)
        return np.concatenate([g.ravel() for g in grads])


@pytest.fixture(scope="module")
def big_net() -> _NumpyTanhNet:
    return _NumpyTanhNet(np.random.default_rng(1), (64, 128, 16, 10), batch=16)  # 10,634 params


@pytest.mark.parametrize("which", ["largest", "hidden"])
def test_one_wrong_component_is_flagged_and_listed_first(big_net, which) -> None:
    theta = big_net.theta()
    grad = big_net.grad(theta)
    assert theta.size >= 10_000
    if which == "largest":
        # ‖g‖₂ <= sqrt(n)·max|g_i|: an error of 1e-3 on the largest component moves the global
        # difference by at least 1e-3 / (2·sqrt(n)) = 5e-6 here, so the global number sees it too.
        target = int(np.argmax(np.abs(grad)))
    else:
        # A component whose 1e-3 error the material's single number cannot see (< 1e-7).
        target = int(np.argmin(np.abs(np.abs(grad) - 1e-4)))
    grad[target] *= 1 + 1e-3
    report = gradwatch.gradient_check(
        big_net.cost, theta, grad, epsilon="auto", layout=big_net.layout()
    )
    assert report.flagged_count == 1
    assert report.worst(1)[0].flat_index == target and report.worst(1)[0].flagged
    assert report.verdict is not gradwatch.Verdict.PASS
    if which == "hidden":
        assert report.difference < 1e-7
        assert report.verdict is gradwatch.Verdict.WARN
        assert report.message.startswith("pass overall") and "1 suspicious" in report.message


def test_correct_big_net_has_no_flags(big_net) -> None:
    theta = big_net.theta()
    report = gradwatch.gradient_check(
        big_net.cost, theta, big_net.grad(theta), epsilon="auto", layout=big_net.layout()
    )
    assert report.flagged_count == 0 and report.verdict is gradwatch.Verdict.PASS


def test_a_bias_off_by_1e_4_warns_through_its_own_difference(big_net) -> None:
    theta = big_net.theta()
    grad = big_net.grad(theta)
    layout = gradwatch.Layout.from_mapping(big_net.layout())
    b = layout.names.index("b2")
    grad[layout.offsets[b] : layout.offsets[b + 1]] *= 1 + 1e-4
    report = gradwatch.gradient_check(
        big_net.cost, theta, grad, epsilon="auto", layout=big_net.layout()
    )
    assert report.per_parameter["b2"] > 1e-7
    assert report.verdict is not gradwatch.Verdict.PASS
    assert "b2" in report.suspects()


def test_a_bias_cancelled_by_batchnorm_is_not_a_suspect() -> None:
    # Linear → BatchNorm: the bias has a zero gradient; its own difference is noise over nothing.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 10)
    )
    report = gradwatch.check_module(model, _cross_entropy, _digits(32), epsilon="auto")
    assert report.per_parameter["1.bias"] > 1e-3
    assert "1.bias" not in report.suspects()
    assert report.verdict is gradwatch.Verdict.PASS


# --- training-precision drift --------------------------------------------------------------------


def test_drift_in_float32_is_reported() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    report = gradwatch.check_module(model, _cross_entropy, _digits(), drift_dtype=torch.float32)
    assert report.drift is not None and report.drift.dtype == "float32"
    assert 0 < report.drift.gradient_drift < 1e-5
    assert report.drift.difference < 1e-2
    assert "float32: gradient drift" in str(report)
    assert report.to_dict()["drift"]["dtype"] == "float32"
    assert report.drift.failure is None
    plain = gradwatch.check_module(model, _cross_entropy, _digits())
    # the repeat is counted: about twice the evaluations of the float64 check alone
    assert report.evaluations >= 2 * plain.evaluations - 2


def test_drift_that_overflows_in_its_precision_says_why() -> None:
    """1e39 is finite in float64 and inf in float32, so J is NaN there and only there."""

    def overflowing(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss = _cross_entropy(model, batch)
        return loss + loss.new_tensor(1e39) * 0.0

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    report = gradwatch.check_module(model, overflowing, _digits(), drift_dtype=torch.float32)
    assert report.verdict is gradwatch.Verdict.PASS  # the float64 check itself is fine
    assert report.drift is not None and report.drift.failure is not None
    assert "the loss J(θ) is nan" in report.drift.failure
    assert "(the loss J(θ) is nan" in str(report)
    assert report.to_dict()["drift"]["failure"] == report.drift.failure


def test_flags_respect_the_users_pass_band(big_net) -> None:
    theta = big_net.theta()
    grad = big_net.grad(theta)
    target = int(np.argmax(np.abs(grad)))
    grad[target] *= 1 + 1e-3  # that component's own difference: 5e-4
    loose = gradwatch.Thresholds(pass_max=1e-3, warn_max=1e-2)
    report = gradwatch.gradient_check(big_net.cost, theta, grad, epsilon="auto", thresholds=loose)
    assert report.flagged_count == 0 and report.verdict is gradwatch.Verdict.PASS


@pytest.mark.parametrize("epsilon", [1e-2, 1e-3])
def test_curvature_at_a_large_step_is_not_a_kink(epsilon) -> None:
    # Smooth J with a wrong gradient: the one-sided slopes bracket it only because ε is large.
    theta = np.linspace(-1, 1, 5)
    report = gradwatch.gradient_check(
        lambda t: float(np.sum(t**3)), theta, 3 * theta**2 + 2e-5, epsilon=epsilon
    )
    assert report.kink_count == 0
    assert report.verdict is not gradwatch.Verdict.PASS


# --- rounding measured where the model of it falls short ----------------------------------------


class _Wrong(nn.Module):
    """Linear → tanh → Linear; ``factor`` scales the gradient reaching the first layer's output
    (1.0: a correct model)."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = factor
        self.inp, self.out = nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inp(x)
        if z.requires_grad and self.factor != 1.0:
            z.register_hook(lambda g: g * self.factor)
        return self.out(torch.tanh(z))


def _trained_classifier() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Trained until J ≈ 1e-4: J = logsumexp(z) − z_y is then a small difference of large terms
    and carries their rounding, far more than ε_mach·|J|."""
    torch.manual_seed(0)
    model = _Wrong()
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1500):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-3
    return model, (x, y)


def _ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


@pytest.mark.parametrize("epsilon", [1e-7, "auto"])
def test_a_trained_model_is_not_called_suspicious_for_its_rounding(epsilon: float | str) -> None:
    model, batch = _trained_classifier()
    modelled = float(rounding_noise(_ce(model, batch).item(), np.array([1e-7]), 2**-52)[0])
    report = gradwatch.check_module(model, _ce, batch, epsilon=epsilon)
    assert report.flagged_count == 0 and report.suspects() == []
    assert report.verdict is not gradwatch.Verdict.FAIL
    assert report.explained_by_rounding
    if epsilon == 1e-7:  # the floor was measured, far above the model of it
        assert report.noise_floor > 1e-6 and report.noise_floor > 100 * modelled


def test_a_trained_model_with_a_wrong_gradient_still_fails() -> None:
    model, batch = _trained_classifier()
    wrong = _Wrong(factor=1.01)
    wrong.load_state_dict(model.state_dict())
    report = gradwatch.check_module(wrong, _ce, batch)
    assert report.verdict is gradwatch.Verdict.FAIL
    assert report.suspects()[0] == "inp.weight" and "inp.bias" in report.suspects()


# --- verdicts that say what they rest on --------------------------------------------------------


class _SmallGate(nn.Module):
    """A one-component gate whose (2× wrong) gradient is only ~12× the rounding noise of J at
    ε = 1e-7, next to a correct body."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1e-3]))
        self.body = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = ScaledGradient.apply(self.scale, 2.0)
        return self.body(x) * (1 + gate * x[:, :10] * 1e-6)


def _gate_case() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    return _SmallGate(), (torch.randn(64, 16), torch.randint(0, 10, (64,)))


def _ce_sum(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="sum")


def test_a_wrong_gradient_near_the_rounding_noise_is_inconclusive_not_a_pass() -> None:
    model, batch = _gate_case()
    report = gradwatch.check_module(model, _ce_sum, batch)
    assert report.difference_without_kinks <= 1e-7  # the overall difference alone would pass
    assert report.per_parameter["scale"] > 0.1 and report.unresolved() == ["scale"]
    assert report.verdict is gradwatch.Verdict.WARN
    assert report.message.startswith("inconclusive for scale: its own difference is 2.8e-01")
    assert "check with epsilon='auto'" in report.message
    assert "scale  " in str(report) and "inconclusive (errors above rounding" in str(report)


def test_a_verdict_set_by_one_tensor_names_it() -> None:
    model, batch = _gate_case()
    report = gradwatch.check_module(model, _ce_sum, batch, epsilon="auto")
    assert report.verdict is gradwatch.Verdict.FAIL and report.driver == "scale"
    assert report.message.startswith("scale's own difference 3.3e-01 (overall 1.6e-08) > 1e-03")
    assert ", set by scale (3.3e-01)" in report.headline()


def test_a_correct_model_with_a_cancelled_bias_is_not_inconclusive() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    batch = (torch.randn(16, 4), torch.randint(0, 3, (16,)))
    report = gradwatch.check_module(model, _ce, batch)
    assert report.per_parameter["0.bias"] > 1e-3  # pure noise over a zero gradient
    assert report.unresolved() == [] and report.verdict is gradwatch.Verdict.PASS


def test_a_difference_rounding_alone_makes_is_inconclusive_not_a_bug() -> None:
    """J = 1e8 + Σθ²: at ε = 1e-7 rounding of J (an ulp is ~1.5e-8) swamps the slope."""
    theta = np.array([0.3, -1.2, 0.7])
    report = gradwatch.gradient_check(lambda t: float(1e8 + np.sum(t**2)), theta, 2 * theta)
    assert report.thresholds.classify(report.difference) is gradwatch.Verdict.FAIL
    assert report.explained_by_rounding and report.verdict is gradwatch.Verdict.WARN
    assert "can tell neither a bug nor its absence; check with epsilon='auto'" in report.message
    assert "inconclusive, rounding dominates" in report.headline()
    # and a real bug in the same J still fails at a step that resolves it
    wrong = gradwatch.gradient_check(
        lambda t: float(1e8 + np.sum(t**2)), theta, 3 * theta, epsilon=1e-3
    )
    assert wrong.verdict is gradwatch.Verdict.FAIL


def test_a_cost_that_draws_new_random_numbers_is_not_deterministic() -> None:
    rng = np.random.default_rng(0)
    theta = np.array([0.5, 1.5])
    report = gradwatch.gradient_check(
        lambda t: float(np.sum(t**2) + 1e-3 * rng.standard_normal()), theta, 2 * theta
    )
    assert report.verdict is gradwatch.Verdict.FAIL
    assert report.message.startswith("J is not deterministic: two evaluations at the same θ")
    assert "`cost` must be a function of θ alone" in report.message


@pytest.mark.parametrize("seed", [101, 127])
def test_a_kink_within_the_step_but_not_at_theta_is_a_kink(seed: int) -> None:
    """At epsilon='auto' (h ≈ 6e-6) some example's pre-activation lies within h of 0 but not at
    0: the gap between one-sided slopes then shrinks by ~2/3 when h halves, like curvature,
    but only the slope on the kink's side moves. These seeds failed before that second test."""
    x, y = _digits(64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    report = gradwatch.check_module(model, _cross_entropy, (x, y), epsilon="auto")
    assert report.flagged_count == 0 and report.kink_count > 0
    assert report.verdict is gradwatch.Verdict.PASS


@pytest.mark.parametrize(("pruned", "shared"), [(2, False), (16, True), (32, True)])
def test_pruned_relu_units_are_not_called_a_bug(pruned: int, shared: bool) -> None:
    """Units whose weights and bias are exactly 0 sit on ReLU's kink for the whole batch: there
    relu'(0) = 0 in every example need not be a slope of J, so the check cannot judge those
    components; it says so (warn) instead of blaming backprop."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        model[0].weight[:pruned] = 0
        model[0].bias[:pruned] = 0
    report = gradwatch.check_module(model, _ce, (x, y))
    assert report.flagged_count == 0 and report.difference_without_kinks <= 1e-7
    assert (report.off_slope_count > 0) is shared
    if shared:
        assert report.verdict is gradwatch.Verdict.WARN
        assert "sit on a kink that many examples share" in report.message
        assert report.to_dict()["off_slope"] == report.off_slope_count
    else:
        assert report.verdict is gradwatch.Verdict.PASS


@pytest.mark.parametrize("seed", [0, 2])
def test_a_conv_bias_batchnorm_cancels_is_not_inconclusive(seed: int) -> None:
    """Backprop gives the conv bias before BatchNorm a gradient of ~1e-16; the numeric estimate
    is a few ulps of J over 2ε, several times the modelled noise. Zero to within rounding:
    nothing to clear or convict, so no 'inconclusive'. These seeds warned before that rule."""
    x, y = _digits(64)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    report = gradwatch.check_module(model, _cross_entropy, (x.unsqueeze(1), y))
    assert report.per_parameter["0.bias"] > 0.1
    assert report.unresolved() == [] and report.verdict is gradwatch.Verdict.PASS
