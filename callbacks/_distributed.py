"""A check shared by the processes of a data-parallel run (DDP, ddp_spawn): one batch, split
components, one story when something goes wrong.

Everything goes through the Trainer's strategy (``broadcast``, ``all_gather``), so it works for
any launcher Lightning supports and does nothing at all in a single process.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities import move_data_to_device

from gradwatch import Partition, PartitionError


def shared(trainer: Any) -> bool:
    """Whether the check is shared by several processes."""
    return int(trainer.world_size) > 1


def partition(trainer: Any) -> Partition | None:
    """This process's share of the check, with a gather on the strategy's ``all_gather``."""
    if not shared(trainer):
        return None
    strategy = trainer.strategy
    size = int(trainer.world_size)

    def gather(values: np.ndarray) -> np.ndarray:
        # root_device: NCCL gathers only CUDA tensors, gloo any.
        found = strategy.all_gather(torch.from_numpy(values).to(strategy.root_device))
        return found.reshape(size, -1).cpu().numpy()

    return Partition(int(trainer.global_rank), size, gather)


class UnsharedBatch(RuntimeError):
    """Process 0's batch could not be sent to the other processes."""


def same_batch(trainer: Any, batch: Any) -> Any:
    """Process 0's batch, in every process: the shares of one check must be of one J.

    Process 0 pickles the batch itself (on the CPU), so a batch that cannot be sent fails in every
    process alike instead of leaving the others waiting for it.
    """
    if not shared(trainer):
        return batch
    sent: bytes | str = ""
    if trainer.global_rank == 0:
        try:
            sent = pickle.dumps(move_data_to_device(batch, "cpu"))
        except Exception as err:  # any pickling failure: say it everywhere
            sent = f"{type(err).__name__}: {err}"
    received = trainer.strategy.broadcast(sent, src=0)
    if isinstance(received, str):
        raise UnsharedBatch(
            f"process 0's batch cannot be sent to the other processes ({received}); batches "
            "must pickle for a check under DDP"
        )
    return batch if trainer.global_rank == 0 else pickle.loads(received)


def agreed_fault(trainer: Any, err: Exception, reason: str, fatal: bool) -> tuple[str, bool]:
    """The fault every process reports: the lowest process whose own part raised (rather than
    hear of another's) tells its ``reason`` and whether it is ``fatal``.

    Every process comes here after a failed shared check (the engine raises in all or none), so
    the two collectives below meet.
    """
    if not shared(trainer):
        return reason, fatal
    strategy = trainer.strategy
    own = not isinstance(err, PartitionError)
    flags = strategy.all_gather(torch.tensor([float(own)], device=strategy.root_device))
    raised = torch.flatten(flags).nonzero().flatten().tolist()
    source = int(raised[0]) if raised else 0
    reason, fatal = strategy.broadcast((reason, fatal), src=source)
    return reason, fatal
