"""A moved entry of a linear, convolution or embedding layer's parameter, added to the layer's
output, gives the J of the moved parameter; reads outside the layer and repeated runs raise."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from gradwatch.evaluation.lowrank import OutsideUse
from gradwatch.evaluation.output_shift import Entry, EntryShifts, shift_owner


def _head(features: int) -> nn.Module:
    return nn.Sequential(nn.Tanh(), nn.Flatten(), nn.Linear(features, 3))


# (model, input): every stock layer kind and configuration the shift reads its slice from.
CASES: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "linear": lambda: (nn.Sequential(nn.Linear(5, 4), _head(4)), torch.randn(6, 5)),
    "linear_3d_input": lambda: (nn.Sequential(nn.Linear(5, 4), _head(12)), torch.randn(2, 3, 5)),
    "conv2d_stride_groups": lambda: (
        nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), _head(6 * 16)),
        torch.randn(2, 4, 7, 7),
    ),
    "conv2d_dilation_reflect": lambda: (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=2, dilation=2, padding_mode="reflect"), _head(3 * 36)
        ),
        torch.randn(2, 2, 6, 6),
    ),
    "conv2d_same_uneven": lambda: (
        nn.Sequential(nn.Conv2d(2, 3, (2, 3), padding="same"), _head(3 * 25)),
        torch.randn(2, 2, 5, 5),
    ),
    "conv1d_circular": lambda: (
        nn.Sequential(
            nn.Conv1d(3, 4, 3, padding=1, padding_mode="circular", stride=2), _head(4 * 5)
        ),
        torch.randn(2, 3, 9),
    ),
    "conv3d_replicate": lambda: (
        nn.Sequential(
            nn.Conv3d(2, 2, 2, stride=(1, 2, 1), padding=1, padding_mode="replicate"),
            _head(2 * 5 * 3 * 5),
        ),
        torch.randn(2, 2, 4, 4, 4),
    ),
    "conv2d_unbatched_input": lambda: (
        nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(0), nn.Linear(27, 3)),
        torch.randn(2, 5, 5),
    ),
    "embedding_padding": lambda: (
        nn.Sequential(nn.Embedding(7, 4, padding_idx=0), _head(12)),
        torch.randint(0, 7, (5, 3)),
    ),
}


def _moved_costs(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """J per copy through the shifts (every entry of every layer parameter, all in one call)
    and J with each entry really moved."""
    torch.manual_seed(0)
    model, x = CASES[case]()
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = [n for n in theta if shift_owner(model, n) is not None]
    entries = []
    for t, name in enumerate(names):
        owner = shift_owner(model, name)
        assert owner is not None
        entries.append(Entry(t, owner[0], owner[1], theta[name]))
    shifts = EntryShifts(entries)
    tensor = torch.cat([torch.full((theta[n].numel(),), t) for t, n in enumerate(names)])
    index = torch.cat([torch.arange(theta[n].numel()) for n in names])
    step = 1e-3 * (1 + index % 3).double()

    def one(t: torch.Tensor, i: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        shifts.bind(t, i, h)
        with shifts.active():
            return functional_call(model, theta, (x,)).square().sum()

    found = vmap(one)(tensor, index, step)
    plain = []
    for t, i, h in zip(tensor.tolist(), index.tolist(), step.tolist(), strict=True):
        moved = dict(theta)
        moved[names[t]] = theta[names[t]].clone()
        moved[names[t]].view(-1)[i] += h
        plain.append(functional_call(model, moved, (x,)).square().sum())
    return found, torch.stack(plain)


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # the layer's own, plain or not
@pytest.mark.parametrize("case", list(CASES))
def test_shifts_of_every_entry_match_the_moved_parameter(case: str) -> None:
    found, plain = _moved_costs(case)
    assert len(found) > 20
    torch.testing.assert_close(found, plain, rtol=4e-15, atol=0)


@pytest.mark.parametrize(
    ("layer", "eligible"),
    [
        (nn.Linear(2, 2), True),
        (nn.Conv2d(1, 1, 1), True),
        (nn.Embedding(3, 2), True),
        (nn.Embedding(3, 2, max_norm=1.0), False),  # renormalizes the weight in the forward
        (nn.ConvTranspose2d(1, 1, 2), False),
        (nn.BatchNorm1d(2), False),
        (nn.LayerNorm(2), False),
    ],
)
def test_shift_owner_takes_stock_linear_layers_only(layer: nn.Module, eligible: bool) -> None:
    model = nn.Sequential(layer)
    assert (shift_owner(model, "0.weight") is not None) is eligible


def test_a_layer_with_hooks_is_not_shifted() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 1))
    model[0].register_forward_hook(lambda m, a, o: o * 2)
    assert shift_owner(model, "0.weight") is None


class _Loss(nn.Module):
    """J = ``loss(net)``, with ``net`` a submodule (so functional_call swaps its tensors)."""

    def __init__(self, net: nn.Module, loss: Callable[[nn.Module], torch.Tensor]) -> None:
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self) -> torch.Tensor:
        return self.loss(self.net)


def _run(net: nn.Module, loss: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
    """J per copy, two copies moving entries 0 and 1 of ``net[0].weight`` through the shift."""
    model = _Loss(net, loss)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    owner = shift_owner(model, "net.0.weight")
    assert owner is not None
    shifts = EntryShifts([Entry(0, owner[0], owner[1], theta["net.0.weight"])])

    def one(i: torch.Tensor) -> torch.Tensor:
        shifts.bind(torch.tensor(0), i, torch.tensor(1e-3, dtype=torch.float64))
        with shifts.active():
            return functional_call(model, theta, ())

    return vmap(one)(torch.arange(2))


def test_a_read_outside_the_layer_raises() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)

    def penalized(m: nn.Module) -> torch.Tensor:
        return m(x).sum() + m[0].weight.detach().square().sum()

    with pytest.raises(OutsideUse, match="outside its Conv2d"):
        _run(model, penalized)


def test_a_layer_run_twice_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 3)).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="ran 2 times"):
        _run(model, lambda m: m(m(x)).sum())
