"""What ``torch.func.vmap`` refuses as written, evaluated for its values only, inside the check's
batched evaluations of J: those need J's value at perturbed copies of θ, never its backward.

- An ``autograd.Function`` written the old way (``forward(ctx, ...)``, no ``setup_context``),
  or one with ``setup_context`` but neither a ``vmap`` rule nor ``generate_vmap_rule=True``:
  vmap refuses to run it at all. Inside :func:`through_forward` its ``apply`` calls the
  user's own ``forward`` directly, under ``torch.no_grad()`` as ``Function.apply`` runs it,
  with a context that records nothing (no backward is taken there). The analytic gradient
  never runs inside it: it runs the user's backward, as written.
- In-place writes of batched values into a fresh tensor (``buf += x``, ``masked_fill_``,
  index assignment), which vmap cannot do in place: :func:`functional` evaluates the same
  function through ``torch.func.functionalize``, which turns them into out-of-place ops.

Either way, a tensor's batched way is kept only where it reproduced the plain J on the tensor's
first pair (:mod:`gradwatch.evaluation.call_plan`), as every way is.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.autograd.function import Function, _SingleLevelFunction
from torch.func import functionalize
from torch.overrides import TorchFunctionMode

# Function.apply as torch defines it (a classmethod object), put back when no check runs.
_APPLY = Function.__dict__["apply"]
_state = threading.local()  # the names of the Functions run through their forward, per thread
_lock = threading.Lock()
_installed = 0  # how many through_forward blocks are open, in all threads


class _NoRecord:
    """A ``ctx`` for a forward whose backward is never taken: it keeps attributes a forward
    sets (they are read only by the backward) and saves nothing."""

    saved_tensors: tuple[torch.Tensor, ...] = ()

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.needs_input_grad = tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in args)

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    save_for_backward = save_for_forward = mark_dirty = _nothing
    mark_non_differentiable = set_materialize_grads = _nothing


def old_style(cls: type[Function]) -> bool:
    """Whether ``cls`` has no ``setup_context`` (its ``forward`` takes ``ctx``).

    Example:
        >>> class Square(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         return x * x
        >>> old_style(Square)
        True
    """
    return cls.setup_context is _SingleLevelFunction.setup_context


def _refused(cls: type[Function]) -> bool:
    """Whether vmap refuses ``cls``: old style, or no vmap rule of its own or generated."""
    no_rule = not cls.generate_vmap_rule and cls.vmap is Function.vmap
    return old_style(cls) or no_rule


def _apply(cls: type[Function], *args: Any, **kwargs: Any) -> Any:
    seen: set[str] | None = getattr(_state, "seen", None)
    every = getattr(_state, "every", False)
    if (
        seen is None
        or not torch._C._are_functorch_transforms_active()
        or not (every or _refused(cls))
    ):
        return _APPLY.__func__(cls, *args, **kwargs)
    seen.add(cls.__qualname__)
    with torch.no_grad():  # as Function.apply runs a forward
        if old_style(cls):
            return cls.forward(_NoRecord(args), *args, **kwargs)
        return cls.forward(*args, **kwargs)


@contextlib.contextmanager
def through_forward(seen: set[str], every: bool = False) -> Iterator[None]:
    """Inside the block, in this thread and under a torch.func transform, a Function vmap
    refuses (``every``: any Function, as under ``functionalize``, which has no rule for them)
    runs its own ``forward`` for values only; its name is added to ``seen``. Other threads, and
    code outside any transform, get ``Function.apply`` unchanged.

    Example:
        >>> class Twice(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         return 2 * x
        ...     @staticmethod
        ...     def backward(ctx, grad):
        ...         return 2 * grad
        >>> seen = set()
        >>> with through_forward(seen):
        ...     out = torch.func.vmap(Twice.apply)(torch.ones(3, 2))
        >>> out.sum().item(), seen
        (12.0, {'Twice'})
    """
    global _installed
    with _lock:
        if _installed == 0:
            Function.apply = classmethod(_apply)  # type: ignore[assignment, method-assign]
        _installed += 1
    outer = getattr(_state, "seen", None), getattr(_state, "every", False)
    _state.seen, _state.every = seen, every
    try:
        yield
    finally:
        _state.seen, _state.every = outer
        with _lock:
            _installed -= 1
            if _installed == 0:
                Function.apply = _APPLY  # type: ignore[method-assign]


def _basic(index: Any) -> bool:
    """Whether ``index`` selects a view (ints, slices, None, ...), not a copy (tensors, lists)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)


class _Assignments(TorchFunctionMode):
    """Writes of values into a floating tensor (``t[i] = v`` with a basic index, ``t.copy_(v)``)
    as ``zero_`` then ``add_``: the same values (0 + v is v), but ops with batching rules once
    functionalized; functionalize makes ``copy_`` the op ``aten::copy``, which has none, and
    vmap's fallback for it runs the copies one by one (37 ms per copy of a 4k-parameter block
    here, more than a whole plain evaluation)."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.__setitem__ and len(args) == 3 and not kwargs:
            target, index, value = args
            if _basic(index) and _same_kind(target, value):
                target[index].zero_().add_(value)
                return None
        elif func is torch.Tensor.copy_ and len(args) == 2 and _same_kind(*args) and not kwargs:
            return args[0].zero_().add_(args[1])
        return func(*args, **kwargs)


def _same_kind(target: Any, value: Any) -> bool:
    """A floating tensor given a tensor of its dtype or a real number: add_ rounds as copy_."""
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        return False
    if isinstance(value, torch.Tensor):
        return value.dtype == target.dtype and value.device == target.device
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def functional(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its in-place writes made out-of-place (``torch.func.functionalize``), so
    vmap can batch a write of batched values into a tensor every copy shares. Call it inside
    ``through_forward(seen, every=True)`` where ``fn`` may apply an autograd.Function.

    Example:
        >>> def fill(x):
        ...     out = torch.zeros(3)
        ...     out += x
        ...     return out
        >>> torch.func.vmap(functional(fill))(torch.ones(2, 3)).sum().item()
        6.0
    """
    inner = functionalize(fn)

    def run(*args: Any) -> Any:
        with _Assignments():
            return inner(*args)

    return run
