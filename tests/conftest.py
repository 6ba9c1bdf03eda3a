"""Test settings: the models here are tiny, so one torch thread is faster than several
(thread hand-offs cost more than the arithmetic, and much more on a busy 2-core machine)."""

from __future__ import annotations

import os
import tempfile

# Inductor's on-disk cache does not tell ATen's CPU capability apart: a kernel compiled with
# AVX2 vectors, read again under ATEN_CPU_CAPABILITY=default (make test's second run), fails to
# build ("'at::vec' has not been declared"). One cache folder per capability, set before torch
# is imported.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"torchinductor_gradwatch_{os.getuid()}_{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}",
    ),
)

import torch

torch.set_num_threads(1)
