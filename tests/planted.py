"""Models with a planted bug in a hand-written backward, for the diagnosis tests: a linear layer
whose weight gradient is wrong in a chosen way, a pair of weights whose gradients are swapped, an
activation whose backward scales the gradient, and deep nets to plant it in (a ResNet-style stack
of BasicBlocks written with torch.nn, a tiny GPT-2)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

WeightBug = Literal["none", "x2", "xB", "x1/B", "sign", "zero", "transpose"]


def _wrong(grad: torch.Tensor, bug: str, batch: int) -> torch.Tensor:
    """The weight gradient ``grad`` with ``bug`` planted."""
    if bug == "x2":
        return 2 * grad
    if bug == "xB":  # summed over the batch where J takes the mean
        return batch * grad
    if bug == "x1/B":  # divided by the batch size once too often
        return grad / batch
    if bug == "sign":
        return -grad
    if bug == "zero":
        return torch.zeros_like(grad)
    if bug == "transpose":
        return grad.T.contiguous()
    return grad


class _LinearFn(torch.autograd.Function):
    """x Wᵀ + b with a hand-written backward whose weight gradient carries ``bug``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, bug: str) -> torch.Tensor:
        return x @ w.T + b

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, w, _, bug = inputs
        ctx.save_for_backward(x, w)
        ctx.bug = bug

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, w = ctx.saved_tensors
        flat_x, flat_g = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        grad_w = _wrong(flat_g.T @ flat_x, ctx.bug, flat_x.shape[0])
        return grad @ w, grad_w, flat_g.sum(0), None


class BuggyLinear(nn.Linear):
    """``nn.Linear`` whose backward gives a wrong weight gradient (``bug``)."""

    def __init__(self, inputs: int, outputs: int, bug: WeightBug = "none") -> None:
        super().__init__(inputs, outputs)
        self.bug = bug

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearFn.apply(x, self.weight, self.bias, self.bug)


class _PairFn(torch.autograd.Function):
    """tanh(x Aᵀ) Bᵀ whose backward hands A's gradient to B and B's to A."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ a.T) @ b.T

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, a, b = inputs
        ctx.save_for_backward(x, a, b)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, a, b = ctx.saved_tensors
        h = torch.tanh(x @ a.T)
        grad_b = grad.T @ h
        grad_z = (grad @ b) * (1 - h * h)
        grad_a = grad_z.T @ x
        return grad_z @ a, grad_b, grad_a  # swapped


class SwappedPair(nn.Module):
    """Two square weights whose gradients come back swapped."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(width, width) / width**0.5)
        self.b = nn.Parameter(torch.randn(width, width) / width**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PairFn.apply(x, self.a, self.b)


def linear_net(bug: WeightBug = "none", swapped: bool = False) -> nn.Sequential:
    """Linear → tanh → (BuggyLinear 6×6 or SwappedPair) → tanh → Linear, in float64."""
    torch.manual_seed(0)
    middle: nn.Module = SwappedPair(6) if swapped else BuggyLinear(6, 6, bug)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), middle, nn.Tanh(), nn.Linear(6, 3)).double()


class _ScaledFn(torch.autograd.Function):
    """``activation(x)`` whose backward multiplies the gradient by ``factor``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, factor: float, kind: str) -> torch.Tensor:
        return F.gelu(x, approximate="tanh") if kind == "gelu" else torch.tanh(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, factor, kind = inputs
        ctx.save_for_backward(x)
        ctx.factor, ctx.kind = factor, kind

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (x,) = ctx.saved_tensors
        if ctx.kind == "gelu":  # d/dx of x·Φ̃(x), tanh approximation
            c = (2 / torch.pi) ** 0.5
            u = c * (x + 0.044715 * x**3)
            t = torch.tanh(u)
            slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
        else:
            slope = 1 - torch.tanh(x) ** 2
        return ctx.factor * grad * slope, None, None


class PlantedActivation(nn.Module):
    """tanh (or GELU) whose backward multiplies the gradient by ``factor`` (1: correct)."""

    def __init__(self, factor: float = 1.0, kind: str = "tanh") -> None:
        super().__init__()
        self.factor, self.kind = factor, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ScaledFn.apply(x, self.factor, self.kind)


class _Scale(torch.autograd.Function):
    """The identity whose backward multiplies the gradient by ``factor``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, factor: float) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return ctx.factor * grad, None


class BasicBlock(nn.Module):
    """ResNet's basic block, with smooth activations (no ReLU kinks): conv-bn-act-conv-bn, plus
    the input (through a 1×1 conv and BatchNorm where the shape changes), then act.
    ``skip_factor`` plants a wrong backward on the skip path, in the block's own forward."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1: nn.Module = PlantedActivation()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.Tanh()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.skip_factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        skip = x if self.downsample is None else self.downsample(x)
        if self.skip_factor != 1.0:
            skip = _Scale.apply(skip, self.skip_factor)
        return self.act2(out + skip)


class TinyResNet(nn.Module):
    """stem conv-bn-tanh, layer1 (2 blocks), layer2 (2 blocks, the first strided), mean pool,
    fc: 2,879 parameters at width 4, in float64."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.Tanh()
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(
            BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width)
        )
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.act1(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def tiny_resnet() -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet().double().train()


def image_batch(examples: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(examples, 3, 6, 6, generator=generator)
    return x, torch.randint(0, 3, (examples,), generator=generator)


VOCABULARY = 16


def tiny_gpt2() -> nn.Module:
    """A 3-block GPT-2 of width 8 from a config, randomly initialized (nothing downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCABULARY,
        n_positions=8,
        n_embd=8,
        n_layer=3,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).double().train()


def next_token_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the next token, computed in the logits' precision (float64 here: the
    model's own ``labels=`` loss is computed in float32, which a float64 check cannot resolve)."""
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCABULARY), ids[:, 1:].reshape(-1))
