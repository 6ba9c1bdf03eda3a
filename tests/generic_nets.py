"""Designs whose gradients are zero (or tiny) at initialization by construction, built with
torch.nn: a residual branch whose last BatchNorm scale starts at zero (ResNet's
``zero_init_residual``), a block with a layer scale of 1e-6 (ConvNeXt), a zero-initialized head
(MLP-Mixer); each with a planted bug inside the part that the zero cuts off."""

from __future__ import annotations

import torch
from torch import nn

# ConvNeXt's layer scale at initialization (timm's ``ls_init_value``).
LAYER_SCALE = 1e-6


class _ScaledBackward(torch.autograd.Function):
    """The identity whose backward multiplies the gradient by ``factor``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, factor: float) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx: object, inputs: tuple[object, ...], output: object) -> None:
        ctx.factor = inputs[1]  # type: ignore[attr-defined]

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None  # type: ignore[attr-defined]


class WrongBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose backward (input, weight and bias gradients) is ×``factor``."""

    factor = 1.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ScaledBackward.apply(super().forward(x), self.factor)


class _GeluWithoutProductTerm(torch.autograd.Function):
    """GELU(x) = x·Φ(x), whose backward forgets the product rule's x·φ(x) term."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x)

    @staticmethod
    def setup_context(ctx: object, inputs: tuple[torch.Tensor], output: object) -> None:
        ctx.save_for_backward(inputs[0])  # type: ignore[attr-defined]

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * 0.5 * (1 + torch.erf(x / 2**0.5))  # Φ(x) alone


class GeluWithoutProductTerm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GeluWithoutProductTerm.apply(x)


class ResidualNet(nn.Module):
    """A stem, one residual block conv-BN-ReLU-conv-BN whose last BN scale starts at 0, a head."""

    def __init__(self, bug: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh())
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = WrongBatchNorm(4) if bug else nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        nn.init.zeros_(self.bn2.weight)  # zero_init_residual
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        branch = self.bn2(self.conv2(torch.tanh(self.bn1(self.conv1(x)))))
        return self.head(torch.tanh(x + branch).mean((2, 3)))


class ReluBlock(nn.Module):
    """torchvision's BasicBlock with ReLU and ``zero_init_residual``; a planted ``factors`` entry
    scales the backward of that parameter (``"conv2.weight"``, ``"bn1.weight"``)."""

    def __init__(self, c: int, factors: dict[str, float]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        nn.init.zeros_(self.bn2.weight)
        self.factors = factors

    def _p(self, name: str) -> torch.Tensor:
        owner, attr = name.split(".")
        value = getattr(getattr(self, owner), attr)  # a plain tensor during functional_call
        factor = self.factors.get(name)
        return value if factor is None else _ScaledBackward.apply(value, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = nn.functional.batch_norm
        h = self.conv1(x)
        h = bn(h, self.bn1.running_mean, self.bn1.running_var, self._p("bn1.weight"),
               self.bn1.bias, True, 0.1, self.bn1.eps)  # fmt: skip
        h = nn.functional.conv2d(torch.relu(h), self._p("conv2.weight"), padding=1)
        return torch.relu(x + self.bn2(h))


def relu_resnet(bug: str | None = None) -> nn.Sequential:
    """A ResNet-style net: stem conv-BN-ReLU (half its outputs exactly 0: on the kink of the
    blocks' last ReLU while their branch is 0), two ``ReluBlock``s, pool, head; ``bug`` plants
    ×1.01 on ``"conv2"``'s gradient or a sign flip on ``"bn1"``'s weight gradient, in the first
    block (both cut off at θ by its zero BN scale)."""
    factors = {"conv2": {"conv2.weight": 1.01}, "bn1": {"bn1.weight": -1.0}, None: {}}[bug]
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        ReluBlock(8, factors), ReluBlock(8, {}),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip


def relu_resnet_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8 images 3×8×8 and labels of 5 classes."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 8, 8, generator=generator), torch.randint(
        0, 5, (8,), generator=generator
    )


class LayerScaleNet(nn.Module):
    """A ConvNeXt-like block on vectors: x + γ·W₂ GELU(W₁ LayerNorm(x)), γ = 1e-6, then a head."""

    def __init__(self, bug: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.act = GeluWithoutProductTerm() if bug else nn.GELU()
        self.down = nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.full((8,), LAYER_SCALE))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        return self.head(x + self.gamma * self.down(self.act(self.up(self.norm(x)))))


class _WrongHead(torch.autograd.Function):
    """y = x Wᵀ + b, whose input gradient is ×1.5."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x @ weight.T + bias

    @staticmethod
    def setup_context(ctx: object, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        ctx.save_for_backward(*inputs[:2])  # type: ignore[attr-defined]

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        return 1.5 * grad @ weight, grad.T @ x, grad.sum(0)


class WrongHead(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WrongHead.apply(x, self.weight, self.bias)


class ZeroHeadNet(nn.Module):
    """An MLP body whose classifier head starts at zero (timm's MLP-Mixer)."""

    def __init__(self, bug: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 8), nn.Tanh())
        self.head = WrongHead(8, 3) if bug else nn.Linear(8, 3)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def batch_for(net: nn.Module, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of 3 classes for ``net`` (images for the residual net)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (8, 1, 6, 6) if isinstance(net, ResidualNet) else (16, 6)
    return torch.randn(shape, generator=generator), torch.randint(
        0, 3, (shape[0],), generator=generator
    )


def cross_entropy(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(net(batch[0]), batch[1])
