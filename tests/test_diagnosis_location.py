"""Where the first wrong gradient enters: the backward graph of J, the boundary between passing
and failing parameters, residual connections, and planted bugs in the middle of deep nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.diagnosis import (
    BackwardGraph,
    find_patterns,
    locate,
    observations,
    parameter_verdicts,
    trace_backward,
)
from tests import nets, planted


class _Residual(nn.Module):
    """inp → [branch: lin1 → act → lin2] + skip → head: a skip connection around two layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.lin1, self.act = nn.Linear(3, 4), nn.Linear(4, 4), nn.Tanh()
        self.lin2, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        return self.head(self.lin2(self.act(self.lin1(h))) + h)


def _residual_graph() -> BackwardGraph:
    return trace_backward(_Residual(), nets.cross_entropy, nets.classification_batch((3,), 2))


def _verdicts(**by_module: str) -> dict[str, str]:
    return {f"{m}.{p}": v for m, v in by_module.items() for p in ("weight", "bias")}


def test_the_backward_order_runs_from_the_loss_down_and_owners_come_from_the_names() -> None:
    graph = _residual_graph()
    assert graph.parameters[:4] == ("head.bias", "head.weight", "lin2.bias", "lin2.weight")
    assert graph.parameters[-2:] == ("inp.bias", "inp.weight")
    assert graph.owners["lin1.weight"] == "lin1" and graph.unreached == ()
    made = {m for m in graph.modules if m is not None}
    assert made == {"", "inp", "lin1", "act", "lin2", "head"}  # "": the model's own tanh and +


def test_a_bug_in_the_branch_is_located_between_its_passing_and_failing_layers() -> None:
    verdicts = _verdicts(head="pass", lin2="pass", lin1="fail", inp="fail")
    location = locate(_residual_graph(), verdicts)
    assert location is not None and location.located
    assert location.modules == ("lin2", "act", "lin1")
    assert location.passing == ("lin2.bias", "lin2.weight")
    assert location.failing == ("lin1.bias", "lin1.weight")
    assert location.text == (
        "The first wrong gradient enters between lin2.bias, lin2.weight (pass) and lin1.bias, "
        "lin1.weight (fail): look at the input gradient of lin2, the backward of act or the "
        "backward of lin1."
    )


def test_below_a_skip_connection_a_passing_layer_rules_out_the_branch_above_it() -> None:
    # inp passes: whatever corrupts lin1 does not reach inp, so it is not the gradient lin1
    # hands down, nor anything above lin1 (that would reach inp through the skip).
    verdicts = _verdicts(head="pass", lin2="pass", lin1="fail", inp="pass")
    location = locate(_residual_graph(), verdicts)
    assert location is not None and location.modules == ("lin1",)
    assert location.text.endswith("look at the backward of lin1.")


def test_a_wrong_gradient_below_the_branch_is_located_on_both_paths_into_it() -> None:
    # Only inp fails: the wrong gradient enters where both paths (skip and branch) meet above
    # inp (the model's own tanh and +), on the branch's way in (lin1's input gradient), or in
    # inp's own backward.
    verdicts = _verdicts(head="pass", lin2="pass", lin1="pass", inp="fail")
    location = locate(_residual_graph(), verdicts)
    assert location is not None and location.modules == ("", "lin1", "inp")
    assert location.text == (
        "The first wrong gradient enters between lin1.bias, lin1.weight (pass) and inp.bias, "
        "inp.weight (fail): look at the model's own forward (outside its submodules), the input "
        "gradient of lin1 or the backward of inp."
    )


def test_failures_no_single_place_explains_cannot_be_located() -> None:
    # head and lin1 fail while lin2, between them, passes: two bugs (or one that cancels).
    verdicts = _verdicts(head="fail", lin2="pass", lin1="fail", inp="pass")
    location = locate(_residual_graph(), verdicts)
    assert location is not None and not location.located and location.modules == ()
    assert "cannot be located" in location.text


@pytest.mark.parametrize("unknown", ["not judged", "warn"])
def test_a_parameter_not_judged_constrains_nothing(unknown: str) -> None:
    verdicts = _verdicts(head="pass", lin2=unknown, lin1="fail", inp="fail")
    location = locate(_residual_graph(), verdicts)
    # lin2 may be right or wrong: the wrong gradient may enter anywhere from head's input down.
    assert location is not None and location.modules == ("head", "", "lin2", "act", "lin1")


def test_when_everything_fails_the_loss_is_among_the_places() -> None:
    verdicts = _verdicts(head="fail", lin2="fail", lin1="fail", inp="fail")
    location = locate(_residual_graph(), verdicts)
    assert location is not None and location.modules[0] == "(loss)"
    assert "every checked parameter it reaches fails" in location.text


