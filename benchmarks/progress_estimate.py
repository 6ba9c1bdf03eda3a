"""How right the progress bar's time left is: a full check of a 93k-parameter MLP, with every
chunk of evaluations recorded, and at 10%, 25%, 50%, 75% and 90% of the evaluations the time left
the bar shows (the average rate since the evaluations run steadily, see
gradwatch.reporting.progress) next to the time the check then really took.

Run::

    .venv/bin/python benchmarks/progress_estimate.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import gradwatch
from gradwatch.reporting import progress as _progress


def _recorded() -> list[tuple[float, int]]:
    """Records (time, evaluations so far) at every chunk the engine reports."""
    seen: list[tuple[float, int]] = []
    count = 0
    call = _progress.Progress.__call__

    def record(self: _progress.Progress, n: int) -> None:
        nonlocal count
        count += n
        seen.append((time.perf_counter(), count))
        call(self, n)

    _progress.Progress.__call__ = record  # type: ignore[method-assign]
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    torch.set_num_threads(parser.parse_args().threads)
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(512, 160), nn.Tanh(), nn.Linear(160, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    batch = (torch.randn(32, 512), torch.randint(0, 10, (32,)))
    seen = _recorded()
    start = time.perf_counter()
    report = gradwatch.check_module(
        mlp, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), batch, progress=False
    )
    total, end = report.evaluations, seen[-1][0]
    # The bar's rate starts at the first chunk of more than STEADY_COUNT evaluations.
    steady = next(k for k in range(1, len(seen)) if seen[k][1] - seen[k - 1][1] > 8)
    t0, n0 = seen[steady]
    print(
        f"{total} evaluations in {time.perf_counter() - start:.1f} s "
        f"(steady from {t0 - start:.1f} s)"
    )
    for share in (0.1, 0.25, 0.5, 0.75, 0.9):
        t, n = next(x for x in seen if x[1] >= share * total)
        shown = (total - n) * (t - t0) / (n - n0)
        print(f"at {share:4.0%}: time left shown {shown:5.1f} s, taken {end - t:5.1f} s")


if __name__ == "__main__":
    main()
