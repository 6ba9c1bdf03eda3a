"""The check's precision kept through the model's own casts.

Model code written for mixed-precision training keeps float32 islands: a loss that does
``logits.float()``, an RMSNorm that computes in ``torch.float32`` and casts back, a softmax with
``dtype=torch.float32``. In a float64 check those casts round J to float32, and the two-sided
difference at ε = 1e-7 reads rounding noise. While J and its gradient are evaluated, a
``TorchFunctionMode`` turns every cast to a floating dtype less precise than the check's into a
cast to the check's dtype: ``.float()``, ``.half()``, ``.bfloat16()``, ``.to(...)`` (a dtype, a
device and a dtype, or another tensor), ``.type(...)``, ``.type_as(...)`` and the ``dtype=`` of
any torch function (factories, ``softmax``, ``sum``, …). Tensors created without a dtype get
the check's dtype as the default. Reinterpreting views (``Tensor.view(dtype)``) are left alone.

Autocast needs nothing: it never casts a float64 tensor (``is_eligible`` in
ATen/autocast_mode.h excludes ``kDouble`` on every device type), so inside an autocast region a
float64 check stays float64; ``test_precision.py`` shows it on CPU.

The first evaluation of J decides, and counts like any other: it runs under the guard, which
records what it changed, where (grouped by module) and where precision still leaks past it (an
op that returns float32 from float64 inputs, float32 arrays from numpy, J itself in float32).
A guard that changed nothing stays off afterwards (no cost); a model that fails under it but
not as written (an op that exists only in float32) runs as written from then on, and a note
says so. Every evaluation of one check runs in the same regime.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from gradwatch.precision.float64_kernels import composition
from gradwatch.precision.sites import Sites

_BASE = torch._C.TensorBase
_T = TypeVar("_T")
# Methods whose target dtype is in their name.
_NAMED_CASTS: dict[Any, torch.dtype] = {
    _BASE.float: torch.float32,
    _BASE.half: torch.float16,
    _BASE.bfloat16: torch.bfloat16,
}
# ``Tensor.type("torch.FloatTensor")``: the legacy type names of the floating dtypes.
_TYPE_NAMES: dict[str, torch.dtype] = {
    "FloatTensor": torch.float32,
    "HalfTensor": torch.float16,
    "BFloat16Tensor": torch.bfloat16,
    "DoubleTensor": torch.float64,
}
# Factories that take numpy arrays (``torch.from_numpy`` itself is not seen by function modes;
# the ``Tensor.numpy`` that starts a round trip is).
_FROM_ARRAYS = frozenset({"tensor", "as_tensor", "asarray"})


def lowers(target: object, dtype: torch.dtype) -> bool:
    """Whether a cast to ``target`` loses precision against the check's ``dtype``.

    Example:
        >>> lowers(torch.float32, torch.float64), lowers(torch.int64, torch.float64)
        (True, False)
    """
    if not isinstance(target, torch.dtype) or not (target.is_floating_point or target.is_complex):
        return False
    return bool(torch.finfo(target).eps > torch.finfo(dtype).eps)


def _kept(target: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    """The dtype a lowering cast to ``target`` becomes: ``dtype``, or its complex counterpart."""
    return dtype.to_complex() if target.is_complex else dtype


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", repr(func))
    owner = getattr(func, "__qualname__", name).rpartition(".")[0]
    if owner == "TensorBase":
        return f"Tensor.{name}"
    module = getattr(func, "__module__", None) or "torch"
    return f"F.{name}" if module == "torch.nn.functional" else f"torch.{name}"


class _Keep(TorchFunctionMode):
    """Rewrites casts that would lower precision below ``dtype``; ``rewrite=False`` only sees
    them (the model as written). ``seen(description, floating)`` is told of each one."""

    def __init__(
        self,
        dtype: torch.dtype,
        rewrite: bool = True,
        seen: Callable[[str, bool], None] | None = None,
        composed: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.rewrite = rewrite
        self.seen = seen
        # told of each kernel run as a composition (gradwatch.precision.float64_kernels)
        self.composed = composed
        self.low = frozenset(
            d for d in (torch.float32, torch.float16, torch.bfloat16, torch.complex64)
            if lowers(d, dtype)
        )  # fmt: skip

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        instead = composition(func, args) if self.rewrite else None
        if instead is not None:  # no kernel in the check's dtype: its composition in that dtype
            if self.composed is not None:
                self.composed(instead[0])
            return instead[1](*args, **kwargs)
        named = _NAMED_CASTS.get(func)
        if named is not None:
            if named in self.low and self._note(f"a cast to {_short(named)}", args[0]):
                return _BASE.to(args[0], dtype=self.dtype, **kwargs)
            return func(*args, **kwargs)
        if func is _BASE.to:
            return self._to(func, args, kwargs)
        if func is _BASE.type and (len(args) > 1 or "dtype" in kwargs):
            return self._type(func, args, kwargs)
        if func is _BASE.type_as and args[1].dtype in self.low:
            if self._note(f"a cast to {_short(args[1].dtype)}", args[0]):
                return _BASE.to(args[0], args[1].device, _kept(args[1].dtype, self.dtype))
            return func(*args, **kwargs)
        target = kwargs.get("dtype")
        if (
            isinstance(target, torch.dtype)
            and target in self.low
            and self._note(f"{_op_name(func)}(dtype={_short(target)})", None)
        ):
            kwargs = {**kwargs, "dtype": _kept(target, self.dtype)}
        return func(*args, **kwargs)

    def _note(self, what: str, source: object) -> bool:
        """Tells ``seen`` of a lowering cast; whether to rewrite it."""
        if self.seen is not None:
            floating = not isinstance(source, torch.Tensor) or (
                source.is_floating_point() or source.is_complex()
            )
            self.seen(what, floating)
        return self.rewrite

    def _to(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Tensor.to(dtype, …), .to(device, dtype, …), .to(other, …), .to(dtype=…, …)
        target = kwargs.get("dtype")
        position = next((k for k, a in enumerate(args[1:3], 1) if isinstance(a, torch.dtype)), 0)
        if position:
            target = args[position]
        other = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
        if other is not None:
            target = other.dtype
        if target not in self.low or not self._note(f"a cast to {_short(target)}", args[0]):
            return func(*args, **kwargs)
        kept = _kept(target, self.dtype)
        if other is not None:
            return func(args[0], other.device, kept, *args[2:], **kwargs)
        if position:
            return func(*args[:position], kept, *args[position + 1 :], **kwargs)
        return func(*args, **{**kwargs, "dtype": kept})

    def _type(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Tensor.type(torch.float32), .type("torch.cuda.FloatTensor"), .type(torch.FloatTensor)
        given = args[1] if len(args) > 1 else kwargs["dtype"]
        name = f"{given.__module__}.{given.__name__}" if isinstance(given, type) else given
        target = _TYPE_NAMES.get(name.rpartition(".")[2]) if isinstance(name, str) else given
        if target not in self.low or not self._note(f"a cast to {_short(target)}", args[0]):
            return func(*args, **kwargs)
        rest = {k: v for k, v in kwargs.items() if k != "dtype"}
        if isinstance(name, str) and self.dtype == torch.float64:  # keep the device it names
            kept_name = re.sub(r"\w+Tensor$", "DoubleTensor", name)
            return func(args[0], kept_name, *args[2:], **rest)
        return _BASE.to(args[0], dtype=self.dtype)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Tensors created without a dtype get ``dtype`` (when it is more precise than the
    current default), restored after, also when the body raises."""
    before = torch.get_default_dtype()
    if not lowers(before, dtype) or not dtype.is_floating_point:
        yield
        return
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class _Probe(_Keep):
    """``_Keep`` that also tells ``sites`` where precision still leaks (a floating result less
    precise than ``dtype`` from inputs in ``dtype``: an in-place op into a float32 tensor, a
    kernel that returns float32; float32 arrays from numpy) and counts tensors created in the
    default dtype (which the guard raises to ``dtype``)."""

    def __init__(self, dtype: torch.dtype, rewrite: bool, sites: Sites) -> None:
        super().__init__(dtype, rewrite, sites.cast, sites.compose)
        self.sites = sites

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = super().__torch_function__(func, types, args, kwargs)
        if not self.rewrite or func is _BASE.view:  # as written, every cast is a leak
            return out
        name = getattr(func, "__name__", "")
        written = args[:1] if name.endswith("_") or name == "__setitem__" else ()
        made = [t for t in tree_leaves((out, written)) if isinstance(t, torch.Tensor)]
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        low = next((t.dtype for t in made if t.dtype in self.low), None)
        if low is not None and any(t.dtype == self.dtype for t in inputs):
            self.sites.leak(f"{_op_name(func)} gave {_short(low)} from {_short(self.dtype)}")
        elif low is not None and name in _FROM_ARRAYS and isinstance(args[0], np.ndarray):
            self.sites.leak(f"{_short(low)} values from numpy ({_op_name(func)})")
        elif func is _BASE.numpy:
            self.sites.leak("values leave torch (Tensor.numpy)")
        elif (
            "dtype" not in kwargs
            and any(t.dtype == self.dtype for t in made)
            and not any(t.is_floating_point() or t.is_complex() for t in inputs)
        ):
            self.sites.defaults += 1
        return out


