"""The gradient check of a DTensor-sharded model (FSDP2's ``fully_shard``, tensor parallelism's
``parallelize_module``, both on a 2-D mesh), run by every process that holds a shard.

Each process gathers the model's full tensors into a plain replica
(:mod:`gradwatch.sharding.replica`), with the user's parameter names, and the processes check it
together as under DDP: each evaluates its share of the components (:class:`gradwatch.Partition`) and
all return the same report. J is the loss the optimizer step minimizes: the mean over the processes
of ``loss_fn(model, batch)`` on each process's own batch (processes of one tensor-parallel group
hold the same batch, so this is the mean over the data-parallel batches).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gradwatch.arguments import check_epsilon, check_sample, check_seed, reject
from gradwatch.check.scope import checked_parameters
from gradwatch.common.user_state import cast_batch
from gradwatch.evaluation.context import CheckContext
from gradwatch.evaluation.cost import LossFn
from gradwatch.module import CheckMode, DropoutMode, check_module
from gradwatch.partition import Partition, PartitionError
from gradwatch.report import GradCheckReport, Thresholds
from gradwatch.sharding.in_place import check_in_place
from gradwatch.sharding.replica import is_sharded, replica
from gradwatch.sharding.trained_gradient import sharded_gradient, training_replica
from gradwatch.training.compiled import EagerView
from gradwatch.training.gradient_runs import compare_training_path
from gradwatch.training_path import TrainingPath, check_training_path

__all__ = ["DivergedError", "check_budget", "check_sharded", "is_sharded"]

# What a failed sharded gradient most likely means: the model's mathematics is the replica's,
# which the float64 check verified, so what differs is how the gradient was reduced.
CAUSE = "its gradient is not reduced across processes (or reduced in the wrong precision)?"


def check_sharded(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    group: dist.ProcessGroup | None = None,
    epsilon: float | Literal["auto"] = 1e-7,
    include: str | Sequence[str] | None = None,
    sample: int | None = None,
    mode: CheckMode = "components",
    dropout: DropoutMode = "off",
    seed: int = 0,
    thresholds: Thresholds | None = None,
    training_path: bool | TrainingPath = False,
    progress: bool = True,
    replica_budget: int | None = None,
) -> GradCheckReport:
    """Checks backprop of a DTensor-sharded model, called by every process of ``group``.

    Every process gathers the full parameters and buffers (``DTensor.full_tensor()``) into a
    plain replica of the model, without the hooks ``torch.distributed`` installed, so its
    forward is the model's own code on whole tensors; the processes then check the replica as
    :func:`gradwatch.check_module` does under DDP, each evaluating its share of the
    components, and all return the same report. The model is not touched (with
    ``training_path``: its ``.grad``, buffers and RNG states are put back).

    J is the mean over the processes of ``loss_fn(model, batch)``, each process's own batch:
    the loss the optimizer step minimizes under data parallelism (FSDP averages the gradients
    over the processes). Every process receives every batch (``all_gather_object``).

    Args:
        model: the sharded module (parameters DTensors, or plain tensors replicated alike on
            every process); its forward must work on whole tensors (e.g. attention that reads
            its number of heads from the weights, not from the mesh).
        loss_fn: ``loss_fn(model, batch)`` → the scalar J of one process's batch.
        batch: this process's batch.
        group: the processes that hold the model's shards (every rank of its device mesh);
            ``None``: the default process group.
        epsilon, include, sample, mode, dropout, seed, thresholds, progress: as for
            :func:`gradwatch.check_module` (``progress`` in the group's first process only).
        training_path: also compare the gradient the sharded model trains with (after FSDP's
            reduce-scatter and tensor parallelism's collectives, in the model's dtype) with the
            float64 gradient of the same J, per parameter, by the rule of
            :mod:`gradwatch.training_path`: a gradient that is not reduced fails, named.
        replica_budget: bytes the gathered replica may take in each process (its tensors in
            the model's dtypes plus the check's float64 copy of θ); ``None``: no limit. Above
            it the check runs in place: the replica keeps float64 shards, each module's own
            parameters are gathered for its forward only (as FSDP does), every process
            evaluates every J in lockstep, and ``sample`` components (every one when None) are
            checked one by one (``mode`` and ``training_path``, which need the whole float64
            model, are not run; the notes say so).

    Returns:
        The same :class:`GradCheckReport` in every process, with ``named_parameters()``'s
        names; a note says the replica was gathered and the memory it took.

    Example:
        One process here; under ``torchrun`` every process runs the same lines.

        >>> import tempfile, torch, torch.distributed as dist
        >>> from torch import nn
        >>> from torch.distributed.device_mesh import init_device_mesh
        >>> from torch.distributed.fsdp import fully_shard
        >>> dist.init_process_group(
        ...     "gloo", init_method=f"file://{tempfile.mkdtemp()}/meet", rank=0, world_size=1)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        >>> model = fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        >>> report = check_sharded(model, lambda m, b: m(b).square().mean(), torch.randn(5, 3),
        ...                        progress=False)
        >>> report.verdict.value, report.components_checked
        ('pass', 21)
        >>> dist.destroy_process_group()
    """
    path = check_training_path(training_path)
    seed = check_seed(seed)
    budget = check_budget(replica_budget)
    group = _group(group)
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    batches = _every_batch(batch, group, size)
    _require_equal_replicas(model, group)
    if budget is not None and _replica_bytes(model) > budget:
        return _in_place(model, loss_fn, batch, group, budget, epsilon, include, sample, seed,
                         thresholds, mode, path)  # fmt: skip
    start = time.perf_counter()
    twin = replica(model)
    gathered = time.perf_counter() - start
    mean = _mean_loss(loss_fn)
    report = check_module(
        twin, mean, batches, epsilon=epsilon, include=include, sample=sample, mode=mode,
        dropout=dropout, seed=seed, thresholds=thresholds, training_path=False,
        partition=Partition(rank, size, _gather(group)), progress=progress and rank == 0,
    )  # fmt: skip
    report = replace(report, notes=(*report.notes, _memory_note(model, twin, size, gathered)))
    if path is None:
        return report
    names = report.layout.names
    start = time.perf_counter()
    lowered, precision = training_replica(model, twin)
    view = EagerView(lowered)
    reference = CheckContext(view.module, mean, batches, names, getattr(torch, report.dtype), seed)
    found = compare_training_path(
        view, reference, path,
        trained=lambda: sharded_gradient(model, loss_fn, batch, names, path, group),
    )  # fmt: skip
    found = replace(found, path=_describe(model, found.path, precision), cause=CAUSE)
    return replace(
        report, training_path=found, seconds=report.seconds + time.perf_counter() - start
    )


class DivergedError(PartitionError):
    """Raised in every process when a parameter every process holds whole (not a DTensor)
    differs between them: its gradient was not reduced alike, so the processes train different
    models and no one J can be checked.

    Example:
        >>> str(DivergedError("scale differs between the processes"))
        'scale differs between the processes'
    """


def _require_equal_replicas(model: nn.Module, group: dist.ProcessGroup) -> None:
    """Fails when a plain (replicated) parameter differs between the processes, naming it: a
    collective, the same verdict everywhere (the spread is reduced over the group)."""
    spreads = {}
    for name, p in model.named_parameters():
        if hasattr(p, "full_tensor"):
            continue  # a DTensor: its shards are one tensor by construction
        high, low = p.detach().double().clone(), p.detach().double().clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
        spread = float((high - low).abs().max()) if p.numel() else 0.0
        if spread > 0:  # replicated parameters are equal bit for bit when their gradients are
            spreads[name] = spread
    if spreads:
        named = ", ".join(f"{n} (by up to {v:.2g})" for n, v in list(spreads.items())[:3])
        raise DivergedError(
            f"{named} differ{'s' if len(spreads) == 1 else ''} between the processes: a "
            "parameter every process holds whole must stay equal, so its gradient is not "
            "reduced across processes (kept out of FSDP with ignored_params, or replicated by "
            "hand?), and the processes train different models"
        )


def check_budget(value: object) -> int | None:
    """``replica_budget``: None or a positive int of bytes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        reject("replica_budget", "None or a positive int of bytes, e.g. 2**30", value, TypeError)
    if value <= 0:
        reject("replica_budget", "None or a positive int of bytes, e.g. 2**30", value)
    return value


def _replica_bytes(model: nn.Module) -> int:
    """What the gathered replica takes: its whole tensors in the model's dtypes, plus the
    check's float64 copy of the parameters."""
    params = list(model.parameters())
    whole = sum(t.numel() * t.element_size() for t in (*params, *model.buffers()))
    return whole + 8 * sum(p.numel() for p in params)


def _in_place(
    model: nn.Module, loss_fn: LossFn, batch: Any, group: dist.ProcessGroup, budget: int,
    epsilon: Any, include: Any, sample: int | None, seed: int, thresholds: Thresholds | None,
    mode: str, path: TrainingPath | None,
) -> GradCheckReport:  # fmt: skip
    """The check on the shards (:mod:`gradwatch.sharding.in_place`), and the notes that say so."""
    step = check_epsilon(epsilon)
    if not isinstance(step, float):
        reject("epsilon", "a float for a check in place (replica_budget exceeded)", epsilon)
    names = checked_parameters(model, include)
    report = check_in_place(
        model, loss_fn, batch, names, group, epsilon=step, sample=check_sample(sample),
        seed=seed, thresholds=thresholds,
    )  # fmt: skip
    notes = [
        f"sharded model checked in place: its replica ({_size(_replica_bytes(model))}) exceeds "
        f"replica_budget={budget} bytes, so each process held float64 shards and gathered one "
        "module's parameters at a time; components checked one by one in lockstep"
    ]
    if mode != "components":
        notes.append(f"mode={mode!r} not run in place: sampled components were checked")
    if path is not None:
        notes.append("training path not run in place: its reference is the whole float64 model")
    return replace(report, notes=(*report.notes, *notes))


def _group(group: object) -> dist.ProcessGroup:
    if not (dist.is_available() and dist.is_initialized()):
        reject(
            "group",
            "a process group of an initialized torch.distributed job (call "
            "dist.init_process_group first, in every process)",
            group,
        )
    if group is None:
        return dist.group.WORLD  # type: ignore[return-value]
    if not isinstance(group, dist.ProcessGroup):
        reject("group", "None or a torch.distributed.ProcessGroup", group, TypeError)
    return group


def _every_batch(batch: Any, group: dist.ProcessGroup, size: int) -> list[Any]:
    """Every process's batch, in rank order, on the CPU (J is their mean). A batch that does
    not pickle fails in every process alike (its own error there, PartitionError elsewhere)
    rather than leave the others waiting in the gather."""
    local = cast_batch(batch, None, torch.device("cpu"))
    problem = ""
    try:
        pickle.dumps(local)
    except Exception as err:  # any pickling failure: said in every process
        problem = f"{type(err).__name__}: {err}"
    flag = torch.tensor([1.0 if problem else 0.0], device=_device(group))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if problem:
        reject("batch", "picklable: every process receives every batch (J is their mean)", problem)
    if float(flag) > 0:
        raise PartitionError("another process's batch does not pickle; see the error raised there")
    found: list[Any] = [None] * size
    dist.all_gather_object(found, local, group=group)
    return found


def _device(group: dist.ProcessGroup) -> torch.device:
    """Where the group's collectives take tensors: NCCL CUDA ones only, gloo any."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _mean_loss(loss_fn: LossFn) -> LossFn:
    def mean(model: nn.Module, batches: list[Any]) -> torch.Tensor:
        return torch.stack([loss_fn(model, b).reshape(()) for b in batches]).mean()

    return mean


def _gather(group: dist.ProcessGroup) -> Any:
    device = _device(group)

    def gather(values: np.ndarray) -> np.ndarray:
        local = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(device)
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local, group=group)
        return torch.stack(parts).cpu().numpy()

    return gather


def _memory_note(model: nn.Module, twin: nn.Module, size: int, seconds: float) -> str:
    own = sum(_local_bytes(t) for t in (*model.parameters(), *model.buffers()))
    whole = sum(t.numel() * t.element_size() for t in (*twin.parameters(), *twin.buffers()))
    checked = sum(t.numel() for t in twin.parameters()) * 8  # the check's float64 copies
    return (
        f"sharded model: its full tensors were gathered into a replica in each of {size} "
        f"process{'es' if size != 1 else ''} in {seconds:.2f} s ({_size(whole)} in the model's "
        f"dtypes, {_size(checked)} of float64 parameters for the check, against {_size(own)} "
        "of this process's own shards)"
    )


def _size(n: int) -> str:
    return f"{n / 2.0**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return int(local.numel() * local.element_size())


def _describe(model: nn.Module, given: str, precision: str) -> str:
    kind = "sharded (DTensor) module" if is_sharded(model) else "replicated module"
    described = given.replace("eager module (nothing compiled)", kind, 1)
    return ", ".join(x for x in (described, precision, "gradient after its collectives") if x)
