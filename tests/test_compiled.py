"""Compiled models are checked through their eager code: the user's parameter names, nothing
traced, recompiled or run compiled during the check, every wrapper put back after."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
from torch import nn

from gradwatch import Verdict, check_module
from gradwatch.training.compiled import EagerView, eager_names
from tests.custom_ops import batch, cross_entropy


class Counting:
    """A torch.compile backend that counts graphs compiled and compiled calls run, compiling
    with ``inner`` (inductor, or the graph as it is)."""

    def __init__(self, inner: Callable[..., Any] | None = None) -> None:
        self.inner = inner
        self.compiles = 0
        self.runs = 0

    def __call__(self, graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Any:
        self.compiles += 1
        compiled = graph.forward if self.inner is None else self.inner(graph, inputs)

        def run(*args: Any) -> Any:
            self.runs += 1
            return compiled(*args)

        return run

    @property
    def counts(self) -> tuple[int, int]:
        return self.compiles, self.runs


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))


def _warm(model: nn.Module) -> None:
    """One training call: the compile happens here, outside the check."""
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(cross_entropy(model, batch()), params)


@pytest.fixture(scope="module")
def inductor_model() -> tuple[nn.Module, nn.Module, Counting]:
    """An MLP, and it compiled by inductor (on the CPU) and run once."""
    from torch._inductor.compile_fx import compile_fx

    eager = _mlp()
    counter = Counting(compile_fx)
    compiled = cast(nn.Module, torch.compile(eager, backend=counter))
    _warm(compiled)
    return eager, compiled, counter


def test_a_compiled_module_is_checked_through_its_eager_module_and_names(
    inductor_model: tuple[nn.Module, nn.Module, Counting],
) -> None:
    eager, compiled, counter = inductor_model
    before = counter.counts
    report = check_module(compiled, cross_entropy, batch())
    assert counter.counts == before  # nothing traced, compiled or run compiled
    plain = check_module(eager, cross_entropy, batch())
    assert list(report.parameters) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert report.difference == plain.difference  # the very same computations
    assert report.verdict is Verdict.PASS
    assert report.notes[0].startswith("compiled: the module (torch.compile); checked through")
    assert report.notes[0].endswith(
        ". Pass training_path=True to compare the gradient the compiled code computes"
    )
    assert all(p.grad is None for p in eager.parameters())


def test_include_may_name_parameters_with_or_without_the_compiled_prefix(
    inductor_model: tuple[nn.Module, nn.Module, Counting],
) -> None:
    _, compiled, _ = inductor_model
    for include in ("_orig_mod.2.*", "2.*"):
        report = check_module(compiled, cross_entropy, batch(), include=include)
        assert list(report.parameters) == ["2.weight", "2.bias"]


class Parent(nn.Module):
    """A module holding a compiled submodule (as a LightningModule holds its network)."""

    def __init__(self, backend: Counting) -> None:
        super().__init__()
        self.body = torch.compile(_mlp(), backend=backend)
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_compiled_submodule_is_checked_eagerly_and_put_back() -> None:
    counter = Counting()
    model = Parent(counter)
    _warm(model)
    wrapper = model.body
    before = counter.counts
    report = check_module(model, cross_entropy, batch())
    assert counter.counts == before
    assert report.layout.names == (
        "body.0.weight",
        "body.0.bias",
        "body.2.weight",
        "body.2.bias",
        "head.weight",
        "head.bias",
    )
    assert report.verdict is Verdict.PASS
    assert model.body is wrapper  # the compiled submodule is back in its place
    assert "body (torch.compile)" in report.notes[0]


def test_a_module_compiled_in_place_is_checked_eagerly_and_keeps_its_compiled_call() -> None:
    counter = Counting()
    model = _mlp()
    model.compile(backend=counter)
    _warm(model)
    call = model._compiled_call_impl
    before = counter.counts
    report = check_module(model, cross_entropy, batch())
    assert counter.counts == before
    assert model._compiled_call_impl is call
    assert report.verdict is Verdict.PASS
    assert "the module (module.compile())" in report.notes[0]


def test_compiled_methods_and_functions_run_eagerly_during_the_check() -> None:
    counter = Counting()
    activation = torch.compile(torch.tanh, backend=counter)  # a compiled function in forward

    class Methods(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return activation(self.layer(x))

    model = Methods()
    model.forward = torch.compile(model.forward, backend=counter)  # type: ignore[method-assign]
    _warm(model)
    wrapper = model.forward
    before = counter.counts
    report = check_module(model, cross_entropy, batch())
    assert counter.counts == before
    assert model.forward is wrapper
    assert report.verdict is Verdict.PASS
    assert "the module's compiled methods (forward)" in report.notes[0]


def test_compiled_parts_are_put_back_when_the_check_raises() -> None:
    counter = Counting()
    model = Parent(counter)
    wrapper = model.body

    def failing(m: nn.Module, data: Any) -> torch.Tensor:
        raise RuntimeError("the loss broke")

    with pytest.raises(RuntimeError, match="the loss broke"):
        check_module(model, failing, batch())
    assert model.body is wrapper


def test_an_eager_module_has_no_compiled_note() -> None:
    view = EagerView(_mlp())
    assert view.compiled == [] and view.note() is None
    report = check_module(_mlp(), cross_entropy, batch())
    assert not any(n.startswith("compiled:") for n in report.notes)


def test_checks_in_threads_at_once_leave_compiled_code_running_compiled() -> None:
    # torch.compiler's stance is global: two checks in threads (as a partitioned check's
    # simulated processes) must not leave "force_eager" behind for the training that follows.
    barrier = threading.Barrier(2, timeout=30)
    met = threading.local()

    def loss(model: nn.Module, data: Any) -> torch.Tensor:
        if not getattr(met, "done", False):  # both checks are inside at once
            met.done = True
            barrier.wait()
        return cross_entropy(model, data)

    threads = [threading.Thread(target=check_module, args=(_mlp(), loss, batch())) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counter = Counting()
    compiled = torch.compile(torch.tanh, backend=counter)
    compiled(torch.ones(2))
    assert counter.counts == (1, 1)


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ("_orig_mod.0.*", "0.*"),
        (["body._orig_mod.*", "head.*"], ["body.*", "head.*"]),
        (None, None),
    ],
)
def test_eager_names_drop_the_compiled_prefix(patterns: Any, expected: Any) -> None:
    assert eager_names(patterns) == expected
