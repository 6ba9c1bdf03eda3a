"""The precision guard: casts in the model's own code keep the check's dtype while J and its
gradient are evaluated, under vmap and functional_call too; notes name where, grouped."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

import gradwatch
from gradwatch.precision.guard import PrecisionGuard, _Keep, lowers
from tests.zoo import RMSNorm32

X64 = torch.linspace(-1, 1, 6, dtype=torch.float64)
LOW32 = torch.zeros(2, dtype=torch.float32)

# Every way model code lowers precision, as a function of a float64 tensor, and what it computes
# in float64 (``None``: the tensor itself).
Cast = Callable[[torch.Tensor], torch.Tensor]
CASTS: dict[str, tuple[Cast, Cast | None]] = {
    "float()": (lambda x: x.float(), None),
    "half()": (lambda x: x.half(), None),
    "bfloat16()": (lambda x: x.bfloat16(), None),
    "to(dtype)": (lambda x: x.to(torch.float32), None),
    "to(dtype=)": (lambda x: x.to(dtype=torch.float16), None),
    "to(device, dtype)": (lambda x: x.to("cpu", torch.float32), None),
    "to(device=, dtype=, copy=)": (
        lambda x: x.to(device="cpu", dtype=torch.float32, copy=True),
        None,
    ),
    "to(other)": (lambda x: x.to(LOW32), None),
    "to(complex64)": (lambda x: x.to(torch.complex64).real, None),
    "type(dtype)": (lambda x: x.type(torch.float32), None),
    "type(name)": (lambda x: x.type("torch.FloatTensor"), None),
    "type(class)": (lambda x: x.type(torch.FloatTensor), None),
    "type_as": (lambda x: x.type_as(LOW32), None),
    "aten._to_copy": (lambda x: torch.ops.aten._to_copy(x, dtype=torch.float32), None),
    "softmax(dtype=)": (
        lambda x: F.softmax(x, dim=0, dtype=torch.float32),
        lambda x: F.softmax(x, dim=0),
    ),
    "log_softmax(dtype=)": (
        lambda x: torch.log_softmax(x, 0, dtype=torch.float32),
        lambda x: torch.log_softmax(x, 0),
    ),
    "sum(dtype=)": (lambda x: x.sum(dtype=torch.float32), lambda x: x.sum()),
    "cumsum(dtype=)": (lambda x: torch.cumsum(x, 0, dtype=torch.float32), lambda x: x.cumsum(0)),
    "zeros(dtype=).add_": (lambda x: torch.zeros(6, dtype=torch.float32).add_(x), None),
    "full(dtype=).copy_": (lambda x: torch.full((6,), 0.0, dtype=torch.bfloat16).copy_(x), None),
    "tensor(dtype=)": (lambda x: torch.tensor(x.tolist(), dtype=torch.float32), None),
    "new_zeros(dtype=).copy_": (lambda x: x.new_zeros(6, dtype=torch.float32).copy_(x), None),
    "zeros() in the default dtype": (lambda x: torch.zeros(6).copy_(x), None),
    "int / float in the default dtype": (
        lambda x: torch.arange(6) / 7 + x,
        lambda x: x + torch.arange(6, dtype=torch.float64) / 7,
    ),
}


@pytest.mark.parametrize("cast, reference", CASTS.values(), ids=CASTS.keys())
def test_every_lowering_cast_keeps_float64(cast: Cast, reference: Cast | None) -> None:
    x = X64 / 3  # not exact in float32
    # as written, precision is lost
    assert not torch.equal(cast(x).to(x.dtype), (reference or (lambda t: t))(x))
    guard = PrecisionGuard(nn.Identity(), torch.float64, True, lambda: None)
    first = guard.run(lambda: cast(x))  # decides, recording what it keeps
    with guard.evaluating():
        kept = cast(x)
    assert first.dtype == kept.dtype and kept.dtype in (torch.float64, torch.complex128)
    assert torch.equal(first, kept) and torch.equal(kept, (reference or (lambda t: t))(x))
    assert torch.get_default_dtype() == torch.float32  # put back after the evaluation


def test_non_floating_casts_become_float64_and_views_are_left_alone() -> None:
    ids = torch.arange(4)
    with _Keep(torch.float64):
        assert ids.float().dtype == torch.float64
        assert ids.to(torch.float16).dtype == torch.float64
        assert X64.view(torch.int64).dtype == torch.int64  # a reinterpreting view: untouched
        assert X64.double().dtype == torch.float64
        assert X64.to(torch.int32).dtype == torch.int32  # not a float: not a precision loss
        assert X64.float().float().dtype == torch.float64


def test_a_float32_check_keeps_float32_and_never_raises_precision() -> None:
    x = torch.ones(3)
    with _Keep(torch.float32):
        assert x.half().dtype == torch.float32
        assert x.double().dtype == torch.float64  # more precise: the guard never lowers
        assert x.to(torch.float32).dtype == torch.float32
    assert lowers(torch.float32, torch.float64) and not lowers(torch.float64, torch.float32)


def test_the_guard_works_under_vmap_and_functional_call() -> None:
    class Norm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dtype = x.dtype
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
            return self.weight * h.to(dtype)

    model = Norm()
    x = torch.randn(3, 4, dtype=torch.float64)
    weights = torch.randn(5, 4, dtype=torch.float64)

    def one(w: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {"weight": w}, (x,)).sum()

    with _Keep(torch.float64):
        kept = vmap(one)(weights)
    exact = torch.stack([(w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).sum()
                         for w in weights])  # fmt: skip
    assert kept.dtype == torch.float64
    torch.testing.assert_close(kept, exact, rtol=1e-14, atol=1e-14)
    assert (vmap(one)(weights) - exact).abs().max() > 1e-9  # as written: float32 rounding


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
        ),
    ],
)
def test_autocast_never_touches_float64(device: str) -> None:
    # ATen's autocast skips kDouble on every device type (is_eligible in autocast_mode.h).
    low = torch.bfloat16 if device == "cpu" else torch.float16
    a = torch.randn(4, 4, dtype=torch.float64, device=device)
    with torch.autocast(device, dtype=low):
        outs = [a @ a, F.linear(a, a), F.conv1d(a[None], a[:, :, None]), torch.cat([a, a])]
        lowered = torch.randn(4, 4, device=device) @ torch.randn(4, 4, device=device)
    assert all(o.dtype == torch.float64 for o in outs)
    assert lowered.dtype == low  # autocast is on: it lowers float32


class Islands(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.layers = nn.ModuleList(nn.Sequential(RMSNorm32(8), nn.Linear(8, 8)) for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        return self.head(h)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]).float(), batch[1])  # the logits.float() of HF losses


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 3


def test_float32_islands_are_checked_in_float64_and_named() -> None:
    torch.manual_seed(0)
    report = gradwatch.check_module(Islands(), _loss, _batch())
    assert report.verdict.value == "pass"
    assert report.difference < 1e-7
    assert "layers.{0,1}.0: a cast to float32 kept in float64" in report.notes
    assert "loss_fn: a cast to float32 kept in float64" in report.notes


def test_keep_precision_false_runs_the_model_as_written() -> None:
    torch.manual_seed(0)
    report = gradwatch.check_module(Islands(), _loss, _batch(), keep_precision=False)
    # float32 rounding at epsilon 1e-7: J's measured noise swamps the steps, and the components
    # are judged at the step fitted to it instead
    assert report.verdict is gradwatch.Verdict.PASS, str(report)
    assert report.plain_difference > 1e-3  # what the material's loop alone would call a bug
    assert report.worst(1)[0].recheck == "fitted step"
    assert "layers.{0,1}.0: a cast to float32 as written (keep_precision=False)" in report.notes


def test_keep_precision_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"`keep_precision` must be True or False; got 'yes'"):
        gradwatch.check_module(Islands(), _loss, _batch(), keep_precision="yes")  # type: ignore[arg-type]


class Probe(nn.Module):
    """A linear layer that records whether a torch function mode is active in each forward."""

    def __init__(self, cast: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.cast = cast
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stack = torch.overrides._get_current_function_mode_stack()
        self.modes.append(any(isinstance(mode, _Keep) for mode in stack))
        return self.lin(x.float() if self.cast else x)


@pytest.mark.parametrize("cast", [False, True])
def test_the_guard_runs_only_for_a_model_that_casts(cast: bool) -> None:
    model = Probe(cast)
    batch = torch.randn(4, 3)
    gradwatch.check_module(model, lambda m, b: m(b).pow(2).sum(), batch)
    assert model.modes[0]  # the probe, before the first evaluation that counts
    assert set(model.modes[1:]) == {cast}  # then one regime for every evaluation


class Float32Only(nn.Module):
    """A layer whose kernel exists only in float32 (it raises on anything else)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x).float()
        if h.dtype != torch.float32:
            raise RuntimeError("kernel implemented for float32 only")
        return torch.sin(h).to(x.dtype)


