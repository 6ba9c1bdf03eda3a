"""Part (6) of bench_speed.py (issue 23): models written in ways vmap refuses as written,
against their vmap-friendly twins, side by side in one process.

- a small MLP block whose GeLU is an old-style ``autograd.Function`` (``forward(ctx, ...)``)
  against the same block with the Function written with ``setup_context`` and a generated vmap
  rule (target <= 2x, goal <= 1.3x);
- the block with a buffer filled in place from the batch (``+=``, ``masked_fill_``, index
  assignment) against the same values computed out of place (target <= 2x, goal <= 1.3x);
- a tiny BLOOM (its GeLU is an old-style Function) against a tiny GPT-NeoX of the same size,
  both from transformers configs (target <= 2x).

Each ratio is of full checks timed alternately (A, B, then B, A), repeated: the median and its
range. Then the verdicts on the correct model and a planted twin (a backward 1% off: 5e-3 in
the formula, beyond the warn band) against the plain loop's (every batched way refused).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch
from gradwatch.evaluation.cost import ModuleCost

Built = tuple[nn.Module, Callable[[nn.Module, Any], torch.Tensor], Any]


def _gelu_backward(x: torch.Tensor, grad: torch.Tensor, factor: float) -> torch.Tensor:
    cdf = 0.5 * (1 + torch.erf(x / 2**0.5))
    pdf = torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5
    return factor * grad * (cdf + x * pdf)


class OldGelu(torch.autograd.Function):
    """Exact GeLU, the old way; the backward multiplies the true one by ``factor``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.factor = factor
        return F.gelu(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _gelu_backward(ctx.saved_tensors[0], grad, ctx.factor), None


class NewGelu(torch.autograd.Function):
    """The same with ``setup_context`` and a generated vmap rule: vmap runs it as written."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, factor: float) -> torch.Tensor:
        return F.gelu(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _gelu_backward(ctx.saved_tensors[0], grad, ctx.factor), None


class Block(nn.Module):
    """Linear 32→64 → GeLU (``how``) → Linear 64→32 → LayerNorm → Linear 32→5: 4,655 parameters.

    ``how``: ``old`` / ``new`` (how the GeLU Function is written), ``inplace`` / ``functional``
    (NewGelu's output put into a buffer in place, or the same values out of place). ``factor``
    scales the GeLU's backward (1: correct).
    """

    def __init__(self, how: str, factor: float = 1.0) -> None:
        super().__init__()
        self.how, self.factor = how, factor
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
        self.norm, self.head = nn.LayerNorm(32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        gelu = OldGelu if self.how == "old" else NewGelu
        g = gelu.apply(h, self.factor)
        if self.how == "inplace":
            buffer = torch.zeros(h.shape, dtype=h.dtype)
            buffer += g
            buffer.masked_fill_(h < -2.0, 0.0)
            buffer[:, 0] = h[:, 0]
            g = buffer
        elif self.how == "functional":
            g = torch.cat([h[:, :1], torch.where(h < -2.0, 0.0, g)[:, 1:]], dim=1)
        return self.head(self.norm(h[:, :32] + self.down(g)))


def _block(how: str, factor: float = 1.0) -> Built:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(16, 32, generator=generator), torch.randint(0, 5, (16,))
    return Block(how, factor), lambda m, b: F.cross_entropy(m(b[0]), b[1]), batch


def _language(name: str, factor: float = 1.0) -> Built:
    import transformers as tf
    from transformers.models.bloom import modeling_bloom

    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    size = {"vocab_size": 50, "hidden_size": 16, "num_attention_heads": 2}
    if name == "bloom":
        model: nn.Module = tf.BloomForCausalLM(tf.BloomConfig(**size, n_layer=2))
        if factor != 1.0:  # the planted twin: BLOOM's own GeLU Function, backward 1% off
            modeling_bloom.GeLUFunction.backward = _planted(factor)  # type: ignore[method-assign]
    else:
        config = tf.GPTNeoXConfig(**size, num_hidden_layers=2, intermediate_size=64)
        model = tf.GPTNeoXForCausalLM(config)
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    return model.train(), lambda m, b: m(input_ids=b, labels=b).loss, ids


_BLOOM_BACKWARD: list[Any] = []


def _planted(factor: float) -> Any:
    from transformers.models.bloom import modeling_bloom

    if not _BLOOM_BACKWARD:
        _BLOOM_BACKWARD.append(modeling_bloom.GeLUFunction.backward)
    right = _BLOOM_BACKWARD[0]
    return staticmethod(lambda ctx, grad: factor * right(ctx, grad))


def _restore_bloom() -> None:
    from transformers.models.bloom import modeling_bloom

    if _BLOOM_BACKWARD:
        modeling_bloom.GeLUFunction.backward = staticmethod(_BLOOM_BACKWARD[0])  # type: ignore[method-assign]


def _check(built: Built, plain: bool = False, **options: Any) -> gradwatch.GradCheckReport:
    model, loss, batch = built
    vmapped = ModuleCost._vmapped
    if plain:  # every batched way refused: the plain loop, the reference

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("refused: the plain loop's reference")

        ModuleCost._vmapped = refuse  # type: ignore[method-assign]
    try:
        return gradwatch.check_module(model, loss, batch, progress=False, **options)
    finally:
        ModuleCost._vmapped = vmapped  # type: ignore[method-assign]


PAIRS: dict[str, tuple[Callable[..., Built], str, str, str]] = {
    "old-style Function block / setup_context twin": (_block, "old", "new", "2 (goal 1.3)"),
    "in-place buffer block / functional twin": (_block, "inplace", "functional", "2 (goal 1.3)"),
    "tiny BLOOM / tiny GPT-NeoX (same size)": (_language, "bloom", "neox", "2"),
}


def _evaluation(report: gradwatch.GradCheckReport) -> str:
    return next(n for n in report.notes if n.startswith("evaluation"))


def bench_refused(repeats: int, summary: Callable[[list[float]], str]) -> None:
    print("\n(6) what vmap refuses as written, against vmap-friendly twins (full checks)")
    for label, (build, a, b, target) in PAIRS.items():
        models = {a: build(a), b: build(b)}
        for built in models.values():
            _check(built)  # warm
        times: dict[str, list[float]] = {a: [], b: []}
        for r in range(repeats):
            for name in (a, b) if r % 2 == 0 else (b, a):
                start = time.perf_counter()
                _check(models[name])
                times[name].append(time.perf_counter() - start)
        ratio = [x / y for x, y in zip(times[a], times[b], strict=True)]
        seconds = f"{statistics.median(times[a]):.2f} s / {statistics.median(times[b]):.2f} s"
        print(f"  {label}: {seconds}, ratio {summary(ratio)} (target <= {target})")
        print(f"    {a}: {_evaluation(_check(models[a]))}")
    _verdicts()


def _verdicts() -> None:
    print("  verdicts, batched / plain loop, correct and planted (backward 1% off):")
    cases = {
        "old-style block": lambda f: _block("old", f),
        "in-place block": lambda f: _block("inplace", f),
        "tiny BLOOM (sample=300)": lambda f: _language("bloom", f),
    }
    for label, build in cases.items():
        options = {"sample": 300} if "BLOOM" in label else {}
        found = []
        for factor in (1.0, 1.01):
            try:
                built = build(factor)
                pair = [_check(built, plain, **options).verdict.value for plain in (False, True)]
            finally:
                _restore_bloom()
            found.append(f"{'correct' if factor == 1.0 else 'planted'} {pair[0]} / {pair[1]}")
        print(f"    {label}: " + "; ".join(found))
