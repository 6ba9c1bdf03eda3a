"""_state: the RNG states, dropout flags and batch copy that keep the user's world as it was."""

from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict, defaultdict
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch import check_module
from gradwatch.common.user_state import (
    DROPOUT_LAYERS,
    cast_batch,
    dropout_disabled,
    preserved_rng,
    reseed,
)
from tests.rng import numpy_rng_state


def draws() -> tuple[float, float, float]:
    return float(torch.rand(())), float(np.random.rand()), random.random()


def test_preserved_rng_restores_every_global_stream() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = draws()
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    with preserved_rng():
        reseed(7)
        draws()
    assert draws() == expected


def test_preserved_rng_restores_when_the_body_raises() -> None:
    torch_state, numpy_state, python_state = (
        torch.get_rng_state(),
        numpy_rng_state(),
        random.getstate(),
    )
    with pytest.raises(RuntimeError, match="boom"), preserved_rng():
        draws()
        raise RuntimeError("boom")
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert numpy_rng_state() == numpy_state
    assert random.getstate() == python_state


def test_reseed_makes_every_stream_repeat() -> None:
    reseed(5)
    first = draws()
    draws()
    reseed(5)
    assert draws() == first
    reseed(6)
    assert draws() != first


LAZY_SEEDS = vars(torch.cuda).get("_lazy_seed_tracker")  # torch's queue of CUDA seeds


@pytest.mark.skipif(
    LAZY_SEEDS is None or torch.cuda.is_initialized(), reason="needs CUDA not yet initialized"
)
def test_reseed_leaves_the_users_queued_cuda_seed() -> None:
    # Before CUDA starts, torch.manual_seed queues the CUDA seed for later; a check that queued
    # its own would silently replace the user's seed once CUDA starts.
    assert LAZY_SEEDS is not None
    torch.manual_seed(123)
    queued = LAZY_SEEDS.get_calls()
    with preserved_rng():
        reseed(0)
    assert LAZY_SEEDS.get_calls() == queued


def model_with_dropout() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(3, 3),
        nn.BatchNorm1d(3),
        nn.Dropout(0.5),
        nn.Sequential(nn.Dropout2d(0.5), nn.AlphaDropout(0.5)),
        nn.Dropout(0.5),
    ).train()


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_dropout_disabled_turns_off_dropout_layers_only() -> None:
    model = model_with_dropout()
    model[4].eval()  # a dropout layer the user already switched off stays off
    before = flags(model)
    with dropout_disabled(model, disable=True):
        during = flags(model)
        assert all(not m.training for m in model.modules() if isinstance(m, DROPOUT_LAYERS)), during
        # BatchNorm, the containers and Linear keep their mode.
        assert during["1"] and during[""] and during["3"] and during["0"]
    assert flags(model) == before


def test_dropout_disabled_false_changes_nothing() -> None:
    model = model_with_dropout()
    before = flags(model)
    with dropout_disabled(model, disable=False):
        assert flags(model) == before
    assert flags(model) == before


def test_dropout_disabled_restores_flags_when_the_body_raises() -> None:
    model = model_with_dropout()
    model[3].eval()
    before = flags(model)
    with pytest.raises(ValueError, match="boom"), dropout_disabled(model, disable=True):
        raise ValueError("boom")
    assert flags(model) == before


class Pair(NamedTuple):
    x: torch.Tensor
    label: str


def test_cast_batch_casts_floating_tensors_through_nested_containers() -> None:
    x = torch.randn(2, 3, dtype=torch.float32, requires_grad=True)
    y = torch.tensor([1, 2])
    batch: dict[str, Any] = {
        "x": x,
        "pair": Pair(x, "a"),
        "items": [y, (x, 3)],
        "ordered": OrderedDict(z=x),
        "default": defaultdict[str, Any](list, w=x),
    }
    cast = cast_batch(batch, torch.float64, torch.device("cpu"))
    assert cast["x"].dtype == torch.float64 and not cast["x"].requires_grad
    torch.testing.assert_close(cast["x"], x.detach().double())
    assert isinstance(cast["pair"], Pair) and cast["pair"].label == "a"
    assert cast["pair"].x.dtype == torch.float64
    assert cast["items"][0].dtype == torch.int64  # integer labels are not cast
    assert torch.equal(cast["items"][0], y)
    assert isinstance(cast["items"][1], tuple) and cast["items"][1][1] == 3
    assert isinstance(cast["ordered"], OrderedDict)
    assert cast["ordered"]["z"].dtype == torch.float64
    assert isinstance(cast["default"], defaultdict) and cast["default"]["missing"] == []
    assert cast["default"]["w"].dtype == torch.float64
    # The user's batch is untouched.
    assert batch["x"] is x and x.dtype == torch.float32 and x.requires_grad


