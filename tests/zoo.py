"""The ecosystem zoo: architectures built the way ecosystem code builds them (torch.nn only),
each with the sites where ``tests/planting.py`` plants its backward bugs.

A ``Case`` builds (model, loss_fn, batch) from a seed; ``bugs`` maps a bug kind to the module or
parameter it is planted in. ``trained=True`` variants set every norm's scale and shift as after
some training (a zero-initialized scale hides everything behind it at init).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tests.planting import Kind

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Built = tuple[nn.Module, LossFn, Any]
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


@dataclass(frozen=True)
class Case:
    """A zoo model: ``build(seed)`` → (model, loss_fn, batch); ``bugs``: kind → planting site;
    ``options``: keywords for ``check_module``; ``unjudged``: parameters (glob patterns) whose
    gradient is zero by construction here (nothing to judge), whatever backprop does."""

    name: str
    build: Callable[[int], Built]
    bugs: dict[Kind, str]
    options: dict[str, Any] = field(default_factory=dict)
    unjudged: tuple[str, ...] = ()
    slow: bool = False  # a check takes more than about a second on a 2-core machine


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    return images, torch.tensor(digits.target)


def digits(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` 8x8 digit images (blank borders: many pixels exactly 0) and their labels."""
    images, labels = _digits()
    start = (seed * count) % (len(labels) - count)
    return images[start : start + count], labels[start : start + count]


def as_trained(model: nn.Module, seed: int) -> nn.Module:
    """Every norm's scale in [0.5, 1.5] and shift ~ N(0, 0.1), as after some training."""
    g = _generator(seed + 1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (*NORMS, RMSNorm32)) and getattr(m, "weight", None) is not None:
                m.weight.uniform_(0.5, 1.5, generator=g)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.1, generator=g)
    return model


def _cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _sum_of_outputs(model: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
    return model(*batch).sum()


# --- float32 islands in a float64 model (the way mixed-precision code is written) ----------


class RMSNorm32(nn.Module):
    """RMSNorm as Llama/T5 write it: computed in float32 whatever the input, cast back."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * h.to(dtype)


class Attention32(nn.Module):
    """Causal self-attention whose softmax runs in float32 (as eager attention code does)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.heads)
        mask = torch.full((t, t), float("-inf"), dtype=torch.float32, device=x.device).triu(1)
        p = F.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.out(torch.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, t, d))


class IslandBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = RMSNorm32(width), RMSNorm32(width)
        self.attn = Attention32(width, heads=2)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Islands(nn.Module):
    """A tiny causal language model with float32 norms and softmax."""

    def __init__(self, vocab: int = 20, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(IslandBlock(width) for _ in range(2))
        self.norm, self.head = RMSNorm32(width), nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def _next_token_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1]).float()  # as Hugging Face losses do
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def islands(seed: int) -> Built:
    torch.manual_seed(seed)
    model = as_trained(Islands(), seed)
    return model, _next_token_loss, torch.randint(0, 20, (3, 7), generator=_generator(seed))


# --- nn.Transformer, J = sum of outputs ------------------------------------------------------


def transformer(seed: int, trained: bool = False) -> Built:
    torch.manual_seed(seed)
    model = nn.Transformer(
        d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
        dropout=0.1, activation=nn.GELU(), batch_first=True,
    )  # fmt: skip
    g = _generator(seed)
    src, tgt = torch.randn(3, 5, 16, generator=g), torch.randn(3, 4, 16, generator=g)

    def loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(4, dtype=b[1].dtype)
        return m(b[0], b[1], tgt_mask=mask, tgt_is_causal=True).sum()

    return (as_trained(model, seed) if trained else model), loss, (src, tgt)


# --- norms with J = sum of outputs ---------------------------------------------------------


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.GroupNorm(2, channels)