def test_no_failing_parameter_nothing_to_locate() -> None:
    assert locate(_residual_graph(), _verdicts(head="pass", lin2="warn")) is None


def test_tracing_leaves_the_model_and_the_rngs_as_they_were() -> None:
    model = planted.tiny_resnet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    trace_backward(model, nets.cross_entropy, planted.image_batch())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_parameter_j_does_not_use_is_unreached_and_failing_there_is_not_located() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(5, 5))
    graph = trace_backward(model, lambda m, x: m[0](x).sum(), torch.randn(4, 3))
    assert graph.unreached == ("1.weight", "1.bias")
    location = locate(graph, {"0.weight": "fail", "0.bias": "pass", "1.weight": "fail"})
    assert location is not None and not location.located and location.failing == ("1.weight",)
    assert "cannot be located" in location.text


# -- planted bugs in the middle of deep nets ---------------------------------------------------


def _locate_planted(model: nn.Module, loss: object, batch: object, components: int) -> object:
    report = gradwatch.check_module(model, loss, batch, sample=components)  # type: ignore[arg-type]
    verdicts = parameter_verdicts(report)
    return report, locate(trace_backward(model, loss, batch), verdicts)


def test_a_wrong_activation_backward_in_a_resnet_block_is_located_in_that_block() -> None:
    model = planted.tiny_resnet()
    model.layer1[1].act1 = planted.PlantedActivation(2.0)
    report, location = _locate_planted(model, nets.cross_entropy, planted.image_batch(), 400)
    # The worst component is far below (the stem, layer1.0); the boundary is in layer1.1.
    assert location.modules == ("layer1.1.conv2", "layer1.1.act1", "layer1.1.bn1")
    assert location.passing == ("layer1.1.conv2.weight",)
    assert location.failing == ("layer1.1.bn1.weight", "layer1.1.bn1.bias")
    assert location.text.startswith("The first wrong gradient enters in layer1.1, between")
    findings = find_patterns(observations(report, batch_size=4))
    assert [(f.parameter, f.kind, f.ratio) for f in findings] == [
        ("layer1.1.conv1.weight", "scale", 0.5)
    ]


def test_a_wrong_backward_on_a_resnet_skip_path_is_located_at_that_block_not_its_branch() -> None:
    model = planted.tiny_resnet()
    model.layer2[0].skip_factor = 3.0
    _, location = _locate_planted(model, nets.cross_entropy, planted.image_batch(), 400)
    assert location.modules == ("layer2.0", "layer2.0.downsample.1")
    assert location.passing == ("layer2.0.bn2.weight", "layer2.0.bn2.bias")


def test_a_wrong_activation_backward_in_a_gpt2_block_is_located_in_its_mlp() -> None:
    pytest.importorskip("transformers")
    model = planted.tiny_gpt2()
    model.transformer.h[1].mlp.act = planted.PlantedActivation(3.0, "gelu")
    ids = torch.randint(0, planted.VOCABULARY, (2, 8), generator=torch.Generator().manual_seed(0))
    report, location = _locate_planted(model, planted.next_token_loss, ids, 300)
    mlp = "transformer.h.1.mlp"
    assert location.modules == (f"{mlp}.c_proj", f"{mlp}.act", f"{mlp}.c_fc")
    verdicts = parameter_verdicts(report)
    below = [p for p in verdicts if p.startswith(("transformer.h.0", "transformer.w"))]
    above = [p for p in verdicts if p.startswith(("transformer.h.2", "transformer.ln_f"))]
    assert {verdicts[p] for p in below} == {"fail"} and {verdicts[p] for p in above} == {"pass"}
    (finding,) = find_patterns(observations(report, batch_size=2))
    assert (finding.parameter, finding.kind, finding.ratio) == (
        f"{mlp}.c_fc.weight",
        "scale",
        1 / 3,
    )


def test_reach_masks_follow_every_path() -> None:
    graph = _residual_graph()
    reach = graph.reach()
    bit = {p: 1 << k for k, p in enumerate(graph.parameters)}
    assert reach[0] == sum(bit.values())  # J's node reaches every parameter
    lin2 = max(reach[n] for n in range(len(reach)) if graph.modules[n] == "lin2")
    # lin2's backward reaches the branch below it and, through it, inp; never head.
    assert (
        lin2
        == bit["lin2.weight"]
        | bit["lin2.bias"]
        | bit["lin1.weight"]
        | bit["lin1.bias"]
        | bit["inp.weight"]
        | bit["inp.bias"]
    )
