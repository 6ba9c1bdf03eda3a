"""``gradwatch.check_sharded`` on two gloo processes: FSDP2 (dp = 2) and tensor parallelism
(tp = 2, Colwise/Rowwise linears and SequenceParallel norms). The gathered float64 check equals
a single-process check of the same model and J; the gradient that trains passes for the correct
models and fails, naming the parameter, for planted sync bugs; the model is left as it was."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard

from gradwatch import PartitionError, check_module
from gradwatch.sharded import CAUSE, DivergedError, _mean_loss, check_sharded
from tests.sharded_models import (
    MLP,
    SIZE,
    Block,
    ForgetfulColwise,
    block_batch,
    block_loss,
    fsdp,
    mesh,
    mlp_batch,
    mlp_loss,
    spawn,
    tensor_parallel,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
# Below the replicas of these models (0.6 and 3.6 KiB): the check runs in place.
BUDGET = 100


def _state(model: nn.Module) -> list[Any]:
    """Every local shard, its .grad and every buffer, and the RNG: what training sees."""
    tensors = [*model.parameters(), *model.buffers()]
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    grads = [None if t.grad is None else t.grad.to_local().clone() for t in model.parameters()]
    return [[t.detach().clone() for t in local], grads, torch.get_rng_state()]


def _same(a: list[Any], b: list[Any]) -> bool:
    flat_a, flat_b = [*a[0], *a[1], a[2]], [*b[0], *b[1], b[2]]
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(flat_a, flat_b, strict=True)
    )


def _summary(report: Any) -> dict[str, Any]:
    path = report.training_path
    return {
        "verdict": report.verdict.value,
        "analytic": report.analytic,
        "numeric": report.numeric,
        "names": report.layout.names,
        "notes": report.notes,
        "path": None if path is None else (path.verdict.value, path.failed, path.message),
    }


def _fsdp_run(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)
    plain = MLP()
    model = fsdp(copy.deepcopy(plain), mesh())
    # A step of training first, so .grad holds values the check must leave alone.
    mlp_loss(model, mlp_batch(rank)).backward()
    before = _state(model)
    found = {"correct": check_sharded(model, mlp_loss, mlp_batch(rank), training_path=True)}
    found_untouched = _same(before, _state(model))
    torch.manual_seed(0)
    found["ignored"] = check_sharded(
        fsdp(MLP(), mesh(), ignore_scale=True), mlp_loss, mlp_batch(rank), training_path=True
    )
    torch.manual_seed(0)
    unsynced = fsdp(MLP(), mesh())
    unsynced.set_requires_gradient_sync(False)  # left on after gradient accumulation
    found["unsynced"] = check_sharded(unsynced, mlp_loss, mlp_batch(rank), training_path=True)
    for ignore in (False, True):  # bfloat16 compute: the baseline computes in it too
        torch.manual_seed(0)
        mixed = fsdp(MLP(), mesh(), ignore_scale=ignore, bf16=True)
        found[f"bf16, ignored={ignore}"] = check_sharded(
            mixed, mlp_loss, mlp_batch(rank), training_path=True
        )
    out = {k: _summary(r) for k, r in found.items()}
    out["untouched"] = found_untouched
    torch.manual_seed(0)
    apart = fsdp(MLP(), mesh(), ignore_scale=True)
    with torch.no_grad():
        apart.scale.add_(rank * 1e-3)  # as after a step that did not reduce its gradient
    with pytest.raises(DivergedError) as raised:
        check_sharded(apart, mlp_loss, mlp_batch(rank))
    out["diverged"] = str(raised.value)
    x, y = mlp_batch(rank)
    unpicklable = (x, y, (lambda: 0) if rank == 1 else None)  # process 1's alone
    with pytest.raises((ValueError, PartitionError)) as failed:
        check_sharded(apart, mlp_loss, unpicklable)
    out["unpicklable"] = type(failed.value).__name__, str(failed.value)
    for planted in (False, True):  # the replica exceeds the budget: checked on the shards
        torch.manual_seed(0)
        model = fsdp(MLP(planted), mesh())
        gathered = check_sharded(model, mlp_loss, mlp_batch(rank))
        in_place = check_sharded(model, mlp_loss, mlp_batch(rank), replica_budget=BUDGET)
        out[f"planted={planted}"] = _summary(gathered), _summary(in_place)
    if rank == 0:  # one process, the unsharded model, the same J: the mean of both batches
        both = [mlp_batch(0), mlp_batch(1)]
        out["single"] = _summary(check_module(plain, _mean_loss(mlp_loss), both))
    return out


def _tp_run(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)
    plain = Block()
    model = tensor_parallel(copy.deepcopy(plain), mesh())
    before = _state(model)
    found = {"correct": check_sharded(model, block_loss, block_batch(rank), training_path=True)}
    found_untouched = _same(before, _state(model))
    forgetful = tensor_parallel(
        copy.deepcopy(plain), mesh(), up=ForgetfulColwise(input_layouts=Shard(1))
    )
    found["forgetful"] = check_sharded(forgetful, block_loss, block_batch(rank), training_path=True)
    out = {k: _summary(r) for k, r in found.items()}
    out["untouched"] = found_untouched
    in_place = check_sharded(model, block_loss, block_batch(rank), replica_budget=BUDGET)
    out["planted=False"] = out["correct"], _summary(in_place)
    # A 2-D mesh, FSDP2 over its data-parallel dimension (of one process: two cores) and
    # tensor parallelism over the other: parameters sharded over both.
    two_d = init_device_mesh("cpu", (1, SIZE), mesh_dim_names=("dp", "tp"))
    both_ways = tensor_parallel(copy.deepcopy(plain), two_d["tp"])
    fully_shard(both_ways, mesh=two_d["dp"])
    out["2-D"] = _summary(
        check_sharded(both_ways, block_loss, block_batch(rank), training_path=True)
    )
    if rank == 0:
        both = [block_batch(0), block_batch(1)]
        out["single"] = _summary(check_module(plain, _mean_loss(block_loss), both))
    return out


@pytest.fixture(scope="module")
def fsdp_runs() -> list[dict[str, Any]]:
    return spawn(_fsdp_run)


@pytest.fixture(scope="module")
def tp_runs() -> list[dict[str, Any]]:
    return spawn(_tp_run)


@pytest.fixture(params=["fsdp", "tp"])
def runs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return request.getfixturevalue(f"{request.param}_runs")


def test_correct_sharded_models_pass_both_checks(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        assert run["correct"]["verdict"] == "pass"
        assert run["correct"]["path"][:2] == ("pass", [])
        assert "gathered into a replica in each of 2 processes" in run["correct"]["notes"][-1]


def test_gathered_check_equals_the_single_process_check(runs: list[dict[str, Any]]) -> None:
    single = runs[0]["single"]
    for run in runs:  # every process returns the same report
        assert run["correct"]["names"] == single["names"]
        np.testing.assert_allclose(run["correct"]["analytic"], single["analytic"], atol=1e-12)
        np.testing.assert_allclose(run["correct"]["numeric"], single["numeric"], atol=1e-12)


def test_a_2d_mesh_is_checked_as_one_model(tp_runs: list[dict[str, Any]]) -> None:
    single = tp_runs[0]["single"]
    for run in tp_runs:
        assert run["2-D"]["verdict"] == "pass" and run["2-D"]["path"][:2] == ("pass", [])
        assert run["2-D"]["names"] == single["names"]
        np.testing.assert_allclose(run["2-D"]["analytic"], single["analytic"], atol=1e-12)


def test_the_model_is_left_as_it_was(runs: list[dict[str, Any]]) -> None:
    assert [run["untouched"] for run in runs] == [True, True]


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("ignored", ["scale"]),  # kept out of FSDP: its gradient is never all-reduced
        ("unsynced", ["scale", "out.bias", "out.weight", "hidden.bias", "hidden.weight"]),
    ],
)
def test_fsdp_sync_bugs_fail_naming_the_parameter(
    fsdp_runs: list[dict[str, Any]], case: str, named: list[str]
) -> None:
    for run in fsdp_runs:
        assert run[case]["verdict"] == "fail"  # the float64 check passes; the path fails
        verdict, failed, message = run[case]["path"]
        assert (verdict, sorted(failed)) == ("fail", sorted(named))
        assert f"{failed[0]}: sharded gradient" in message and CAUSE in message


def test_mixed_precision_is_judged_in_its_own_precision(fsdp_runs: list[dict[str, Any]]) -> None:
    for run in fsdp_runs:
        assert run["bf16, ignored=False"]["path"][:2] == ("pass", [])
        verdict, failed, message = run["bf16, ignored=True"]["path"]
        assert (verdict, failed) == ("fail", ["scale"])
        assert message.startswith("scale: sharded gradient")


def test_a_style_skipping_its_all_reduce_fails_upstream(tp_runs: list[dict[str, Any]]) -> None:
    # `up`'s input gradient is each process's partial sum: what lies before `up` is off.
    for run in tp_runs:
        verdict, failed, _ = run["forgetful"]["path"]
        assert verdict == "fail"
        assert sorted(failed) == ["embed.bias", "embed.weight", "norm.bias", "norm.weight"]


def test_outside_a_distributed_job_the_group_is_refused() -> None:
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="`group` must be a process group of an initialized"):
        check_sharded(MLP(), mlp_loss, mlp_batch(0))


def test_a_replicated_parameter_that_diverged_is_named(fsdp_runs: list[dict[str, Any]]) -> None:
    for run in fsdp_runs:
        assert run["diverged"].startswith(
            "scale (by up to 0.001) differs between the processes: a parameter every process "
            "holds whole must stay equal, so its gradient is not reduced across processes"
        )


@pytest.mark.parametrize("planted", [False, True])
def test_in_place_gives_the_gathered_verdict(
    fsdp_runs: list[dict[str, Any]], planted: bool
) -> None:
    for run in fsdp_runs:
        gathered, in_place = run[f"planted={planted}"]
        assert gathered["verdict"] == in_place["verdict"] == ("fail" if planted else "pass")
        assert in_place["notes"][-1].startswith("sharded model checked in place")
        # The same backward on the same float64 values; the forward's sums run per module.
        np.testing.assert_allclose(in_place["analytic"], gathered["analytic"], atol=1e-12)
        # J's rounding, |J|·ε_mach ≈ 2e-16, over the step 2ε = 2e-7 is ~1e-9 per estimate;
        # the two ways sum J's terms in other orders, a few of those apart.
        np.testing.assert_allclose(in_place["numeric"], gathered["numeric"], atol=2e-8)


def test_in_place_tensor_parallel_passes_as_gathered(tp_runs: list[dict[str, Any]]) -> None:
    for run in tp_runs:
        gathered, in_place = run["planted=False"]
        assert gathered["verdict"] == in_place["verdict"] == "pass"
        np.testing.assert_allclose(in_place["analytic"], gathered["analytic"], atol=1e-12)


def test_a_batch_that_does_not_pickle_fails_every_process(fsdp_runs: list[dict[str, Any]]) -> None:
    assert fsdp_runs[0]["unpicklable"] == (
        "PartitionError",
        "another process's batch does not pickle; see the error raised there",
    )
    kind, message = fsdp_runs[1]["unpicklable"]
    assert kind == "ValueError"
    assert message.startswith(
        "`batch` must be picklable: every process receives every batch (J is their mean); got "
    )
