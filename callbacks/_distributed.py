"""A check shared by the processes of a data-parallel run (DDP, ddp_spawn): one batch, split
components, one story when something goes wrong.

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
from torch import nn

from gradwatch import Partition, PartitionError


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


class UnsharedBatch(RuntimeError):
    """Process 0's batch could not be sent to the other processes."""


def same_batch(trainer: Any, batch: Any) -> Any:
    """Process 0's batch, in every process: the shares of one check must be of one J.

    Process 0 pickles the batch itself (on the CPU) and every process says whether it has it,
    so a batch that cannot be sent fails in every process alike: the process that could not
    raises :class:`UnsharedBatch`, the others :class:`gradwatch.PartitionError`.
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
            raise UnsharedBatch(
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
