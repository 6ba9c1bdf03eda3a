"""Models of the speed benchmarks, built from torch.nn alone (no torchvision, no timm)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def cross_entropy(model: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The mean cross-entropy of ``model(inputs)`` against class labels."""
    return F.cross_entropy(model(batch[0]), batch[1])


def mlp() -> nn.Sequential:
    """The 64-128-64-10 tanh MLP of issue 5: 17,226 parameters."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10)
    )


def mlp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(32, 64, generator=generator), torch.randint(
        0, 10, (32,), generator=generator
    )


def small_cnn() -> nn.Sequential:
    """conv-BN-ReLU twice, pooled, a linear head: 4,970 parameters on 3x16x16 images."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def image_batch(size: int, examples: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(examples, 3, size, size, generator=generator)
    return images, torch.randint(0, 10, (examples,), generator=generator)


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with BatchNorm and a shortcut (1x1 conv when the shape
    changes). ``norm`` builds the normalization layers (a planted bug swaps one in)."""

    def __init__(self, inputs: int, outputs: int, stride: int, norm: Any = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = norm(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 as torchvision builds it (7x7 stride-2 stem, max-pool, four stages of two
    BasicBlocks, 64 to 512 channels), 11,181,642 parameters for 10 classes. On 32x32 images the
    stages run at 8x8 down to 1x1. ``buggy`` names the block (e.g. ``"layer3.0"``) whose first
    BatchNorm gets the wrong backward of ``BuggyBatchNorm2d``."""

    def __init__(self, classes: int = 10, buggy: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers, inputs = [], 64
        for k, (outputs, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            blocks = []
            for b, s in enumerate((stride, 1)):
                name = f"layer{k + 1}.{b}"
                norm = BuggyBatchNorm2d if name == buggy else nn.BatchNorm2d
                blocks.append(BasicBlock(inputs, outputs, s, norm))
                inputs = outputs
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(F.relu(self.bn1(self.conv1(x))))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class _BatchNormWrongBackward(torch.autograd.Function):
    """Training-mode batch norm y = γ·x̂ + β, x̂ = (x − mean)·rstd, with a hand-written backward
    whose weight gradient forgets the 1/std (it sums grad·(x − mean) instead of grad·x̂): the
    planted bug. The input and bias gradients are right."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> Any:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        normed = (x - mean) * rstd
        return normed * weight[:, None, None] + bias[:, None, None], normed, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        _, weight, _, _ = inputs
        _, normed, rstd = output
        ctx.save_for_backward(weight, normed, rstd)
        ctx.mark_non_differentiable(normed, rstd)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        weight, normed, rstd = ctx.saved_tensors
        dims = (0, 2, 3)
        count = grad.numel() // grad.shape[1]
        g = grad * weight[:, None, None]
        grad_x = (
            rstd
            / count
            * (
                count * g
                - g.sum(dims, keepdim=True)
                - normed * (g * normed).sum(dims, keepdim=True)
            )
        )
        grad_weight = (grad * normed / rstd).sum(dims)  # the bug: x − mean, not x̂
        return grad_x, grad_weight, grad.sum(dims), None


class BuggyBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d (training mode, batch statistics) through ``_BatchNormWrongBackward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _, _ = _BatchNormWrongBackward.apply(x, self.weight, self.bias, self.eps)
        return out


class TinyTransformer(nn.Module):
    """Token and position embeddings, two pre-norm encoder layers (multi-head attention,
    GELU feed-forward), a causal mask and a linear head: a small language model (530,560
    parameters at the defaults)."""

    def __init__(
        self, vocab: int = 512, width: int = 128, heads: int = 4, length: int = 32
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(length, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        steps = tokens.shape[1]
        h = self.embed(tokens) + self.position(torch.arange(steps, device=tokens.device))
        h = self.encoder(h, mask=self.mask[:steps, :steps], is_causal=True)
        return self.head(self.norm(h))


def language_loss(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def token_batch(vocab: int = 512, examples: int = 4, length: int = 33) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randint(0, vocab, (examples, length), generator=generator)
