"""The check of a sharded model in place, for one whose float64 replica would not fit: no
process ever holds the whole model. The replica keeps float64 shards (1/P of the model each),
and each module's own parameters are gathered whole for its forward only and dropped after, as
FSDP does; every process evaluates every J in lockstep on its own batch, J being the mean over
the processes (an all-reduce), and the sampled components of the analytic gradient are read as
each module's gradient arrives (an all-reduce of that tensor, then dropped).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from gradwatch.check.sampling import sample_components
from gradwatch.common.user_state import cast_batch, dropout_disabled, preserved_rng, reseed
from gradwatch.evaluation.cost import LossFn
from gradwatch.layout import Layout
from gradwatch.report import GradCheckReport, Thresholds
from gradwatch.sharding.replica import replica_of

# One evaluation of J in float64 is off by about one unit in its last place: the estimate
# (J+ − J−)/2ε carries about 2·|J|·ε_mach/2ε of rounding (the material's noise of the step).
_ROUNDING = float(torch.finfo(torch.float64).eps)


def _to_shard(t: torch.Tensor) -> torch.Tensor:
    """This process's float64 shard of a DTensor (a float64 copy of a plain tensor)."""
    if isinstance(t, DTensor):
        local = t.to_local().detach().to(torch.float64)
        return DTensor.from_local(
            local, t.device_mesh, t.placements, shape=t.shape, stride=t.stride(), run_check=False
        )
    return t.detach().to(torch.float64).clone()


class _Session:
    """The shards, the hooks that gather them per module, and what one evaluation asks."""

    def __init__(self, model: nn.Module, names: Sequence[str], group: dist.ProcessGroup) -> None:
        self.twin = replica_of(model, _to_shard)
        self.group, self.size = group, dist.get_world_size(group)
        # A tied parameter goes by its first name, as θ's layout names it.
        qualified = {id(p): n for n, p in self.twin.named_parameters()}
        self.shards: dict[int, dict[str, torch.Tensor]] = {}
        self.names: dict[tuple[int, str], str] = {}
        for module in self.twin.modules():
            own: dict[str, torch.Tensor] = {
                k: v for k, v in module._parameters.items() if v is not None
            }
            if not own:
                continue
            self.shards[id(module)] = own
            for k, v in own.items():
                self.names[(id(module), k)] = qualified[id(v)]
            if module is not self.twin:  # the root's are gathered for the whole evaluation
                module.register_forward_pre_hook(self._gather)
                module.register_forward_hook(self._drop)
        self.checked = set(names)
        self.perturb: tuple[str, int, float] | None = None
        self.picks: dict[str, np.ndarray] | None = None
        self.wanted: dict[str, np.ndarray] = {}

    def _gather(self, module: nn.Module, args: Any) -> None:
        for k, shard in self.shards[id(module)].items():
            name = self.names[(id(module), k)]
            shard = shard.detach()
            # full_tensor() of a replicated DTensor is its local tensor: a perturbation would
            # stay in the shard, so the whole tensor is always a copy.
            whole = (shard.full_tensor() if isinstance(shard, DTensor) else shard).clone()
            if self.perturb is not None and self.perturb[0] == name:
                whole.view(-1)[self.perturb[1]] += self.perturb[2]
            if self.picks is not None and name in self.checked:
                whole.requires_grad_(True)
                whole.register_post_accumulate_grad_hook(self._pick(name))
            module._parameters[k] = whole  # type: ignore[assignment]

    def _drop(self, module: nn.Module, args: Any, output: Any) -> None:
        module._parameters.update(self.shards[id(module)])  # type: ignore[arg-type]

    def _pick(self, name: str) -> Any:
        def pick(leaf: torch.Tensor) -> None:
            grad = leaf.grad
            if grad is None or self.picks is None:
                return  # not asked for (autograd calls this only once a gradient arrived)
            dist.all_reduce(grad, group=self.group)  # J is the mean: the sum over P
            self.picks[name] = self.picks[name] + grad.view(-1)[self.wanted[name]].cpu().numpy()
            leaf.grad = None  # the whole gradient goes as soon as its entries are read

        return pick

    @contextmanager
    def root_gathered(self) -> Iterator[None]:
        root = self.twin
        if id(root) in self.shards:
            self._gather(root, ())
        try:
            yield
        finally:
            if id(root) in self.shards:
                self._drop(root, (), None)

    def cost(self, loss_fn: LossFn, batch: Any, seed: int, backward: bool = False) -> float:
        """J, the mean over the processes (every process calls it, in lockstep)."""
        reseed(seed)
        with self.root_gathered(), torch.set_grad_enabled(backward):
            value = loss_fn(self.twin, batch).reshape(())
            if backward:
                value.backward()
        total = value.detach().to(torch.float64).clone()
        dist.all_reduce(total, group=self.group)
        return float(total) / self.size


def check_in_place(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    names: Sequence[str],
    group: dist.ProcessGroup,
    *,
    epsilon: float,
    sample: int | None,
    seed: int,
    thresholds: Thresholds | None,
) -> GradCheckReport:
    """Sampled components of θ (``sample``, every one when None), checked on shards."""
    start = time.perf_counter()
    shapes = dict(model.named_parameters())
    layout = Layout(tuple(names), tuple(tuple(shapes[n].shape) for n in names))
    indices = sample_components(layout, sample, seed)
    session = _Session(model, names, group)
    tensors = layout.tensor_of(indices)
    local = indices - np.asarray(layout.offsets)[tensors]
    session.wanted = {n: local[tensors == t] for t, n in enumerate(names)}
    data = cast_batch(batch, torch.float64, next(model.parameters()).device)
    with preserved_rng(), dropout_disabled(session.twin, disable=True):
        session.picks = {n: np.zeros(len(session.wanted[n])) for n in names}
        j = session.cost(loss_fn, data, seed, backward=True)
        analytic = np.concatenate([session.picks[n] for n in names]) / session.size
        session.picks = None
        numeric = np.empty(indices.size)
        for k, (t, i) in enumerate(zip(tensors, local, strict=True)):
            values = []
            for sign in (1.0, -1.0):
                session.perturb = (names[t], int(i), sign * epsilon)
                values.append(session.cost(loss_fn, data, seed))
            numeric[k] = (values[0] - values[1]) / (2 * epsilon)
        session.perturb = None
    noise = np.full(indices.size, 2 * abs(j) * _ROUNDING / (2 * epsilon))
    return GradCheckReport(
        layout=layout, indices=indices, analytic=analytic, numeric=numeric, epsilon=epsilon,
        dtype="float64", evaluations=1 + 2 * indices.size, seconds=time.perf_counter() - start,
        thresholds=thresholds or Thresholds(), numeric_noise=noise,
    )  # fmt: skip
