"""Lightning integration of gradwatch (installed as ``gradwatch.callbacks``).

``GradientCheck`` is the callback for ``pytorch_lightning.Trainer``; users of the unified
``lightning`` package import the same callback from ``gradwatch.callbacks.lightning``.

Example:
    >>> from gradwatch.callbacks import GradientCheck
    >>> GradientCheck(after_steps=[100], on_fail="raise").schedule.after_steps
    (100,)
"""

from .gradient_check import GradientCheck, GradientCheckError, GradientCheckWarning

__all__ = ["GradientCheck", "GradientCheckError", "GradientCheckWarning"]
