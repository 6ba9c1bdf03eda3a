"""Where the precision guard saw something: module names grouped for the notes."""

from __future__ import annotations

import torch
from torch import nn

from gradwatch.precision.sites import Sites, group_names


def test_group_names_merges_numbered_parts_exactly() -> None:
    names = [f"enc.block.{b}.layer.{k}.norm" for b in range(2) for k in range(2)]
    assert group_names([*names, "enc.final"]) == ["enc.block.{0,1}.layer.{0,1}.norm", "enc.final"]
    assert group_names([f"h.{i}.ln" for i in range(12)]) == ["h.{0..11}.ln"]
    assert group_names(["h.0.ln", "h.2.ln"]) == ["h.{0,2}.ln"]
    assert group_names(["a.0.b.0", "a.1.b.1"]) == ["a.0.b.0", "a.1.b.1"]  # not a product


def test_sites_name_the_running_module_and_group_the_lines() -> None:
    model = nn.Sequential(*[nn.Sequential(nn.Linear(2, 2), nn.Tanh()) for _ in range(3)])
    sites = Sites(model)
    for k, layer in enumerate(model):
        layer[0].register_forward_pre_hook(lambda m, i, k=k: sites.cast(f"cast {k % 2}", True))
    with sites.watching():
        model(torch.ones(1, 2))
    sites.cast("outside", True)
    assert sites.lines(sites.casts, "kept") == ["{0,2}.0: cast 0 kept", "1.0: cast 1 kept",
                                                 "loss_fn: outside kept"]  # fmt: skip
    assert sites.lines(sites.casts, "kept", most=1) == ["{0,2}.0: cast 0 kept",
                                                         "… and 2 more places"]  # fmt: skip
