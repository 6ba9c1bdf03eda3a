"""Sharded models for the tests of :mod:`gradwatch.sharded` and of the callback under
``ModelParallelStrategy``, and a launcher of two gloo processes on the CPU.

``spawn(fn, *args)`` runs ``fn(rank, *args)`` in two processes of one gloo group and returns
what each returned (pickled through files), or raises what one raised.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.nn import functional as F

SIZE = 2  # two processes: the machine's two cores


def spawn(fn: Callable[..., Any], *args: Any) -> list[Any]:
    """``fn(rank, *args)`` in each of two gloo processes; their results, in rank order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as root:
        mp.spawn(_run, args=(port, root, fn, args), nprocs=SIZE, join=True)
        found = [pickle.loads((Path(root) / f"{r}.pkl").read_bytes()) for r in range(SIZE)]
    for item in found:
        if isinstance(item, _Raised):
            raise AssertionError(f"process {item.rank} raised:\n{item.text}")
    return found


class _Raised:
    def __init__(self, rank: int, text: str) -> None:
        self.rank, self.text = rank, text


def _run(rank: int, port: int, root: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", rank=rank, world_size=SIZE)
    try:
        result: Any = fn(rank, *args)
    except BaseException:
        result = _Raised(rank, traceback.format_exc())
    finally:
        dist.destroy_process_group()
    (Path(root) / f"{rank}.pkl").write_bytes(pickle.dumps(result))


def mesh() -> DeviceMesh:
    return init_device_mesh("cpu", (SIZE,))


class _PlantedTanh(torch.autograd.Function):
    """tanh whose backward is 1% off: a bug of the model's mathematics, which the float64
    check must find (a difference of about 5e-3, above the fail band of 1e-3)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y) * 1.01


class MLP(nn.Module):
    """Linear → Tanh → Linear, times a scale, for FSDP; ``planted``: tanh's backward off."""

    def __init__(self, planted: bool = False) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.tensor([1.5]))
        self.planted = planted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        h = _PlantedTanh.apply(h) if self.planted else torch.tanh(h)
        return self.out(h) * self.scale


def mlp_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def mlp_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A different batch in each process (J is their mean)."""
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def fsdp(model: MLP, on: DeviceMesh, ignore_scale: bool = False, bf16: bool = False) -> MLP:
    """FSDP2 over ``on``; ``ignore_scale``: ``scale`` kept out of FSDP (never all-reduced);
    ``bf16``: mixed precision, parameters and compute in bfloat16, reduction in float32."""
    ignored = {model.scale} if ignore_scale else None
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16) if bf16 else MixedPrecisionPolicy()
    fully_shard(model.hidden, mesh=on, mp_policy=policy)
    fully_shard(model, mesh=on, ignored_params=ignored, mp_policy=policy)
    return model


class Block(nn.Module):
    """A transformer-like block for tensor parallelism: embedding, norm, MLP, norm, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.out_norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)
        h = e + self.down(torch.tanh(self.up(self.norm(e))))
        return self.head(self.out_norm(h))


def block_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    logits = model(batch[0])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1))


def block_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch in every process of a tensor-parallel group: (2, 4, 4) and labels."""
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 4, 4, generator=g), torch.randint(0, 4, (2, 4), generator=g)


def tensor_parallel(model: Block, on: DeviceMesh, up: Any = None) -> Block:
    """Colwise/Rowwise linears, sequence-parallel norms; ``up``: another style for ``up``."""
    plan = {
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "up": up or ColwiseParallel(input_layouts=Shard(1)),
        "down": RowwiseParallel(output_layouts=Shard(1)),
        "out_norm": SequenceParallel(),
        "head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    }
    return parallelize_module(model, on, plan)


class _SkipAllReduce(torch.autograd.Function):
    """Identity forward; the backward takes each process's partial gradient for the sum (the
    Megatron f operator without its all-reduce)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        if isinstance(grad, DTensor) and any(p.is_partial() for p in grad.placements):
            return DTensor.from_local(grad.to_local(), grad.device_mesh, [Replicate()])
        return grad


class ForgetfulColwise(ColwiseParallel):
    """A custom parallel style whose backward skips the all-reduce of its input's gradient."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        module = super()._apply(module, device_mesh)
        module.register_forward_pre_hook(lambda m, args: (_SkipAllReduce.apply(args[0]),))
        return module
