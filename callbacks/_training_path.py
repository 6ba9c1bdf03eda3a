"""The gradient that trains, inside a Trainer: the training path of the Trainer's own precision
plugin, and the scalars its comparison logs."""

from __future__ import annotations

import math
from typing import Any

from gradwatch import GradCheckReport
from gradwatch.training_path import TrainingPath

# Tags after the callback's name: gradcheck/training_path/verdict, .../ratio/<parameter>, ...
TRAINING_PATH = "training_path"


def of_trainer(trainer: Any) -> TrainingPath:
    """How the Trainer computes the gradient: ``training_step`` under its precision plugin's
    ``train_step_context()`` (autocast for ``"bf16-mixed"``/``"16-mixed"``, float64 as the
    default dtype for ``"64-true"``), and the loss scale of its gradient scaler, if any
    (``"16-mixed"`` on CUDA). Only public API: ``trainer.precision_plugin``, the plugin's
    ``train_step_context`` and ``scaler``, ``GradScaler.get_scale()``."""
    plugin = trainer.precision_plugin
    scaler = getattr(plugin, "scaler", None)
    scale = 1.0
    if scaler is not None and scaler.is_enabled():
        scale = float(scaler.get_scale())
    return TrainingPath(context=plugin.train_step_context, loss_scale=scale)


def scalars(report: GradCheckReport, name: str) -> dict[str, float]:
    """``name/training_path/verdict`` (−1 not judged, 0 pass, 2 fail) and, per parameter, its error
    against the reference, the eager error in the same precision and their ratio (the rule
    allows 2, plus the rounding floor); nothing when the check ran no training path."""
    found = report.training_path
    if found is None:
        return {}
    values = {f"{TRAINING_PATH}/verdict": float(found.verdict.level)}
    for parameter, p in found.parameters.items():
        values[f"{TRAINING_PATH}/error/{parameter}"] = p.error
        values[f"{TRAINING_PATH}/eager_error/{parameter}"] = p.eager_error
        values[f"{TRAINING_PATH}/ratio/{parameter}"] = p.ratio if p.judged else math.nan
    return {f"{name}/{tag}": value for tag, value in values.items()}