class PrecisionGuard:
    """Keeps the check's ``dtype`` through the model's own casts while J is evaluated.

    Every evaluation of J (and of its gradient) runs inside ``run(evaluate)`` or
    ``evaluating()``. The first evaluation decides, and counts like any other: it runs under
    the guard while the guard records what it changed (casts kept, tensors created in the
    default dtype) and where precision still leaks. If it changed nothing, the guard stays off
    (the same computation, without the cost of a ``TorchFunctionMode`` on every torch call).
    If the model fails with the guard but not as written (an op that exists only in float32),
    that evaluation is repeated as written, and so is every later one. ``keep=False`` runs the
    model as written and only names its casts. ``notes`` says all of this.
    """

    def __init__(
        self, model: nn.Module, dtype: torch.dtype, keep: bool, probe: Callable[[], object]
    ) -> None:
        self.dtype = dtype
        self.notes: list[str] = []
        self._model = model
        self._keep = keep
        self._probe = probe  # one evaluation of J through ``run``, for ``evaluating()``
        self._on: bool | None = None  # decided by the first evaluation
        self._inside = False

    def run(self, evaluate: Callable[[], _T]) -> _T:
        """``evaluate()`` (an evaluation of J, or of J and its gradient) under the guard."""
        if self._on is None:
            return self._first(evaluate)
        with self.evaluating():
            return evaluate()

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """The guard for the body (many evaluations of J at once, under vmap)."""
        if self._on is None:
            self._probe()
        if not self._on or self._inside:
            yield
            return
        self._inside = True
        try:
            with _default_dtype(self.dtype), _Keep(self.dtype):
                yield
        finally:
            self._inside = False

    def _first(self, evaluate: Callable[[], _T]) -> _T:
        self._on = False  # until decided, evaluations inside this one run plainly
        if not any(lowers(d, self.dtype) for d in (torch.float32, torch.bfloat16)):
            return evaluate()  # nothing is less precise than the check (a bfloat16 check)
        sites = Sites(self._model)
        if not self._keep:
            result = self._recorded(evaluate, sites, rewrite=False)
            self.notes = sites.lines(sites.casts, "as written (keep_precision=False)")
            self.notes += sites.lines(sites.leaks, _LEAKED)
            return result
        try:
            result = self._recorded(evaluate, sites, rewrite=True)
        except Exception as err:
            if not sites.changed() or _ours(err):
                raise  # the guard changed nothing, or gradwatch rejected J: not the guard's doing
            result = evaluate()  # as written (when that raises too, its error is the one)
            self.notes = [_failed(err, self.dtype), *sites.lines(sites.casts, "as written")]
            return result
        kept = f"kept in {_short(self.dtype)}"
        self.notes = sites.lines(sites.casts, kept) + sites.lines(sites.composed, _COMPOSED)
        self.notes += sites.lines(sites.leaks, _LEAKED)
        self._on = sites.changed()
        return result

    def _recorded(self, evaluate: Callable[[], _T], sites: Sites, rewrite: bool) -> _T:
        default = _default_dtype(self.dtype) if rewrite else nullcontext()
        with sites.watching(), default, _Probe(self.dtype, rewrite, sites):
            result = evaluate()
        cost = next((t for t in tree_leaves(result) if isinstance(t, torch.Tensor)), None)
        if cost is not None and lowers(cost.dtype, self.dtype):
            sites.leaks.setdefault(f"J is {_short(cost.dtype)}", {})["loss_fn"] = None
        return result


def _ours(err: BaseException) -> bool:
    """Whether gradwatch itself raised ``err`` (its checks of what ``loss_fn`` returned): the
    innermost frame of the traceback outside this module is gradwatch's."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    outside = [name for name in frames if name != __name__]
    return bool(outside) and outside[-1].startswith("gradwatch.")


def _failed(err: Exception, dtype: torch.dtype) -> str:
    why = (str(err).strip().splitlines() or [""])[0][:160]
    return (
        f"keeping {_short(dtype)} through the model's casts made J fail "
        f"({type(err).__name__}: {why}); the model was run as written, so J carries the "
        "rounding of these casts:"
    )


# How a kernel run as a composition reads in the notes (gradwatch.precision.float64_kernels).
_COMPOSED = "(no float64 kernel there: computed so in float64)"
# How a leak reads in the notes: the guard could not keep the precision there.
_LEAKED = "(precision lost there: J carries that rounding)"
