"""A perturbed entry of a linear layer's parameter as a change of that layer's output, for the
batched evaluations of J.

The output of ``nn.Linear``, ``nn.Conv1d/2d/3d`` and ``nn.Embedding`` is linear in each of its
parameters, so moving one entry by δ adds δ times a slice of the input to one output channel:

- ``Linear`` weight W[r, c]: output column r gains δ·x[..., c]; bias b[r]: column r gains δ;
- ``Conv`` weight W[o, c, k…]: output channel o gains δ times input channel c (of o's group),
  padded as the layer pads, read at offset k·dilation with the layer's stride; bias b[o]: δ;
- ``Embedding`` weight E[r, c]: feature c of every position holding token r gains δ.

So the copies of a vmapped call share the layer's own product (and everything before it) and
each adds its slice: no copy of the weight per perturbed model (a 512x512x3x3 convolution is
19 MB in float64), no per-copy convolution. From the layer's output on, the copies are ordinary
batched tensors. One call may move entries of several tensors: a copy's change is added only
at the layer of the tensor it moves (``where``), so the other layers leave it bit for bit.

The parameter itself stays unperturbed in memory: only its layer's forward may read it. Any
other read (a penalty on the weight, a ``.detach()`` of it, a second module sharing it) would
see the unperturbed value, so it raises ``OutsideUse``; a layer that runs other than once per
evaluation raises too. The caller then evaluates that tensor another way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from gradwatch.evaluation.lowrank import NotLowRank, OutsideUse
from gradwatch.evaluation.vectorized import _owner

_CONVOLUTIONS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FORWARDS = {nn.Linear.forward, nn.Embedding.forward, *(c.forward for c in _CONVOLUTIONS)}


def shift_owner(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The stock ``nn.Linear``, ``nn.Conv1d/2d/3d`` or ``nn.Embedding`` (no ``max_norm``, which
    rewrites the weight) whose ``weight`` or ``bias`` is parameter ``name``, else None.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> shift_owner(model, "0.weight")[1], shift_owner(model, "1.weight")
        ('weight', None)
    """
    owner = _owner(model, name)
    if owner is None or type(owner[0]).forward not in _FORWARDS:
        return None
    if isinstance(owner[0], nn.Embedding) and owner[0].max_norm is not None:
        return None
    return owner


@dataclass
class Entry:
    """One shifted tensor of a call: θ's tensor ``t``, its layer and kind, and the tensor object
    the evaluation passes for it (watched for reads outside the layer)."""

    t: int
    module: nn.Module
    kind: str
    parameter: torch.Tensor
    shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.shape = tuple(self.parameter.shape)


def _unravel(index: torch.Tensor, shape: Sequence[int]) -> list[torch.Tensor]:
    """Row-major coordinates of flat ``index`` in ``shape`` (works on vmapped 0-d tensors)."""
    coordinates = []
    for size in reversed(shape):
        coordinates.append(index % size)
        index = index // size
    return coordinates[::-1]


def _channel(size: int, which: torch.Tensor, trailing: int, device: Any) -> torch.Tensor:
    """A bool mask over ``size`` channels, true at ``which``, followed by ``trailing`` dims of
    size 1 (so it broadcasts on the channel dim of a layer output)."""
    mask = torch.arange(size, device=device) == which
    return mask.reshape(size, *([1] * trailing))


