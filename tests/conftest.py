"""Test settings: the models here are tiny, so one torch thread is faster than several
(thread hand-offs cost more than the arithmetic, and much more on a busy 2-core machine)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
