"""Distributed runs and faults: the check shared by the processes of a data-parallel run (DDP,
ddp_spawn: one batch, split components), the check of a model sharded under
``ModelParallelStrategy``, the refusals at setup (strategies the check cannot read, a module
that gives no J, collectives inside J), and what a check that raised comes to, the same in every
process. Whose error it is and how it is told is :mod:`gradwatch.integration.faults`'s.

Everything goes through the Trainer's strategy (``broadcast``, ``all_gather``), so it works for
any launcher Lightning supports and does nothing at all in a single process.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import move_data_to_device
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import nn

from gradwatch import GradCheckReport, Partition, PartitionError
from gradwatch.integration import faults as faults
from gradwatch.integration.objective import (
    ObjectiveError,
    SkippedBatch,
    has_custom_loss,
    logging_muted,
    objective,
)
from gradwatch.sharded import check_sharded, is_sharded

# -- J from the module -------------------------------------------------------------------------


def require_objective(module: Any) -> None:
    """Fails at setup when ``training_step`` cannot give J and ``gradcheck_loss`` is missing."""
    if has_custom_loss(module):
        return
    name = type(module).__name__
    if not module.automatic_optimization:
        reason = "uses manual optimization, so its `training_step` does not return the loss J"
    elif is_param_in_hook_signature(module.training_step, "dataloader_iter", explicit=True):
        reason = "takes `dataloader_iter` in `training_step`, so the check cannot hand it a batch"
    else:
        return
    raise ValueError(
        f"GradientCheck: `{name}` {reason}; define `gradcheck_loss(self, batch)` on `{name}` "
        "returning the scalar cost J (regularization included)"
    )


def module_objective(module: Any, batch_idx: int) -> Callable[[nn.Module, Any], torch.Tensor]:
    """J of ``module`` on a batch (see :func:`gradwatch.integration.objective.objective`); Lightning
    passes ``batch_idx`` only to a ``training_step`` that takes it, and so does the check."""
    with_index = is_param_in_hook_signature(module.training_step, "batch_idx", min_args=2)
    return objective(module, batch_idx, with_index)


# -- data-parallel runs ------------------------------------------------------------------------


def shared(trainer: Any) -> bool:
    """Whether the check is shared by several processes."""
    return int(trainer.world_size) > 1


def require_no_collectives(trainer: Any, module: nn.Module) -> None:
    """Fails when J would run a collective in a shared check: each process evaluates J for its own
    share of the components, a different number of times, so a collective inside J (SyncBatchNorm
    syncing its batch statistics) would wait forever for processes that never join it."""
    if not shared(trainer):
        return  # one process: SyncBatchNorm has no one to sync with and is BatchNorm
    synced = [name for name, m in module.named_modules() if isinstance(m, nn.SyncBatchNorm)]
    if synced:
        more = f" and {len(synced) - 3} more" if len(synced) > 3 else ""
        raise ValueError(
            f"GradientCheck: `{type(module).__name__}` has SyncBatchNorm layers "
            f"({', '.join(synced[:3])}{more}) and the run has {trainer.world_size} processes; the "
            "loss a check evaluates must not run collectives (each process evaluates J for its "
            "own share of the components, so SyncBatchNorm would wait forever for the others). "
            "Check the model with plain BatchNorm (Trainer(sync_batchnorm=False), no "
            "convert_sync_batchnorm) or in a single process (devices=1)"
        )


def partition(trainer: Any) -> Partition | None:
    """This process's share of the check, with a gather on the strategy's ``all_gather``."""
    if not shared(trainer):
        return None
    return Partition(int(trainer.global_rank), int(trainer.world_size), _gather(trainer))


def _gather(trainer: Any) -> Callable[[np.ndarray], np.ndarray]:
    strategy, size = trainer.strategy, int(trainer.world_size)

    def gather(values: np.ndarray) -> np.ndarray:
        # root_device: NCCL gathers only CUDA tensors, gloo any.
        with warnings.catch_warnings():
            # Lightning's all_gather goes through torch.distributed.nn.functional, which torch
            # 2.6+ calls deprecated; the user can do nothing about it.
            warnings.filterwarnings("ignore", ".*all_gather is deprecated", FutureWarning)
            found = strategy.all_gather(torch.from_numpy(values).to(strategy.root_device))
        return found.reshape(size, -1).cpu().numpy()

    return gather


def same_batch(trainer: Any, batch: Any) -> Any:
    """Process 0's batch, in every process: the shares of one check must be of one J.

    Process 0 pickles the batch itself (on the CPU) and every process says whether it has it,
    so a batch that cannot be sent fails in every process alike: the process that could not
    raises :class:`faults.UnsharedBatch`, the others :class:`gradwatch.PartitionError`.
    """
    if not shared(trainer):
        return batch
    strategy, rank = trainer.strategy, int(trainer.global_rank)
    problem, sent, own = "", b"", False
    if rank == 0:
        try:
            sent = pickle.dumps(move_data_to_device(batch, "cpu"))
        except Exception as err:  # any pickling failure: say it everywhere
            problem, own = f"it does not pickle: {type(err).__name__}: {err}", True
    sent, problem = strategy.broadcast((sent, problem), src=0)
    if rank != 0 and not problem:
        try:
            batch = pickle.loads(sent)
        except Exception as err:  # e.g. a class this process cannot import
            problem, own = f"process {rank} cannot unpickle it: {type(err).__name__}: {err}", True
    if strategy.reduce_boolean_decision(own, all=False):
        if own:
            raise faults.UnsharedBatch(
                f"process 0's batch cannot be shared with the other processes ({problem}); "
                "under DDP the check's batch must pickle"
            )
        raise PartitionError("process 0's batch could not be shared; see the error raised there")
    return batch


def agreed_fault(trainer: Any, err: Exception, reason: str, outcome: str) -> tuple[str, str]:
    """The fault every process reports: the lowest process whose own part raised (rather than
    hear of another's) tells its ``reason`` and ``outcome`` (what the check does about it:
    ``"failed"``, ``"fatal"`` or ``"postponed"``).

    Every process comes here after a failed shared check (the engine raises in all or none), so
    the two collectives below meet.
    """
    if not shared(trainer):
        return reason, outcome
    strategy = trainer.strategy
    own = not isinstance(err, PartitionError)
    flags = _gather(trainer)(np.array([float(own)]))
    raised = np.flatnonzero(flags[:, 0]).tolist()
    source = int(raised[0]) if raised else 0
    reason, outcome = strategy.broadcast((reason, outcome), src=source)
    return reason, outcome


# -- strategies, and the check of a sharded model ----------------------------------------------


# The strategies whose model the check reads, by the class name of the strategy or of a base
# class (the same names in `pytorch_lightning` and `lightning.pytorch`), and what each means.
CHECKED = {
    "SingleDeviceStrategy": "one process",
    "DDPStrategy": "DDP: process 0's batch, the components split over the processes",
    "ModelParallelStrategy": "FSDP2 / tensor parallel: a replica gathered in every process",
}
# Strategies that shard or wrap the model in a way the check cannot read, and why. Looked up
# before CHECKED along the class's bases: DeepSpeedStrategy and XLAStrategy derive from
# DDPStrategy.
REFUSED = {
    "DeepSpeedStrategy": "DeepSpeed partitions the parameters into flat buffers of its own",
    "XLAStrategy": "XLA traces the model into graphs the check cannot evaluate in float64",
    "FSDPStrategy": "FSDP (version 1) flattens the parameters into FlatParameters",
}
WHAT_WORKS = (
    "the check runs under a single device (devices=1), strategy='ddp' or 'ddp_spawn', and "
    "ModelParallelStrategy (FSDP2's fully_shard, tensor parallelism in configure_model); to "
    "check the model itself, train it once on one device with GradientCheck, or call "
    "gradwatch.check_module on an unsharded copy"
)


def sharded(trainer: Any) -> bool:
    """Whether the Trainer's strategy is ``ModelParallelStrategy`` (either Lightning package)."""
    # getattr: a stand-in Trainer of a test may have no strategy (then: not sharded).
    strategy = getattr(trainer, "strategy", None)
    return any(b.__name__ == "ModelParallelStrategy" for b in type(strategy).__mro__)