def norm_sum(seed: int, kind: str, trained: bool = False) -> Built:
    """conv → norm, J = sum of the norm's outputs: a cancellation (J ≈ N·Σβ, and the gradient
    of everything but β is zero by construction)."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(2, 4, 3, padding=1))
    model.add_module("norm", _norm(kind, 4))
    batch = (torch.randn(3, 2, 5, 5, generator=_generator(seed)),)
    return (as_trained(model, seed) if trained else model), _sum_of_outputs, batch


def norm_chain(seed: int, kind: str) -> Built:
    """conv → norm → SiLU → conv, J = sum of outputs."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    for name, layer in [
        ("conv1", nn.Conv2d(2, 4, 3, padding=1)), ("norm", _norm(kind, 4)), ("act", nn.SiLU()),
        ("conv2", nn.Conv2d(4, 2, 3, padding=1)),
    ]:  # fmt: skip
        model.add_module(name, layer)
    batch = (torch.randn(3, 2, 5, 5, generator=_generator(seed)),)
    return as_trained(model, seed), _sum_of_outputs, batch


# --- a ResNet-style network: BatchNorm, ReLU, max-pool, small batch -------------------------


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU; ``bn2``'s scale starts at 0 as with
    the common zoos' ``zero_init_residual=True``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


def resnet(seed: int, trained: bool = False) -> Built:
    torch.manual_seed(seed)
    model = nn.Sequential()
    for name, layer in [
        ("stem", nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                               nn.ReLU(), nn.MaxPool2d(2))),
        ("block", BasicBlock(8)), ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()),
        ("fc", nn.Linear(8, 10)),
    ]:  # fmt: skip
        model.add_module(name, layer)
    return (as_trained(model, seed) if trained else model), _cross_entropy, digits(4, seed)


# The residual branch at init: zero gradients by construction behind bn2's zero scale (judged
# at the generic point, gradwatch.check.generic_point).
RESNET_BRANCH = ("block.conv1.weight", "block.bn1.weight", "block.bn1.bias", "block.conv2.weight")


# --- zero-initialized conv biases over images with blank borders ----------------------------


def digits_conv(seed: int) -> Built:
    torch.manual_seed(seed)
    model = nn.Sequential()
    for name, layer in [
        ("conv", nn.Conv2d(1, 4, 3, padding=1)), ("relu", nn.ReLU()), ("flat", nn.Flatten()),
        ("fc", nn.Linear(4 * 64, 10)),
    ]:  # fmt: skip
        model.add_module(name, layer)
    nn.init.zeros_(model.conv.bias)  # every blank 3x3 patch sits exactly on ReLU's kink
    return model, _cross_entropy, digits(16, seed)


# --- attention with a key padding mask and a causal mask ------------------------------------


class MaskedAttention(nn.Module):
    def __init__(self, vocab: int = 12, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.attn = nn.MultiheadAttention(width, 2, dropout=0.1, batch_first=True)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
        h = self.embed(ids)
        a, _ = self.attn(h, h, h, attn_mask=causal, key_padding_mask=ids == 0, need_weights=False)
        return self.head(self.norm(h + a))


def masked_attention(seed: int) -> Built:
    torch.manual_seed(seed)
    ids = torch.randint(1, 12, (4, 6), generator=_generator(seed))
    for row, length in enumerate([6, 4, 5, 3]):
        ids[row, length:] = 0

    def loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        logits = m(b[:, :-1])
        return F.cross_entropy(logits.reshape(-1, 12), b[:, 1:].reshape(-1), ignore_index=0)

    return MaskedAttention(), loss, ids


# --- an EfficientNet-like block: SiLU, depthwise conv, squeeze-excite, BN after biased convs


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce, self.act = nn.Conv2d(channels, reduced, 1), nn.SiLU()
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    def __init__(self, channels: int, expanded: int) -> None:
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(channels, expanded, 1), nn.BatchNorm2d(expanded)
        self.dw = nn.Conv2d(expanded, expanded, 3, padding=1, groups=expanded, bias=False)
        self.bn2, self.act1, self.act2 = nn.BatchNorm2d(expanded), nn.SiLU(), nn.SiLU()
        self.se = SqueezeExcite(expanded, channels // 2)
        self.project, self.bn3 = nn.Conv2d(expanded, channels, 1), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.expand(x)))
        h = self.se(self.act2(self.bn2(self.dw(h))))
        return x + self.bn3(self.project(h))


