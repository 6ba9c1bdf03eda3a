"""The flat vector θ and its names: which component of θ is ``layer.weight[3, 1]``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Layout"]


def _shape(name: str, shape: object) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer):
        shape = (int(shape),)
    if not isinstance(shape, Iterable) or not all(
        isinstance(d, int | np.integer) and int(d) >= 0 for d in shape
    ):
        raise TypeError(
            f"`layout[{name!r}]` must be a shape: an int or a tuple of non-negative ints; "
            f"got {shape!r}"
        )
    return tuple(int(d) for d in shape)


@dataclass(frozen=True)
class Layout:
    """Names and shapes of the tensors that were reshaped and concatenated into θ.

    The material's first step: every parameter (W1, b1, …, WL, bL) is reshaped into a vector and
    the vectors are concatenated, in order, into one vector θ. A ``Layout`` remembers that order so
    that a position in θ can be named again.

    Example:
        >>> layout = Layout.from_mapping({"W1": (2, 3), "b1": (2,)})
        >>> layout.size
        8
        >>> layout.label(4)
        'W1[1, 1]'
        >>> layout.label(7)
        'b1[1]'
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError(
                f"`names` and `shapes` must have the same length; got {len(self.names)} "
                f"and {len(self.shapes)}"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"`layout` names must be unique; got {list(self.names)}")
        sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        object.__setattr__(self, "offsets", tuple(np.concatenate([[0], np.cumsum(sizes)])))

    @classmethod
    def from_mapping(cls, layout: Mapping[str, object]) -> Layout:
        """Builds a layout from an ordered mapping name → shape (an int or a tuple of ints)."""
        if not isinstance(layout, Mapping):
            raise TypeError(
                f"`layout` must be an ordered mapping name -> shape, e.g. "
                f"{{'W1': (4, 3), 'b1': (4,)}}; got {type(layout).__name__}"
            )
        names = tuple(str(k) for k in layout)
        return cls(names, tuple(_shape(n, layout[n]) for n in names))

    @classmethod
    def single(cls, size: int, name: str = "theta") -> Layout:
        """A layout of one vector named ``theta``, so component 36 reads ``theta[36]``."""
        return cls((name,), ((size,),))

    @property
    def size(self) -> int:
        """Number of components in θ."""
        return int(self.offsets[-1])

    def sizes(self) -> list[int]:
        """Number of components of each tensor, in order."""
        return [int(b - a) for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def tensor_of(self, flat_index: np.ndarray | Sequence[int]) -> np.ndarray:
        """For each flat position in θ, the position of its tensor in ``names``."""
        return np.searchsorted(np.asarray(self.offsets[1:]), np.asarray(flat_index), side="right")

    def locate(self, flat_index: int) -> tuple[str, tuple[int, ...]]:
        """The tensor name and the index into that tensor of one position in θ."""
        if not 0 <= flat_index < self.size:
            raise IndexError(f"flat index {flat_index} is outside θ of size {self.size}")
        t = int(self.tensor_of([flat_index])[0])
        local = flat_index - int(self.offsets[t])
        shape = self.shapes[t]
        index = tuple(int(i) for i in np.unravel_index(local, shape)) if shape else ()
        return self.names[t], index

    def label(self, flat_index: int) -> str:
        """The readable name of one position in θ, e.g. ``'layer.weight[3, 1]'``."""
        name, index = self.locate(flat_index)
        return format_label(name, index)


def format_label(name: str, index: tuple[int, ...]) -> str:
    """``('fc.weight', (3, 1))`` → ``'fc.weight[3, 1]'``; a 0-d tensor keeps its bare name."""
    return f"{name}[{', '.join(str(i) for i in index)}]" if index else name
