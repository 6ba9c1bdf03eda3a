"""A plain module with the full tensors of a DTensor-sharded one (FSDP2's ``fully_shard``,
tensor parallelism's ``parallelize_module``): the same submodules, the same code, the same
names, but every parameter and buffer whole (``DTensor.full_tensor()``) and local, and none of
the hooks ``torch.distributed`` installed to gather shards and redistribute activations.

The sharded module is not touched: the replica is a tree of shallow copies whose registries
(parameters, buffers, submodules, hooks) are new dictionaries. The user's own hooks stay.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

__all__ = ["full", "is_sharded", "replica", "replica_of", "sharded_names"]

# The hook registries of nn.Module whose entries are callables, and those that only flag a
# hook id of another registry (with_kwargs, always_called): a dropped hook leaves both.
_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_FLAGS = (
    ("_forward_hooks_with_kwargs", "_forward_hooks"),
    ("_forward_hooks_always_called", "_forward_hooks"),
    ("_forward_pre_hooks_with_kwargs", "_forward_pre_hooks"),
)
# The package whose hooks gather FSDP's shards and redistribute tensor parallelism's
# activations: in the replica every tensor is whole, so they have nothing to do.
_DISTRIBUTED = "torch.distributed"


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (a model that
    :func:`gradwatch.sharded.check_sharded` checks; public as ``gradwatch.sharded.is_sharded``).

    Example:
        >>> from torch import nn
        >>> from gradwatch.sharded import is_sharded
        >>> is_sharded(nn.Linear(2, 1))
        False
    """
    return any(isinstance(p, DTensor) for p in module.parameters())


def sharded_names(module: nn.Module) -> list[str]:
    """The names of the DTensor parameters, in ``named_parameters()`` order."""
    return [n for n, p in module.named_parameters() if isinstance(p, DTensor)]


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, local and detached: a collective for a DTensor (every process of its
    mesh calls it, in the same order), a copy otherwise."""
    if isinstance(tensor, DTensor):
        return tensor.full_tensor().detach()
    return tensor.detach().clone()


def replica(module: nn.Module) -> nn.Module:
    """The plain module of ``module``'s full tensors (a collective: every process calls it).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
        >>> twin = replica(net)
        >>> twin[0].weight is net[0].weight, torch.equal(twin[0].weight, net[0].weight)
        (False, True)
    """
    return _copy(module, {}, full)


def replica_of(module: nn.Module, tensor: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """The replica of ``module`` whose parameters and buffers are ``tensor(t)`` of its own
    (``full`` for :func:`replica`); parameters stay parameters when ``tensor`` returns one."""
    return _copy(module, {}, tensor)


def _copy(
    module: nn.Module, memo: dict[int, Any], tensor: Callable[[torch.Tensor], torch.Tensor]
) -> nn.Module:
    if id(module) in memo:  # a submodule shared by two parents stays shared
        return memo[id(module)]
    # A shallow copy made by hand: FSDPModule.__new__ would run the class's __init__ again.
    twin: nn.Module = object.__new__(_plain_class(type(module)))
    twin.__dict__.update(module.__dict__)
    memo[id(module)] = twin
    twin._parameters = {n: _parameter(p, memo, tensor) for n, p in module._parameters.items()}
    twin._buffers = {
        n: None if b is None else _tensor(b, memo, tensor) for n, b in module._buffers.items()
    }
    twin._modules = {
        n: None if c is None else _copy(c, memo, tensor) for n, c in module._modules.items()
    }
    for name in _HOOKS:
        hooks = getattr(module, name, None)
        if hooks is not None:
            setattr(twin, name, OrderedDict((k, h) for k, h in hooks.items() if not _theirs(h)))
    for name, of in _FLAGS:
        flags = getattr(module, name, None)
        if flags is not None:
            setattr(
                twin, name, OrderedDict((k, f) for k, f in flags.items() if k in getattr(twin, of))
            )
    return twin


def _plain_class(cls: type) -> type:
    # fully_shard swaps a module's class for FSDP<Class>(FSDPModule, Class): the replica takes
    # the user's class back (FSDPModule's methods reach the sharded state, which it has not).
    if cls.__module__.startswith(_DISTRIBUTED) and cls.__name__.startswith("FSDP"):
        return next(b for b in cls.__bases__ if not b.__module__.startswith(_DISTRIBUTED))
    return cls


def _parameter(p: nn.Parameter | None, memo: dict[int, Any], tensor: Any) -> nn.Parameter | None:
    if p is None:
        return None
    if id(p) not in memo:  # tied parameters stay tied
        memo[id(p)] = nn.Parameter(tensor(p), requires_grad=p.requires_grad)
    return memo[id(p)]


def _tensor(t: torch.Tensor, memo: dict[int, Any], tensor: Any) -> torch.Tensor:
    if id(t) not in memo:
        memo[id(t)] = tensor(t)
    return memo[id(t)]


def _theirs(hook: Any) -> bool:
    """Whether a hook is torch.distributed's (a function, a bound method, a partial)."""
    target = getattr(hook, "func", hook)
    target = getattr(target, "__func__", target)
    return str(getattr(target, "__module__", "") or "").startswith(_DISTRIBUTED)
