"""``GradientCheck`` for ``lightning.pytorch.Trainer`` (the unified ``lightning`` package).

Same logic and arguments as :class:`gradwatch.callbacks.GradientCheck`; only the Lightning base
class differs. Importing this module needs ``lightning`` installed; gradwatch does not require it.

Example::

    import lightning.pytorch as L
    from gradwatch.callbacks.lightning import GradientCheck

    trainer = L.Trainer(max_steps=500, callbacks=[GradientCheck(after_steps=[100])])
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gradwatch.callbacks.lightning needs the `lightning` package (pip install lightning); "
        "with `pytorch_lightning` use gradwatch.callbacks.GradientCheck"
    ) from error

from ._hooks import GradientCheckBase
from ._outcome import GradientCheckError, GradientCheckWarning

__all__ = ["GradientCheck", "GradientCheckError", "GradientCheckWarning"]


class GradientCheck(GradientCheckBase, Callback):
    """:class:`gradwatch.callbacks.GradientCheck` for ``lightning.pytorch.Trainer``.

    Example::

        trainer = lightning.pytorch.Trainer(callbacks=[GradientCheck(after_steps=[100])])
    """
