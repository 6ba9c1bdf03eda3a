"""What GradientCheck writes, read back: TensorBoard event files through TensorBoard's own event
reader, CSVLogger's metrics file, the JSON report files, and the helpers that format them."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

import gradwatch
from gradwatch.callbacks import GradientCheck
from gradwatch.integration import card as _card
from gradwatch.integration import scalars as numbers
from gradwatch.integration import text as reading
from tests.callback_models import (
    ANSWER,
    DETAILS,
    QUIET_LIGHTNING,
    TinyModule,
    loader,
    trainer,
)

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
BY_PARAMETER = {f"gradcheck_parameters/{name}" for name in PARAMETERS}
JUDGED = [name for name in PARAMETERS if name != "net.0.bias"]
SIZES = {"scalars": 0, "histograms": 0, "tensors": 0, "images": 0}


def events_of(log_dir: str) -> EventAccumulator:
    return EventAccumulator(log_dir, size_guidance=SIZES).Reload()


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
    return {
        "events": events_of(tensorboard.log_dir),
        "check": check,
        "csv": Path(table.log_dir) / "metrics.csv",
        "dirs": [Path(tensorboard.log_dir), Path(table.log_dir)],
    }


def _steps(events: EventAccumulator, kind: str, tag: str) -> list[int]:
    return [e.step for e in getattr(events, kind)(tag)]


def _text(events: EventAccumulator, tag: str, position: int) -> str:
    return str(events.Tensors(tag)[position].tensor_proto.string_val[0].decode())


def test_every_tag_is_at_the_scheduled_steps_and_nowhere_else(run: dict[str, Any]) -> None:
    events, tags = run["events"], run["events"].Tags()
    scalars = {t for t in tags["scalars"] if t.startswith("gradcheck")}
    assert scalars == ANSWER | DETAILS | BY_PARAMETER
    for tag in scalars:
        assert _steps(events, "Scalars", tag) == STEPS, tag
    assert [t for t in tags["histograms"]] == ["gradcheck_details/log10_abs_error"]
    assert [t for t in tags["images"]] == ["GradientCheck/gradcheck"]
    assert [t for t in tags["tensors"] if "gradcheck" in t] == ["gradcheck/report"]
    for kind, tag in [
        ("Histograms", "gradcheck_details/log10_abs_error"),
        ("Images", "GradientCheck/gradcheck"),
        ("Tensors", "gradcheck/report"),
    ]:
        assert _steps(events, kind, tag) == STEPS, tag
    assert "train/loss" in tags["scalars"]  # training logs alongside, untouched


def test_scalars_hold_the_reports_values(run: dict[str, Any]) -> None:
    events, reports = run["events"], run["check"].reports
    for event in events.Scalars("gradcheck/difference"):
        assert event.value == pytest.approx(reports[event.step].difference, rel=1e-6)
    for event in events.Scalars("gradcheck/log10_difference"):
        expected = math.log10(reports[event.step].difference)
        assert event.value == pytest.approx(expected, rel=1e-6)
    for name in JUDGED:
        for event in events.Scalars(f"gradcheck_parameters/{name}"):
            assert event.value == pytest.approx(
                reports[event.step].parameters[name].difference, rel=1e-6
            )
    # BatchNorm cancels the bias before it: a zero gradient, against a few ulps of J: not judged,
    # and never shown as a value.
    assert all(reports[s].parameters["net.0.bias"].reason == "within noise" for s in STEPS)
    assert all(math.isnan(e.value) for e in events.Scalars("gradcheck_parameters/net.0.bias"))
    assert [e.value for e in events.Scalars("gradcheck/verdict")] == [0.0, 0.0, 0.0]
    for event in events.Scalars("gradcheck_details/kinks"):
        assert event.value == reports[event.step].kink_count
    for event in events.Scalars("gradcheck_details/not_judged_components"):
        assert event.value == reports[event.step].reading_counts["not judged"]
    assert {e.value for e in events.Scalars("gradcheck_details/bands/log10_pass_max")} == {-7.0}
    assert {e.value for e in events.Scalars("gradcheck_details/bands/log10_warn_max")} == {-3.0}


def test_the_text_is_the_whole_report_under_the_tag_the_readme_names(run: dict[str, Any]) -> None:
    text = _text(run["events"], "gradcheck/report", 1)
    report = run["check"].reports[3]
    assert text.startswith("### PASS at step 3: difference ")
    assert report.message in text
    table = text[text.index("| parameter | difference | verdict |") :].splitlines()
    rows = {row.split("|")[1].strip(): row.split("|")[3].strip() for row in table[2:8]}
    assert rows == {
        **{name: "**pass**" for name in JUDGED},
        "net.0.bias": "**not judged** (within noise)",
    }
    assert list(rows)[-1] == "net.0.bias"  # worst first: not judged comes last
    worst = text[text.index("| parameter | index |") :].splitlines()
    assert len(worst) == 2 + 4  # header, rule, log_worst rows
    assert "evaluation:" not in text and "vmap" not in text  # how J ran is not for this page


def test_histogram_counts_every_checked_component_in_decades(run: dict[str, Any]) -> None:
    histogram = run["events"].Histograms("gradcheck_details/log10_abs_error")[0].histogram_value
    report = run["check"].reports[0]
    assert histogram.num == report.components_checked == 83
    assert histogram.min == pytest.approx(np.log10(max(report.abs_errors.min(), 1e-16)))
    assert histogram.max == pytest.approx(np.log10(report.abs_errors.max()))
    assert -16 <= histogram.min <= histogram.max < -6


def test_the_card_is_the_report_drawn(run: dict[str, Any]) -> None:
    images, check = run["events"].Images("GradientCheck/gradcheck"), run["check"]
    history: list[_card.Point] = []
    for image, step in zip(images, STEPS, strict=True):
        report = check.reports[step]
        # The run as TensorBoard names it, pointed at the logger's save_dir.
        expected = _card.render(_card.card_content(step, report, history, "tb/version_0"))
        shown = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        assert np.array_equal(shown, expected)
        history.append(_card.Point(step, report.difference, "pass"))
    assert (image.width, image.height) == (_card.WIDTH, expected.shape[0])


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
        "gradcheck_details/bands/log10_pass_max",
        "gradcheck_details/bands/log10_warn_max",
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
    assert all(r[f"gradcheck_parameters/{name}"] for r in rows for name in PARAMETERS)
    assert "gradcheck/log10_difference" not in rows[0]  # the chart's helpers are TensorBoard's


def test_each_report_is_a_json_file_in_every_loggers_folder(run: dict[str, Any]) -> None:
    for folder in run["dirs"]:
        assert sorted(p.name for p in (folder / "gradcheck").iterdir()) == [
            f"step_{s}.json" for s in sorted(STEPS, key=str)
        ]
        for step in STEPS:
            data = gradwatch.load_report(folder / "gradcheck" / f"step_{step}.json")
            expected = run["check"].reports[step].to_dict()
            assert {k: data[k] for k in expected} == expected
            assert (data["step"], data["check"]) == (step, "gradcheck")
            assert data["gradwatch_version"] == gradwatch.__version__


def test_two_callbacks_on_different_layers_log_under_their_own_names(tmp_path: Path) -> None:
    names = {"gradcheck/encoder": "net.0", "gradcheck/decoder": "net.4"}
    checks = [GradientCheck(after_steps=(2,), include=f"{p}.*", name=n) for n, p in names.items()]
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    run = trainer(tmp_path, callbacks=checks, logger=tensorboard, max_steps=3)
    pl.seed_everything(0, verbose=False)
    run.fit(TinyModule(), loader())
    events = events_of(tensorboard.log_dir)
    tags = events.Tags()
    for check, (name, layer) in zip(checks, names.items(), strict=True):
        part = name.removeprefix("gradcheck/")
        assert list(check.reports) == [0, 2]
        assert set(check.reports[0].parameters) == {f"{layer}.weight", f"{layer}.bias"}
        own = {t for t in tags["scalars"] if f"/{part}/" in t}
        assert {
            f"{name}/difference",
            f"{name}/verdict",
            f"gradcheck_parameters/{part}/{layer}.weight",
            f"gradcheck_details/{part}/kinks",
        } <= own
        assert not [t for t in own if "_parameters" in t and layer not in t]
        for event in events.Scalars(f"{name}/difference"):
            assert event.value == pytest.approx(check.reports[event.step].difference, rel=1e-6)
        assert _steps(events, "Scalars", f"{name}/difference") == [0, 2]
        assert _steps(events, "Histograms", f"gradcheck_details/{part}/log10_abs_error") == [0, 2]
        assert _steps(events, "Tensors", f"{name}/report") == [0, 2]
        assert _steps(events, "Images", f"GradientCheck/{name}") == [0, 2]
        assert (Path(tensorboard.log_dir) / name / "step_2.json").is_file()
    assert not [t for t in tags["scalars"] if t.startswith("gradcheck/difference")]
    # One Custom Scalars layout, a category per callback, every regex showing its own tags.
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == list(names)
    for category in layout.category:
        part = category.title.removeprefix("gradcheck/")
        for chart in (c for c in category.chart if c.HasField("multiline")):
            for pattern in chart.multiline.tag:
                found = [t for t in tags["scalars"] if re.search(pattern, t)]
                assert found and all(part in t for t in found), pattern
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
    assert reading.log10(difference) == pytest.approx(expected, nan_ok=True)


def test_no_logger_prints_to_the_console_only(tmp_path: Path) -> None:
    check = GradientCheck(after_steps=())
    trainer(tmp_path, callbacks=[check], logger=False, max_steps=1).fit(TinyModule(), loader())
    assert list(check.reports) == [0]
    assert not list(tmp_path.rglob("events.out.tfevents*"))
    assert not list(tmp_path.rglob("*.json"))


# -- a parameter not judged ----------------------------------------------------------------------


def test_a_parameter_not_judged_is_never_zero_or_pass() -> None:
    # J = w²: w's gradient 2w = 2 is reported as 3 (a bug); b does not enter J (not judged).
    report = gradwatch.check_function(
        lambda t: float(t[0] ** 2), np.ones(2), np.array([3.0, 0.0]), layout={"w": 1, "b": 1}
    )
    rows = reading.parameter_rows(report)
    assert [(r.name, r.verdict, r.reason) for r in rows] == [
        ("w", "fail", ""),
        ("b", "not judged", "within noise"),
    ]
    values = numbers.scalars(report)
    assert math.isnan(values["gradcheck_parameters/b"])
    assert values["gradcheck_parameters/w"] == pytest.approx(0.2)
    assert values["gradcheck/verdict"] == 2.0
    content = _card.card_content(0, report, [])
    assert content.title == "FAIL at step 0"
    assert content.rows == (("fail", "w", "2.0e-01"), ("not judged", "b", "-"))
    text = reading.report_markdown(0, report, 2)
    assert "| b | - | **not judged** (within noise) |" in text
    assert "| b | 0" not in text and "| b | - | **pass**" not in text


def test_a_check_that_judged_nothing_logs_not_judged() -> None:
    report = gradwatch.check_function(lambda t: 1.0, np.ones(2), np.zeros(2))
    assert numbers.scalars(report)["gradcheck/verdict"] == -1.0
    assert _card.card_content(0, report, []).title == "NOT JUDGED at step 0"


def test_a_check_that_could_not_finish_says_why_and_shows_no_difference() -> None:
    from torch import nn

    from gradwatch.integration import faults as _faults

    why = "the check could not finish: ValueError: the loss cannot use this batch"
    report = _faults.failed_report(nn.Linear(2, 1), None, why, 1e-7, gradwatch.Thresholds())
    values = numbers.scalars(report)
    assert values["gradcheck/verdict"] == 2.0
    assert all(math.isnan(values[t]) for t in values if "difference" in t or "_parameters" in t)
    content = _card.card_content(3, report, [_card.Point(0, 1e-9, "pass")])
    assert (content.title, content.difference, content.rows) == ("FAIL at step 3", "", ())
    assert content.failure == why
    assert [math.isnan(p.difference) for p in content.history] == [False, True]
    assert _card.render(content).shape[0] <= 450  # TensorBoard shows 215 pixels of it
    text = reading.report_markdown(3, report, 10)
    assert text == "### FAIL at step 3\n\nT" + why[1:]
