"""The gradient that trains, compared with the float64 gradient the check verified.

The check verifies the float64 gradient of the eager model. Training uses another one: that of
the compiled module (``torch.compile``), in the model's own dtype, under the autocast of mixed
precision. ``check_module(..., training_path=True)`` (or a :class:`TrainingPath` naming the
autocast) computes that gradient too and compares it per parameter with the float64 one by the
rule kernel authors use for their backward passes (FlashAttention's tests, see
:func:`allowance`): its error must be at most ``K`` times the error of the plain eager model at
the same precision, plus a rounding floor of that precision. A parameter off by more fails:
the compiled code (a compiler or kernel bug) computes another gradient than the eager code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from gradwatch.verdict import Verdict

__all__ = ["ParameterPath", "TrainingPath", "TrainingPathResult", "allowance", "rounding_floor"]

# FlashAttention's tests allow its gradients twice the error of the PyTorch implementation in the
# same precision: `(dq - dq_ref).abs().max() <= rtol * (dq_pt - dq_ref).abs().max() + dq_atol`
# with rtol = 2 (hopper/test_flash_attn.py, Dao-AILab/flash-attention).
K = 2.0
# The same tests' rounding floor: dq_atol = 2 * (dq_ref + 0.3 - 0.3 - dq_ref).abs().max(), the
# rounding of values about 0.3 larger than the reference's, in the training dtype.
SHIFT = 0.3


def rounding_floor(reference: torch.Tensor, dtype: torch.dtype) -> float:
    """FlashAttention's rounding floor for one gradient tensor, in ``dtype``.

    FlashAttention's floor, ``2·max|(ref + 0.3 − 0.3) − ref|``, is what rounding in the training
    dtype does to values of the reference's size plus 0.3, on test tensors of unit scale. A
    parameter's gradient has no unit scale, so the shift is 0.3 times the tensor's largest
    entry, and the realized rounding is replaced by its bound, one unit in the last place of
    1.3·max|ref| (on a tensor of three entries the realized rounding can be exactly 0).

    Example:
        >>> rounding_floor(torch.tensor([0.5, -1.0], dtype=torch.float64), torch.float32)
        2.384185791015625e-07
    """
    scale = (1.0 + SHIFT) * float(reference.detach().abs().max()) if reference.numel() else 0.0
    if not math.isfinite(scale):
        return math.nan
    if scale == 0.0:
        return 0.0  # a zero gradient: only an exact zero is within rounding of it
    info = torch.finfo(dtype)
    unit = info.eps * 2.0 ** math.floor(math.log2(max(scale, info.tiny)))
    return 2.0 * unit


def allowance(eager_error: float, floor: float) -> float:
    """The largest error the training path may have: ``K·eager_error + floor``.

    FlashAttention's rule (hopper/test_flash_attn.py): a kernel's gradient error against the
    reference may be twice that of the plain PyTorch implementation in the same precision,
    plus the rounding floor of that precision (:func:`rounding_floor`).

    Example:
        >>> allowance(1e-8, 2e-8)
        4e-08
    """
    return K * eager_error + floor


@dataclass(frozen=True)
class TrainingPath:
    """How training computes the gradient, for ``check_module(training_path=...)``.

    The model as given (compiled or not), in its own dtype, with J computed under ``context``
    (autocast, for mixed precision) and the backward outside it, as training does.
    ``training_path=True`` is ``TrainingPath()``: no autocast.

    Args:
        context: a callable returning the context manager the forward runs under, e.g.
            ``lambda: torch.autocast("cpu", dtype=torch.bfloat16)``, or Lightning's
            ``trainer.precision_plugin.train_step_context``; None for none.
        loss_scale: the factor J is multiplied by before backward and the gradient divided by
            after (float16's loss scaling, ``GradScaler.get_scale()``); 1.0 for none.

    Example:
        >>> path = TrainingPath(context=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        >>> path.loss_scale
        1.0
    """

    context: Callable[[], AbstractContextManager[Any]] | None = None
    loss_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.context is not None and not callable(self.context):
            raise TypeError(
                "`context` must be None or a callable returning a context manager, e.g. "
                f"lambda: torch.autocast('cpu', dtype=torch.bfloat16); got {self.context!r}"
            )
        scale = self.loss_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise TypeError(f"`loss_scale` must be a positive finite float; got {scale!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"`loss_scale` must be a positive finite float; got {scale!r}")


def check_training_path(value: object) -> TrainingPath | None:
    """``training_path`` as a :class:`TrainingPath` (True → the default one), or None (False)."""
    if value is False or value is None:
        return None
    if value is True:
        return TrainingPath()
    if isinstance(value, TrainingPath):
        return value
    raise TypeError(
        "`training_path` must be False, True or a gradwatch.TrainingPath (e.g. "
        "TrainingPath(context=lambda: torch.autocast('cpu', dtype=torch.bfloat16))); "
        f"got {value!r}"
    )


@dataclass(frozen=True)
class ParameterPath:
    """One parameter's figures: the largest entry of |gradient − reference| on the training
    path (``error``) and for the eager model in the same precision (``eager_error``, the
    largest over its perturbed runs), the rounding floor of ``precision``, and whether they
    could be compared (``judged``: False where the eager gradient itself is not finite).
    ``zero_to_rounding``: the reference is no larger than the eager error, so in this precision
    the gradient is all rounding (a bias BatchNorm cancels), and the floor is taken at the
    scale of the model's gradients. ``hook``: where the parameter carries gradient hooks
    (``Parameter.register_hook``) and fails, what they do to its gradient, else empty."""

    error: float
    eager_error: float
    floor: float
    precision: str
    judged: bool = True
    zero_to_rounding: bool = False
    hook: str = ""

    @property
    def allowed(self) -> float:
        """The largest error the rule allows: ``K·eager_error + floor``."""
        return allowance(self.eager_error, self.floor)

    @property
    def ratio(self) -> float:
        """How many times the eager error the training path's error is (inf where the eager
        gradient is exact and the training path's is not; 1.0 where both are exact)."""
        if self.eager_error > 0:
            return self.error / self.eager_error
        return 1.0 if self.error == 0 else math.inf

    @property
    def passed(self) -> bool:
        """Whether the error is within the rule (a NaN error never is)."""
        return self.judged and self.error <= self.allowed


@dataclass(frozen=True)
class TrainingPathResult:
    """The comparison of the gradient that trains with the reference, per parameter.

    ``path`` says what ran (``"compiled module, float32 under autocast(bfloat16)"``),
    ``reference`` the dtype of the eager gradient it was compared with (the check's),
    ``parameters`` the figures of each checked parameter. ``reason`` says why nothing was
    judged (J draws random numbers the compiled code draws otherwise), else None.

    Example:
        >>> fine = ParameterPath(error=1e-8, eager_error=1e-8, floor=1e-9, precision="float32")
        >>> result = TrainingPathResult("compiled module, float32", True, "float64", {"w": fine})
        >>> result.verdict.value, result.failed
        ('pass', [])
    """

    path: str
    compiled: bool
    reference: str
    parameters: dict[str, ParameterPath] = field(default_factory=dict)
    reason: str | None = None
    k: float = K
    # Set for a sharded model (gradwatch.check_sharded): the likely cause of a failure there, a
    # gradient the collectives do not reduce, rather than a compiler or kernel bug.
    cause: str = ""

    @property
    def failed(self) -> list[str]:
        """Parameters whose training-path gradient is off by more than the rule allows, worst
        first."""
        bad = [n for n, p in self.parameters.items() if p.judged and not p.passed]
        return sorted(bad, key=lambda n: -_badness(self.parameters[n]))

    @property
    def verdict(self) -> Verdict:
        """Fail when a parameter breaks the rule; not judged when no parameter could be judged
        (``reason`` says why); else pass."""
        if self.failed:
            return Verdict.FAIL
        if self.reason or not any(p.judged for p in self.parameters.values()):
            return Verdict.NOT_JUDGED
        return Verdict.PASS

    @property
    def message(self) -> str:
        """One sentence: what failed and why, or that the rule holds."""
        what = "compiled" if self.compiled else "sharded" if self.cause else "training-path"
        if self.reason:
            return f"training path not judged: {self.reason}"
        if self.failed:
            parts = [self._blame(n, what) for n in self.failed[:3]]
            more = f" (and {len(self.failed) - 3} more)" if len(self.failed) > 3 else ""
            return "; ".join(parts) + more
        worst = max((p.ratio for p in self.parameters.values() if p.judged), default=0.0)
        return (
            f"training path ({self.path}) within FlashAttention's rule for every parameter "
            f"(error <= {self.k:g} x eager error + rounding floor; largest ratio {worst:.2g})"
        )

    def _blame(self, name: str, what: str) -> str:
        p = self.parameters[name]
        if p.hook:  # what trains passes through the hook; the checked gradient does not
            return (
                f"{name}: {p.hook}: the gradient that trains passes through the hook, J's "
                "backprop (checked in float64) does not; if the hook is meant (clipping, "
                "scaling), this is its effect, else remove it"
            )
        cause = self.cause or ("a compiler or kernel bug" if self.compiled else "a kernel bug")
        if not math.isfinite(p.error):
            return f"{name}: {what} gradient is not finite where eager {p.precision} is; {cause}"
        if p.eager_error == 0:
            return (
                f"{name}: {what} gradient off by {p.error:.1e} where eager {p.precision} "
                f"matches {self.reference} exactly; {cause}"
            )
        times = f"{p.ratio:.0f}" if p.ratio < 1000 else f"{p.ratio:.1e}"
        return (
            f"{name}: {what} gradient {times}x further from {self.reference} than eager "
            f"{p.precision}; {cause}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (non-finite numbers as strings)."""
        return {
            "path": self.path,
            "compiled": self.compiled,
            "reference": self.reference,
            "verdict": self.verdict.value,
            "message": self.message,
            "k": self.k,
            "reason": self.reason,
            "parameters": {
                n: {
                    "error": _num(p.error),
                    "eager_error": _num(p.eager_error),
                    "floor": _num(p.floor),
                    "ratio": _num(p.ratio),
                    "precision": p.precision,
                    "passed": p.passed,
                    "judged": p.judged,
                    "zero_to_rounding": p.zero_to_rounding,
                    "hook": p.hook,
                }
                for n, p in self.parameters.items()
            },
        }

    def lines(self) -> list[str]:
        """The report's lines: what ran, the verdict, the figures of the worst parameters."""
        out = [f"training path: {self.verdict.value.upper()}, {self.message}"]
        out.append(f"  checked: {self.path} against the {self.reference} eager gradient")
        ranked = sorted(self.parameters.items(), key=lambda kv: -_badness(kv[1]))
        for name, p in ranked[:10]:
            status = "pass" if p.passed else "fail" if p.judged else "not judged"
            zero = ", zero to within rounding" if p.zero_to_rounding else ""
            out.append(
                f"  {name}: error {p.error:.2e}, eager {p.precision} {p.eager_error:.2e}, "
                f"floor {p.floor:.1e}{zero}, ratio {p.ratio:.2g} ({status})"
            )
        return out


def _badness(p: ParameterPath) -> float:
    """Error over allowance: above 1 breaks the rule (NaN counts as the worst)."""
    if not math.isfinite(p.error):
        return math.inf
    if p.allowed > 0:
        return p.error / p.allowed
    return 0.0 if p.error == 0 else math.inf


def _num(x: float) -> float | str:
    return float(x) if math.isfinite(x) else str(float(x))