def test_a_model_that_fails_in_float64_runs_as_written_with_a_note() -> None:
    torch.manual_seed(0)
    report = gradwatch.check_module(Float32Only(), lambda m, b: m(b).sum(), torch.randn(4, 3))
    assert report.notes[0].startswith(
        "keeping float64 through the model's casts made J fail (RuntimeError: kernel "
        "implemented for float32 only); the model was run as written"
    )
    assert "the model (Float32Only): a cast to float32 as written" in report.notes


class Leaky(nn.Module):
    """Precision lost where the guard cannot keep it: a float32 tensor (not a buffer) written in
    place, a float32 table from numpy, and a round trip through numpy."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.scratch = torch.zeros(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.scratch.copy_(self.lin(x))
        table = torch.as_tensor(np.linspace(0, 1, 3, dtype=np.float32))
        shift = torch.from_numpy(np.tanh(x.detach().numpy()))
        return h * table + shift


def test_leaks_are_named() -> None:
    torch.manual_seed(0)
    report = gradwatch.check_module(Leaky(), lambda m, b: m(b).sum(), torch.randn(4, 3))
    assert report.notes[0] == (
        "the model (Leaky): Tensor.copy_ gave float32 from float64, float32 values from numpy "
        "(torch.as_tensor), values leave torch (Tensor.numpy) (precision lost there: J carries "
        "that rounding)"
    )


def test_a_float32_j_is_named() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)

    def loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        return m(b).sum().float()

    report = gradwatch.check_module(model, loss, torch.randn(4, 3), keep_precision=False)
    assert "loss_fn: J is float32 (precision lost there: J carries that rounding)" in report.notes


def test_the_default_dtype_is_put_back_when_the_check_raises() -> None:
    def loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        m(b).float()  # a cast the guard keeps: the guard is on when this raises
        if torch.get_default_dtype() == torch.float64:
            raise ValueError("inside the guard")
        raise TypeError("as written")

    with pytest.raises(TypeError, match="as written"):  # the guard's own ValueError is noted
        gradwatch.check_module(nn.Linear(3, 1), loss, torch.randn(2, 3))
    assert torch.get_default_dtype() == torch.float32
