"""What the first check in a process would otherwise pay, paid once when gradwatch is imported.

Measured on the 64-128-64-10 MLP in fresh processes with nothing run before the check
(``benchmarks/bench_speed.py --parts first``): the first call's extra time over a warm one was
not gradwatch's own work (it keeps no caches between checks), but

- the first full garbage collection after ``import torch``: CPython runs one when enough
  objects have survived since the last, and the imports leave about 170,000 of them behind, so
  the check's allocations set off a scan of them all (0.14-0.17 s on the shared 2-core machine,
  one per first check, none in warm ones);
- numpy's lazily loaded submodules: ``numpy.random`` (every check draws its noise probes with
  ``default_rng``) and ``numpy.ma`` (``np.unique`` asks ``np.ma.is_masked``), 20-35 ms.

Both are paid here instead, once ``gradwatch/__init__`` has imported everything else, where a
user expects to wait; the collection only runs earlier what the process would run at its next
allocations anyway.
"""

from __future__ import annotations

import gc

import numpy.ma
import numpy.random  # noqa: F401  (both imported to load them now, not in a check)

gc.collect()
