"""What GradientCheck writes, read back: TensorBoard event files through TensorBoard's own event
reader, CSVLogger's metrics file, and the helpers that format them."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from gradwatch.callbacks import GradientCheck, _logs
from tests.callback_models import QUIET_LIGHTNING, TinyModule, loader, trainer

pytestmark = pytest.mark.filterwarnings(*QUIET_LIGHTNING)

STEPS = [0, 3, 5]
PARAMETERS = [
    "net.0.weight",
    "net.0.bias",
    "net.1.weight",
    "net.1.bias",
    "net.4.weight",
    "net.4.bias",
]
TEXT = "gradcheck/worst_components/text_summary"  # torch's SummaryWriter.add_text suffix


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fit with a TensorBoardLogger and a CSVLogger, checks at steps 0, 3 and 5 of 7."""
    root = tmp_path_factory.mktemp("logs")
    tensorboard, table = TensorBoardLogger(root, name="tb"), CSVLogger(root, name="csv")
    check = GradientCheck(after_steps=(3, 5), log_worst=4)
    pl.seed_everything(0, verbose=False)
    trainer(root, callbacks=[check], logger=[tensorboard, table], max_steps=7).fit(
        TinyModule(), loader()
    )
    events = EventAccumulator(
        tensorboard.log_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    ).Reload()
    return {"events": events, "check": check, "csv": Path(table.log_dir) / "metrics.csv"}


def _steps(events: EventAccumulator, kind: str, tag: str) -> list[int]:
    return [e.step for e in getattr(events, kind)(tag)]


def test_every_gradcheck_tag_is_at_the_scheduled_steps_and_nowhere_else(
    run: dict[str, Any],
) -> None:
    events, tags = run["events"], run["events"].Tags()
    scalars = [t for t in tags["scalars"] if t.startswith("gradcheck")]
    expected = {"gradcheck/difference", "gradcheck/verdict"}
    expected |= {f"gradcheck/difference/{name}" for name in PARAMETERS}
    assert expected <= set(scalars)
    for tag in scalars:
        assert _steps(events, "Scalars", tag) == STEPS, tag
    assert [t for t in tags["histograms"] if t.startswith("gradcheck")] == ["gradcheck/abs_error"]
    assert _steps(events, "Histograms", "gradcheck/abs_error") == STEPS
    assert TEXT in tags["tensors"]
    assert _steps(events, "Tensors", TEXT) == STEPS
    assert "train/loss" in tags["scalars"]  # training logs alongside, untouched


def test_scalars_hold_the_reports_values(run: dict[str, Any]) -> None:
    events, reports = run["events"], run["check"].reports
    for event in events.Scalars("gradcheck/difference"):
        assert event.value == pytest.approx(reports[event.step].difference, rel=1e-6)
    for name in PARAMETERS:
        for event in events.Scalars(f"gradcheck/difference/{name}"):
            expected = reports[event.step].per_parameter[name]
            if math.isnan(expected):  # not judged: never a number that reads as a pass
                assert math.isnan(event.value)
            else:
                assert event.value == pytest.approx(expected, rel=1e-6)
    assert [e.value for e in events.Scalars("gradcheck/verdict")] == [0.0, 0.0, 0.0]
    for event in events.Scalars("gradcheck/kinks"):
        assert event.value == reports[event.step].kink_count
    assert {e.value for e in events.Scalars("gradcheck/bands/log10_pass_max")} == {-7.0}
    assert {e.value for e in events.Scalars("gradcheck/bands/log10_warn_max")} == {-3.0}


def test_text_is_a_markdown_table_of_the_worst_components(run: dict[str, Any]) -> None:
    event = run["events"].Tensors(TEXT)[1]
    text = event.tensor_proto.string_val[0].decode()
    assert text.startswith("**step 3**: pass: difference ")
    header = "| parameter | index | analytic | numeric | abs error | rel error | reading |"
    table = text[text.index(header) :].splitlines()
    assert len(table) == 2 + 4  # header, rule, log_worst rows
    assert all(row.split("|")[1].strip() in PARAMETERS for row in table[2:])


def test_histogram_counts_every_checked_component(run: dict[str, Any]) -> None:
    histogram = run["events"].Histograms("gradcheck/abs_error")[0].histogram_value
    assert histogram.num == run["check"].reports[0].components_checked == 83
    assert 0 <= histogram.min <= histogram.max < 1e-6


