"""Where, by module of the model, something happened during an evaluation of J: the module
that was running (global forward hooks, only while watching), and the names of repeated modules
grouped for the notes (``model.layers.{0,1}.input_layernorm``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


def group_names(names: list[str]) -> list[str]:
    """Module names with their numbered parts merged where that describes them exactly.

    Example:
        >>> group_names(["model.layers.0.norm", "model.layers.1.norm", "model.norm"])
        ['model.layers.{0,1}.norm', 'model.norm']
    """
    items: list[tuple[Any, ...]] = [
        tuple(frozenset({int(p)}) if p.isdigit() else p for p in n.split("."))
        for n in dict.fromkeys(names)
    ]
    for k in range(max((len(i) for i in items), default=0)):
        merged: dict[tuple[Any, ...], frozenset[int] | None] = {}
        for item in items:
            if k < len(item) and isinstance(item[k], frozenset):
                key = (*item[:k], None, *item[k + 1 :])
                merged[key] = (merged.get(key) or frozenset()) | item[k]
            else:
                merged[item] = None
        items = [key if v is None else (*key[:k], v, *key[k + 1 :]) for key, v in merged.items()]
    return [".".join(_part(p) for p in item) for item in items]


def _part(part: str | frozenset[int]) -> str:
    if isinstance(part, str):
        return part
    numbers = sorted(part)
    if len(numbers) == 1:
        return str(numbers[0])
    if len(numbers) > 2 and numbers[-1] - numbers[0] == len(numbers) - 1:
        return f"{{{numbers[0]}..{numbers[-1]}}}"
    return "{" + ",".join(map(str, numbers)) + "}"


class Sites:
    """Where, by module of ``model``, the casts and leaks of one probing evaluation happened."""

    def __init__(self, model: nn.Module) -> None:
        self._names = {id(m): n for n, m in model.named_modules()}
        self._root = f"the model ({type(model).__name__})"
        self._stack: list[str | None] = []
        self.casts: dict[str, dict[str, None]] = {}  # what → where (ordered, unique)
        self.leaks: dict[str, dict[str, None]] = {}
        self.composed: dict[str, dict[str, None]] = {}  # kernels run as compositions
        self.others = 0  # lowering casts of non-floating tensors (a mask's .float())
        self.defaults = 0  # floating tensors created without a dtype (the default dtype)

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Follows which module of the model is running (global forward hooks, for the body)."""

        def enter(module: nn.Module, args: Any) -> None:
            name = self._names.get(id(module))
            self._stack.append(name if name is not None or not self._stack else self._stack[-1])

        def leave(module: nn.Module, args: Any, out: Any) -> None:
            if self._stack:
                self._stack.pop()

        hooks = (
            nn.modules.module.register_module_forward_pre_hook(enter),
            nn.modules.module.register_module_forward_hook(leave),
        )
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            self._stack.clear()

    def where(self) -> str:
        name = self._stack[-1] if self._stack else None
        return "loss_fn" if name is None else (name or self._root)

    def cast(self, what: str, floating: bool) -> None:
        if floating:
            self.casts.setdefault(what, {})[self.where()] = None
        else:
            self.others += 1

    def changed(self) -> bool:
        """Whether the guard changed anything (a cast kept, a tensor made in its dtype)."""
        return bool(self.casts or self.others or self.defaults or self.composed)

    def compose(self, what: str) -> None:
        self.composed.setdefault(what, {})[self.where()] = None

    def leak(self, what: str) -> None:
        self.leaks.setdefault(what, {})[self.where()] = None

    def lines(self, table: dict[str, dict[str, None]], verb: str, most: int = 6) -> list[str]:
        """One line per group of modules: ``"model.layers.{0,1}.norm: a cast to float32 kept in
        float64"``, at most ``most`` of them."""
        by_place: dict[str, list[str]] = {}
        for what, places in table.items():
            for place in group_names(list(places)):
                by_place.setdefault(place, []).append(what)
        found = [f"{place}: {', '.join(whats)} {verb}" for place, whats in by_place.items()]
        extra = len(found) - most
        return found[:most] + ([f"… and {extra} more places"] if extra > 0 else [])
