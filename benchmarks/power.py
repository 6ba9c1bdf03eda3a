"""Issue 19's benchmark: the power of the check. For each J scale × bug, over seeds and at random
init and after training, the share of planted bugs detected (the check fails, or warns where the
material's band says "look") against the share that J's measured noise makes detectable at the
best step, and the correct twins' verdicts (never fail, never warn).

    .venv/bin/python benchmarks/power.py [--seeds 3]

The nets and bugs are ``tests/power_nets.py``'s: a 64-8-10 tanh MLP on 8 digits with a scalar of
small gradient, bugs of 1% and 0.1% of one tensor, one row 5% off, a sign flip of the scalar; J
the mean cross-entropy ("1"), 1e5 times it ("1e5") and 3e5 plus it ("3e5+"). A bug is detectable
when its error e = a − g (g: the correct twin's backprop) stands out of the noise σ_i of
Richardson's estimate at the longest step a re-read takes (float32's step, see
``gradwatch.evidence.recheck.longest_steps``): some |e_i| > 8σ_i, or Σ(e_i/σ_i)² above the tensor
test's bound; and its difference D is above the pass band. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gradwatch
from gradwatch.common.numeric import relative_difference
from gradwatch.evidence.noise import NOISE_MULTIPLE
from gradwatch.evidence.recheck import longest_steps
from gradwatch.evidence.tensor_test import chi2_bound
from tests import power_nets

# The noise of Richardson's estimate from steps H and 2H, in units of σ_J / (√2·H).
RICHARDSON = np.sqrt(16 + 0.25) / 3


def _gradient(model: torch.nn.Module, scale: str, batch: power_nets.Batch, name: str) -> np.ndarray:
    """Backprop's gradient of ``name`` in float64, as the model computes it."""
    double = model.double()
    x, y = batch
    double.zero_grad()
    power_nets.loss_at(scale)(double, (x.double(), y)).backward()
    grad = dict(double.named_parameters())[name].grad
    assert grad is not None
    out = grad.detach().numpy().ravel().copy()
    model.float()
    return out


def detectable(seed: int, trained: bool, bug: str, scale: str, sigma: float) -> bool:
    """Whether the planted error of ``bug`` stands out of J's noise ``sigma`` at the best step."""
    name, batch = power_nets.BUGS[bug], power_nets.batch(seed)
    model = power_nets.build(seed, trained, bug)
    wrong = _gradient(model, scale, batch, name)
    model.bug = "none"
    right = _gradient(model, scale, batch, name)
    theta = dict(model.named_parameters())[name].detach().double().numpy().ravel()
    noise = RICHARDSON * sigma / (np.sqrt(2) * longest_steps(theta))
    z = (wrong - right) / noise
    beyond = bool(np.any(np.abs(z) > NOISE_MULTIPLE)) or float(z @ z) > chi2_bound(z.size)
    return beyond and relative_difference(right, wrong) > gradwatch.Thresholds().pass_max


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    found: dict[tuple[str, str], list[tuple[bool, bool]]] = defaultdict(list)
    twins: dict[str, list[str]] = defaultdict(list)
    for scale in power_nets.SCALES:
        for trained in (False, True):
            for seed in range(args.seeds):
                for bug in power_nets.BUGS:
                    model = power_nets.build(seed, trained, bug)
                    loss, batch = power_nets.loss_at(scale), power_nets.batch(seed)
                    report = gradwatch.check_module(model, loss, batch, seed=seed)
                    if bug == "none":
                        twins[scale].append(report.verdict.value)
                        continue
                    caught = report.verdict.value in ("fail", "warn")
                    assert report.j_noise is not None
                    sigma = report.j_noise.effective
                    can = detectable(seed, trained, bug, scale, sigma)
                    found[(scale, bug)].append((caught, can))
    bugs = [b for b in power_nets.BUGS if b != "none"]
    print(f"| J | {' | '.join(bugs)} | correct twins |")
    print("|---|" + "---|" * (len(bugs) + 1))
    for scale in power_nets.SCALES:
        cells = []
        for bug in bugs:
            rows = found[(scale, bug)]
            hits, able = sum(c for c, _ in rows), sum(d for _, d in rows)
            cells.append(f"{hits}/{len(rows)} (detectable {able})")
        verdicts = {v: twins[scale].count(v) for v in sorted(set(twins[scale]))}
        shown = ", ".join(f"{n} {v}" for v, n in verdicts.items())
        print(f"| {scale} | {' | '.join(cells)} | {shown} |")
    print(f"\n{args.seeds} seeds × (init, trained) per cell; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