@dataclasses.dataclass
class Example:
    x: torch.Tensor
    y: torch.Tensor
    name: str = "train"
    extra: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Frozen:
    x: torch.Tensor
    scale: float = dataclasses.field(init=False, default=2.0)


def test_cast_batch_casts_the_fields_of_a_dataclass() -> None:
    x = torch.randn(2, 3, requires_grad=True)
    y = torch.tensor([1, 0])
    batch = Example(x, y, extra={"w": x})
    cast = cast_batch([batch, Frozen(x)], torch.float64, torch.device("cpu"))
    assert type(cast[0]) is Example and cast[0] is not batch
    assert cast[0].x.dtype == torch.float64 and not cast[0].x.requires_grad
    torch.testing.assert_close(cast[0].x, x.detach().double())
    assert cast[0].y.dtype == torch.int64 and cast[0].name == "train"
    assert cast[0].extra["w"].dtype == torch.float64
    assert type(cast[1]) is Frozen and cast[1].x.dtype == torch.float64 and cast[1].scale == 2.0
    # The user's instance is untouched.
    assert batch.x is x and batch.extra["w"] is x and x.dtype == torch.float32


def test_a_dataclass_batch_is_checked() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    batch = Example(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    report = check_module(
        model, lambda m, b: nn.functional.cross_entropy(m(b.x), b.y), batch, sample=10
    )
    assert report.verdict.value == "pass", str(report)
    assert batch.x.dtype == torch.float32


def test_cast_batch_keeps_non_tensors() -> None:
    marker = object()
    assert cast_batch(marker, torch.float64, torch.device("cpu")) is marker
    assert cast_batch("text", torch.float64, torch.device("cpu")) == "text"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cast_batch_moves_to_the_device() -> None:
    cast = cast_batch([torch.ones(2)], torch.float64, torch.device("cuda"))
    assert cast[0].device.type == "cuda" and cast[0].dtype == torch.float64


def test_a_loss_that_writes_into_its_batch_leaves_the_users_batch_alone() -> None:
    """The batch is already float64 on the CPU, so a cast without a copy would hand the loss
    the user's own tensors."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    before = (x.clone(), y.clone())

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        inputs, labels = batch
        inputs.mul_(2.0)  # e.g. an in-place normalization
        labels.clamp_(max=0)
        return nn.functional.cross_entropy(m(inputs), labels)

    report = check_module(model, loss, (x, y), sample=4)
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])
    # The loss changes its (copied) batch on every call, so J moves at a fixed θ: said plainly,
    # and nothing is judged from the meaningless numbers.
    assert report.verdict.value == "not judged" and "J is not deterministic" in report.message
    assert report.reading_counts == {"agrees": 0, "disagrees": 0, "not judged": 4}


def test_the_mps_stream_is_saved_reseeded_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Apple GPU here: a stand-in MPS generator shows the calls the check makes on one."""
    import gradwatch.common.user_state as state

    stream: dict[str, Any] = {"state": torch.tensor([7], dtype=torch.uint8), "seeds": []}
    monkeypatch.setattr(state, "_mps", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: stream["state"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: stream.update(state=s))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: stream["seeds"].append(seed))
    with pytest.raises(RuntimeError, match="boom"), preserved_rng():
        reseed(3)
        stream["state"] = torch.tensor([0], dtype=torch.uint8)  # the check drew numbers
        raise RuntimeError("boom")
    assert stream["seeds"] == [3]
    assert torch.equal(stream["state"], torch.tensor([7], dtype=torch.uint8))
