"""Compiled modules checked through their eager code.

``torch.compile`` leaves the eager module inside what it returns: an ``OptimizedModule`` keeps it
as ``_orig_mod`` (and its parameters under that prefix), ``module.compile()`` keeps the compiled
call in ``_compiled_call_impl``, and a compiled method stored on a module (as Lightning does for a
compiled LightningModule) keeps the original as ``_torchdynamo_orig_callable``. The check runs
the eager code: for its duration these wrappers are set aside (the eager module takes the
wrapper's place in its parent, the compiled call and methods are unset), everything else that
was compiled (a compiled function the forward calls) runs eagerly under
``torch.compiler.set_stance("force_eager")`` (torch >= 2.6), and every wrapper is put back
after, also when the check raises. Nothing is traced, compiled or run compiled during the
check, and the compiled module's caches and guards see the very same objects afterwards.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["EAGER_STANCE", "EagerView", "eager_names"]

# The attribute torch.compile's wrappers keep the wrapped callable in.
_ORIGINAL = "_torchdynamo_orig_callable"
# The prefix an OptimizedModule puts before its module's parameter names.
_PREFIX = "_orig_mod."


def _compiling_loaded() -> bool:
    """Whether torch.compile was ever used in this process (it imports torch._dynamo): where it
    was not, nothing is compiled, and the check imports none of it (a second or more)."""
    return "torch._dynamo" in sys.modules


def _optimized() -> type[nn.Module] | None:
    if not _compiling_loaded():
        return None
    found = getattr(torch._dynamo, "OptimizedModule", None)  # torch >= 2.0
    return found if isinstance(found, type) else None


def _unwrapped(module: nn.Module) -> nn.Module:
    """The eager module inside (nested) ``torch.compile`` wrappers."""
    kind = _optimized()
    while kind is not None and isinstance(module, kind):
        module = module._orig_mod  # type: ignore[assignment]
    return module


def eager_names(patterns: str | Sequence[str] | None) -> str | Sequence[str] | None:
    """``include`` globs with ``_orig_mod.`` taken out: they name the eager modules' parameters.

    Example:
        >>> eager_names(["_orig_mod.0.*", "head.*"])
        ['0.*', 'head.*']
    """
    if isinstance(patterns, str):
        return patterns.replace(_PREFIX, "")
    if patterns is None or not all(isinstance(p, str) for p in patterns):
        return patterns  # checked_parameters says what is wrong with them
    return [p.replace(_PREFIX, "") for p in patterns]


class EagerView:
    """The eager module behind a (partly) compiled one, and the context that runs it eagerly.

    ``module`` is ``model`` with its ``torch.compile`` wrapper taken off (``model`` itself when
    it is not one); ``compiled`` names what was found compiled inside it; ``applied()`` sets the
    compiled parts aside for its body.

    Example:
        >>> model = torch.compile(nn.Sequential(nn.Linear(2, 1)))
        >>> view = EagerView(model)
        >>> [name for name, _ in view.module.named_parameters()], view.compiled
        (['0.weight', '0.bias'], ['the module (torch.compile)'])
    """

    def __init__(self, model: nn.Module) -> None:
        self.given = model
        self.module = _unwrapped(model)
        self.compiled: list[str] = []
        if self.module is not model:
            self.compiled.append("the module (torch.compile)")
        with self.applied() as found:
            self.compiled += found

    @contextmanager
    def applied(self) -> Iterator[list[str]]:
        """Runs the body with every compiled part of ``module`` set aside; yields their names."""
        undo: list[Callable[[], None]] = []
        found: list[str] = []
        try:
            _set_aside(self.module, "", undo, found, set())
            with EAGER_STANCE.held():
                yield found
        finally:
            for step in reversed(undo):
                step()

    def note(self, compared: bool = False) -> str | None:
        """What the report says about the compiled parts (``compared``: the training path
        compares the compiled gradient too); None when nothing is compiled."""
        if not self.compiled:
            return None
        then = (
            "; training_path compares the gradient the compiled code computes"
            if compared
            else ". Pass training_path=True to compare the gradient the compiled code computes"
        )
        return (
            f"compiled: {_listing(self.compiled)}; checked through the eager code it wraps "
            "(torch.compile set aside during the check: nothing traced, recompiled or run "
            f"compiled), with the eager module's parameter names{then}"
        )


class _EagerStance:
    """``torch.compiler.set_stance("force_eager")`` for as long as any check needs it.

    The stance is global to the process, and checks may run in threads at once (one per
    simulated process of a partitioned check): nested context managers would restore each
    other's stances out of order and leave ``force_eager`` behind. The first check to enter
    sets it, the last to leave puts the stance from before back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._entered: Any = None

    @property
    def active(self) -> bool:
        """Whether some check runs eager code now (compiled code cannot run meanwhile)."""
        return self._users > 0

    @contextmanager
    def held(self) -> Iterator[None]:
        stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
        if stance is None or not _compiling_loaded():
            yield
            return
        with self._lock:
            if self._users == 0:
                self._entered = stance("force_eager")  # applies now; remembers the stance before
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._entered.__exit__(None, None, None)
                    self._entered = None


EAGER_STANCE = _EagerStance()


def _set_aside(
    module: nn.Module, prefix: str, undo: list[Callable[[], None]], found: list[str], seen: set[int]
) -> None:
    """Sets aside the compiled parts of ``module`` and, recursively, of its children."""
    if id(module) in seen:  # a module shared by two parents
        return
    seen.add(id(module))
    where = prefix.rstrip(".") or "the module"
    own = vars(module)
    if own.get("_compiled_call_impl") is not None:  # module.compile()
        call = own["_compiled_call_impl"]
        own["_compiled_call_impl"] = None
        undo.append(functools.partial(own.__setitem__, "_compiled_call_impl", call))
        found.append(f"{where} (module.compile())")
    methods = [k for k, v in own.items() if callable(v) and getattr(v, _ORIGINAL, None) is not None]
    for key in methods:  # compiled methods stored on the module (a compiled LightningModule)
        undo.append(functools.partial(own.__setitem__, key, own[key]))
        own[key] = getattr(own[key], _ORIGINAL)
    if methods:
        found.append(f"{where}'s compiled methods ({', '.join(methods)})")
    children = module._modules
    for key, child in list(children.items()):
        if child is None:
            continue
        eager = _unwrapped(child)
        if eager is not child:  # a torch.compile'd submodule: its eager module takes its place
            children[key] = eager
            undo.append(functools.partial(children.__setitem__, key, child))
            found.append(f"{prefix}{key} (torch.compile)")
        _set_aside(eager, f"{prefix}{key}.", undo, found, seen)


def _listing(names: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
