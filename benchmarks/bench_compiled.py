"""Issue 13's benchmark: compiled models checked at eager speed, and what the training path costs
and finds, in one run.

    .venv/bin/python benchmarks/bench_compiled.py [--seeds N] [--threads N]

(a) For the issue's MLP (Linear(8, 16), GELU, Linear(16, 3): 195 parameters) and the 64-128-64-10
tanh MLP (17,226), compiled by inductor on the CPU and run once: the median ``check_module``
time of the compiled module against the eager one, over interleaved rounds, and their ratio (the
compiled module is checked through its eager code, so the target is 1x, at most 2x); then the
time ``training_path=True`` adds. (b) FlashAttention's rule on correct compiled models
(MLP, BatchNorm, LayerNorm; float32, and bfloat16 autocast) over seeds: the largest
error / allowance of any parameter (a correct model stays below 1), and on a planted
compiled-only fault (a registered backward that is wrong only when compiled): the smallest
error / allowance of the parameters it feeds (above 1: named). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradwatch
from gradwatch.training_path import TrainingPath
from tests.custom_ops import OpNet, batch, cross_entropy, softsign

# Rounds of (a): a median over interleaved rounds holds up on a shared machine where a best-of
# or a mean does not.
ROUNDS = 5


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _compiled(model: nn.Module, data: Any) -> nn.Module:
    compiled: Any = torch.compile(model)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(cross_entropy(compiled, data), params)  # the compile, outside the timing
    return compiled


def speed() -> None:
    print(
        f"(a) check time, compiled module against its eager one (median of {ROUNDS}, interleaved)"
    )
    models = {
        "MLP 8-16-3 (195)": (nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)), 8),
        "tanh MLP 64-128-64-10 (17,226)": (
            nn.Sequential(
                nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10)
            ),
            64,
        ),
    }
    for name, (model, width) in models.items():
        torch.manual_seed(0)
        data = (torch.randn(32, width), torch.randint(0, 3, (32,)))
        eager_s, compiled_s, path_s = _timings(model, data)
        print(
            f"  {name:<32} eager {eager_s:6.2f} s, compiled {compiled_s:6.2f} s "
            f"(ratio {compiled_s / eager_s:.2f}x); with training_path=True {path_s:6.2f} s "
            f"(+{path_s - compiled_s:.2f} s)"
        )


def _timings(model: nn.Module, data: Any) -> tuple[float, float, float]:
    """Median seconds over ``ROUNDS`` interleaved rounds: the eager check, the compiled one, the
    compiled one with the training path."""
    compiled = _compiled(model, data)
    runs: list[Callable[[], Any]] = [
        lambda: gradwatch.check_module(model, cross_entropy, data),
        lambda: gradwatch.check_module(compiled, cross_entropy, data),
        lambda: gradwatch.check_module(compiled, cross_entropy, data, training_path=True),
    ]
    times = [[_seconds(run) for run in runs] for _ in range(ROUNDS)]
    eager_s, compiled_s, path_s = (statistics.median(c) for c in zip(*times, strict=True))
    return eager_s, compiled_s, path_s


def _models() -> dict[str, Callable[[], nn.Module]]:
    return {
        "MLP": lambda: nn.Sequential(
            nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
        ),
        "BatchNorm": lambda: nn.Sequential(
            nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3)
        ),
        "LayerNorm": lambda: nn.Sequential(
            nn.Linear(8, 32), nn.LayerNorm(32), nn.SiLU(), nn.Linear(32, 3)
        ),
    }


def _worst(report: gradwatch.GradCheckReport, names: list[str] | None = None) -> float:
    found = report.training_path
    assert found is not None
    chosen = names or list(found.parameters)
    return max(found.parameters[n].error / found.parameters[n].allowed for n in chosen)


def rule(seeds: int) -> None:
    print(f"(b) FlashAttention's rule over {seeds} seeds (error / allowance; fails above 1)")
    paths = {
        "float32": TrainingPath(),
        "bf16 autocast": TrainingPath(context=lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    }
    for label, path in paths.items():
        for name, make in _models().items():
            worst = 0.0
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = make()
                data = batch(seed, 64)
                report = gradwatch.check_module(
                    _compiled(model, data), cross_entropy, data, training_path=path
                )
                worst = max(worst, _worst(report))
            print(f"  correct {name:<10} {label:<14} largest {worst:.2f}")
        least = float("inf")
        for seed in range(seeds):
            torch.manual_seed(seed)
            model, data = OpNet(softsign), batch(seed, 64)
            report = gradwatch.check_module(
                _compiled(model, data), cross_entropy, data, training_path=path
            )
            found = report.training_path
            assert found is not None
            fed = ["first.weight", "first.bias"]
            least = min(
                least, min(found.parameters[n].error / found.parameters[n].allowed for n in fed)
            )
        print(f"  planted compiled-only fault {label:<14} smallest {least:.3g} (first.*)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    speed()
    rule(args.seeds)


if __name__ == "__main__":
    main()
