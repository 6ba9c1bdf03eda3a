"""What the generic point and the product-rule diagnosis cost, measured side by side in one run.

    .venv/bin/python benchmarks/bench_generic.py [--repeats 3]

For each zero-by-construction design of ``tests/generic_nets.py`` (correct), a full check with
the generic point and one without it (``scales_at_zero`` patched to find nothing: the check as
it was before), and for the GELU-without-its-product-term twin, the check with and without the
product-rule diagnosis. Best of ``--repeats``, the variants interleaved; one torch thread.
Evaluations of J are counted exactly; seconds are a shared machine's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradwatch
from gradwatch.check import eager as _module_check
from tests.generic_nets import (
    LayerScaleNet,
    ResidualNet,
    ZeroHeadNet,
    batch_for,
    cross_entropy,
)


def _check(net_class: type, bug: bool) -> gradwatch.GradCheckReport:
    torch.manual_seed(0)
    net = net_class(bug)
    return gradwatch.check_module(net, cross_entropy, batch_for(net, 0), progress=False)


def _best(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(1)
    without_point = mock.patch.object(_module_check, "scales_at_zero", lambda model: [])
    without_rule = mock.patch.object(_module_check, "name_missing_terms", lambda r, *a: r)
    for net_class in (ResidualNet, LayerScaleNet, ZeroHeadNet):
        seconds, report = _best(lambda c=net_class: _check(c, False), repeats)
        with without_point:
            before, old = _best(lambda c=net_class: _check(c, False), repeats)
        print(
            f"{net_class.__name__:14} generic point: {seconds:.2f} s, {report.evaluations} "
            f"evaluations ({report.verdict}, {report.reading_counts['agrees']} agree); without: "
            f"{before:.2f} s, {old.evaluations} evaluations ({old.verdict}, "
            f"{old.reading_counts['agrees']} agree); {seconds / before:.2f}x"
        )
    seconds, report = _best(lambda: _check(LayerScaleNet, True), repeats)
    with without_rule:
        before, _ = _best(lambda: _check(LayerScaleNet, True), repeats)
    kinds = sorted({f.kind for f in report.findings})
    print(
        f"LayerScaleNet, GELU without x·Φ'(x): with the product-rule diagnosis {seconds:.2f} s "
        f"({kinds}), without {before:.2f} s; {seconds / before:.2f}x"
    )


if __name__ == "__main__":
    main()
