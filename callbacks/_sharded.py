"""Which strategies the callback can check, and the refusal, at setup, of the others: a check
that cannot read the model must say so before training starts, never train on silently."""

from __future__ import annotations

from typing import Any

# The strategies whose model the check reads, by the class name of the strategy or of a base
# class (the same names in `pytorch_lightning` and `lightning.pytorch`), and what each means.
CHECKED = {
    "SingleDeviceStrategy": "one process",
    "DDPStrategy": "DDP: process 0's batch, the components split over the processes",
}
# Strategies that shard or wrap the model in a way the check cannot read, and why. Looked up
# before CHECKED along the class's bases: DeepSpeedStrategy and XLAStrategy derive from
# DDPStrategy.
REFUSED = {
    "DeepSpeedStrategy": "DeepSpeed partitions the parameters into flat buffers of its own",
    "XLAStrategy": "XLA traces the model into graphs the check cannot evaluate in float64",
    "FSDPStrategy": "FSDP (version 1) flattens the parameters into FlatParameters",
    "ModelParallelStrategy": "its parameters are DTensors sharded over a device mesh",
}
WHAT_WORKS = (
    "the check runs under a single device (devices=1), strategy='ddp' or 'ddp_spawn'; to check "
    "the model itself, train it once on one device with GradientCheck, or call "
    "gradwatch.check_module on an unsharded copy"
)


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
