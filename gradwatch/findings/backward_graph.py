"""The backward graph of J, reduced to what locating a bug needs: which checked parameters each
node's backward sends gradient to, and which module's forward made each node.

A wrong backward in a node corrupts the gradient of every parameter its gradient reaches, and
of no other; so the graph, not a list of layers, says where a wrong gradient can come from,
also through residual connections (a parameter reached along several paths is corrupted by a
bug on any of them).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gradwatch.common.user_state import (
    attention_fast_path_disabled,
    cast_batch,
    dropout_disabled,
    preserved_rng,
    reseed,
)
from gradwatch.precision.float64_kernels import Composing

# AccumulateGrad nodes (a leaf's) carry this sequence number: autograd runs them as soon as
# they are ready.
_LEAF_SEQUENCE = 2**64 - 1


@dataclass(frozen=True)
class Span:
    """One call of a module's forward: the autograd sequence numbers of the nodes it made lie
    in (start, end); ``depth`` is how deep the call is nested."""

    module: str
    depth: int
    start: int
    end: int


@dataclass(frozen=True)
class BackwardGraph:
    """The autograd graph of J, nodes in the order backward runs them (J's node first).

    Attributes:
        parameters: the checked parameters J reaches, in the order backward reaches them.
        owners: the module each parameter belongs to (``"0"`` for ``"0.weight"``; ``""`` for a
            parameter of the model itself).
        modules: per node, the innermost module whose forward made it; None for a node made
            outside every module (the loss).
        children: per node, the nodes its backward sends gradient to.
        leaf: per node, the position in ``parameters`` of the parameter it accumulates the
            gradient of, or -1.
        unreached: the checked parameters J does not depend on.
    """

    parameters: tuple[str, ...]
    owners: Mapping[str, str]
    modules: tuple[str | None, ...]
    children: tuple[tuple[int, ...], ...]
    leaf: tuple[int, ...]
    unreached: tuple[str, ...] = ()

    def reach(self) -> list[int]:
        """Per node, the parameters its gradient reaches, as a bit mask over ``parameters``.

        Example:
            >>> g = BackwardGraph(("a", "b"), {"a": "", "b": ""}, (None, None, None),
            ...                   ((1, 2), (), ()), (-1, 0, 1))
            >>> g.reach()
            [3, 1, 2]
        """
        masks = [0] * len(self.children)
        for node in reversed(range(len(self.children))):  # children come after their parents
            mask = 1 << self.leaf[node] if self.leaf[node] >= 0 else 0
            for child in self.children[node]:
                mask |= masks[child]
            masks[node] = mask
        return masks


def owner_of(parameter: str) -> str:
    """The module a parameter belongs to, by its name.

    Example:
        >>> owner_of("layer2.1.bn1.weight"), owner_of("scale")
        ('layer2.1.bn1', '')
    """
    return parameter.rpartition(".")[0]


def _next_sequence_nr() -> int:
    """The sequence number autograd gives the next node it makes (by making one)."""
    with torch.enable_grad():
        probe = torch.zeros((), requires_grad=True).mul(1.0)
    assert probe.grad_fn is not None
    return int(probe.grad_fn._sequence_nr()) + 1


@contextmanager
def module_spans(model: nn.Module) -> Iterator[list[Span]]:
    """Records, while the body runs, one :class:`Span` per forward call of each module of
    ``model``; the hooks are removed after, also when the body raises."""
    spans: list[Span] = []
    open_calls: list[tuple[str, int]] = []
    handles = []

    def before(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            open_calls.append((name, _next_sequence_nr()))

        return hook

    def after(module: nn.Module, args: Any, output: Any) -> None:
        if open_calls:
            name, start = open_calls.pop()
            spans.append(Span(name, len(open_calls), start, _next_sequence_nr()))

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after))
        yield spans
    finally:
        for handle in handles:
            handle.remove()


def _topological(root: Any) -> list[Any]:
    """The nodes of ``root``'s graph in the order autograd's engine runs them: a node once every
    node sending it gradient has run; among ready nodes the most recently made first."""
    parents: dict[Any, int] = {root: 0}
    stack, seen = [root], {root}
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            parents[child] = parents.get(child, 0) + 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    order: list[Any] = []
    ready = [(-int(root._sequence_nr()), 0, root)]
    made = 1  # a tie-breaker: nodes themselves are not comparable
    while ready:
        _, _, node = heapq.heappop(ready)
        order.append(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            parents[child] -= 1
            if parents[child] == 0:
                heapq.heappush(ready, (-int(child._sequence_nr()), made, child))
                made += 1
    return order


def _owners(sequence: np.ndarray, spans: Sequence[Span]) -> list[str | None]:
    """Per sequence number, the innermost span holding it (outer spans first, inner overwrite)."""
    owner: list[str | None] = [None] * sequence.size
    ordered = np.argsort(sequence, kind="stable")
    keys = sequence[ordered]
    for span in sorted(spans, key=lambda s: s.depth):
        lo, hi = np.searchsorted(keys, [span.start, span.end])
        for k in ordered[lo:hi]:
            owner[int(k)] = span.module
    return owner


def backward_graph(
    cost: torch.Tensor, leaves: Mapping[str, torch.Tensor], spans: Sequence[Span] = ()
) -> BackwardGraph:
    """The :class:`BackwardGraph` of ``cost`` with respect to ``leaves`` (name → leaf tensor
    that requires grad); ``spans`` (from :func:`module_spans`) name the module of each node.

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> b = torch.ones((), requires_grad=True)
        >>> g = backward_graph(((w * 3).sum() + b) ** 2, {"fc.weight": w, "fc.bias": b})
        >>> g.parameters, g.owners["fc.bias"]
        (('fc.bias', 'fc.weight'), 'fc')
    """
    names = {id(t): n for n, t in leaves.items()}
    if cost.grad_fn is None:
        return BackwardGraph((), {}, (), (), (), tuple(leaves))
    order = _topological(cost.grad_fn)
    position = {node: k for k, node in enumerate(order)}
    parameters: list[str] = []
    leaf = []
    for node in order:
        name = names.get(id(getattr(node, "variable", None)))
        leaf.append(len(parameters) if name is not None else -1)
        if name is not None:
            parameters.append(name)
    sequence = np.array([min(int(n._sequence_nr()), _LEAF_SEQUENCE - 1) for n in order], np.uint64)
    modules = _owners(sequence, spans)
    for k, at in enumerate(leaf):
        if at >= 0:
            modules[k] = owner_of(parameters[at])
    children = tuple(
        tuple(position[c] for c, _ in node.next_functions if c is not None) for node in order
    )
    return BackwardGraph(
        parameters=tuple(parameters),
        owners={p: owner_of(p) for p in parameters},
        modules=tuple(modules),
        children=children,
        leaf=tuple(leaf),
        unreached=tuple(n for n in leaves if n not in set(parameters)),
    )


def trace_backward(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    names: Sequence[str] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> BackwardGraph:
    """One evaluation of ``loss_fn(model, batch)`` on copies of the model's tensors in
    ``dtype``, with module hooks on, and the :class:`BackwardGraph` of that J with respect to
    the parameters ``names`` (every trainable one by default). The model is left as it was
    (parameters, buffers, flags, RNG states); dropout layers are the identity, as in the check.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        >>> g = trace_backward(model, lambda m, x: m(x).sum(), torch.randn(5, 3))
        >>> g.parameters
        ('2.bias', '2.weight', '0.bias', '0.weight')
        >>> sorted({m for m in g.modules if m is not None})  # the sum is the loss's, not a module's
        ['0', '1', '2']
    """
    params = dict(model.named_parameters())
    chosen = list(names) if names is not None else [n for n, p in params.items() if p.requires_grad]
    device = params[chosen[0]].device if chosen else torch.device("cpu")
    leaves = {n: params[n].detach().to(dtype).clone().requires_grad_(True) for n in chosen}
    tensors: dict[str, torch.Tensor] = {
        n: (t.detach().to(dtype) if t.is_floating_point() else t.detach()).clone()
        for n, t in [*params.items(), *model.named_buffers()]
        if n not in leaves
    }
    tensors.update(leaves)
    with (
        preserved_rng(),
        attention_fast_path_disabled(),
        dropout_disabled(model, disable=True),
        module_spans(model) as spans,
        torch.enable_grad(),
        # kernels without a float64 kernel, composed (gradwatch.precision.float64_kernels)
        Composing(),
    ):
        reseed(seed)
        cost = functional_call(
            _Loss(model, loss_fn),
            {f"model.{n}": t for n, t in tensors.items()},
            (cast_batch(batch, dtype, device),),
        )
    return backward_graph(cost, leaves, spans)


class _Loss(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap in the copies."""

    def __init__(self, model: nn.Module, loss_fn: Any) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)
