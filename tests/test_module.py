"""check_module on torch models: custom autograd Functions with wrong backwards, BatchNorm and
Dropout, precision, non-determinism, include/components, bad input, and a model left bit-for-bit
as it was."""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import gradwatch
from gradwatch import Verdict, check_module
from gradwatch.module import checked_parameters
from tests.nets import MODELS, GatedNet, classification_batch, cross_entropy, mlp
from tests.rng import numpy_rng_state

DROPOUT_LAYERS = (nn.Dropout, nn.Dropout2d)


def gated_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return classification_batch((3,), classes=2, examples=6)


def model_and_batch(name: str, **kwargs: Any) -> tuple[nn.Sequential, Any]:
    build, shape = MODELS[name]
    return build(**kwargs), classification_batch(shape)


# --- custom autograd.Function: a wrong backward fails and points at its parameter -------------

# bug → the parameters whose gradient it corrupts (a wrong input gradient reaches the layer below)
AFFECTED = {
    "weight_sign": {"gate.weight"},
    "missing_term": {"gate.weight"},
    "input_sign": {"inp.weight", "inp.bias"},
}


def test_correct_function_passes() -> None:
    torch.manual_seed(0)
    report = check_module(GatedNet("none"), cross_entropy, gated_batch())
    assert report.verdict is Verdict.PASS
    assert report.difference < 1e-7
    assert report.components_checked == report.components_total == 4 * 3 + 4 + 5 * 4 + 5 * 2 + 2


@pytest.mark.parametrize("bug", AFFECTED)
def test_wrong_backward_fails_in_the_affected_parameter(bug: str) -> None:
    torch.manual_seed(0)
    report = check_module(GatedNet(bug), cross_entropy, gated_batch())  # type: ignore[arg-type]
    assert report.verdict is Verdict.FAIL
    assert report.difference > 1e-3
    assert {c.name for c in report.worst(5)} <= AFFECTED[bug]
    for name, result in report.parameters.items():
        if name in AFFECTED[bug]:
            assert result.difference > 1e-3, name
        else:
            assert result.difference < 1e-7, name
    assert any(name in report.message for name in AFFECTED[bug])


# --- BatchNorm and Dropout --------------------------------------------------------------------


@pytest.mark.parametrize("dropout", ["off", "freeze"])
@pytest.mark.parametrize("name", MODELS)
def test_batchnorm_dropout_models_pass(name: str, dropout: str) -> None:
    model, batch = model_and_batch(name)
    report = check_module(model, cross_entropy, batch, dropout=dropout)  # type: ignore[arg-type]
    assert report.verdict is Verdict.PASS, str(report)
    assert report.difference < 1e-7
    assert report.epsilon == 1e-7 and report.dtype == "float64"


@pytest.mark.parametrize("name", MODELS)
def test_zero_true_gradient_tensor_does_not_fail_a_correct_model(name: str) -> None:
    # A bias right before BatchNorm is cancelled by the batch mean: its true gradient is 0, so its
    # numeric estimate is pure rounding noise and its own difference is about 1 whatever backprop
    # does. The model is correct and its overall difference is ~1e-9: that must not fail.
    model, batch = model_and_batch(name, bias=True)
    report = check_module(model, cross_entropy, batch)
    assert report.difference < 1e-7
    assert report.verdict is Verdict.PASS, str(report)


def reference_gradient(model: nn.Module, batch: Any, eval_dropout: bool) -> np.ndarray:
    """Autograd's gradient on a float64 copy: dropout layers in eval, every other layer as is."""
    work = copy.deepcopy(model).double()
    for m in work.modules():
        if eval_dropout and isinstance(m, DROPOUT_LAYERS):
            m.eval()
    params = [p for p in work.parameters() if p.requires_grad]
    x, y = batch
    grads = torch.autograd.grad(cross_entropy(work, (x.double(), y)), params)
    return torch.cat([g.reshape(-1) for g in grads]).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_dropout_off_is_identity_and_batchnorm_uses_batch_statistics(name: str) -> None:
    model, batch = model_and_batch(name)
    report = check_module(model, cross_entropy, batch, dropout="off")
    expected = reference_gradient(model, batch, eval_dropout=True)
    np.testing.assert_allclose(report.analytic, expected, rtol=1e-10, atol=1e-14)
    # BatchNorm in eval mode (running statistics) would give another gradient.
    model[1].eval()
    assert not np.allclose(reference_gradient(model, batch, eval_dropout=True), expected)


