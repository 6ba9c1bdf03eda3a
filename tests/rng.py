"""The global random streams as values the tests can compare (state-safety tests)."""

from __future__ import annotations

from typing import Any

import numpy as np


def numpy_rng_state() -> tuple[Any, ...]:
    """numpy's global RNG state as a comparable tuple (its key array as bytes)."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return name, np.asarray(key).tobytes(), pos, has_gauss, gauss