def require_checkable(trainer: Any) -> None:
    """Fails at setup, naming the strategy and what would work, when the Trainer's strategy is
    one the check cannot read (or one it does not know)."""
    strategy = trainer.strategy
    name = type(strategy).__name__
    for base in type(strategy).__mro__:
        if base.__name__ in REFUSED:
            why = REFUSED[base.__name__]
            break
        if base.__name__ in CHECKED:
            return
    else:
        why = "gradwatch does not know how it places the model's parameters"
    raise ValueError(
        f"GradientCheck: cannot check a model trained under the strategy `{name}` ({why}), and "
        f"refuses rather than train on without checking; {WHAT_WORKS}"
    )


def require_plain_unless_sharded(trainer: Any, module: nn.Module) -> None:
    """Fails at the start of fit when parameters are DTensors (``fully_shard``,
    ``parallelize_module`` applied by hand) under a strategy other than
    ``ModelParallelStrategy``: the check would read each process's shard as the model."""
    if sharded(trainer) or not is_sharded(module):
        return
    raise ValueError(
        f"GradientCheck: `{type(module).__name__}` has DTensor parameters (sharded by "
        f"fully_shard or parallelize_module) under the strategy `{type(trainer.strategy).__name__}`"
        ", which does not know them; train it under ModelParallelStrategy, whose check gathers "
        "the shards, or leave the model unsharded"
    )


