"""What the precision guard costs, measured side by side in one run.

    .venv/bin/python benchmarks/bench_precision.py [--repeats 5]

(a) A full check of the README's 64-128-64-10 tanh MLP (no casts: the guard decides on the
first evaluation and stays off), with the guard, forced on, and switched off
(``keep_precision=False``); (b) one plain evaluation of J for a tiny Llama built from a config
(float32 islands: the guard runs), with and without the guard. Best of ``--repeats``, the
variants interleaved; one torch thread.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch
from gradwatch.evaluation.cost import ModuleCost
from gradwatch.precision import guard as _precision


def _best(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _mlp(repeats: int) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    data = (torch.randn(32, 64), torch.randint(0, 10, (32,)))

    def loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(m(b[0]), b[1])

    decide = _precision.PrecisionGuard._first

    def forced(self: Any, evaluate: Callable[[], Any]) -> Any:
        result = decide(self, evaluate)
        self._on = True  # as if the model had casts
        return result

    variants = [("off", False, decide), ("decided (off)", True, decide),
                ("forced on", True, forced)]  # fmt: skip
    times: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, so a busy machine slows every variant alike
        for label, keep, first in variants:
            _precision.PrecisionGuard._first = first  # type: ignore[method-assign]
            seconds = _best(
                lambda k=keep: gradwatch.check_module(mlp, loss, data, keep_precision=k), 1
            )
            times[label] = min(times.get(label, seconds), seconds)
    _precision.PrecisionGuard._first = decide  # type: ignore[method-assign]
    print("(a) 17k-parameter MLP, full check, seconds:")
    for label, seconds in times.items():
        print(f"    {label:14s} {seconds:.3f}  ({seconds / times['off']:.2f}x)")


def _llama(repeats: int) -> None:
    try:
        import transformers as tf
    except ImportError:
        print("(b) skipped: transformers is not installed")
        return
    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    model = tf.LlamaForCausalLM(config)
    ids = torch.randint(3, 50, (2, 8))
    names = [n for n, _ in model.named_parameters()]

    def loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        return m(input_ids=b, labels=b).loss

    print("(b) tiny Llama, one evaluation of J, milliseconds:")
    for keep in (False, True):
        cost = ModuleCost(model, loss, ids, names, torch.float64, 0, keep_precision=keep)
        cost.value()  # the first evaluation decides
        per = _best(lambda c=cost: [c.value() for _ in range(50)], repeats) / 50
        print(f"    {'guard on' if keep else 'as written':14s} {per * 1e3:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(1)
    _mlp(repeats)
    _llama(repeats)


if __name__ == "__main__":
    main()
