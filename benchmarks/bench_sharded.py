"""Issue 21's benchmark: the check of an FSDP2-sharded model on 2 CPU processes (gloo), gathered
into a float64 replica against in place on float64 shards, and the same model and J checked in
one process.

    .venv/bin/python benchmarks/bench_sharded.py [--width 1024] [--sample 200] [--repeats 3]

The model is a width-``W`` tanh MLP (4·W → W → W → 10; 2.1M parameters at W = 1024), float32,
each Linear and the root under ``fully_shard``; J is the mean cross-entropy over the two
processes' batches of 32 (one process: over both batches). ``sample`` components are checked at
ε = 1e-7 in float64. Each configuration runs in fresh processes (``torch.multiprocessing``, one
thread each) and reports, best of ``--repeats``: the check's seconds (``report.seconds``, the
slowest process's, and the wall time of the call), the peak resident memory the check added per
process (``ru_maxrss`` after the check minus before it, so the imports and the model are not
counted), the replica's bytes by arithmetic, and the verdict. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn import functional as F

from gradwatch import check_module
from gradwatch.sharded import _mean_loss, check_sharded

MIB = 2.0**20


def _model(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4 * width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, 10),
    )  # fmt: skip


def _batch(rank: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    return torch.randn(32, 4 * width, generator=g), torch.randint(0, 10, (32,), generator=g)


def _loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run(rank: int, size: int, port: int, root: str, how: str, width: int, sample: int) -> None:
    torch.set_num_threads(1)
    model = _model(width)
    if how == "single":
        before, start = _peak_mib(), time.perf_counter()
        both = [_batch(0, width), _batch(1, width)]
        report = check_module(model, _mean_loss(_loss), both, sample=sample, progress=False)
    else:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
        mesh = init_device_mesh("cpu", (size,))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        budget = 1 if how == "in place" else None  # 1 byte: every replica exceeds it
        before, start = _peak_mib(), time.perf_counter()
        report = check_sharded(
            model, _loss, _batch(rank, width), sample=sample, progress=False,
            replica_budget=budget,
        )  # fmt: skip
    found = {
        "wall": time.perf_counter() - start,
        "seconds": report.seconds,
        "added_mib": _peak_mib() - before,
        "verdict": report.verdict.value,
        "difference": report.difference,
    }
    if how != "single":
        dist.destroy_process_group()
    (Path(root) / f"{rank}.json").write_text(json.dumps(found))


def measure(how: str, width: int, sample: int) -> list[dict[str, Any]]:
    size = 1 if how == "single" else 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as root:
        mp.spawn(_run, args=(size, port, root, how, width, sample), nprocs=size, join=True)
        return [json.loads((Path(root) / f"{r}.json").read_text()) for r in range(size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = sum(p.numel() for p in _model(args.width).parameters())
    print(
        f"MLP of width {args.width}: {n:,} parameters ({4 * n / MIB:.1f} MiB float32); the "
        f"gathered replica {12 * n / MIB:.1f} MiB per process (float32 whole + float64 θ), a "
        f"float64 shard {8 * n / 2 / MIB:.1f} MiB; {args.sample} components"
    )
    print(f"{'configuration':<24}{'check s':>9}{'wall s':>9}{'added MiB/process':>20}  verdict")
    for how in ("single", "gathered", "in place"):
        runs = [measure(how, args.width, args.sample) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: max(p["wall"] for p in r))
        seconds = max(p["seconds"] for p in best)
        wall = max(p["wall"] for p in best)
        added = " / ".join(f"{p['added_mib']:.0f}" for p in best)
        label = "1 process" if how == "single" else f"2 processes, {how}"
        print(f"{label:<24}{seconds:>9.2f}{wall:>9.2f}{added:>20}  {best[0]['verdict']}")


if __name__ == "__main__":
    main()
