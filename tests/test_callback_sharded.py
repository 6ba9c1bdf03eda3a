"""GradientCheck under the strategies it cannot check: refused at setup, naming the strategy
and what would work, never a run that trains on without a check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pytorch_lightning.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    XLAStrategy,
)

from callbacks._sharded import WHAT_WORKS, require_checkable


def _trainer(cls: type) -> SimpleNamespace:
    # Built without __init__: FSDP, DeepSpeed and XLA need hardware or packages not here, and
    # the refusal reads the strategy's class alone.
    return SimpleNamespace(strategy=cls.__new__(cls))


class _OwnDDP(DDPStrategy):
    """A user's DDP variant: still DDP."""


class _Unknown:
    """A strategy gradwatch has never heard of (its class alone is read)."""


@pytest.mark.parametrize("cls", [SingleDeviceStrategy, DDPStrategy, _OwnDDP])
def test_checked_strategies_pass_setup(cls: type) -> None:
    require_checkable(_trainer(cls))


@pytest.mark.parametrize(
    ("cls", "why"),
    [
        (FSDPStrategy, "FSDP (version 1) flattens the parameters into FlatParameters"),
        (DeepSpeedStrategy, "DeepSpeed partitions the parameters into flat buffers of its own"),
        (XLAStrategy, "XLA traces the model into graphs the check cannot evaluate in float64"),
        (ModelParallelStrategy, "its parameters are DTensors sharded over a device mesh"),
        (_Unknown, "gradwatch does not know how it places the model's parameters"),
    ],
)
def test_other_strategies_are_refused_naming_them(cls: type, why: str) -> None:
    with pytest.raises(ValueError) as raised:
        require_checkable(_trainer(cls))
    assert str(raised.value) == (
        f"GradientCheck: cannot check a model trained under the strategy `{cls.__name__}` "
        f"({why}), and refuses rather than train on without checking; {WHAT_WORKS}"
    )