def efficientnet(seed: int) -> Built:
    torch.manual_seed(seed)
    model = nn.Sequential()
    for name, layer in [
        ("stem", nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                               nn.SiLU())),
        ("block", MBConv(8, 16)),
        ("head", nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(16, 10)),
    ]:  # fmt: skip
        model.add_module(name, layer)
    return model, _cross_entropy, digits(4, seed)


def _cancelled(kind: str, trained: bool) -> tuple[str, ...]:
    """What J = sum of a norm's outputs does not depend on: the input (each normalized group sums
    to zero), and the scale where each channel is its own group (batch, instance)."""
    if kind == "group":
        return () if trained else ("conv.weight", "conv.bias")
    return ("conv.weight", "conv.bias", "norm.weight")


# --- the zoo ----------------------------------------------------------------------------------

CASES: list[Case] = [
    Case(
        "float32 islands (RMSNorm, softmax, loss)", islands,
        {"missing_term": "blocks.0.mlp.1", "factor": "blocks.1.attn",
         "transposed": "blocks.0.attn.out.weight", "sign": "blocks.1.norm2.weight",
         "zeroed": "blocks.0.mlp"},
        {"sample": 600}, slow=True,
    ),
    Case(
        "nn.Transformer, J = sum (init)", transformer,
        {"factor": "decoder.norm", "sign": "decoder.norm.bias"}, {"sample": 600},
        unjudged=("encoder.*", "decoder.layers.*"),  # behind the final LayerNorm's unit scale
        slow=True,
    ),
    Case(
        "nn.Transformer, J = sum (trained)", functools.partial(transformer, trained=True),
        {"missing_term": "encoder.layers.0.activation", "factor": "decoder.layers.0.multihead_attn",
         "transposed": "encoder.layers.0.self_attn.out_proj.weight",
         "sign": "decoder.layers.0.linear2", "zeroed": "encoder.layers.0.linear1"},
        {"sample": 600}, slow=True,
    ),
    *[
        Case(
            f"{kind} norm, J = sum{' (trained)' if trained else ''}",
            functools.partial(norm_sum, kind=kind, trained=trained),
            {"factor": "norm", "sign": "norm.bias", "zeroed": "norm"},
            unjudged=_cancelled(kind, trained),
        )
        for kind in ("batch", "instance", "group")
        for trained in (False, True)
    ],
    *[
        Case(
            f"{kind} norm, SiLU, conv", functools.partial(norm_chain, kind=kind),
            {"missing_term": "act", "factor": "norm", "transposed": "conv2.weight",
             "sign": "norm.weight", "zeroed": "conv1"},
            unjudged=() if kind == "group" else ("conv1.bias",),
        )
        for kind in ("batch", "instance", "group")
    ],
    Case(
        "ResNet block, zero-init residual", resnet,
        {"sign": "stem.0", "zeroed": "fc.bias"}, slow=True,  # branch judged at a generic point
    ),
    Case(
        "ResNet block (trained)", functools.partial(resnet, trained=True),
        {"factor": "block.conv1", "sign": "block.bn1.weight",
         "transposed": "block.conv2.weight", "zeroed": "stem.1"},
    ),
    Case(
        "zero conv bias over blank borders", digits_conv,
        {"factor": "conv.bias", "sign": "conv.bias", "zeroed": "conv.bias",
         "transposed": "conv.weight"},
    ),
    Case(
        "attention, padding + causal masks", masked_attention,
        {"factor": "attn", "transposed": "attn.out_proj.weight", "sign": "attn.in_proj_bias",
         "zeroed": "embed"},
    ),
    Case(
        "EfficientNet-like block", efficientnet,
        {"missing_term": "block.act2", "factor": "block.dw", "transposed": "block.dw.weight",
         "sign": "block.se.reduce", "zeroed": "block.bn1"},
        unjudged=("block.expand.bias", "block.project.bias", "block.bn3.bias"), slow=True,
    ),
]  # fmt: skip
