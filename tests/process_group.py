"""The end of a test's ``torch.distributed`` process: its process group destroyed at exit, while
the interpreter is still whole.

Why: a gloo worker thread (``pt_gloo_runloop``) can hold the last reference to a tensor that a
Python object owns (the tensors of a collective whose Python side has already let go of them),
and freeing it takes the GIL. If that happens after the interpreter has begun to finalize, CPython
3.11 ends the thread (``pthread_exit``), whose unwinding reaches the ``noexcept`` destructor of
gloo's ``AsyncWork``: "terminate called without an active exception", SIGABRT, after a run that
went well. A worker thread held back by load (two cores shared by several test runs) makes that
likely. The causes are upstream: torch checks only ``Py_IsInitialized()`` before that decref
(pytorch/pytorch#190489), and Lightning destroys the process group at exit for NCCL only
(``lightning_fabric.utilities.distributed._init_dist_connection``), so under gloo it lives until
finalization. Destroying it in an ``atexit`` handler, which runs before finalization, joins
gloo's threads while they can still take the GIL: what torch's documentation asks of every
distributed program, and what ``tests.sharded_models`` does in its ``finally``.
"""

from __future__ import annotations

import atexit
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist

_registered = False


def destroy_at_exit() -> None:
    """Has this process destroy its process group (if it has one then) when it exits; once per
    process, however often it is called."""
    global _registered
    if not _registered:
        atexit.register(_destroy)
        _registered = True


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DestroyAtExit(pl.Callback):
    """:func:`destroy_at_exit` in every process of a run: ``ddp_spawn`` runs copies of the
    callbacks in its worker processes, whose ``setup`` is the first hook there after the process
    group was made."""

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        destroy_at_exit()
