"""GradientCheck from a LightningCLI config: the example YAML parses and its schedule runs; bad
init args fail before training, naming the argument, the accepted values and the value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradwatch.callbacks import GradientCheck
from tests.callback_models import EXAMPLES, QUIET_LIGHTNING, example

# LightningCLI 2.6 still calls jsonargparse APIs that jsonargparse 4.49 deprecated.
pytestmark = pytest.mark.filterwarnings(
    *QUIET_LIGHTNING, "ignore::DeprecationWarning:pytorch_lightning.cli"
)
CONFIG = EXAMPLES / "config.yaml"


@pytest.fixture(autouse=True)
def _no_pytest_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    # LightningCLI(args=...) warns when sys.argv holds arguments too (here: pytest's).
    monkeypatch.setattr(sys, "argv", ["cli.py"])


def test_the_example_config_sets_the_schedule_and_fit_runs_it(tmp_path: Path) -> None:
    # The YAML's schedule (step 0 and after_steps: [100]) on a smaller model, 101 steps.
    cli = example("cli").main(
        [
            "fit",
            f"--config={CONFIG}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_steps=101",
            "--model.hidden=8",
        ]
    )
    (check,) = [c for c in cli.trainer.callbacks if isinstance(c, GradientCheck)]
    assert check.schedule.at_init and check.schedule.after_steps == (100,)
    assert check.on_fail == "raise"
    assert list(check.reports) == [0, 100]
    events = EventAccumulator(cli.trainer.logger.log_dir, size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("gradcheck/difference")] == [0, 100]


def _override(tmp_path: Path, init_args: str) -> Path:
    path = tmp_path / "override.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n    - class_path: gradwatch.callbacks.GradientCheck\n"
        f"      init_args: {{{init_args}}}\n"
    )
    return path


def test_a_value_outside_a_literal_is_rejected_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _override(tmp_path, "on_fail: explode")
    with pytest.raises(SystemExit):
        example("cli").main(["fit", f"--config={CONFIG}", f"--config={bad}"])
    error = capsys.readouterr().err
    assert 'Parser key "on_fail"' in error
    assert "Literal['warn', 'raise', 'ignore']. Got value: explode" in error


@pytest.mark.parametrize(
    ("init_args", "key", "message"),
    [
        (
            "epsilon: -1.0",
            "epsilon",
            "`epsilon` must be 'auto' or a finite float in (0, 1), e.g. 1e-7; got -1.0",
        ),
        (
            "after_steps: [-100]",
            "after_steps",
            "`after_steps` must be a non-negative int or a list of them, e.g. [100, 1000]; "
            "got [-100]",
        ),
        (
            "every_n_steps: 0",
            "every_n_steps",
            "`every_n_steps` must be None or a positive int, e.g. 1000; got 0",
        ),
        ("sample: -3", "sample", "`sample` must be None (all) or a positive int"),
        ("pass_max: .inf", "pass_max", "`pass_max` must be a positive finite float, e.g. 1e-7"),
        ("warn_max: 0", "warn_max", "`warn_max` must be a positive finite float, e.g. 1e-7"),
        ("seed: -1", "seed", "`seed` must be a non-negative int; got -1"),
        ("log_worst: -2", "log_worst", "`log_worst` must be a non-negative int; got -2"),
        ("name: grad check", "name", "`name` must be a non-empty str without spaces"),
    ],
)
def test_a_value_out_of_range_is_rejected_by_the_parser_naming_the_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], init_args: str, key: str, message: str
) -> None:
    # As a wrong choice is: one parser error (no traceback), the argument named, before any
    # object is built.
    bad = _override(tmp_path, init_args)
    with pytest.raises(SystemExit):
        example("cli").main(["fit", f"--config={CONFIG}", f"--config={bad}"])
    error = capsys.readouterr().err
    assert f'Parser key "{key}":' in error
    assert f"GradientCheck: {message}" in error
    assert "Traceback" not in error


def test_bands_out_of_order_fail_at_construction_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _override(tmp_path, "pass_max: 1.0e-2, warn_max: 1.0e-3")
    with pytest.raises(ValueError, match="`pass_max` must not exceed `warn_max`"):
        example("cli").main(["fit", f"--config={CONFIG}", f"--config={bad}"])
