"""PyTorch's own modules: every module of ``torch.testing._internal.common_modules.module_db``
with trainable parameters, on up to ``SAMPLES`` of its sample inputs (spread over the list), in
train mode, with J = the sum of its outputs (real parts of the floating ones). Their backward
is PyTorch's, which ``torch.autograd.gradcheck`` passes: the check must never fail or crash.

J = a sum of normalized outputs is a cancellation of large terms (≈ 1e-15), and many gradients
are zero by construction (BatchNorm's weight under that J): the hard cases for a verdict.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import gradwatch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch's modules, not ours
SAMPLES = 8  # per module: ~230 checks, about 30 s on a 2-core machine
# The modules of module_db with trainable parameters (torch 2.13), listed so that collecting the
# tests does not import torch's test helpers (~4 s); the last test keeps the list true.
MODULES = (
    "nn.BatchNorm1d", "nn.BatchNorm2d", "nn.BatchNorm3d", "nn.Conv1d", "nn.Conv2d", "nn.Conv3d",
    "nn.ConvTranspose1d", "nn.ConvTranspose2d", "nn.ConvTranspose3d", "nn.LazyConv1d",
    "nn.LazyConv2d", "nn.LazyConv3d", "nn.LazyConvTranspose1d", "nn.LazyConvTranspose2d",
    "nn.LazyConvTranspose3d", "nn.Linear", "nn.Bilinear", "nn.LinearCrossEntropyLoss",
    "nn.GroupNorm", "nn.LayerNorm", "nn.RMSNorm", "nn.TransformerEncoder",
    "nn.TransformerEncoderLayer", "nn.TransformerDecoderLayer", "nn.Transformer",
    "nn.MultiheadAttention", "nn.Embedding", "nn.PReLU", "nn.RNNCell", "nn.GRUCell",
    "nn.LSTMCell", "nn.RNN", "nn.GRU", "nn.LSTM",
)  # fmt: skip


def _module_db() -> dict[str, Any]:
    # torch's test helpers import expecttest (the ``test`` extra installs it).
    common_modules = pytest.importorskip("torch.testing._internal.common_modules")
    return {info.name: info for info in common_modules.module_db}


def _has_parameters(info: Any) -> bool:
    first = _inputs(info)[0].constructor_input
    return any(p.requires_grad for p in info.module_cls(*first.args, **first.kwargs).parameters())


def _inputs(info: Any) -> list[Any]:
    torch.manual_seed(0)
    return list(
        info.module_inputs_func(
            info, device="cpu", dtype=torch.float64, requires_grad=False, training=True
        )
    )


def _built(info: Any, sample: Any) -> nn.Module:
    made = sample.constructor_input
    module = info.module_cls(*made.args, **made.kwargs).to(torch.float64)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters()):
        with torch.no_grad():  # a lazy module: its first forward sets its shapes
            module(*sample.forward_input.args, **sample.forward_input.kwargs)
    return module


def sum_of_outputs(module: nn.Module, batch: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    out = module(*batch[0], **batch[1])
    leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    return sum(t.real.sum() for t in leaves if t.is_floating_point() or t.is_complex())


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_pytorch_modules_never_fail(name: str) -> None:
    info = _module_db()[name]
    inputs = _inputs(info)
    step = max(1, len(inputs) // SAMPLES)
    found = {}
    for k in range(0, len(inputs), step)[:SAMPLES]:
        torch.manual_seed(k)
        module = _built(info, inputs[k])
        if not any(p.requires_grad for p in module.parameters()):
            continue  # a sample built without parameters (affine=False): nothing to check
        batch = (inputs[k].forward_input.args, inputs[k].forward_input.kwargs)
        report = gradwatch.check_module(module, sum_of_outputs, batch)
        found[k] = (report.verdict.value, report.message)
    assert found, "no sample with parameters"
    assert {k: v for k, v in found.items() if v[0] == "fail"} == {}


def test_every_module_with_parameters_is_listed() -> None:
    found = [name for name, info in _module_db().items() if _has_parameters(info)]
    assert tuple(found) == MODULES