def run(
    check: Any, options: dict[str, Any], pl_module: Any, batch: Any, batch_idx: int
) -> GradCheckReport:
    """One check of a model under ``ModelParallelStrategy`` by the callback ``check``, with the
    engine's ``options`` as the callback holds them: every process its own batch (J is their
    mean), the replica gathered in every process."""
    with logging_muted(pl_module):
        return check_sharded(
            pl_module,
            module_objective(pl_module, batch_idx),
            batch,
            progress=check.progress,
            replica_budget=check.replica_budget,
            **options,
        )


# -- a check that raised -----------------------------------------------------------------------


def outcome(
    trainer: Any, pl_module: Any, batch: Any, err: Exception, check: Any
) -> tuple[str, GradCheckReport | None]:
    """What a check that raised comes to, the same in every process: ``("failed", report)`` for
    the user's error (a failed report whose message says why and where); ``("postponed", None)``
    when ``training_step`` skipped the batch (returned None) after an earlier check of the run
    had J from it; ``(reason, None)`` for an error inside gradwatch. An error no check can get
    past (J cannot be had from the module as written) is raised again. ``check`` is the
    callback (its options, and whether it has had J from the module)."""
    kind = "failed"
    if isinstance(err, ObjectiveError):
        kind = "postponed" if isinstance(err, SkippedBatch) and check._loss_found else "fatal"
    elif faults.is_ours(err):
        kind = "ours"
    where = ""
    if shared(trainer):
        where = f" in process {trainer.global_rank} of {trainer.world_size}"
    why = {
        "failed": lambda: faults.reason(err, batch, where),
        "ours": lambda: faults.internal_error(err, where),
    }.get(kind, lambda: str(err))()
    why, kind = agreed_fault(trainer, err, why, kind)
    if kind == "postponed":
        return kind, None
    if kind == "ours":
        return why, None
    if kind == "fatal" and isinstance(err, ObjectiveError):
        raise err
    if kind == "fatal":
        raise ObjectiveError(why) from err
    return kind, faults.failed_report(
        pl_module, check.include, why, check.epsilon, check.thresholds
    )