def test_custom_scalars_layout_puts_the_difference_next_to_the_bands(run: dict[str, Any]) -> None:
    events = run["events"]
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    (category,) = layout.category
    scalars = events.Tags()["scalars"]
    margin = next(c.margin for c in category.chart if c.HasField("margin"))
    (series,) = margin.series
    assert (series.value, series.lower, series.upper) == (
        "gradcheck/log10_difference",
        "gradcheck/bands/log10_pass_max",
        "gradcheck/bands/log10_warn_max",
    )
    assert {series.value, series.lower, series.upper} <= set(scalars)
    for chart in (c for c in category.chart if c.HasField("multiline")):
        for pattern in chart.multiline.tag:  # every regex shows at least one logged tag
            assert any(re.search(pattern, tag) for tag in scalars), (chart.title, pattern)


def test_csv_logger_gets_the_scalars(run: dict[str, Any]) -> None:
    with run["csv"].open() as file:
        rows = [r for r in csv.DictReader(file) if r.get("gradcheck/difference")]
    assert [int(r["step"]) for r in rows] == STEPS
    assert all(float(r["gradcheck/verdict"]) == 0.0 for r in rows)
    assert all(r[f"gradcheck/difference/{name}"] for r in rows for name in PARAMETERS)
    assert "gradcheck/log10_difference" not in rows[0]  # the chart's helpers are TensorBoard's


def test_two_callbacks_on_different_layers_log_under_their_own_names(tmp_path: Path) -> None:
    names = {"gradcheck/encoder": "net.0", "gradcheck/decoder": "net.4"}
    checks = [GradientCheck(after_steps=(2,), include=f"{p}.*", name=n) for n, p in names.items()]
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    run = trainer(tmp_path, callbacks=checks, logger=tensorboard, max_steps=3)
    pl.seed_everything(0, verbose=False)
    run.fit(TinyModule(), loader())
    events = EventAccumulator(
        tensorboard.log_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    ).Reload()
    tags = events.Tags()
    for check, (name, layer) in zip(checks, names.items(), strict=True):
        assert list(check.reports) == [0, 2]
        assert set(check.reports[0].per_parameter) == {f"{layer}.weight", f"{layer}.bias"}
        own = {t.removeprefix(f"{name}/") for t in tags["scalars"] if t.startswith(f"{name}/")}
        assert {f"difference/{layer}.weight", "difference", "verdict"} <= own
        assert not [t for t in own if t.startswith("difference/") and layer not in t]
        for event in events.Scalars(f"{name}/difference"):
            assert event.value == pytest.approx(check.reports[event.step].difference, rel=1e-6)
        assert _steps(events, "Scalars", f"{name}/difference") == [0, 2]
        assert _steps(events, "Histograms", f"{name}/abs_error") == [0, 2]
        assert _steps(events, "Tensors", f"{name}/worst_components/text_summary") == [0, 2]
    assert not [t for t in tags["scalars"] if t.startswith("gradcheck/difference")]
    # One Custom Scalars layout, a category per callback, every regex showing a logged tag.
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == list(names)
    for category in layout.category:
        for chart in (c for c in category.chart if c.HasField("multiline")):
            for pattern in chart.multiline.tag:
                found = [t for t in tags["scalars"] if re.search(pattern, t)]
                assert found and all(t.startswith(category.title) for t in found), pattern
    checkpoint = tmp_path / "both.ckpt"
    run.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=False)["callbacks"]
    assert [saved[c.state_key]["checks"][-1]["step"] for c in checks] == [2, 2]


def test_two_callbacks_under_one_name_are_told_to_take_their_own(tmp_path: Path) -> None:
    checks = [GradientCheck(after_steps=(1,)), GradientCheck(after_steps=(2,), include="net.4.*")]
    with pytest.warns(UserWarning, match=r"2 GradientCheck callbacks log under the name 'grad"):
        trainer(tmp_path, callbacks=checks, max_steps=1).fit(TinyModule(), loader())
    assert [list(c.reports) for c in checks] == [[0], [0]]


@pytest.mark.parametrize(
    ("difference", "expected"),
    [(1e-9, -9.0), (0.0, -16.0), (1e-20, -16.0), (math.nan, math.nan), (math.inf, math.nan)],
)
def test_log10_of_the_difference_is_floored_at_machine_precision(
    difference: float, expected: float
) -> None:
    assert _logs._log10(difference) == pytest.approx(expected, nan_ok=True)


def test_no_logger_prints_to_the_console_only(tmp_path: Path) -> None:
    check = GradientCheck(after_steps=())
    trainer(tmp_path, callbacks=[check], logger=False, max_steps=1).fit(TinyModule(), loader())
    assert list(check.reports) == [0]
    assert not list(tmp_path.rglob("events.out.tfevents*"))
