"""Which strategies the callback can check, the refusal, at setup, of the others (a check that
cannot read the model must say so before training starts, never train on silently), and the
check of a model sharded under ``ModelParallelStrategy`` (FSDP2, tensor parallelism)."""

from __future__ import annotations

from typing import Any

from torch import nn

from gradwatch import GradCheckReport
from gradwatch.sharded import check_sharded, is_sharded

from ._objective import logging_muted, objective

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
            objective(pl_module, batch_idx),
            batch,
            progress=check.progress,
            replica_budget=check.replica_budget,
            **options,
        )