@pytest.mark.parametrize("name", MODELS)
def test_dropout_freeze_holds_one_mask_chosen_by_seed(name: str) -> None:
    model, batch = model_and_batch(name)
    off = check_module(model, cross_entropy, batch, dropout="off")
    frozen = check_module(model, cross_entropy, batch, dropout="freeze", seed=3)
    again = check_module(model, cross_entropy, batch, dropout="freeze", seed=3)
    other = check_module(model, cross_entropy, batch, dropout="freeze", seed=4)
    assert not np.allclose(frozen.analytic, off.analytic)  # the mask is really applied
    np.testing.assert_array_equal(frozen.analytic, again.analytic)
    assert not np.allclose(frozen.analytic, other.analytic)
    assert frozen.verdict is other.verdict is Verdict.PASS


@pytest.mark.parametrize("name", MODELS)
def test_masks_redrawn_per_evaluation_fail(name: str) -> None:
    # What freezing prevents: J evaluated in train mode without re-seeding draws new masks at
    # every θ ± ε·e_i, so the numeric estimate measures the masks, not the slope.
    model, (x, y) = model_and_batch(name)
    batch = (x.double(), y)
    work = copy.deepcopy(model)
    params = list(work.parameters())
    theta = parameters_to_vector(params).detach().numpy().copy()
    torch.manual_seed(0)
    grad = torch.autograd.grad(cross_entropy(work, batch), params)
    flat_grad = torch.cat([g.reshape(-1) for g in grad]).numpy()

    def cost(t: np.ndarray) -> float:
        with torch.no_grad():
            vector_to_parameters(torch.from_numpy(t), params)
            return float(cross_entropy(work, batch))

    report = gradwatch.check_function(cost, theta, flat_grad)
    assert report.verdict is Verdict.NOT_JUDGED
    assert report.plain_difference > 1e-2  # what the material's loop alone would call a bug
    assert report.j_noise is not None and not report.j_noise.deterministic
    assert "J is not deterministic: evaluations at the same θ differ by" in report.message


