"""Whose error is it: the engine tags the exceptions that come out of the user's code (the loss
and the forward it runs, backprop through the user's graph), so a caller can tell them from an
error inside gradwatch itself."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

# The attribute set on an exception raised by the user's code.
_TAG = "__gradwatch_users_code__"


@contextmanager
def users_code() -> Iterator[None]:
    """Tags any exception raised inside as the user's (then lets it go on, unchanged).

    Example:
        >>> try:
        ...     with users_code():
        ...         raise ValueError("a bug in the loss")
        ... except ValueError as err:
        ...     raised_in_users_code(err)
        True
    """
    try:
        yield
    except Exception as err:
        # An exception type without instance attributes stays untagged (and reads as ours).
        with suppress(AttributeError, TypeError):
            setattr(err, _TAG, True)
        raise


def raised_in_users_code(err: BaseException) -> bool:
    """Whether ``err``, or an exception it was raised from or while handling, came out of code
    run inside :func:`users_code`: the user's loss, model or backward, not gradwatch (public as
    ``gradwatch.integration.faults.raised_in_users_code``).

    Example:
        >>> import torch, gradwatch
        >>> def loss_fn(model, batch):
        ...     return batch["labels"]
        >>> try:
        ...     gradwatch.check_module(torch.nn.Linear(2, 1), loss_fn, {"x": torch.ones(3, 2)})
        ... except KeyError as err:
        ...     print(raised_in_users_code(err))
        True
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if getattr(current, _TAG, False):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