def _conv_change(
    entry: Entry, x: torch.Tensor, out: torch.Tensor, index: torch.Tensor, step: torch.Tensor
) -> torch.Tensor:
    module, shape = entry.module, entry.shape
    assert isinstance(module, nn.modules.conv._ConvNd)
    spatial = len(module.kernel_size)
    if entry.kind == "bias":
        return torch.where(_channel(shape[0], index, spatial, out.device), step, 0.0)
    single = x.dim() == spatial + 1  # an unbatched input (C, *S)
    if single:
        x, out = x.unsqueeze(0), out.unsqueeze(0)
    o, c, *k = _unravel(index, shape)
    source = (o // (shape[0] // module.groups)) * shape[1] + c  # input channel, in o's group
    pad = module._reversed_padding_repeated_twice
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = F.pad(x, pad, mode=mode) if any(pad) else x
    piece = padded.index_select(1, source.reshape(1))
    for d in range(spatial):
        reach = torch.arange(out.shape[2 + d], device=x.device) * module.stride[d]
        piece = piece.index_select(2 + d, k[d] * module.dilation[d] + reach)
    moved = torch.where(_channel(shape[0], o, spatial, x.device), piece * step, 0.0)
    return moved.squeeze(0) if single else moved


def change(
    entry: Entry, x: torch.Tensor, out: torch.Tensor, index: torch.Tensor, step: torch.Tensor
) -> torch.Tensor:
    """What moving entry ``index`` of ``entry``'s tensor by ``step`` adds to the layer's output
    ``out`` for input ``x`` (broadcastable to ``out``).

    Example:
        >>> layer = nn.Linear(3, 2).double()
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> entry = Entry(0, layer, "weight", layer.weight)
        >>> moved = change(entry, x, layer(x), torch.tensor(4), torch.tensor(0.5))
        >>> torch.equal(moved[:, 1], 0.5 * x[:, 1]), bool((moved[:, 0] == 0).all())
        (True, True)
    """
    module, kind, shape = entry.module, entry.kind, entry.shape
    if isinstance(module, nn.Linear):
        if kind == "bias":
            return torch.where(_channel(shape[0], index, 0, out.device), step, 0.0)
        row, col = _unravel(index, shape)
        column = x.index_select(-1, col.reshape(1)) * step
        return torch.where(_channel(shape[0], row, 0, out.device), column, 0.0)
    if isinstance(module, nn.Embedding):
        row, col = _unravel(index, shape)
        hit = (x == row).unsqueeze(-1) & _channel(shape[1], col, 0, out.device)
        return torch.where(hit, step, torch.zeros((), dtype=out.dtype, device=out.device))
    return _conv_change(entry, x, out, index, step)


@dataclass
class EntryShifts:
    """Forward hooks that add each copy's entry change at the layers of ``entries``, inside a
    vmapped function: ``bind`` the copy's (tensor, index, step), then evaluate J within
    ``active()``. ``calls`` counts each layer's forwards in the last evaluation."""

    entries: list[Entry]
    tensor: torch.Tensor | None = None
    index: torch.Tensor | None = None
    step: torch.Tensor | None = None
    calls: dict[int, int] = field(default_factory=dict)
    _inside: dict[int, int] = field(default_factory=dict)

    def bind(self, tensor: torch.Tensor, index: torch.Tensor, step: torch.Tensor) -> None:
        """The copy's moved tensor (θ's number), flat index in it, and step."""
        self.tensor, self.index, self.step = tensor, index, step

    @contextmanager
    def active(self) -> Iterator[None]:
        """Hooks on the entries' layers and the guard against reads outside them; raises after
        the body when a layer did not run exactly once."""
        owners = {id(e.module): e.module for e in self.entries}
        self.calls = dict.fromkeys(owners, 0)
        self._inside = dict.fromkeys(owners, 0)
        with ExitStack() as stack:
            for module in owners.values():
                stack.callback(module.register_forward_pre_hook(self._before).remove)
                stack.callback(module.register_forward_hook(self._after).remove)
            stack.enter_context(_Guard(self))
            yield
        ran = [e.module for e in self.entries if self.calls[id(e.module)] != 1]
        if ran:
            count = self.calls[id(ran[0])]
            raise NotLowRank(f"a {type(ran[0]).__name__} ran {count} times in one evaluation")

    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.calls[id(module)] += 1
        self._inside[id(module)] += 1

    def _after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        self._inside[id(module)] -= 1
        assert self.tensor is not None and self.index is not None and self.step is not None
        for entry in self.entries:
            if entry.module is not module:
                continue
            mine = self.tensor == entry.t
            index = torch.where(mine, self.index, torch.zeros_like(self.index))
            moved = change(entry, args[0], output, index, self.step)
            output = torch.where(mine, output + moved, output)
        return output

    def outside(self, value: object) -> None:
        """Raises ``OutsideUse`` if ``value`` is a shifted tensor read outside its layer."""
        for entry in self.entries:
            if value is entry.parameter and not self._inside[id(entry.module)]:
                raise OutsideUse(
                    f"the {entry.kind} is used outside its {type(entry.module).__name__}"
                )


class _Guard(TorchFunctionMode):
    """Checks every torch function's arguments for a shifted tensor read outside its layer."""

    def __init__(self, shifts: EntryShifts) -> None:
        super().__init__()
        self.shifts = shifts

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                self.shifts.outside(leaf)
        return func(*args, **kwargs)