class FunctionalDropout(nn.Module):
    """Dropout that is no layer (as inside attention): re-seeding must make it deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(torch.tanh(self.fc1(x)), p=0.3, training=True))


@pytest.mark.parametrize("dropout", ["off", "freeze"])
def test_random_draws_in_the_forward_are_reseeded(dropout: str) -> None:
    torch.manual_seed(0)
    model = FunctionalDropout().double()
    report = check_module(model, cross_entropy, classification_batch((4,)), dropout=dropout)  # type: ignore[arg-type]
    assert report.verdict is Verdict.PASS, str(report)


# --- non-determinism ---------------------------------------------------------------------------

NOISE: dict[str, Callable[[], float]] = {
    "torch": lambda: float(torch.rand(())),
    "numpy": lambda: float(np.random.rand()),
    "python": random.random,
}


@pytest.mark.parametrize("source", NOISE)
def test_random_noise_in_the_loss_is_reseeded(source: str) -> None:
    def noisy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x * (1 + 0.5 * NOISE[source]())), y)

    report = check_module(mlp(), noisy, classification_batch((4,)))
    assert report.verdict is Verdict.PASS, str(report)
    assert "not deterministic" not in report.message


def test_noise_tensor_in_the_loss_is_reseeded() -> None:
    def augmented(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x + 0.3 * torch.randn_like(x)), y)

    report = check_module(mlp(), augmented, classification_batch((4,)), dropout="freeze")
    assert report.verdict is Verdict.PASS, str(report)


class CountingLoss:
    """Cross-entropy that counts its calls; ``drift`` adds state kept between calls, so that J
    changes with every evaluation."""

    def __init__(self, drift: float = 0.0) -> None:
        self.calls = 0
        self.drift = drift

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        return cross_entropy(model, batch) + self.drift * self.calls


def test_stateful_loss_is_reported_not_deterministic() -> None:
    report = check_module(mlp(), CountingLoss(drift=1e-5), classification_batch((4,)))
    assert report.verdict is Verdict.NOT_JUDGED
    assert report.message.startswith("nothing could be judged")
    assert "J is not deterministic" in report.message and "remove state" in report.message
    assert "J not deterministic: spread" in str(report)
    # A tenth of that drift leaves two components of 57 standing out of J's spread at the generic
    # point's longer steps: they agree, and the pass says it rests on 4% of the components.
    report = check_module(mlp(), CountingLoss(drift=1e-6), classification_batch((4,)))
    assert report.verdict is Verdict.PASS, str(report)
    assert "J is not deterministic" in report.message and "remove state" in report.message
    assert "coverage: pass on 4% of components" in str(report)


# --- precision ---------------------------------------------------------------------------------


def test_float32_model_is_checked_in_float64_and_passes() -> None:
    model = mlp(torch.float32)
    report = check_module(model, cross_entropy, classification_batch((4,)))
    assert report.dtype == "float64"
    assert report.verdict is Verdict.PASS, str(report)
    assert not any("rounding noise" in note for note in report.notes)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_float32_check_at_default_epsilon_is_read_at_the_fitted_step() -> None:
    report = check_module(
        mlp(torch.float32), cross_entropy, classification_batch((4,)), dtype=torch.float32
    )
    assert report.dtype == "float32"
    # float32's rounding of J over 2·1e-7 is about |J|: no gradient stands above that noise at
    # the default step, so every component is read again at the step fitted to J's noise
    assert report.verdict is Verdict.PASS, str(report)
    assert report.plain_difference > 1e-3  # what the material's loop alone would call a bug
    rechecks = {report.component(i).recheck for i in range(report.components_checked)}
    assert "fitted step" in rechecks
    auto = check_module(
        mlp(torch.float32), cross_entropy, classification_batch((4,)), dtype=torch.float32,
        epsilon="auto",
    )  # fmt: skip
    assert auto.verdict is Verdict.PASS, str(auto)


# --- which components: include and sample=k ----------------------------------------------


def test_theta_is_every_trainable_parameter_in_order() -> None:
    torch.manual_seed(0)
    model = GatedNet()
    model.inp.bias.requires_grad_(False)
    report = check_module(model, cross_entropy, gated_batch())
    assert list(report.parameters) == ["inp.weight", "gate.weight", "head.weight", "head.bias"]
    assert report.components_total == 12 + 20 + 10 + 2


def test_tied_parameters_appear_once() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    assert checked_parameters(model) == ["0.weight", "0.bias", "2.bias"]


@pytest.mark.parametrize(
    ("include", "names", "verdict"),
    [
        ("head.*", ["head.weight", "head.bias"], Verdict.PASS),
        (["inp.*", "head.bias"], ["inp.weight", "inp.bias", "head.bias"], Verdict.PASS),
        ("gate.*", ["gate.weight"], Verdict.FAIL),
        ("*.weight", ["inp.weight", "gate.weight", "head.weight"], Verdict.FAIL),
    ],
)
def test_include_narrows_theta(
    include: str | list[str], names: list[str], verdict: Verdict
) -> None:
    # The bug sits in gate.weight: checks that leave it out pass, checks that include it fail.
    torch.manual_seed(0)
    model = GatedNet("weight_sign")
    report = check_module(model, cross_entropy, gated_batch(), include=include)
    assert list(report.parameters) == names
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    assert report.components_total == sum(sizes[n] for n in names)
    assert report.verdict is verdict


def test_sample_of_k_components() -> None:
    model, batch = model_and_batch("cnn")
    total = sum(p.numel() for p in model.parameters())
    report = check_module(model, cross_entropy, batch, sample=12, seed=5)
    assert (report.components_checked, report.components_total) == (12, total)
    assert f"12 of {total} components" in str(report)
    checked = {report.layout.names[t] for t in report.layout.tensor_of(report.indices)}
    assert checked == {n for n, _ in model.named_parameters()}
    assert report.evaluations >= 2 * 12
    assert report.evaluations < 2 * total
    again = check_module(model, cross_entropy, batch, sample=12, seed=5)
    other = check_module(model, cross_entropy, batch, sample=12, seed=6)
    np.testing.assert_array_equal(report.indices, again.indices)
    assert not np.array_equal(report.indices, other.indices)
    assert report.verdict is Verdict.PASS


def test_sample_still_finds_the_bug() -> None:
    torch.manual_seed(0)
    report = check_module(GatedNet("weight_sign"), cross_entropy, gated_batch(), sample=6)
    assert report.components_checked == 6
    assert report.verdict is Verdict.FAIL
    assert report.worst(1)[0].name == "gate.weight"


def test_sample_larger_than_theta_checks_everything_and_says_so() -> None:
    model, batch = model_and_batch("mlp")
    report = check_module(model, cross_entropy, batch, sample=10_000)
    assert report.components_checked == report.components_total
    assert any("10000" in note for note in report.notes)


# --- bad input: raised before any work, naming the argument ----------------------------------


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2).requires_grad_(False)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        pytest.param({"epsilon": 0.0}, ValueError, r"`epsilon`.*got 0\.0", id="eps-zero"),
        pytest.param({"epsilon": -1.0}, ValueError, r"`epsilon`.*got -1\.0", id="eps-negative"),
        pytest.param({"epsilon": math.nan}, ValueError, r"`epsilon`.*got nan", id="eps-nan"),
        pytest.param({"epsilon": math.inf}, ValueError, r"`epsilon`.*got inf", id="eps-inf"),
        pytest.param({"epsilon": "1e-7"}, TypeError, r"`epsilon`.*'1e-7'", id="eps-str"),
        pytest.param({"model": Frozen()}, ValueError, r"`model` has no trainable", id="frozen"),
        pytest.param({"model": "net"}, TypeError, r"`model` must be a torch.nn.Module", id="model"),
        pytest.param(
            {"dropout": "on"},
            ValueError,
            r"`dropout` must be one of 'off', 'freeze'; got 'on'",
            id="dropout",
        ),
        pytest.param({"sample": 0}, ValueError, r"`sample`.*got 0", id="k-zero"),
        pytest.param({"sample": -3}, ValueError, r"`sample`.*got -3", id="k-negative"),
        pytest.param({"sample": 2.5}, TypeError, r"`sample`.*got 2\.5", id="k-float"),
        pytest.param({"sample": True}, TypeError, r"`sample`.*got True", id="k-bool"),
        pytest.param({"include": "decoder.*"}, ValueError, r"`include` 'decoder\.\*'", id="inc"),
        pytest.param({"include": [3]}, TypeError, r"`include` must be None, a glob", id="inc-type"),
        pytest.param({"dtype": torch.int64}, TypeError, r"`dtype`.*torch.int64", id="dtype"),
        pytest.param({"seed": -1}, ValueError, r"`seed`.*got -1", id="seed"),
        pytest.param({"seed": "0"}, TypeError, r"`seed`.*got '0'", id="seed-str"),
        pytest.param({"seed": 1.0}, TypeError, r"`seed`.*got 1\.0", id="seed-float"),
        pytest.param({"thresholds": "strict"}, TypeError, r"`thresholds`", id="thresholds"),
        pytest.param({"loss_fn": None}, TypeError, r"`loss_fn` must be a callable", id="loss"),
    ],
)
def test_bad_input_names_the_argument(
    change: dict[str, Any], error: type[Exception], match: str
) -> None:
    loss = CountingLoss()
    kwargs: dict[str, Any] = {"model": mlp(), "loss_fn": loss, "batch": classification_batch((4,))}
    kwargs.update(change)
    with pytest.raises(error, match=match):
        check_module(**kwargs)
    assert loss.calls == 0  # raised before any work


@pytest.mark.parametrize(
    ("wrap", "error", "match"),
    [
        pytest.param(
            lambda j: j * torch.ones(3),
            ValueError,
            r"`loss_fn` must return a scalar.*\(3,\)",
            id="vector",
        ),
        pytest.param(
            lambda j: float(j.detach()),
            TypeError,
            r"`loss_fn` must return .*torch\.Tensor.*got float",
            id="float",
        ),
    ],
)
def test_loss_that_is_no_scalar_tensor_is_rejected_at_once(
    wrap: Callable[[torch.Tensor], Any], error: type[Exception], match: str
) -> None:
    calls: list[int] = []

    def loss(model: nn.Module, batch: Any) -> Any:
        calls.append(1)
        return wrap(cross_entropy(model, batch))

    with pytest.raises(error, match=match):
        check_module(mlp(), loss, classification_batch((4,)))
    assert len(calls) == 1


# --- non-finite values: a finding, not an exception -----------------------------------------


def test_nan_loss_fails_and_says_the_loss_is_nan() -> None:
    def log_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        return torch.log(model(batch[0])).mean()  # some outputs are negative

    report = check_module(mlp(), log_loss, classification_batch((4,)))
    assert report.verdict is Verdict.FAIL
    assert "J(θ) is nan" in report.message


class Root(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64))


def root_loss(model: nn.Module, batch: None) -> torch.Tensor:
    w = model.w
    assert isinstance(w, torch.Tensor)
    return torch.sqrt(w.abs()).sum()


def test_non_finite_gradient_fails_and_says_where() -> None:
    # d√|w|/dw at w = 0 is ∞·0 = NaN in backprop; the two-sided estimate there is 0.
    report = check_module(Root(), root_loss, None)
    assert report.verdict is Verdict.FAIL
    assert "analytic" in report.message and "w[0]" in report.message
    assert "w[1]" not in report.message


# --- the model is left bit-for-bit as it was --------------------------------------------------


@dataclass
class Snapshot:
    state: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    torch_rng: torch.Tensor
    numpy_rng: tuple[Any, ...]
    python_rng: tuple[Any, ...]


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        grads={n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        training={n: m.training for n, m in model.named_modules()},
        torch_rng=torch.get_rng_state(),
        numpy_rng=numpy_rng_state(),
        python_rng=random.getstate(),
    )


def changes(before: Snapshot, model: nn.Module) -> list[str]:
    """What differs, bit for bit, between ``before`` and the model and RNGs now."""
    after = snapshot(model)
    found = [
        f"state {k}"
        for k, v in before.state.items()
        if v.dtype != after.state[k].dtype or not torch.equal(v, after.state[k])
    ]
    for n, g in before.grads.items():
        now = after.grads[n]
        if g is None or now is None:
            if (g is None) != (now is None):
                found.append(f"grad {n}")
        elif not torch.equal(g, now):
            found.append(f"grad {n}")
    found += [
        f"requires_grad {n}"
        for n in before.requires_grad
        if before.requires_grad[n] != after.requires_grad[n]
    ]
    found += [f"training {n!r}" for n in before.training if before.training[n] != after.training[n]]
    if not torch.equal(before.torch_rng, after.torch_rng):
        found.append("torch RNG")
    if before.numpy_rng != after.numpy_rng:
        found.append("numpy RNG")
    if before.python_rng != after.python_rng:
        found.append("python RNG")
    return found


def used_model() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A float32 model with state worth protecting: BatchNorm statistics after one step,
    gradients from a backward pass, a frozen bias without .grad, one dropout already in eval."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6),
        nn.BatchNorm1d(6),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.Linear(6, 6),
        nn.Dropout(0.3),
        nn.Linear(6, 3),
    ).train()
    model[5].eval()
    model[6].bias.requires_grad_(False)
    batch = classification_batch((4,))
    cross_entropy(model, batch).backward()
    assert model[1].get_buffer("num_batches_tracked").item() == 1
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    return model, batch


def test_snapshot_sees_a_training_forward() -> None:
    # The comparison below can fail: one forward in train mode moves BatchNorm's statistics
    # and the torch RNG (dropout), and zero_grad changes .grad.
    model, batch = used_model()
    before = snapshot(model)
    cross_entropy(model, batch)
    model.zero_grad()
    found = changes(before, model)
    assert {
        "state 1.running_mean",
        "state 1.num_batches_tracked",
        "torch RNG",
        "grad 0.weight",
    } <= set(found)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="off"),
        pytest.param({"dropout": "freeze"}, id="freeze"),
        pytest.param({"include": "4.*"}, id="include"),
        pytest.param({"sample": 7}, id="components"),
        pytest.param({"dtype": torch.float32}, id="float32"),
        pytest.param({"epsilon": "auto"}, id="auto"),
        pytest.param({"mode": "directions"}, id="directions"),
        pytest.param({"drift_dtype": torch.bfloat16}, id="drift"),
    ],
)
def test_model_is_unchanged_after_a_check(options: dict[str, Any]) -> None:
    model, batch = used_model()
    before = snapshot(model)
    report = check_module(model, cross_entropy, batch, **options)
    assert report.components_checked > 0
    assert changes(before, model) == []


@pytest.mark.parametrize("when", ["first", "second", "middle", "last"])
@pytest.mark.parametrize("dropout", ["off", "freeze"])
def test_model_is_unchanged_after_a_check_that_raised(when: str, dropout: str) -> None:
    # The loss raises from its first, second, middle or last call of a check on (how many calls
    # a check makes is the engine's business: count them on a dry run).
    model, batch = used_model()
    dry_run = CountingLoss()
    check_module(model, dry_run, batch, dropout=dropout)  # type: ignore[arg-type]
    assert dry_run.calls >= 4
    failing_call = {"first": 1, "second": 2, "middle": dry_run.calls // 2 + 1}.get(
        when, dry_run.calls
    )
    before = snapshot(model)
    calls = itertools.count(1)

    def flaky(m: nn.Module, b: Any) -> torch.Tensor:
        loss = cross_entropy(m, b)
        if next(calls) >= failing_call:
            raise RuntimeError(f"loss failed from call {failing_call} on")
        return loss

    with pytest.raises(RuntimeError, match=f"loss failed from call {failing_call} on"):
        check_module(model, flaky, batch, dropout=dropout)  # type: ignore[arg-type]
    assert changes(before, model) == []


@pytest.mark.parametrize("switch", ["eval", "train"])
def test_model_is_unchanged_when_the_loss_switches_modes(switch: str) -> None:
    model, batch = used_model()
    before = snapshot(model)

    def switching(m: nn.Module, b: Any) -> torch.Tensor:
        getattr(m, switch)()
        return cross_entropy(m, b)

    check_module(model, switching, batch)
    assert changes(before, model) == []


def test_batch_is_unchanged() -> None:
    x, y = classification_batch((4,))
    x32 = x.float()
    x_before, y_before = x32.clone(), y.clone()
    check_module(mlp(torch.float32), cross_entropy, (x32, y))
    assert x32.dtype == torch.float32 and torch.equal(x32, x_before) and torch.equal(y, y_before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_check_runs_on_the_models_device() -> None:
    model, batch = used_model()
    model = model.cuda()
    before = snapshot(model)
    cuda_rng = torch.cuda.get_rng_state_all()
    report = check_module(model, cross_entropy, batch)
    assert report.verdict is Verdict.PASS, str(report)
    assert changes(before, model) == []
    assert all(
        torch.equal(a, b) for a, b in zip(cuda_rng, torch.cuda.get_rng_state_all(), strict=True)
    )


class _Offset(nn.Module):
    """A linear model plus 1e-10·p, with p = 1e10: its gradient is 1e-10·∂J/∂y."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2).double()
        self.p = nn.Parameter(torch.tensor(1e10, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + 1e-10 * self.p


def test_a_step_lost_to_rounding_is_not_judged_and_named() -> None:
    """p = 1e10 in float64: p ± 1e-7 == p, so that numeric derivative is 0 whatever J does."""
    torch.manual_seed(0)
    model = _Offset()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    report = check_module(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), (x, y))
    assert report.parameters["p"].verdict is Verdict.NOT_JUDGED
    assert report.parameters["p"].reason == "step lost"
    assert report.reading_counts == {"agrees": 8, "disagrees": 0, "not judged": 1}
    assert "  not judged (step lost): 1 component, p" in str(report).splitlines()
    assert report.verdict is Verdict.PASS
    assert "Not judged (1 of 3): p: θ_i ± epsilon rounds back to θ_i" in report.message
    auto = check_module(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), (x, y), epsilon="auto")
    assert auto.reading_counts["agrees"] == 9 and auto.verdict is Verdict.PASS
